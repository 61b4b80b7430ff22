"""Recognition (§4.1): "Is <sks> in this photo?" on every query image, about its own and other identities.

Items: each query image of concept ``c`` is asked about ``c`` (a positive) and about ``n`` other concepts
sampled without replacement with a seeded generator (negatives; ``n = negatives_per_image``, fewer if the
dataset has fewer other identities — the effective number is reported). Metrics: positive / negative /
mean accuracy (the paper's mean = average of the two), accuracy, precision, recall, F1
(:func:`plvm.eval.metrics.binary_metrics`), and the ROC AUC of the Yes/No score (threshold-free; ``None``
when a method gives no score, e.g. with ``scoring="generate"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import EvalConfig, TaskContext, chunks, limit_items
from .methods import Binding, Method
from .metrics import binary_metrics, cross_fitted_metrics, score_auc
from .prompts import with_name
from .readers import EvalDataset


@dataclass(frozen=True)
class RecognitionItem:
    """Ask about ``concept`` on ``image`` (a query photo of ``owner``); ``label`` = owner is concept."""

    concept: str
    image: Path
    owner: str
    label: bool


def build_items(dataset: EvalDataset, config: EvalConfig) -> tuple[list[RecognitionItem], dict[str, Any]]:
    """All positives and the sampled negatives (then ``config.limit``); also a description of the sampling."""
    rng = config.rng("recog")
    ids = list(dataset.concepts)
    items: list[RecognitionItem] = []
    for owner in ids:
        others = [c for c in ids if c != owner]
        for image in dataset.concepts[owner].query_images:
            items.append(RecognitionItem(owner, image, owner, True))
            n = min(config.negatives_per_image, len(others))
            for j in sorted(rng.choice(len(others), size=n, replace=False).tolist()) if n else []:
                items.append(RecognitionItem(others[j], image, owner, False))
    total = len(items)
    items = limit_items(items, config.limit, config.rng("recog-limit"))
    info = {
        "query_images": sum(len(dataset.concepts[c].query_images) for c in ids),
        "negatives_per_image_requested": config.negatives_per_image,
        "negatives_per_image": min(config.negatives_per_image, max(len(ids) - 1, 0)),
        "items_before_limit": total,
        "items": len(items),
        "positives": sum(it.label for it in items),
        "negatives": sum(not it.label for it in items),
        "question": config.recognition_question,
        "scoring": config.scoring,
    }
    return items, info


def evaluate(method: Method, items: list[RecognitionItem], ctx: TaskContext) -> tuple[dict[str, Any], list[dict]]:
    """Score ``method`` on ``items``: → (metrics, per-example prediction records)."""
    cfg, ds = ctx.config, ctx.dataset
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc=f"{method.key}: recognition", disable=not ctx.progress, leave=False)
    example_prompt_tokens = None
    recognize = getattr(method, "recognize", None)
    for chunk in chunks(items, cfg.batch_size):
        if recognize is not None:  # a method that decides without the LVLM (plvm.eval.methods.identification)
            for it in chunk:
                pred, score, source = recognize(it.concept, ds.image(it.image))
                records.append(
                    {
                        "task": "recog",
                        "method": method.key,
                        "concept": it.concept,
                        "owner": it.owner,
                        "image": ctx.rel(it.image),
                        "label": it.label,
                        "pred": pred,
                        "score": score,
                        "answer": source,
                        "correct": pred == it.label,
                    }
                )
            bar.update(len(chunk))
            continue
        convs = []
        for it in chunk:
            name = ds.name_of(it.concept)
            convs.append(
                method.conversation(
                    with_name(cfg.recognition_question, name), [Binding(name, it.concept)], [ds.image(it.image)]
                )
            )
        if example_prompt_tokens is None and convs:
            example_prompt_tokens = ctx.scorer.prompt_length(convs[0])
        for it, dec in zip(chunk, ctx.scorer.decide_yes_no(convs, cfg.scoring, cfg.answer_max_new_tokens)):
            records.append(
                {
                    "task": "recog",
                    "method": method.key,
                    "concept": it.concept,
                    "owner": it.owner,
                    "image": ctx.rel(it.image),
                    "label": it.label,
                    "pred": dec.pred,
                    "score": dec.score,
                    "answer": dec.text,
                    "correct": dec.pred == it.label,
                }
            )
        bar.update(len(chunk))
    bar.close()
    metrics = binary_metrics([r["label"] for r in records], [r["pred"] for r in records]).to_dict()
    scores = [r["score"] for r in records]
    metrics["auc"] = score_auc([r["label"] for r in records], scores)  # Yes/No log-odds ranking, no threshold
    if metrics["auc"] is not None and len({r["concept"] for r in records}) >= 2:
        # at a threshold calibrated on the other half of the concepts (2-fold cross-fitting)
        metrics["calibrated"] = cross_fitted_metrics(
            scores, [r["label"] for r in records], [r["concept"] for r in records]
        )
    metrics["example_prompt_tokens"] = example_prompt_tokens
    return metrics, records


__all__ = ["RecognitionItem", "build_items", "evaluate"]
