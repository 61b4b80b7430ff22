"""`AvatarWorld`: identities with splits, reference portraits, scenes, and streams of training samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from .attributes import ATTRIBUTES, Identity, IdentitySampler, attribute_distance, nearest, stable_hash
from .scene import Scene, SceneOptions, render_people, render_portrait

#: Probability of 1, 2, 3, 4 people in a sampled scene.
PEOPLE_COUNT_PROBS: tuple[float, float, float, float] = (0.3, 0.3, 0.25, 0.15)


@dataclass
class GenericSample:
    """A non-personalised training sample for the base LVLM (stage 1).

    Attributes:
        images: One image (caption / VQA) or two images (same-person question: reference, then other).
        question: Prompt text (multiple-choice questions include their options).
        answer: Target text.
        kind: ``"caption"``, ``"vqa"`` or ``"same_person"``.
        graphs: Scene graph per image (``None`` for reference portraits).
        meta: Extra ground truth (identity ids, the QA record, ...).
    """

    images: list[Image.Image]
    question: str
    answer: str
    kind: str
    graphs: list[dict[str, Any] | None] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PersonalSample:
    """A personalised training sample for the Aligner (§4.1 data mix).

    Attributes:
        reference: Reference portrait of the concept ``<sks>``.
        query: Query photo, or ``None`` for text-only attribute questions.
        question, answer: Text with the ``<sks>`` placeholder.
        kind: ``"recog_pos"``, ``"recog_neg"`` or ``"attribute"``.
        identity_id: The concept's identity id.
        answer_word: ``"Yes"`` / ``"No"`` for recognition, ``None`` for attribute questions.
        graph: Scene graph of ``query`` (``None`` when there is no query).
        hard_negative: Id of the look-alike placed in a negative query, if any.
        query_identities: Ids of everyone in ``query`` (empty when there is no query).
    """

    reference: Image.Image
    query: Image.Image | None
    question: str
    answer: str
    kind: str
    identity_id: str
    answer_word: str | None
    graph: dict[str, Any] | None = None
    hard_negative: str | None = None
    query_identities: tuple[str, ...] = ()


class AvatarWorld:
    """A deterministic procedural world of avatar identities (see ``docs/AVATARWORLD.md``).

    Args:
        seed: Seed of the identities (same seed -> same identities and splits).
        num_identities: Number of identities (ids ``id0000`` ...).
        test_fraction: Fraction held out as the ``"test"`` split (0.2 of 400 = 80: 46 evaluation
            concepts and 34 strangers for their photos, see :func:`build_eval_set`).
        size: Default side in pixels of rendered images.
        relative_prob: Probability that an identity is a near copy of an earlier one (hard negatives).
        scene_options: Knobs of the scene sampler.
    """

    def __init__(self, seed: int = 0, num_identities: int = 400, test_fraction: float = 0.2, size: int = 224,
                 relative_prob: float = 0.5, scene_options: SceneOptions | None = None) -> None:
        self.seed = int(seed)
        self.size = int(size)
        self.num_identities = int(num_identities)
        self.test_fraction = float(test_fraction)
        self.scene_options = scene_options or SceneOptions()
        self.identities: list[Identity] = IdentitySampler(num_identities=num_identities, test_fraction=test_fraction,
                                                          relative_prob=relative_prob).sample(self.seed)
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

    def hard_negatives(self, identity: Identity, pool: Sequence[Identity], max_distance: int, n: int,
                       rng: np.random.Generator, min_distance: int = 1) -> list[Identity]:
        """Up to ``n`` identities of ``pool`` whose distance to ``identity`` is within
        ``[min_distance, max_distance]`` (random order). May return fewer than ``n`` (or none)."""
        cands = [p for p in pool if p.id != identity.id and min_distance <= attribute_distance(identity, p)
                 <= max_distance]
        return [cands[int(i)] for i in rng.permutation(len(cands))[:n]]

    def nearest(self, identity: Identity, pool: Sequence[Identity], n: int) -> list[Identity]:
        """The ``n`` closest identities of ``pool`` (ties broken by id)."""
        return nearest(identity, pool, n)

    def look_alike(self, identity: Identity, pool: Sequence[Identity], max_distance: int,
                   rng: np.random.Generator) -> Identity | None:
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

    def render_reference(self, identity: Identity, size: int | None = None,
                         rng_or_seed: np.random.Generator | int | None = None) -> Image.Image:
        """Clean, centred, frontal head-and-shoulders portrait on a plain background.

        With ``rng_or_seed=None`` the portrait is the identity's canonical reference (fixed clothing,
        background colour and expression derived from the world seed and the id).
        """
        rng = self._rng(rng_or_seed, "reference", identity.id)
        return render_portrait(identity, size or self.size, rng, self.scene_options.supersample)

    def render_scene(self, people: Sequence[Identity], rng: np.random.Generator, size: int | None = None,
                     background: str | None = None) -> Scene:
        """Render ``people`` (1–4 identities) in a random photo drawn from ``rng``."""
        return render_people(list(people), rng, size or self.size, self.scene_options, background)

    def sample_scene(self, rng: np.random.Generator, split: str = "train", include: Sequence[Identity] | None = None,
                     n_people: int | None = None, exclude: Sequence[Identity | str] | None = None,
                     pool: Sequence[Identity] | None = None, size: int | None = None) -> Scene:
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

    # ------------------------------------------------------------------ sample streams
    def iter_generic_samples(self, rng: np.random.Generator, split: str = "train",
                             weights: Sequence[float] = (0.4, 0.4, 0.2),
                             hard_negative_distance: int = 2,
                             same_portrait_share: float = 0.5, described_share: float = 0.0,
                             open_kinds: Mapping[str, float] | None = None,
                             described_properties: Sequence[str] | None = None) -> Iterator[GenericSample]:
        """Endless non-personalised samples: scene captions, generic VQA, and same-person questions.

        ``weights`` are the proportions of ``caption``, ``vqa``, ``same_person`` and (optional fourth weight)
        ``image_prompt`` samples. An image-prompt sample is the harness's image-prompt recognition question on
        training identities: a named reference portrait (``meta["name"]``, a random short name), then a scene
        (or, with ``same_portrait_share``, a portrait) and a paper recognition template about that name; half
        are positives, half of the negatives show a look-alike. A same-person
        question compares a reference portrait with another portrait (share ``same_portrait_share``) or
        with a scene; half of each kind are the same person. ``described_share`` of the visual questions ask
        whether a described person is in the photo (:func:`plvm.synth.qa.described_person_vqa`; 0 draws the
        stream of earlier versions). ``open_kinds`` weights the open question kinds
        (:func:`plvm.synth.qa.open_kind_weights`; ``None``: uniform, the stream of earlier versions);
        ``described_properties`` the properties a described-person negative may change (``None``: all of
        :data:`plvm.synth.qa.DESCRIBED_PROPERTIES`).
        """
        from .. import qa  # local import: qa depends on this package

        if not 0.0 <= same_portrait_share <= 1.0:
            raise ValueError(f"same_portrait_share must be in [0, 1], got {same_portrait_share}")

        if open_kinds is not None:
            open_kinds = qa.open_kind_weights(open_kinds)
        pool = self._splits[split]
        if len(weights) not in (3, 4):
            raise ValueError(f"weights: 3 or 4 proportions (caption, vqa, same_person[, image_prompt]), got {weights}")
        p = np.asarray(weights, dtype=float) / float(np.sum(weights))
        kinds = ("caption", "vqa", "same_person", "image_prompt")[:len(p)]
        while True:
            kind = kinds[int(rng.choice(len(p), p=p))]
            if kind == "image_prompt":
                yield self._image_prompt_sample(rng, split, pool, same_portrait_share, hard_negative_distance)
                continue
            if kind == "caption":
                scene = self.sample_scene(rng, split)
                yield GenericSample([scene.image], qa.caption_prompt(rng), qa.scene_caption(scene.graph), kind,
                                    [scene.graph], {"identities": scene.identity_ids})
            elif kind == "vqa":
                scene = self.sample_scene(rng, split)
                item = qa.generic_vqa(scene.graph, rng, described_share=described_share, open_kinds=open_kinds,
                                      described_properties=described_properties or qa.DESCRIBED_PROPERTIES)
                yield GenericSample([scene.image], item.prompt, item.answer, kind, [scene.graph],
                                    {"identities": scene.identity_ids, "qa": item.to_dict()})
            else:
                a = pool[int(rng.integers(len(pool)))]
                ref = self.render_reference(a, rng_or_seed=rng)
                r = rng.random()
                other_id = None
                if r < same_portrait_share:  # second image is another portrait
                    same = r < same_portrait_share / 2
                    b = a if same else (self.look_alike(a, pool, hard_negative_distance, rng)
                                        if rng.random() < 0.5 else None)
                    if b is None:
                        b = self.sample_scene_identity(rng, pool, exclude=a)
                    img, graph, other_id = self.render_reference(b, rng_or_seed=rng), None, b.id
                    n_people = 1
                else:
                    same = r < (1.0 + same_portrait_share) / 2
                    if same:
                        scene = self.sample_scene(rng, split, include=[a])
                    else:
                        look = self.look_alike(a, pool, hard_negative_distance, rng) if rng.random() < 0.5 else None
                        scene = self.sample_scene(rng, split, include=[look] if look else [], exclude=[a])
                    img, graph, n_people = scene.image, scene.graph, scene.graph["n_people"]
                question = ("Is the person in the first image the same person as in the second image?"
                            if n_people == 1 else "Is the person in the first image also in the second image?")
                yield GenericSample([ref, img], question, "Yes" if same else "No", kind, [None, graph],
                                    {"identity": a.id, "other": other_id, "same": same})

    def _image_prompt_sample(self, rng: np.random.Generator, split: str, pool: Sequence[Identity],
                             portrait_share: float, hard_negative_distance: int) -> GenericSample:
        """One image-prompt recognition sample (see :meth:`iter_generic_samples`); ``images`` = [reference, query]."""
        from .. import qa  # local import: qa depends on this package

        a = pool[int(rng.integers(len(pool)))]
        ref = self.render_reference(a, rng_or_seed=rng)
        positive = bool(rng.random() < 0.5)
        other = None if positive or rng.random() >= 0.5 else self.look_alike(a, pool, hard_negative_distance, rng)
        if rng.random() < portrait_share:
            b = a if positive else (other or self.sample_scene_identity(rng, pool, exclude=a))
            query, graph = self.render_reference(b, rng_or_seed=rng), None
        else:
            scene = (self.sample_scene(rng, split, include=[a]) if positive else
                     self.sample_scene(rng, split, include=[other] if other else [], exclude=[a]))
            query, graph = scene.image, scene.graph
        name = qa.random_concept_name(rng)
        item = qa.recognition_qa(rng, positive, name=f"<{name}>")
        return GenericSample([ref, query], item.question, item.answer, "image_prompt", [None, graph],
                             {"identity": a.id, "same": positive, "name": name,
                              **({"portrait_of": b.id} if graph is None else {})})

    @staticmethod
    def sample_scene_identity(rng: np.random.Generator, pool: Sequence[Identity], exclude: Identity) -> Identity:
        """A random identity of ``pool`` other than ``exclude``."""
        cands = [p for p in pool if p.id != exclude.id]
        return cands[int(rng.integers(len(cands)))]

    def iter_personal_samples(self, rng: np.random.Generator, split: str = "train", positive_ratio: float = 0.6,
                              recog_to_attr: float = 1.0, hard_negative_share: float = 0.5,
                              hard_negative_distance: int = 2, extra_questions: bool = True,
                              portrait_query_share: float = 0.0) -> Iterator[PersonalSample]:
        """Endless personalised samples (reference + query + question about ``<sks>``).

        Args:
            positive_ratio: Share of recognition samples whose query contains the concept.
            recog_to_attr: Ratio of recognition samples to text-only attribute samples.
            hard_negative_share: Share of negative queries that contain a look-alike of the concept
                (an identity within ``hard_negative_distance`` attributes; the nearest ones if none).
            extra_questions: Also ask the extra attribute questions, beyond the paper's seven.
            portrait_query_share: Share of recognition queries that are a portrait of one person (another
                photo of the concept, or of someone else) instead of a scene — the paper's face setting, where
                a query is mostly one person's photo. 0 draws the stream of earlier versions.
        """
        from .. import qa

        if not 0.0 <= portrait_query_share <= 1.0:
            raise ValueError(f"portrait_query_share must be in [0, 1], got {portrait_query_share}")

        pool = self._splits[split]
        if len(pool) < 2:
            raise ValueError(f"split {split!r} needs at least two identities")
        p_recog = recog_to_attr / (1.0 + recog_to_attr)
        while True:
            target = pool[int(rng.integers(len(pool)))]
            ref = self.render_reference(target, rng_or_seed=rng)
            if rng.random() < p_recog:
                positive = bool(rng.random() < positive_ratio)
                portrait = portrait_query_share > 0 and bool(rng.random() < portrait_query_share)
                hard = None
                include: list[Identity] = [target] if positive else []
                if not positive and rng.random() < hard_negative_share:
                    look = self.look_alike(target, pool, hard_negative_distance, rng)
                    if look is not None:
                        include, hard = [look], look.id
                if portrait:  # one person: the concept, the look-alike, or anyone else
                    person = include[0] if include else self.sample_scene_identity(rng, pool, exclude=target)
                    image, graph, people = self.render_reference(person, rng_or_seed=rng), None, (person.id,)
                else:
                    scene = (self.sample_scene(rng, split, include=include) if positive
                             else self.sample_scene(rng, split, include=include, exclude=[target]))
                    image, graph, people = scene.image, scene.graph, tuple(scene.identity_ids)
                item = qa.recognition_qa(rng, positive)
                yield PersonalSample(ref, image, item.question, item.answer, item.kind, target.id,
                                     "Yes" if positive else "No", graph, hard, people)
            else:
                item = qa.attribute_qa(target, rng, extra=extra_questions)
                yield PersonalSample(ref, None, item.question, item.answer, "attribute", target.id, None)

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
