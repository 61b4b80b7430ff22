"""A fixed evaluation set shaped like the paper's, plus a multi-concept set (MP-Bench / MC-LLaVA style).

Shape with the defaults (on ``AvatarWorld(seed=0)``, whose test split holds 80 identities):

* 46 *concepts* (test identities), each with 1 reference portrait and 5–10 query photos in which the
  concept appears (~350 queries). The other people in those photos are *strangers*: test identities
  that are not concepts, sometimes a look-alike of the concept (hard negative). So for a concept X,
  the queries of every other concept are true negatives — no concept ever appears in another
  concept's photo.
  With ``query_kind="portrait"`` each query is instead another portrait of the concept alone (other clothes,
  background, expression): the paper's face setting, where a query photo mostly shows one person. Portrait
  queries have no scene graph and get no visual questions.
* 70 text-only multiple-choice questions (the paper's seven ``text_only_questions``).
* one visual multiple-choice question per query (position, clothing colour/type, expression,
  people count, cycled), 3 options each.
* multi-concept images: 150 with 2 concepts and 150 with 3 concepts (plus at most one stranger),
  and 50 *external* images with strangers only (no known concept).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from PIL import Image

from . import qa
from .avatarworld.attributes import Identity
from .avatarworld.world import PEOPLE_COUNT_PROBS, AvatarWorld

#: What a concept's query photo shows: a scene (1–4 people) or a portrait of the concept alone.
QUERY_KINDS: tuple[str, ...] = ("scene", "portrait")

#: Visual question kinds used by the evaluation set (cycled so that each appears equally often).
EVAL_VISUAL_KINDS: tuple[str, ...] = ("position", "clothing_color", "clothing_type", "expression", "count")


@dataclass
class EvalQuery:
    """A query photo of a concept (the concept appears in it). ``index`` is N in ``query_img{N}.png``."""

    identity_id: str
    index: int
    image: Image.Image
    graph: dict[str, Any] | None  # None for a portrait query


@dataclass
class EvalQA:
    """A multiple-choice evaluation question about a concept.

    Attributes:
        identity_id: The concept (``<sks>``).
        question: Question text with ``<sks>``.
        options: ``{"A": ..., "B": ..., "C": ...}``.
        correct: Correct letter.
        answer: Free-form reference answer (text QA) or the correct option text (visual QA).
        kind: ``"text"`` (no query image) or ``"visual"``.
        query_index: Index of the query photo the question is about (visual QA only).
        meta: Ground truth details (attribute or visual property and its value).
    """

    identity_id: str
    question: str
    options: dict[str, str]
    correct: str
    answer: str
    kind: str
    query_index: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MultiImage:
    """An image of the multi-concept set; ``concepts`` lists the concepts in it (empty if external)."""

    name: str
    image: Image.Image
    graph: dict[str, Any]
    concepts: list[str]
    external: bool


@dataclass
class EvalSet:
    """The evaluation set (see module docstring)."""

    identities: list[Identity]
    strangers: list[Identity]
    references: dict[str, Image.Image]
    queries: list[EvalQuery]
    text_qa: list[EvalQA]
    visual_qa: list[EvalQA]
    multi: list[MultiImage]
    meta: dict[str, Any]

    def queries_of(self, identity_id: str) -> list[EvalQuery]:
        return [q for q in self.queries if q.identity_id == identity_id]


def build_eval_set(
    world: AvatarWorld,
    *,
    split: str = "test",
    seed: int = 0,
    n_identities: int = 46,
    queries_per_identity: tuple[int, int] = (5, 10),
    n_text_qa: int = 70,
    visual_qa_per_query: int = 1,
    n_multi2: int = 150,
    n_multi3: int = 150,
    n_external: int = 50,
    hard_negative_prob: float = 0.3,
    hard_negative_distance: int = 2,
    size: int | None = None,
    query_kind: str = "scene",
    progress: Callable[[int, int], None] | None = None,
) -> EvalSet:
    """Build the evaluation set deterministically from ``world`` and ``seed``.

    ``n_identities`` concepts are drawn from ``split``; the remaining identities of the split are
    the strangers (for ``split="test"`` with no identity left, the train identities serve as strangers;
    for ``split="train"`` that is an error, so that test identities never appear in training photos).
    ``query_kind`` (:data:`QUERY_KINDS`) chooses what the concepts' query photos show.
    ``progress(done, total)`` is called after every rendered image.
    """
    if query_kind not in QUERY_KINDS:
        raise ValueError(f"query_kind must be one of {QUERY_KINDS}, got {query_kind!r}")
    rng = np.random.default_rng([world.seed, int(seed), 4242])
    ids = world.split(split)
    if not ids:
        raise ValueError(f"split {split!r} is empty")
    order = [ids[int(i)] for i in rng.permutation(len(ids))]
    n = min(int(n_identities), len(order))
    concepts = sorted(order[:n], key=lambda i: i.id)
    strangers = sorted(order[n:], key=lambda i: i.id)
    if not strangers:
        if split != "test":  # never put held-out identities into training photos
            raise ValueError(f"all of split {split!r} are concepts; lower n_identities to leave strangers")
        strangers = world.split("train")
    lo, hi = queries_per_identity
    n_queries = {c.id: int(rng.integers(lo, hi + 1)) for c in concepts}
    total = n + sum(n_queries.values()) + n_multi2 + n_multi3 + n_external
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    references: dict[str, Image.Image] = {}
    for c in concepts:
        references[c.id] = world.render_reference(c, size=size)
        tick()

    queries: list[EvalQuery] = []
    for c in concepts:
        for k in range(n_queries[c.id]):
            if query_kind == "portrait":
                queries.append(EvalQuery(c.id, k, world.render_reference(c, size=size, rng_or_seed=rng), None))
                tick()
                continue
            include = [c]
            if rng.random() < hard_negative_prob:
                look = world.hard_negatives(c, strangers, hard_negative_distance, 1, rng)
                include += look
            n_people = max(len(include), int(rng.choice(4, p=PEOPLE_COUNT_PROBS)) + 1)
            scene = world.sample_scene(rng, include=include, n_people=n_people, pool=strangers, size=size)
            queries.append(EvalQuery(c.id, k, scene.image, scene.graph))
            tick()

    # text-only QA: the paper's seven questions, spread over the concepts
    paper_qs = list(qa.load_templates().text_only_questions)
    text_qa: list[EvalQA] = []
    per = [n_text_qa // n + (1 if i < n_text_qa % n else 0) for i in range(n)] if n else []
    for c, m in zip([concepts[int(i)] for i in rng.permutation(n)], per):
        for qi in (
            rng.permutation(len(paper_qs))[:m] if m <= len(paper_qs) else np.resize(rng.permutation(len(paper_qs)), m)
        ):
            item = qa.attribute_mc_qa(c, rng, question=paper_qs[int(qi)], n_options=3)
            text_qa.append(
                EvalQA(
                    c.id,
                    item.question,
                    dict(item.options or {}),
                    str(item.correct),
                    str(item.meta["free_answer"]),
                    "text",
                    None,
                    {"attribute": item.meta["attribute"], "value": item.meta["value"], "answer_text": item.answer_text},
                )
            )
    text_qa.sort(key=lambda e: e.identity_id)

    visual_qa: list[EvalQA] = []
    start = int(rng.integers(len(EVAL_VISUAL_KINDS)))
    for j, q in enumerate(queries):
        for r in range(int(visual_qa_per_query) if q.graph is not None else 0):
            kind = EVAL_VISUAL_KINDS[(start + j * visual_qa_per_query + r) % len(EVAL_VISUAL_KINDS)]
            item = qa.visual_mc_qa(q.graph, rng, target=q.identity_id, kind=kind, n_options=3)
            visual_qa.append(
                EvalQA(
                    q.identity_id,
                    item.question,
                    dict(item.options or {}),
                    str(item.correct),
                    str(item.answer_text),
                    "visual",
                    q.index,
                    {"visual": item.meta["visual"], "value": item.meta["value"]},
                )
            )

    multi: list[MultiImage] = []
    for n_c, count in ((2, n_multi2), (3, n_multi3)):
        if count and n < n_c:
            raise ValueError(f"{n_c}-concept images need at least {n_c} concepts")
        for _ in range(count):
            chosen = [concepts[int(i)] for i in rng.choice(n, size=n_c, replace=False)]
            n_people = min(4, n_c + int(rng.random() < 0.5))
            scene = world.sample_scene(rng, include=chosen, n_people=n_people, pool=strangers, size=size)
            multi.append(
                MultiImage(
                    f"multi{n_c}_{len(multi):05d}", scene.image, scene.graph, sorted(c.id for c in chosen), False
                )
            )
            tick()
    for e in range(n_external):
        scene = world.sample_scene(rng, n_people=int(rng.integers(1, 4)), pool=strangers, size=size)
        multi.append(MultiImage(f"external_{e:05d}", scene.image, scene.graph, [], True))
        tick()

    meta = {
        "world_seed": world.seed,
        "eval_seed": int(seed),
        "split": split,
        "size": int(size or world.size),
        "n_identities": n,
        "n_strangers": len(strangers),
        "n_queries": len(queries),
        "n_text_qa": len(text_qa),
        "n_visual_qa": len(visual_qa),
        "n_multi2": n_multi2,
        "n_multi3": n_multi3,
        "n_external": n_external,
        "hard_negative_prob": hard_negative_prob,
        "hard_negative_distance": hard_negative_distance,
        **({"query_kind": query_kind} if query_kind != "scene" else {}),
    }
    return EvalSet(concepts, strangers, references, queries, text_qa, visual_qa, multi, meta)
