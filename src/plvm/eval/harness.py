"""The evaluation harness: every method, the same items, the same scorer → JSON, Markdown, PNG, JSONL.

>>> from plvm.eval import read_dataset, build_methods, run_evaluation
>>> plvm = PLVM.from_preset("mini")
>>> data = read_dataset("data/avatarworld-eval")
>>> methods = build_methods(["none", "text", "image", "yollava", "plvm"], plvm.lvlm, plvm)
>>> result = run_evaluation(methods, data, ["recog", "textqa", "vqa", "multi", "caption"], "docs/results/mini")

Order of work: items of every task are built once from the dataset and the seed (so all methods answer the
same questions about the same photos); then, per method, the concepts the items need are prepared
(descriptions / tuning / Aligner pass, timed) and every task is scored. ``predictions.jsonl`` and a partial
``results.json`` are written after each method, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from . import captioning, multiconcept, multiple_choice, recognition
from .config import EvalConfig, TaskContext
from .methods import Method, NoPersonalization
from .readers import EvalDataset
from .report import write_report
from .scoring import Scorer

QA_TASKS = {"textqa": "text", "vqa": "visual"}


@dataclass
class EvalResult:
    """What :func:`run_evaluation` returns: the JSON-able ``data``, every prediction, and the files written."""

    data: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def metric(self, method: str, task: str, *path: str) -> Any:
        """``result.metric("plvm", "recog", "mean_acc")`` — a number from ``data["methods"]``."""
        node: Any = self.data["methods"][method]["results"][task]
        for key in path:
            node = node[key]
        return node


def _needed_concepts(tasks_items: dict[str, Any], controls: bool) -> list[str]:
    needed: dict[str, None] = {}
    for task, items in tasks_items.items():
        for it in items:
            if task == "recog":
                needed[it.concept] = None
            elif task in QA_TASKS:
                needed[it.qa.concept] = None
                if controls and it.wrong_concept is not None:
                    needed[it.wrong_concept] = None
            elif task == "multi":
                needed.update(dict.fromkeys(it.query))
            elif task == "caption":
                needed.update(dict.fromkeys(it.context))
    return list(needed)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and obj != obj:  # NaN
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def run_evaluation(
    methods: Sequence[Method],
    dataset: EvalDataset,
    tasks: Iterable[str] | None = None,
    out_dir: str | Path | None = None,
    config: EvalConfig | None = None,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    scorer: Scorer | None = None,
) -> EvalResult:
    """Evaluate ``methods`` on ``dataset``.

    Args:
        methods: :class:`~plvm.eval.methods.Method` objects sharing one LVLM (see :func:`build_methods`).
        dataset: from :func:`~plvm.eval.readers.read_dataset`.
        tasks: subset of ``recog, textqa, vqa, multi, caption`` (default: ``config.tasks``).
        out_dir: where to write ``results.json``, ``results.md``, ``results.png`` and ``predictions.jsonl``
            (nothing is written if ``None``); a path ending in ``.md`` (``docs/results/avatarworld.md``) names
            the report itself, the other files go beside it (``avatarworld.json``, ``avatarworld.png``,
            ``avatarworld.predictions.jsonl``).
        config: every other knob (:class:`~plvm.eval.config.EvalConfig`).
        progress: show tqdm progress bars.
        meta: extra description stored in the JSON (e.g. ``{"model": "mini"}``).
        scorer: a custom :class:`~plvm.eval.scoring.Scorer` (default: one on the methods' LVLM).
    """
    if not methods:
        raise ValueError("no methods to evaluate")
    config = config or EvalConfig()
    if tasks is not None:
        config = EvalConfig(**{**config.to_dict(), "tasks": tuple(tasks)})
    keys = [m.key for m in methods]
    if len(set(keys)) != len(keys):
        raise ValueError(f"method keys must be unique (set method.key), got {keys}")
    lvlm = methods[0].lvlm
    if any(m.lvlm is not lvlm for m in methods):
        raise ValueError("all methods must run on the same LVLM (same token budget, same scorer)")
    started = time.perf_counter()
    ctx = TaskContext(scorer or Scorer(lvlm, config.batch_size), dataset, config, progress)

    items: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for task in config.tasks:
        if task == "recog":
            items[task], info[task] = recognition.build_items(dataset, config)
        elif task in QA_TASKS:
            items[task], info[task] = multiple_choice.build_items(dataset, QA_TASKS[task], config)
        elif task == "multi":
            items[task], info[task] = multiconcept.build_items(dataset, config)
        elif task == "caption":
            items[task], info[task] = captioning.build_items(dataset, config)
        if not items[task]:
            info[task]["skipped"] = f"no {task} data in this dataset"
    needed = _needed_concepts(items, config.controls)

    out = Path(out_dir) if out_dir is not None else None
    stem = "results"
    if out is not None and out.suffix == ".md":
        out, stem = out.parent, out.stem
    pred_path = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        pred_path = out / ("predictions.jsonl" if stem == "results" else f"{stem}.predictions.jsonl")
        pred_path.write_text("")
    data: dict[str, Any] = {
        "plvm_eval_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "meta": dict(meta or {}),
        "base_model": getattr(lvlm, "base_model_id", None),
        "config": config.to_dict(),
        "dataset": dataset.summary(),
        "tasks": info,
        "methods": {},
        "controls": {},
    }
    result = EvalResult(data)

    def emit(records: list[dict[str, Any]]) -> None:
        result.predictions.extend(records)
        if pred_path is not None:
            with pred_path.open("a", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(_jsonable(r)) + "\n")

    def checkpoint() -> None:
        data["seconds"] = time.perf_counter() - started
        if out is not None:
            result.files = write_report(_jsonable(data), out, stem)
            result.files["predictions"] = str(pred_path)

    for method in methods:
        t0 = time.perf_counter()
        method.prepare(dataset, needed, progress=progress)
        entry: dict[str, Any] = {"results": {}, "seconds": {"prepare": time.perf_counter() - t0}}
        for task in config.tasks:
            if not items[task] or not method.supports(task):
                continue
            t0 = time.perf_counter()
            if task == "recog":
                metrics, records = recognition.evaluate(method, items[task], ctx)
            elif task in QA_TASKS:
                own, records = multiple_choice.evaluate(method, items[task], ctx, task, "own")
                wrong = None
                if config.controls and method.personalized:
                    wrong, wrong_records = multiple_choice.evaluate(method, items[task], ctx, task, "wrong")
                    records += wrong_records
                metrics = {**own, "wrong_concept": wrong}
            elif task == "multi":
                metrics, records = multiconcept.evaluate(method, items[task], ctx)
            else:
                metrics, records = captioning.evaluate(method, items[task], ctx)
            entry["results"][task] = metrics
            entry["seconds"][task] = time.perf_counter() - t0
            emit(records)
        entry.update(method.describe())
        data["methods"][method.key] = entry
        checkpoint()

    if config.controls:
        for task in (t for t in config.tasks if t in QA_TASKS and items[t]):
            none_entry = data["methods"].get("none")
            if none_entry is not None and task in none_entry["results"]:
                control = {k: v for k, v in none_entry["results"][task].items() if k != "wrong_concept"}
            else:
                control, records = multiple_choice.evaluate(
                    NoPersonalization(lvlm, config.phrase), items[task], ctx, task
                )
                for r in records:
                    r["method"] = "none (control)"
                emit(records)
            data["controls"][task] = {"no_personalization": control}
    checkpoint()
    return result


__all__ = ["EvalResult", "run_evaluation"]
