"""Multiple-choice question answering about a concept: text-only (no photo) and visual (a query photo).

Prompt: the question (``<sks>`` → the concept), one ``"A. …"`` line per option and the MC instruction.
Scoring: the option letter with the highest log-probability as the first answer token (one forward), the option
whose text is the likeliest answer to the bare question (``scoring="likelihood"``, one forward per option), or the
letter parsed from a generated answer. Metric: accuracy (:func:`plvm.eval.metrics.choice_metrics`).

Controls, so a reader sees how much of the score personalization explains:

* ``"wrong"`` — the wrong-concept control: the same question and name, personalized with *another*
  identity's data (seeded; the same other identity for every method);
* the no-personalization control is the :class:`~plvm.eval.methods.NoPersonalization` method run on the
  same items (the harness always runs it for QA tasks when ``config.controls`` is on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from .config import EvalConfig, TaskContext, chunks, limit_items
from .methods import Binding, Method
from .metrics import choice_metrics
from .prompts import mc_prompt, with_name
from .readers import EvalDataset, QAItem

VARIANTS = ("own", "wrong")


@dataclass(frozen=True)
class QAEvalItem:
    """A question and the other identity used by the wrong-concept control (``None`` if there is none)."""

    qa: QAItem
    wrong_concept: str | None


def build_items(dataset: EvalDataset, kind: str, config: EvalConfig) -> tuple[list[QAEvalItem], dict[str, Any]]:
    """``kind="text"`` (``dataset.text_qa``) or ``"visual"`` (``dataset.visual_qa``), limited and with controls."""
    source = dataset.text_qa if kind == "text" else dataset.visual_qa
    rng = config.rng(f"qa-{kind}")
    ids = list(dataset.concepts)
    items = []
    for qa in source:
        others = [c for c in ids if c != qa.concept]
        items.append(QAEvalItem(qa, others[int(rng.integers(len(others)))] if others else None))
    items = limit_items(items, config.limit, config.rng(f"qa-{kind}-limit"))
    n_options = [len(it.qa.options) for it in items]
    info = {
        "items_before_limit": len(source),
        "items": len(items),
        "chance_acc": float(sum(1 / n for n in n_options) / len(n_options)) if n_options else 0.0,
        "scoring": config.scoring,
    }
    return items, info


def evaluate(
    method: Method, items: list[QAEvalItem], ctx: TaskContext, task: str, variant: str = "own"
) -> tuple[dict[str, Any], list[dict]]:
    """Accuracy of ``method`` on ``items`` (``variant="wrong"``: the wrong-concept control)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    cfg, ds = ctx.config, ctx.dataset
    usable = [it for it in items if variant == "own" or it.wrong_concept is not None]
    records: list[dict[str, Any]] = []
    desc = f"{method.key}: {task}" + (" (wrong concept)" if variant == "wrong" else "")
    bar = tqdm(total=len(usable), desc=desc, disable=not ctx.progress, leave=False)
    for chunk in chunks(usable, cfg.batch_size):
        convs = []
        for it in chunk:
            name = ds.name_of(it.qa.concept)
            data = it.qa.concept if variant == "own" else it.wrong_concept
            question = with_name(it.qa.question, name)
            # "likelihood" scores each option's text as the answer to the bare question (no lettered list)
            prompt = question if cfg.scoring == "likelihood" else mc_prompt(question, it.qa.options, cfg.mc_instruction)
            images = [ds.image(it.qa.image)] if it.qa.image is not None else []
            convs.append(method.conversation(prompt, [Binding(name, data)], images))
        decisions = ctx.scorer.decide_letter(
            convs, [it.qa.options for it in chunk], cfg.scoring, cfg.answer_max_new_tokens
        )
        for it, dec in zip(chunk, decisions):
            records.append(
                {
                    "task": task,
                    "variant": variant,
                    "method": method.key,
                    "concept": it.qa.concept,
                    "personalized_with": it.qa.concept if variant == "own" else it.wrong_concept,
                    "image": ctx.rel(it.qa.image),
                    "source": f"{it.qa.source}#{it.qa.index}",
                    "question": it.qa.question,
                    "options": it.qa.options,
                    "answer": it.qa.answer,
                    "pred": dec.pred,
                    "scores": dec.scores,
                    "text": dec.text,
                    "correct": dec.pred == it.qa.answer,
                }
            )
        bar.update(len(chunk))
    bar.close()
    metrics = choice_metrics([r["answer"] for r in records], [r["pred"] for r in records]).to_dict()
    return metrics, records


__all__ = ["QAEvalItem", "VARIANTS", "build_items", "evaluate"]
