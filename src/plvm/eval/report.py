"""Writing a run's results: ``results.json`` (every number + the config), ``results.md`` (tables in the
paper's Table 1 shape, plus controls, multi-concept, captioning and cost), ``results.png`` (bar chart).

Everything here reads the JSON-able ``data`` dict built by :func:`plvm.eval.harness.run_evaluation`, so a
report can be re-rendered from a saved ``results.json`` (:func:`write_report`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

DASH = "–"


def _get(node: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return None
        node = node[key]
    return node


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_tokens(value: Any) -> str:
    if value is None:
        return DASH
    return str(int(round(value))) if abs(value - round(value)) < 1e-6 else f"{value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def markdown_report(data: dict[str, Any]) -> str:
    """The Markdown report of one run."""
    cfg, methods, tasks = data["config"], data["methods"], data.get("tasks", {})
    ds = data["dataset"]
    title = data.get("meta", {}).get("title") or f"Evaluation on {ds['name']}"
    lines = [f"# {title}", ""]
    if data.get("meta", {}).get("warning"):
        lines += [f"> **Warning:** {data['meta']['warning']}", ""]
    lines.append(
        f"Base model `{data.get('base_model')}`; dataset `{ds['name']}` ({ds['format']}, {ds['concepts']} concepts); "
        f"scoring: **{cfg['scoring']}**; seed {cfg['seed']}; limit {cfg['limit'] or 'none'}; "
        f"created {data.get('created')}; {fmt(data.get('seconds'), 0)} s."
    )
    if "recog" in tasks:
        r = tasks["recog"]
        lines.append("")
        lines.append(
            f"Recognition: {r['positives']} positive and {r['negatives']} negative questions "
            f"({r['negatives_per_image']} negatives per query image, other identities, seeded); "
            f"question: \"{r['question']}\". Mean acc = (pos acc + neg acc) / 2."
        )
    lines += ["", "## Main table (paper Table 1 shape)", ""]
    header = ["Method", "Tokens", "Pos acc", "Neg acc", "Mean acc", "Precision", "Recall", "F1", "Text QA",
              "Visual QA"]
    rows = []
    for m in methods.values():
        rec = _get(m, "results", "recog")
        rows.append([m["label"], fmt_tokens(m.get("concept_tokens")),
                     fmt(_get(rec, "pos_acc")), fmt(_get(rec, "neg_acc")), fmt(_get(rec, "mean_acc")),
                     fmt(_get(rec, "precision")), fmt(_get(rec, "recall")), fmt(_get(rec, "f1")),
                     fmt(_get(m, "results", "textqa", "acc")), fmt(_get(m, "results", "vqa", "acc"))])
    lines += _table(header, rows)
    lines += ["", "Tokens = prompt tokens spent per concept (name + context / description / image tokens)."]

    qa_tasks = [t for t in ("textqa", "vqa") if t in tasks and "skipped" not in tasks[t]]
    if qa_tasks:
        lines += ["", "## QA controls", "",
                  "*own* = personalized with the concept itself; *wrong concept* = same question, personalized "
                  "with another identity; *no personalization* = the concept rewritten as "
                  f"\"{cfg['phrase']}\", no concept tokens. Δ = own − wrong concept."]
        header = ["Method"]
        for t in qa_tasks:
            name = "Text QA" if t == "textqa" else "Visual QA"
            header += [f"{name} own", f"{name} wrong concept", f"{name} Δ"]
        rows = []
        for m in methods.values():
            row = [m["label"]]
            for t in qa_tasks:
                own, wrong = _get(m, "results", t, "acc"), _get(m, "results", t, "wrong_concept", "acc")
                row += [fmt(own), fmt(wrong), fmt(own - wrong) if own is not None and wrong is not None else DASH]
            rows.append(row)
        control = ["no personalization (control)"]
        for t in qa_tasks:
            control += [fmt(_get(data, "controls", t, "no_personalization", "acc")), DASH, DASH]
        rows.append(control)
        lines += [""] + _table(header, rows)
        chance = ", ".join(f"{t}: {fmt(tasks[t].get('chance_acc'))}" for t in qa_tasks)
        lines += ["", f"Chance level ({chance}); items: " +
                  ", ".join(f"{t}: {tasks[t]['items']}" for t in qa_tasks) + "."]

    if "multi" in tasks and "skipped" not in tasks["multi"]:
        info = tasks["multi"]
        lines += ["", "## Multi-concept recognition (MC-LLaVA protocol)", "",
                  f"Scenario concepts: {', '.join(info['scenario'])}; images per split: {info['images']}. "
                  "Per split: every concept alone and the full set (Yes iff all present)."]
        header = ["Method", "Split", "Acc", "Mean acc", "Precision", "Recall", "F1", "Set acc", "n"]
        rows = []
        for m in methods.values():
            res = _get(m, "results", "multi") or {}
            for split in ("single", "multi", "external"):
                if split in res:
                    a = res[split]["all"]
                    rows.append([m["label"], split, fmt(a["acc"]), fmt(a["mean_acc"]), fmt(a["precision"]),
                                 fmt(a["recall"]), fmt(a["f1"]),
                                 fmt(res[split]["set"]["acc"]) if res[split]["set"]["n"] else DASH, str(a["n"])])
        lines += [""] + _table(header, rows)
        lines += ["", "External images have no positive question: their precision / recall / F1 are 0 by "
                  "convention; read their accuracy."]

    if "caption" in tasks and "skipped" not in tasks["caption"]:
        lines += ["", "## Captioning (mentions of `<name>`)", "",
                  f"Each caption introduces the concepts in the photo plus {tasks['caption']['distractors']} "
                  "distractor(s); micro precision / recall / F1 of mentioned concepts."]
        header = ["Method", "Prompt", "Precision", "Recall", "F1", "Captions with a mention", "n"]
        rows = []
        for m in methods.values():
            for prompt, res in (_get(m, "results", "caption") or {}).items():
                a = res["all"]
                rows.append([m["label"], prompt, fmt(a["precision"]), fmt(a["recall"]), fmt(a["f1"]),
                             str(a["captions_with_mention"]), str(a["n"])])
        lines += [""] + _table(header, rows)

    lines += ["", "## Cost", ""]
    header = ["Method", "Tokens / concept", "Recognition prompt tokens", "Preparation s / concept",
              "Concepts prepared", "Total s"]
    rows = [[m["label"], fmt_tokens(m.get("concept_tokens")),
             fmt(_get(m, "results", "recog", "example_prompt_tokens")),
             fmt(m.get("prepare_seconds_per_concept"), 2), str(m.get("concepts_prepared", 0)),
             fmt(sum(m.get("seconds", {}).values()), 1)] for m in methods.values()]
    lines += _table(header, rows)
    lines += ["", "Recognition prompt tokens: length of one full recognition prompt (template, image tokens, "
              "concept tokens), the same question for every method."]

    lines += ["", "## Data", "",
              f"{ds['concepts']} concepts, {ds['query_images']} query images, {ds['text_qa']} text-only and "
              f"{ds['visual_qa']} visual questions, multi-concept images {ds['multi_images'] or 'none'}; "
              f"{ds['skipped_images']} unreadable image(s) skipped, {ds['skipped_entries']} unusable entries."]
    for note in ds.get("notes", [])[:20]:
        lines.append(f"- {note}")
    lines.append("")
    return "\n".join(lines)


BAR_METRICS = [
    ("recog", ("mean_acc",), "Recog. mean acc"),
    ("recog", ("f1",), "Recog. F1"),
    ("textqa", ("acc",), "Text QA acc"),
    ("vqa", ("acc",), "Visual QA acc"),
    ("multi", ("all", "f1"), "Multi-concept F1"),
    ("caption", ("primed", "all", "f1"), "Caption F1 (primed)"),
]


def plot_results(data: dict[str, Any], path: str | Path) -> Path:
    """Grouped bar chart (metric groups × methods), written with the Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(data["methods"].values())
    metrics = [(t, p, lbl) for t, p, lbl in BAR_METRICS
               if any(_get(m, "results", t, *p) is not None for m in methods)]
    fig = Figure(figsize=(max(6.0, 1.6 * max(len(metrics), 1) + 2), 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        values = [_get(m, "results", t, *p) for t, p, _ in metrics]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(metrics))]
        bars = ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=m["label"])
        for bar, v in zip(bars, values):
            if v is not None:
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"{v:.2f}",
                        ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([lbl for _, _, lbl in metrics], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(data.get("meta", {}).get("title") or f"{data['dataset']['name']} — {data.get('base_model')}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    return path


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read
    os.replace(tmp, path)


def write_report(data: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "results.png"}
    _atomic_write(files["json"], json.dumps(data, indent=2, sort_keys=False) + "\n")
    _atomic_write(files["markdown"], markdown_report(data))
    plot_results(data, files["plot"])
    return {k: str(v) for k, v in files.items()}


__all__ = ["markdown_report", "plot_results", "write_report"]
