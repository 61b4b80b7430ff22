"""Models and data the latency benchmarks run on: LLaVA-mini (or the tiny test model) and a small eval set.

* :func:`load_bench_plvm` — ``PLVM.from_preset("mini")`` with whatever Aligner weights exist (untrained
  allowed where only timing matters; the result records which), or the tiny random PLVM for ``--tiny``.
* :func:`bench_dataset` — an :class:`~plvm.eval.readers.EvalDataset`: a given folder (any layout the eval
  readers understand), else a small AvatarWorld set rendered into a temporary folder (test identities of
  world seed 0, the world the Aligner is trained on — its test split is held out from training), or, for
  ``--tiny``, the toy coloured-squares set.
* :func:`recognition_items` — "Is <c> in this photo?" items: a concept's query photos (positives) and as
  many query photos of *other* concepts (negatives), seeded.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np


@dataclass
class ModelInfo:
    model: str
    aligner_trained: bool
    aligner_weights: str | None
    projector_trained: bool | None

    def describe(self) -> str:
        if self.model == "tiny":
            return "tiny random PLVM (smoke test)"
        return (
            f"LLaVA-mini — projector {'trained' if self.projector_trained else 'RANDOM'}, Aligner "
            f"{'trained (' + str(self.aligner_weights) + ')' if self.aligner_trained else 'UNTRAINED (random)'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_bench_plvm(
    tiny: bool = False, aligner: str | Path | None = None, allow_untrained: bool = True
) -> tuple[Any, ModelInfo]:
    """The PLVM the latency benchmarks run on and what it is made of."""
    if tiny:
        from ..models.tiny_plvm import tiny_plvm

        return tiny_plvm(), ModelInfo("tiny", False, None, None)
    from ..models.base import find_mini_projector
    from ..pipeline import MINI_ALIGNER, PLVM

    weights = Path(aligner) if aligner is not None else MINI_ALIGNER
    if aligner is not None and not weights.exists():
        raise FileNotFoundError(f"Aligner weights not found: {weights}")
    trained = weights.exists()
    if not trained and not allow_untrained:
        raise FileNotFoundError(
            f"no trained Aligner weights at {weights}; train one (`plvm train --preset mini`) or pass --aligner PATH "
            "(or --allow-untrained to measure against a random Aligner — its accuracy target is meaningless)"
        )
    plvm = PLVM.from_preset("mini", aligner_weights=weights if trained else None, allow_untrained=not trained)
    return plvm, ModelInfo("mini", trained, str(weights) if trained else None, find_mini_projector() is not None)


def bench_dataset(
    data: str | Path | None = None,
    tiny: bool = False,
    n_identities: int = 8,
    queries: int = 4,
    size: int = 224,
    seed: int = 0,
    workdir: str | Path | None = None,
) -> tuple[Any, dict[str, Any]]:
    """An :class:`EvalDataset` and a description of where it came from (see module docstring)."""
    from ..eval.readers import read_dataset

    if data is not None:
        ds = read_dataset(data)
        return ds, {"source": str(data), "format": ds.format, "concepts": len(ds.concepts)}
    owned = workdir is None
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="plvm-bench-"))
    try:
        ds, info = _render_dataset(root, tiny, n_identities, queries, size, seed)
    except BaseException:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
        raise
    if owned:  # the folder lives as long as the dataset object (its images are read lazily)
        weakref.finalize(ds, shutil.rmtree, str(root), True)
    return ds, info


def _render_dataset(
    root: Path, tiny: bool, n_identities: int, queries: int, size: int, seed: int
) -> tuple[Any, dict[str, Any]]:
    from ..eval.readers import read_dataset

    if tiny:
        from ..eval.toydata import write_toy_dataset

        write_toy_dataset(root / "toy", n_concepts=3, queries_per_concept=2, size=28, seed=seed)
        ds = read_dataset(root / "toy")
        return ds, {
            "source": "toy coloured squares (write_toy_dataset)",
            "concepts": len(ds.concepts),
            "root": str(root / "toy"),
        }
    from ..synth.avatarworld import AvatarWorld
    from ..synth.evalset import build_eval_set
    from ..synth.writers import write_yollava_format

    world = AvatarWorld(seed=0)
    eval_set = build_eval_set(
        world,
        split="test",
        seed=seed,
        n_identities=n_identities,
        queries_per_identity=(queries, queries),
        n_text_qa=0,
        visual_qa_per_query=0,
        n_multi2=0,
        n_multi3=0,
        n_external=0,
        size=size,
    )
    write_yollava_format(eval_set, root / "avatarworld")
    ds = read_dataset(root / "avatarworld", "yollava")
    return ds, {
        "source": f"AvatarWorld world seed 0, test split, eval seed {seed}: {n_identities} identities x "
        f"{queries} query photos at {size} px (one reference photo each)",
        "concepts": len(ds.concepts),
        "root": str(root / "avatarworld"),
    }


@dataclass(frozen=True)
class Item:
    concept: str  # dataset concept id asked about
    image: Path
    label: bool


def recognition_items(dataset: Any, concept_id: str, max_positives: int | None = None, seed: int = 0) -> list[Item]:
    """Positives: ``concept_id``'s query photos; negatives: as many query photos of other concepts (seeded)."""
    rng = np.random.default_rng([seed, *concept_id.encode()])
    positives = list(dataset.concepts[concept_id].query_images)[: max_positives or None]
    others = [p for cid, r in dataset.concepts.items() if cid != concept_id for p in r.query_images]
    n = min(len(positives), len(others))
    negatives = [others[i] for i in sorted(rng.choice(len(others), size=n, replace=False).tolist())] if n else []
    return [Item(concept_id, p, True) for p in positives] + [Item(concept_id, p, False) for p in negatives]


def recognition_conversations(dataset: Any, items: Sequence[Item], concepts: dict[str, Any]) -> list[Any]:
    """``single_turn("Is <name> in this photo?", [concept], image)`` per item (concepts by dataset id)."""
    from ..conversation import single_turn
    from ..eval.prompts import RECOGNITION_QUESTION, with_name

    out = []
    for it in items:
        concept = concepts[it.concept]
        out.append(single_turn(with_name(RECOGNITION_QUESTION, concept.name), [concept], image=dataset.image(it.image)))
    return out


def accuracy(labels: Sequence[bool], preds: Sequence[bool | None]) -> dict[str, float]:
    """Positive / negative / mean accuracy (the paper's mean is the average of the two); None counts wrong."""
    pos = [p is True for lab, p in zip(labels, preds) if lab]
    neg = [p is False for lab, p in zip(labels, preds) if not lab]
    pos_acc = float(np.mean(pos)) if pos else float("nan")
    neg_acc = float(np.mean(neg)) if neg else float("nan")
    return {
        "positive": pos_acc,
        "negative": neg_acc,
        "mean": float(np.nanmean([pos_acc, neg_acc])),
        "n_positive": len(pos),
        "n_negative": len(neg),
    }


def random_concepts(
    names: Sequence[str], hidden: int, k: int, base_model: str, scale: float = 0.02, seed: int = 0
) -> list[Any]:
    """Random :class:`ConceptEmbedding` records (for latency and size measurements, where values don't matter)."""
    import torch

    from ..concept import ConceptEmbedding

    g = torch.Generator().manual_seed(seed)
    return [
        ConceptEmbedding(
            n,
            torch.randn(hidden, generator=g) * scale,
            torch.randn(hidden, generator=g) * scale,
            torch.randn(k, hidden, generator=g) * scale,
            base_model,
        )
        for n in names
    ]


__all__ = [
    "Item",
    "ModelInfo",
    "accuracy",
    "bench_dataset",
    "load_bench_plvm",
    "random_concepts",
    "recognition_conversations",
    "recognition_items",
]
