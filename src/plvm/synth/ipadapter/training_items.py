"""QA construction for IP-Adapter data (PLVM §3.3) in the trainer's folder format.

* **Recognition** — every kept generated image of a concept becomes a positive pair with a random positive
  template of Tables 10–11 (``"Is <sks> in this photo?"`` → ``"Yes, <sks> is in this photo."``); negatives
  pair the concept with a kept image of *another* concept and a negative template, as many as make positives
  a share ``positive_ratio`` (paper: p = 0.6) of the recognition pairs.
* **Attributes** — the base LVLM looks at the *reference* image and answers each Table 12 question with
  ``<sks>`` replaced by "this person" (``"What is this person's hair color?"``); its answer is rewritten with
  ``<sks>`` for the referring phrase (``"The person's hair is brown."`` → ``"<sks>'s hair is brown."``) and
  stored as a text-only item (``query_img: null``).

Items are ``{"concept", "query_img", "question", "answer", "kind"}`` — what
:class:`plvm.training.data.FolderPersonalSource` reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from ..qa import SKS, load_templates

#: Appended to each attribute question for the LVLM, so that it answers with a sentence we can rewrite.
DEFAULT_ATTRIBUTE_INSTRUCTION = "Answer in one short sentence."

_REFERRING = re.compile(
    r"\b(?:this|the|that)\s+(?:person|man|woman|individual|lady|gentleman|guy|boy|girl|subject)\b('s)?",
    re.IGNORECASE,
)
_LEADING_PRONOUN = re.compile(
    r"^(?:he|she)\b(?=\s+(?:is|has|was|appears|looks|seems|does|doesn't|wears)\b)", re.IGNORECASE
)


def to_this_person(question: str) -> str:
    """A Table 12 question as asked about the reference image: ``<sks>`` → "this person"."""
    return question.replace(f"{SKS}'s", "this person's").replace(SKS, "this person")


def attribute_questions() -> list[tuple[str, str]]:
    """``(question with <sks>, question with "this person")`` for the paper's Table 12 questions."""
    return [(q, to_this_person(q)) for q in load_templates().text_only_questions]


def to_concept_answer(answer: str, name: str = SKS) -> str:
    """Rewrite an LVLM answer about "this person" to be about ``name``.

    "The person's hair is brown." → "<sks>'s hair is brown."; "She has blue eyes." → "<sks> has blue eyes.";
    answers without a referring phrase ("Brown.") are kept as they are. Whitespace is collapsed and a final
    full stop added when missing.
    """
    text = " ".join(str(answer).split())
    if not text:
        return text
    text = _REFERRING.sub(lambda m: name + (m.group(1) or ""), text)
    text = _LEADING_PRONOUN.sub(name, text)
    if text[0].islower():
        text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return text


# ================================================================================ LVLM answers
class AttributeAnswerer(Protocol):
    name: str

    def answer(self, image: Image.Image, question: str) -> str: ...


class CallableAnswerer:
    """An answerer from a function ``fn(image, question) -> str`` (tests, or any other captioner)."""

    def __init__(self, fn: Callable[[Image.Image, str], str], name: str = "callable"):
        self.fn = fn
        self.name = name

    def answer(self, image: Image.Image, question: str) -> str:
        return self.fn(image, question)


class LVLMAnswerer:
    """The base LVLM (no concepts) answers a question about the reference image — greedy decoding.

    Uses :class:`plvm.injection.PersonalizedLVLM` with an empty concept list, i.e. the plain base model
    with its own chat template.
    """

    def __init__(
        self, lvlm: Any, instruction: str = DEFAULT_ATTRIBUTE_INSTRUCTION, max_new_tokens: int = 48, name: str = "lvlm"
    ):
        self.lvlm = lvlm
        self.instruction = instruction
        self.max_new_tokens = max_new_tokens
        self.name = name

    @classmethod
    def load(
        cls,
        name_or_path: str,
        device: str = "auto",
        dtype: str = "auto",
        instruction: str = DEFAULT_ATTRIBUTE_INSTRUCTION,
        max_new_tokens: int = 48,
        **load_kw: Any,
    ) -> "LVLMAnswerer":
        """``"tiny"`` (random tiny LLaVA, tests), ``"mini"`` (LLaVA-mini) or a LLaVA / OneVision hub id / dir
        (``load_kw`` goes to :func:`plvm.models.base.load_base`, e.g. ``local_files_only=True``)."""
        from ...injection import PersonalizedLVLM
        from .generator import resolve_device, resolve_dtype

        if name_or_path == "tiny":
            from ...models.tiny import tiny_llava

            model, processor = tiny_llava()
        else:
            from ...models.base import MINI_NAMES, load_base

            dev = resolve_device(device)
            if name_or_path not in MINI_NAMES:
                load_kw.setdefault("dtype", resolve_dtype(dtype, dev))
            model, processor = load_base(name_or_path, **load_kw)
            if dev != "cpu":
                model = model.to(dev)
        return cls(
            PersonalizedLVLM(model, processor, base_model=name_or_path),
            instruction=instruction,
            max_new_tokens=max_new_tokens,
            name=name_or_path,
        )

    def answer(self, image: Image.Image, question: str) -> str:
        from ...conversation import Conversation

        conv = Conversation()
        text = f"{question} {self.instruction}".strip() if self.instruction else question
        conv.user(text, image=image.convert("RGB"))
        return self.lvlm.generate(conv, max_new_tokens=self.max_new_tokens).text

    def close(self) -> None:
        self.lvlm = None


def answer_attributes(answerer: AttributeAnswerer, reference: Image.Image, name: str = SKS) -> list[dict[str, Any]]:
    """Ask every Table 12 question about ``reference``; records with the raw and the rewritten answer."""
    out = []
    for q_sks, q_asked in attribute_questions():
        raw = answerer.answer(reference, q_asked)
        out.append(
            {
                "question": q_sks.replace(SKS, name),
                "asked": q_asked,
                "raw_answer": raw,
                "answer": to_concept_answer(raw, name),
            }
        )
    return out


# ================================================================================ items
@dataclass
class ConceptData:
    """What one reference produced: its kept images (paths relative to the output root) and attribute QA."""

    concept: str
    kept_images: list[str] = field(default_factory=list)
    attributes: list[dict[str, Any]] = field(default_factory=list)


def build_items(
    concepts: Sequence[ConceptData], seed: int = 0, positive_ratio: float = 0.6, name: str = SKS
) -> list[dict[str, Any]]:
    """All training items of a run: positives, negatives, attribute QA (deterministic in ``seed``)."""
    if not 0 < positive_ratio <= 1:
        raise ValueError("positive_ratio must be in (0, 1]")
    t = load_templates()
    rng = np.random.default_rng([seed, 0x9A])
    items: list[dict[str, Any]] = []
    for c in concepts:
        for rel in c.kept_images:
            q, a = t.recognition_positive[int(rng.integers(len(t.recognition_positive)))]
            items.append(
                {
                    "concept": c.concept,
                    "query_img": rel,
                    "question": q.replace(SKS, name),
                    "answer": a.replace(SKS, name),
                    "kind": "recog_pos",
                }
            )
    n_pos = len(items)
    with_images = [c for c in concepts if c.kept_images]
    n_neg = int(round(n_pos * (1 - positive_ratio) / positive_ratio))
    if n_neg and len(with_images) >= 2:
        for _ in range(n_neg):
            i, j = rng.choice(len(with_images), size=2, replace=False)
            concept, other = with_images[int(i)], with_images[int(j)]
            rel = other.kept_images[int(rng.integers(len(other.kept_images)))]
            q, a = t.recognition_negative[int(rng.integers(len(t.recognition_negative)))]
            items.append(
                {
                    "concept": concept.concept,
                    "query_img": rel,
                    "question": q.replace(SKS, name),
                    "answer": a.replace(SKS, name),
                    "kind": "recog_neg",
                    "query_concept": other.concept,
                }
            )
    for c in concepts:
        for rec in c.attributes:
            if rec.get("answer"):
                items.append(
                    {
                        "concept": c.concept,
                        "query_img": None,
                        "question": rec["question"],
                        "answer": rec["answer"],
                        "kind": "attribute",
                    }
                )
    return items


def count_kinds(items: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it.get("kind", "unknown")] = out.get(it.get("kind", "unknown"), 0) + 1
    return out
