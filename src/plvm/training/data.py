"""The Aligner's training data sources: AvatarWorld (procedural, offline) and a folder of real data.

LLaVA-mini's stage-1 (generic, non-personalized) source is :mod:`plvm.models.llava_mini.stage1_data`.

Every source is a pure function of ``(seed, batch index)``, which makes resuming exact.

Folder format (the full-scale path; what ``plvm synth ipadapter`` writes)::

    ROOT/train.json            # list of {"concept": ID, "query_img": "ID/x.png" | null,
                               #          "question": "... <sks> ...", "answer": "...", "kind": "..."}
    ROOT/<ID>/ref_img.<ext>    # the concept's reference image
    ROOT/<ID>/<query images>
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..synth.samples import iter_personal_samples
from .aligner_task import PersonalExample

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


class AvatarWorldPersonalSource:
    """§4.1's data mix from AvatarWorld's *train* identities.

    Args:
        world: an :class:`plvm.synth.avatarworld.AvatarWorld`.
        positive_ratio: p, the share of positive recognition samples (paper: 0.6).
        recog_to_attr: recognition : attribute-QA ratio (paper: 1:1 → 1.0).
        hard_negative_share: share of negatives drawn from identities at attribute distance
            ≤ ``hard_negative_distance`` from the concept.
        portrait_query_share: share of recognition queries that are one person's portrait, not a scene.
    """

    def __init__(
        self,
        world: Any,
        seed: int = 0,
        split: str = "train",
        positive_ratio: float = 0.6,
        recog_to_attr: float = 1.0,
        hard_negative_share: float = 0.5,
        hard_negative_distance: int = 2,
        portrait_query_share: float = 0.0,
    ):
        self.world = world
        self.seed = seed
        self.split = split
        self.kw = dict(
            positive_ratio=positive_ratio,
            recog_to_attr=recog_to_attr,
            hard_negative_share=hard_negative_share,
            hard_negative_distance=hard_negative_distance,
        )
        if portrait_query_share:  # absent from the description of runs that never used it
            self.kw["portrait_query_share"] = float(portrait_query_share)

    def examples(self, index: int, n: int) -> list[PersonalExample]:
        rng = np.random.default_rng([self.seed, index])
        stream = iter_personal_samples(self.world, rng, split=self.split, **self.kw)
        out = []
        for _ in range(n):
            s = next(stream)
            out.append(PersonalExample(s.reference, s.query, s.question, s.answer, s.kind))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "source": "avatarworld",
            "seed": self.seed,
            "world_seed": self.world.seed,
            "split": self.split,
            **self.kw,
        }


def find_reference(concept_dir: Path) -> Path:
    for path in sorted(concept_dir.iterdir()):
        if path.stem == "ref_img" and path.suffix.lower() in IMAGE_SUFFIXES:
            return path
    raise FileNotFoundError(f"{concept_dir} has no ref_img.(png|jpg|…)")


class FolderPersonalSource:
    """Personalized training data from a folder (see the module docstring for the layout)."""

    def __init__(self, root: str | Path, seed: int = 0):
        self.root = Path(root)
        index = self.root / "train.json"
        if not index.exists():
            raise FileNotFoundError(f"{index} not found: a training folder needs train.json (see plvm.training.data)")
        self.items: list[dict[str, Any]] = json.loads(index.read_text())
        if not self.items:
            raise ValueError(f"{index} is empty")
        for i, item in enumerate(self.items):
            missing = {"concept", "question", "answer"} - set(item)
            if missing:
                raise ValueError(f"{index}[{i}] lacks {sorted(missing)}")
        self.seed = seed

    @lru_cache(maxsize=4096)
    def _image(self, rel: str) -> Image.Image:
        path = (self.root / rel).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"image path {rel!r} leaves the data folder")
        with Image.open(path) as img:
            return img.convert("RGB")

    def examples(self, index: int, n: int) -> list[PersonalExample]:
        rng = np.random.default_rng([self.seed, index])
        out = []
        for i in rng.integers(0, len(self.items), n):
            item = self.items[int(i)]
            ref = find_reference(self.root / item["concept"]).relative_to(self.root)
            query = self._image(item["query_img"]) if item.get("query_img") else None
            out.append(
                PersonalExample(
                    self._image(str(ref)), query, item["question"], item["answer"], item.get("kind", "unknown")
                )
            )
        return out

    def describe(self) -> dict[str, Any]:
        return {"source": "folder", "root": str(self.root), "items": len(self.items), "seed": self.seed}
