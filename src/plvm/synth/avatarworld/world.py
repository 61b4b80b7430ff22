"""`AvatarWorld`: identities with splits, reference portraits and scenes (it renders; the streams of training
samples built from it are :mod:`plvm.synth.samples`, the evaluation set :mod:`plvm.synth.evalset`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from .attributes import ATTRIBUTES, Identity, IdentitySampler, attribute_distance, nearest, stable_hash
from .scene import Scene, SceneOptions, render_people, render_portrait

#: Probability of 1, 2, 3, 4 people in a sampled scene.
PEOPLE_COUNT_PROBS: tuple[float, float, float, float] = (0.3, 0.3, 0.25, 0.15)


class AvatarWorld:
    """A deterministic procedural world of avatar identities (see ``docs/AVATARWORLD.md``).

    Args:
        seed: Seed of the identities (same seed -> same identities and splits).
        num_identities: Number of identities (ids ``id0000`` ...).
        test_fraction: Fraction held out as the ``"test"`` split (0.2 of 400 = 80: 46 evaluation
            concepts and 34 strangers for their photos, see :func:`plvm.synth.evalset.build_eval_set`).
        size: Default side in pixels of rendered images.
        relative_prob: Probability that an identity is a near copy of an earlier one (hard negatives).
        scene_options: Knobs of the scene sampler.
    """

    def __init__(
        self,
        seed: int = 0,
        num_identities: int = 400,
        test_fraction: float = 0.2,
        size: int = 224,
        relative_prob: float = 0.5,
        scene_options: SceneOptions | None = None,
    ) -> None:
        self.seed = int(seed)
        self.size = int(size)
        self.num_identities = int(num_identities)
        self.test_fraction = float(test_fraction)
        self.scene_options = scene_options or SceneOptions()
        self.identities: list[Identity] = IdentitySampler(
            num_identities=num_identities, test_fraction=test_fraction, relative_prob=relative_prob
        ).sample(self.seed)
        self._by_id = {i.id: i for i in self.identities}
        self._splits = {s: [i for i in self.identities if i.split == s] for s in ("train", "test")}

    # ------------------------------------------------------------------ identities
    def split(self, name: str) -> list[Identity]:
        """Identities of split ``"train"`` or ``"test"`` (disjoint, in id order)."""
        if name not in self._splits:
            raise ValueError(f"unknown split {name!r}; use 'train' or 'test'")
        return list(self._splits[name])

    def identity(self, identity_id: str) -> Identity:
        return self._by_id[identity_id]

    @staticmethod
    def attribute_distance(a: Identity, b: Identity) -> int:
        """Number of differing attributes between two identities."""
        return attribute_distance(a, b)

    def hard_negatives(
        self,
        identity: Identity,
        pool: Sequence[Identity],
        max_distance: int,
        n: int,
        rng: np.random.Generator,
        min_distance: int = 1,
    ) -> list[Identity]:
        """Up to ``n`` identities of ``pool`` whose distance to ``identity`` is within
        ``[min_distance, max_distance]`` (random order). May return fewer than ``n`` (or none)."""
        cands = [
            p for p in pool if p.id != identity.id and min_distance <= attribute_distance(identity, p) <= max_distance
        ]
        return [cands[int(i)] for i in rng.permutation(len(cands))[:n]]

    def nearest(self, identity: Identity, pool: Sequence[Identity], n: int) -> list[Identity]:
        """The ``n`` closest identities of ``pool`` (ties broken by id)."""
        return nearest(identity, pool, n)

    def look_alike(
        self, identity: Identity, pool: Sequence[Identity], max_distance: int, rng: np.random.Generator
    ) -> Identity | None:
        """One hard negative within ``max_distance``, else one of the 3 nearest identities."""
        hn = self.hard_negatives(identity, pool, max_distance, 1, rng)
        if hn:
            return hn[0]
        near = self.nearest(identity, pool, 3)
        return near[int(rng.integers(len(near)))] if near else None

    # ------------------------------------------------------------------ rendering
    def _rng(self, rng_or_seed: np.random.Generator | int | None, *salt: Any) -> np.random.Generator:
        if isinstance(rng_or_seed, np.random.Generator):
            return rng_or_seed
        if rng_or_seed is None:
            return np.random.default_rng([self.seed, 99, stable_hash(*salt)])
        return np.random.default_rng([int(rng_or_seed), stable_hash(*salt)])

    def render_reference(
        self, identity: Identity, size: int | None = None, rng_or_seed: np.random.Generator | int | None = None
    ) -> Image.Image:
        """Clean, centred, frontal head-and-shoulders portrait on a plain background.

        With ``rng_or_seed=None`` the portrait is the identity's canonical reference (fixed clothing,
        background colour and expression derived from the world seed and the id).
        """
        rng = self._rng(rng_or_seed, "reference", identity.id)
        return render_portrait(identity, size or self.size, rng, self.scene_options.supersample)

    def render_scene(
        self,
        people: Sequence[Identity],
        rng: np.random.Generator,
        size: int | None = None,
        background: str | None = None,
    ) -> Scene:
        """Render ``people`` (1–4 identities) in a random photo drawn from ``rng``."""
        return render_people(list(people), rng, size or self.size, self.scene_options, background)

    def sample_scene(
        self,
        rng: np.random.Generator,
        split: str = "train",
        include: Sequence[Identity] | None = None,
        n_people: int | None = None,
        exclude: Sequence[Identity | str] | None = None,
        pool: Sequence[Identity] | None = None,
        size: int | None = None,
    ) -> Scene:
        """A random photo: the identities in ``include`` plus random others of ``split`` (or ``pool``),
        never anyone in ``exclude``; ``n_people`` (1–4) is random if ``None``."""
        include = list(include or [])
        banned = {e if isinstance(e, str) else e.id for e in (exclude or [])} | {p.id for p in include}
        candidates = [p for p in (pool if pool is not None else self._splits[split]) if p.id not in banned]
        if n_people is None:
            n_people = int(rng.choice(4, p=PEOPLE_COUNT_PROBS)) + 1
        n_people = max(int(n_people), len(include), 1)
        n_people = min(n_people, 4, len(include) + len(candidates))
        if n_people < 1:
            raise ValueError("no identity available for the scene")
        k = n_people - len(include)
        others = [candidates[int(i)] for i in rng.choice(len(candidates), size=k, replace=False)] if k else []
        return self.render_scene(include + others, rng, size)

    # ------------------------------------------------------------------ sampling identities
    @staticmethod
    def sample_scene_identity(rng: np.random.Generator, pool: Sequence[Identity], exclude: Identity) -> Identity:
        """A random identity of ``pool`` other than ``exclude``."""
        cands = [p for p in pool if p.id != exclude.id]
        return cands[int(rng.integers(len(cands)))]

    # ------------------------------------------------------------------ metadata
    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description of the world: parameters, attribute space and identities."""
        return {
            "seed": self.seed,
            "num_identities": self.num_identities,
            "test_fraction": self.test_fraction,
            "size": self.size,
            "attributes": {k: list(v) for k, v in ATTRIBUTES.items()},
            "identities": [i.to_dict() for i in self.identities],
        }
