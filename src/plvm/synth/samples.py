"""AvatarWorld's streams of training samples: endless, deterministic in the generator passed in.

* :func:`iter_generic_samples` — non-personalised samples for a base LVLM's stage 1 (:class:`GenericSample`:
  scene captions, generic visual QA, same-person and image-prompt recognition questions);
* :func:`iter_personal_samples` — personalised samples for the Aligner, §4.1's data mix (:class:`PersonalSample`).

They draw identities, portraits and scenes from an :class:`~plvm.synth.avatarworld.AvatarWorld` (which only
renders) and questions from :mod:`plvm.synth.qa`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from . import qa
from .avatarworld.attributes import Identity
from .avatarworld.world import AvatarWorld


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
        graph: Scene graph of ``query`` (``None`` when there is no query or it is a one-person portrait).
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


def iter_generic_samples(
    world: AvatarWorld,
    rng: np.random.Generator,
    split: str = "train",
    weights: Sequence[float] = (0.4, 0.4, 0.2),
    hard_negative_distance: int = 2,
    same_portrait_share: float = 0.5,
    described_share: float = 0.0,
    open_kinds: Mapping[str, float] | None = None,
    described_properties: Sequence[str] | None = None,
    image_prompt_pairs: bool = False,
) -> Iterator[GenericSample]:
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
    :data:`plvm.synth.qa.DESCRIBED_PROPERTIES`). With ``image_prompt_pairs`` each image-prompt draw yields
    two samples in a row, twins that differ only in the query (:func:`image_prompt_pair`).
    """
    if not 0.0 <= same_portrait_share <= 1.0:
        raise ValueError(f"same_portrait_share must be in [0, 1], got {same_portrait_share}")

    if open_kinds is not None:
        open_kinds = qa.open_kind_weights(open_kinds)
    pool = world.split(split)
    if len(weights) not in (3, 4):
        raise ValueError(f"weights: 3 or 4 proportions (caption, vqa, same_person[, image_prompt]), got {weights}")
    p = np.asarray(weights, dtype=float) / float(np.sum(weights))
    kinds = ("caption", "vqa", "same_person", "image_prompt")[: len(p)]
    while True:
        kind = kinds[int(rng.choice(len(p), p=p))]
        if kind == "image_prompt":
            if image_prompt_pairs:
                yield from image_prompt_pair(world, rng, split, pool, same_portrait_share, hard_negative_distance)
            else:
                yield image_prompt_sample(world, rng, split, pool, same_portrait_share, hard_negative_distance)
            continue
        if kind == "caption":
            scene = world.sample_scene(rng, split)
            yield GenericSample(
                [scene.image],
                qa.caption_prompt(rng),
                qa.scene_caption(scene.graph),
                kind,
                [scene.graph],
                {"identities": scene.identity_ids},
            )
        elif kind == "vqa":
            scene = world.sample_scene(rng, split)
            item = qa.generic_vqa(
                scene.graph,
                rng,
                described_share=described_share,
                open_kinds=open_kinds,
                described_properties=described_properties or qa.DESCRIBED_PROPERTIES,
            )
            yield GenericSample(
                [scene.image],
                item.prompt,
                item.answer,
                kind,
                [scene.graph],
                {"identities": scene.identity_ids, "qa": item.to_dict()},
            )
        else:
            a = pool[int(rng.integers(len(pool)))]
            ref = world.render_reference(a, rng_or_seed=rng)
            r = rng.random()
            other_id = None
            if r < same_portrait_share:  # second image is another portrait
                same = r < same_portrait_share / 2
                b = (
                    a
                    if same
                    else (world.look_alike(a, pool, hard_negative_distance, rng) if rng.random() < 0.5 else None)
                )
                if b is None:
                    b = world.sample_scene_identity(rng, pool, exclude=a)
                img, graph, other_id = world.render_reference(b, rng_or_seed=rng), None, b.id
                n_people = 1
            else:
                same = r < (1.0 + same_portrait_share) / 2
                if same:
                    scene = world.sample_scene(rng, split, include=[a])
                else:
                    look = world.look_alike(a, pool, hard_negative_distance, rng) if rng.random() < 0.5 else None
                    scene = world.sample_scene(rng, split, include=[look] if look else [], exclude=[a])
                img, graph, n_people = scene.image, scene.graph, scene.graph["n_people"]
            question = (
                "Is the person in the first image the same person as in the second image?"
                if n_people == 1
                else "Is the person in the first image also in the second image?"
            )
            yield GenericSample(
                [ref, img],
                question,
                "Yes" if same else "No",
                kind,
                [None, graph],
                {"identity": a.id, "other": other_id, "same": same},
            )


def image_prompt_sample(
    world: AvatarWorld,
    rng: np.random.Generator,
    split: str,
    pool: Sequence[Identity],
    portrait_share: float,
    hard_negative_distance: int,
) -> GenericSample:
    """One image-prompt recognition sample (see :func:`iter_generic_samples`); ``images`` = [reference, query]."""
    a = pool[int(rng.integers(len(pool)))]
    ref = world.render_reference(a, rng_or_seed=rng)
    positive = bool(rng.random() < 0.5)
    other = None if positive or rng.random() >= 0.5 else world.look_alike(a, pool, hard_negative_distance, rng)
    if rng.random() < portrait_share:
        b = a if positive else (other or world.sample_scene_identity(rng, pool, exclude=a))
        query, graph = world.render_reference(b, rng_or_seed=rng), None
    else:
        scene = (
            world.sample_scene(rng, split, include=[a])
            if positive
            else world.sample_scene(rng, split, include=[other] if other else [], exclude=[a])
        )
        query, graph = scene.image, scene.graph
    name = qa.random_concept_name(rng)
    item = qa.recognition_qa(rng, positive, name=f"<{name}>")
    return GenericSample(
        [ref, query],
        item.question,
        item.answer,
        "image_prompt",
        [None, graph],
        {"identity": a.id, "same": positive, "name": name, **({"portrait_of": b.id} if graph is None else {})},
    )


def image_prompt_pair(
    world: AvatarWorld,
    rng: np.random.Generator,
    split: str,
    pool: Sequence[Identity],
    portrait_share: float,
    hard_negative_distance: int,
) -> tuple[GenericSample, GenericSample]:
    """Twin image-prompt samples: the same reference portrait, made-up name and question
    (:func:`plvm.synth.qa.recognition_pair_qa`), with a query of the named person ("Yes") and a query
    without them ("No"; half the time a look-alike is in it). Both queries are portraits (share
    ``portrait_share`` of pairs) or both scenes, so only who is in the query tells the answers apart.
    """
    a = pool[int(rng.integers(len(pool)))]
    ref = world.render_reference(a, rng_or_seed=rng)
    other = world.look_alike(a, pool, hard_negative_distance, rng) if rng.random() < 0.5 else None
    name = qa.random_concept_name(rng)
    pos_qa, neg_qa = qa.recognition_pair_qa(rng, name=f"<{name}>")
    if rng.random() < portrait_share:
        b = other or world.sample_scene_identity(rng, pool, exclude=a)
        queries = [
            (world.render_reference(a, rng_or_seed=rng), None, {"portrait_of": a.id}),
            (world.render_reference(b, rng_or_seed=rng), None, {"portrait_of": b.id}),
        ]
    else:
        pos = world.sample_scene(rng, split, include=[a])
        neg = world.sample_scene(rng, split, include=[other] if other else [], exclude=[a])
        queries = [(pos.image, pos.graph, {}), (neg.image, neg.graph, {})]
    return tuple(
        GenericSample(
            [ref, query],
            item.question,
            item.answer,
            "image_prompt",
            [None, graph],
            {"identity": a.id, "same": same, "name": name, "pair": True, **extra},
        )
        for (query, graph, extra), item, same in zip(queries, (pos_qa, neg_qa), (True, False))
    )


def iter_personal_samples(
    world: AvatarWorld,
    rng: np.random.Generator,
    split: str = "train",
    positive_ratio: float = 0.6,
    recog_to_attr: float = 1.0,
    hard_negative_share: float = 0.5,
    hard_negative_distance: int = 2,
    extra_questions: bool = True,
    portrait_query_share: float = 0.0,
) -> Iterator[PersonalSample]:
    """Endless personalised samples (reference + query + question about ``<sks>``).

    Args:
        positive_ratio: Share of recognition samples whose query contains the concept.
        recog_to_attr: Ratio of recognition samples to text-only attribute samples.
        hard_negative_share: Share of negative queries that contain a look-alike of the concept
            (an identity within ``hard_negative_distance`` attributes; the nearest ones if none).
        extra_questions: Also ask the extra attribute questions, beyond the paper's seven.
        portrait_query_share: Share of recognition queries that are a portrait of one person (another photo of
            the concept, a look-alike or anyone else) instead of a scene. 0 draws the stream of earlier versions.
    """
    if not 0.0 <= portrait_query_share <= 1.0:
        raise ValueError(f"portrait_query_share must be in [0, 1], got {portrait_query_share}")
    pool = world.split(split)
    if len(pool) < 2:
        raise ValueError(f"split {split!r} needs at least two identities")
    p_recog = recog_to_attr / (1.0 + recog_to_attr)
    while True:
        target = pool[int(rng.integers(len(pool)))]
        ref = world.render_reference(target, rng_or_seed=rng)
        if rng.random() < p_recog:
            positive = bool(rng.random() < positive_ratio)
            portrait = portrait_query_share > 0 and bool(rng.random() < portrait_query_share)
            hard = None
            include: list[Identity] = [target] if positive else []
            if not positive and rng.random() < hard_negative_share:
                look = world.look_alike(target, pool, hard_negative_distance, rng)
                if look is not None:
                    include, hard = [look], look.id
            if portrait:  # one person: the concept, the look-alike, or anyone else
                person = include[0] if include else world.sample_scene_identity(rng, pool, exclude=target)
                image, graph, people = world.render_reference(person, rng_or_seed=rng), None, (person.id,)
            else:
                scene = (
                    world.sample_scene(rng, split, include=include)
                    if positive
                    else world.sample_scene(rng, split, include=include, exclude=[target])
                )
                image, graph, people = scene.image, scene.graph, tuple(scene.identity_ids)
            item = qa.recognition_qa(rng, positive)
            yield PersonalSample(
                ref,
                image,
                item.question,
                item.answer,
                item.kind,
                target.id,
                "Yes" if positive else "No",
                graph,
                hard,
                people,
            )
        else:
            item = qa.attribute_qa(target, rng, extra=extra_questions)
            yield PersonalSample(ref, None, item.question, item.answer, "attribute", target.id, None)


__all__ = ["GenericSample", "PersonalSample", "image_prompt_sample", "iter_generic_samples", "iter_personal_samples"]
