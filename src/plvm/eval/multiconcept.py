"""Multi-concept recognition (MC-LLaVA protocol) on the ``multi/`` split.

The *scenario* is the set ``S`` of concepts named in ``multi/annotations.json`` (in dataset order). As in
MC-LLaVA, where a scenario is one film's few characters, every image — single-concept, multi-concept, or
external (none of ``S``) — is asked

* about the concepts of its scenario one at a time: "Can you see <a> in this photo? …" → Yes iff ``a`` is in
  the image (``kind="concept"``). If ``|S| ≤ scenario_size`` that is every concept of ``S``; otherwise the
  image's own concepts and seeded absent ones of ``S``, ``scenario_size`` in all (or just its own, if it has
  more), so that a 46-person ``S`` does not turn the task into 44 negatives per image;
* about sets (``kind="set"``): "Can you see <a> and <b> in this photo? …" → Yes iff *all* of them are in the
  image. An image with ≥ 2 of ``S`` is asked its own set (Yes; the first ``max_set_size``) and the same set
  with one seeded member swapped for an absent concept (No); a single-concept image is asked its concept
  and an absent one (No); an external image two absent ones (No).

If the annotations hold no single-concept image, the single split uses the query photos of the concepts
in ``S`` (reported in ``info``). Metrics per split (single / multi / external) and per kind: accuracy,
precision, recall, F1 (external images have no positive — their recall and precision are 0 by convention,
read their ``neg_acc`` / ``acc``) and the ROC AUC of the Yes/No score (``None`` without scores or with one
class, e.g. on external images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .config import EvalConfig, TaskContext, chunks, limit_items
from .methods import Binding, Method
from .metrics import binary_metrics, score_auc
from .prompts import join_names
from .readers import EvalDataset

SPLITS = ("single", "multi", "external")


@dataclass(frozen=True)
class MultiItem:
    """Ask whether all of ``query`` (concept ids) are in ``image``; ``label`` is the answer."""

    image: Path
    split: str
    present: tuple[str, ...]
    query: tuple[str, ...]
    kind: str  # "concept" | "set"
    label: bool


def _split_of(present: tuple[str, ...]) -> str:
    return "external" if not present else ("single" if len(present) == 1 else "multi")


def _absent(rng: np.random.Generator, scenario: list[str], present: tuple[str, ...], n: int) -> list[str]:
    """``n`` seeded concepts of ``scenario`` not in ``present`` (fewer if there are not enough)."""
    rest = [c for c in scenario if c not in present]
    picks = rng.choice(len(rest), size=max(0, min(n, len(rest))), replace=False).tolist()
    return [rest[i] for i in picks]


def _in_order(scenario: list[str], chosen: set[str]) -> tuple[str, ...]:
    return tuple(c for c in scenario if c in chosen)


def build_items(dataset: EvalDataset, config: EvalConfig) -> tuple[list[MultiItem], dict[str, Any]]:
    """The per-concept and set questions for every image of the multi split (then its item limit)."""
    rng = config.rng("multi")
    in_scenario = {c for m in dataset.multi for c in m.concepts}
    scenario = [c for c in dataset.concepts if c in in_scenario]
    images: list[tuple[Path, tuple[str, ...]]] = [(m.path, tuple(m.concepts)) for m in dataset.multi]
    single_from_folders = False
    if scenario and not any(len(p) == 1 for _, p in images):
        single_from_folders = True
        images += [(q, (c,)) for c in scenario for q in dataset.concepts[c].query_images]
    items: list[MultiItem] = []
    counts = dict.fromkeys(SPLITS, 0)
    for path, present in images:
        split = _split_of(present)
        counts[split] += 1
        own = [c for c in scenario if c in present]
        if len(scenario) <= config.scenario_size:
            asked = list(scenario)
        else:
            absent = _absent(rng, scenario, present, config.scenario_size - len(own))
            asked = list(_in_order(scenario, set(own) | set(absent)))
        for c in asked:
            items.append(MultiItem(path, split, present, (c,), "concept", c in present))
        if len(scenario) < 2:
            continue
        own = own[: config.max_set_size]
        if len(own) >= 2:
            items.append(MultiItem(path, split, present, tuple(own), "set", True))
        absent = _absent(rng, scenario, present, max(1, 2 - len(own)))
        if absent and len(own) + len(absent) >= 2:  # No: one member (if any was present) is absent
            kept = set(own) - {own[int(rng.integers(len(own)))]} if len(own) >= 2 else set(own)
            items.append(MultiItem(path, split, present, _in_order(scenario, kept | set(absent)), "set", False))
    total = len(items)
    items = limit_items(items, config.limit_for("multi"), config.rng("multi-limit"))
    info = {
        "scenario": scenario,
        "images": counts,
        "single_split_from_concept_folders": single_from_folders,
        "scenario_size": config.scenario_size,
        "max_set_size": config.max_set_size,
        "items_before_limit": total,
        "items": len(items),
        "positives": sum(it.label for it in items),
        "question": config.multi_question,
        "scoring": config.scoring,
    }
    return items, info


def _split_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    def m(rows: list[dict[str, Any]]) -> dict[str, Any]:
        labels = [r["label"] for r in rows]
        return {
            **binary_metrics(labels, [r["pred"] for r in rows]).to_dict(),
            "auc": score_auc(labels, [r["score"] for r in rows]),
        }

    out: dict[str, Any] = {"all": m(records)}
    for split in SPLITS:
        rows = [r for r in records if r["split"] == split]
        if rows:
            out[split] = {
                "all": m(rows),
                "concept": m([r for r in rows if r["kind"] == "concept"]),
                "set": m([r for r in rows if r["kind"] == "set"]),
            }
    return out


def evaluate(method: Method, items: list[MultiItem], ctx: TaskContext) -> tuple[dict[str, Any], list[dict]]:
    """Score ``method`` on the multi-concept items: → (metrics per split and kind, prediction records)."""
    cfg, ds = ctx.config, ctx.dataset
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc=f"{method.key}: multi-concept", disable=not ctx.progress, leave=False)
    for chunk in chunks(items, cfg.batch_size):
        convs = []
        for it in chunk:
            names = [ds.name_of(c) for c in it.query]
            text = cfg.multi_question.format(names=join_names(names))
            convs.append(
                method.conversation(text, [Binding(n, c) for n, c in zip(names, it.query)], [ds.image(it.image)])
            )
        for it, dec in zip(chunk, ctx.scorer.decide_yes_no(convs, cfg.scoring, cfg.answer_max_new_tokens)):
            records.append(
                {
                    "task": "multi",
                    "method": method.key,
                    "image": ctx.rel(it.image),
                    "split": it.split,
                    "kind": it.kind,
                    "present": list(it.present),
                    "query": list(it.query),
                    "label": it.label,
                    "pred": dec.pred,
                    "score": dec.score,
                    "answer": dec.text,
                    "correct": dec.pred == it.label,
                }
            )
        bar.update(len(chunk))
    bar.close()
    return _split_metrics(records), records


__all__ = ["MultiItem", "SPLITS", "build_items", "evaluate"]
