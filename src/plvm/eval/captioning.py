"""Personalized captioning: does the caption name the concepts that are in the photo (and only those)?

Images: every query photo of every concept (present = that concept), every multi-concept image and every
external image (present = its annotation). Each caption item introduces ``present ∪ D`` where ``D`` are
``caption_distractors`` seeded concepts *not* in the photo (so a method that names every introduced concept
loses precision), in a seeded order. Two prompts (the paper's): ``neutral`` ("Please provide a caption for
this image.") and ``primed`` ("Can you see <a> and <b> in the image? Don't answer …", with the introduced
concepts). ``<name>`` mentions are extracted from the greedy caption; micro precision / recall / F1 of
mentions against the concepts present (:func:`plvm.eval.metrics.mention_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .config import EvalConfig, TaskContext, limit_items
from .methods import Binding, Method
from .metrics import mention_metrics
from .prompts import extract_mentions, join_names
from .readers import EvalDataset


@dataclass(frozen=True)
class CaptionItem:
    """Caption ``image`` with the concepts ``context`` introduced; ``present`` are those in the photo."""

    image: Path
    split: str
    present: tuple[str, ...]
    context: tuple[str, ...]


def build_items(dataset: EvalDataset, config: EvalConfig) -> tuple[list[CaptionItem], dict[str, Any]]:
    rng = config.rng("caption")
    ids = list(dataset.concepts)
    sources: list[tuple[Path, tuple[str, ...], str]] = [
        (q, (c,), "single") for c in ids for q in dataset.concepts[c].query_images
    ]
    sources += [(m.path, tuple(m.concepts), m.split) for m in dataset.multi]
    items = []
    for path, present, split in sources:
        absent = [c for c in ids if c not in present]
        n = min(config.caption_distractors, len(absent))
        distractors = [absent[i] for i in rng.choice(len(absent), size=n, replace=False).tolist()] if n else []
        context = list(present) + distractors
        context = [context[i] for i in rng.permutation(len(context)).tolist()]
        items.append(CaptionItem(path, split, present, tuple(context)))
    total = len(items)
    items = limit_items(items, config.limit_for("caption"), config.rng("caption-limit"))
    info = {
        "items_before_limit": total,
        "items": len(items),
        "distractors": config.caption_distractors,
        "prompts": dict(config.caption_prompts),
        "max_new_tokens": config.caption_max_new_tokens,
    }
    return items, info


def evaluate(method: Method, items: list[CaptionItem], ctx: TaskContext) -> tuple[dict[str, Any], list[dict]]:
    """Generate a caption per item and prompt; → ({prompt: {split: mention metrics}}, records)."""
    cfg, ds = ctx.config, ctx.dataset
    records: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for prompt_name, template in cfg.caption_prompts.items():
        bar = tqdm(items, desc=f"{method.key}: caption ({prompt_name})", disable=not ctx.progress, leave=False)
        rows = []
        for it in bar:
            names = [ds.name_of(c) for c in it.context]
            text = template.replace("<sks>", join_names(names)) if names else template.replace("<sks>", "them")
            conv = method.conversation(text, [Binding(n, c) for n, c in zip(names, it.context)], [ds.image(it.image)])
            caption = ctx.scorer.generate(conv, cfg.caption_max_new_tokens)
            by_name = dict(zip(names, it.context))
            mentioned = [by_name[n] for n in extract_mentions(caption, names)]
            rows.append(
                {
                    "task": "caption",
                    "prompt": prompt_name,
                    "method": method.key,
                    "image": ctx.rel(it.image),
                    "split": it.split,
                    "present": list(it.present),
                    "context": list(it.context),
                    "caption": caption,
                    "mentioned": mentioned,
                }
            )
        per_split: dict[str, Any] = {
            "all": mention_metrics([r["present"] for r in rows], [r["mentioned"] for r in rows]).to_dict()
        }
        for split in ("single", "multi", "external"):
            sub = [r for r in rows if r["split"] == split]
            if sub:
                per_split[split] = mention_metrics([r["present"] for r in sub], [r["mentioned"] for r in sub]).to_dict()
        results[prompt_name] = per_split
        records += rows
    return results, records


__all__ = ["CaptionItem", "build_items", "evaluate"]
