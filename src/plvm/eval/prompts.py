"""Prompt building and answer parsing shared by all tasks and methods.

* :class:`EvalConversation` — a :class:`~plvm.conversation.Conversation` that can also hold turns whose text
  names a concept only *as text* (``"<bo> is a man with …"``, the prompting baselines, where ``<bo>`` is
  ordinary tokens, not a concept slot) and turns with images *inside* the text (``"Here is <bo>: <image>."``).
* Question templates: multiple choice (:func:`mc_prompt`), multi-concept (:func:`join_names`), the
  no-personalization rewrite (:func:`neutralize`).
* Parsers for generated answers: :func:`parse_yes_no`, :func:`parse_letter`, :func:`extract_mentions`.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, Optional, Sequence

from PIL import Image

from ..conversation import Conversation, Turn

IMAGE_SLOT = "\ue002"
"""Marks, inside an :class:`EvalConversation` turn's text, where the turn's next image goes."""

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
"""LLaVA-1.5's multiple-choice instruction (what AvatarWorld's MC questions are trained with)."""

IMAGE_PROMPT_TEMPLATE = "Here is <{name}>: {image}."
"""The image-prompt baseline's introduction of a concept (and of LLaVA-mini's image-prompt training samples)."""
RECOGNITION_QUESTION = "Is <sks> in this photo?"
MULTI_QUESTION = "Can you see {names} in this photo? Answer the question using a single word Yes or No."
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]
_NAME = re.compile(r"<([A-Za-z0-9_-]{1,64})>")


class EvalConversation(Conversation):
    """A conversation with two extras the baselines need (it renders through the processor's template too).

    >>> conv = EvalConversation()
    >>> conv.raw_user(f"Here is <bo>: {IMAGE_SLOT}.\\n{IMAGE_SLOT}\\nIs <bo> in this photo?", [ref, query])

    ``raw_user`` does not check ``<name>`` references against active concepts: with no concept active, such
    a name is plain text. Images are placed at the ``IMAGE_SLOT`` markers in order; a turn with fewer
    markers than images gets the remaining images first, as :class:`Conversation` does.
    """

    def raw_user(self, text: str, images: Sequence[Image.Image] = ()) -> Turn:
        if self.concepts:
            raise ValueError("raw_user is for prompts without concept embeddings; use user() with concepts")
        text = text.strip()
        if not text:
            raise ValueError("empty question")
        if text.count(IMAGE_SLOT) > len(images):
            raise ValueError(f"{text.count(IMAGE_SLOT)} image slots but {len(images)} images")
        turn = Turn("user", text, list(images))
        self.turns.append(turn)
        return turn

    def to_messages(self) -> list[dict[str, Any]]:
        messages = super().to_messages()
        for message in messages:
            if message["role"] != "user":
                continue
            items = message["content"]
            text_items = [c for c in items if c["type"] == "text"]
            if len(text_items) != 1 or IMAGE_SLOT not in text_items[0]["text"]:
                continue
            n_images = sum(1 for c in items if c["type"] == "image")
            pieces = text_items[0]["text"].split(IMAGE_SLOT)
            content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images - (len(pieces) - 1))]
            for i, piece in enumerate(pieces):
                if i:
                    content.append({"type": "image"})
                if piece:
                    content.append({"type": "text", "text": piece})
            message["content"] = content
        return messages


# ============================================================================ templates
def load_paper_templates() -> dict[str, Any]:
    """The paper's templates (``plvm/data/paper_templates.json``), read from the installed package."""
    return json.loads(resources.files("plvm").joinpath("data/paper_templates.json").read_text(encoding="utf-8"))


def with_name(template: str, name: str) -> str:
    """``"Is <sks> in this photo?"`` → ``"Is <bo> in this photo?"``."""
    return template.replace("<sks>", f"<{name}>")


def join_names(names: Sequence[str]) -> str:
    """``["a"]`` → ``"<a>"``; ``["a", "b"]`` → ``"<a> and <b>"``; three → ``"<a>, <b> and <c>"``."""
    tokens = [f"<{n}>" for n in names]
    if len(tokens) <= 1:
        return "".join(tokens)
    return ", ".join(tokens[:-1]) + " and " + tokens[-1]


def mc_prompt(question: str, options: dict[str, str], instruction: str = MC_INSTRUCTION) -> str:
    """Question, one ``"A. text"`` line per option, then the instruction."""
    lines = [question.strip()] + [f"{letter}. {text}" for letter, text in options.items()]
    if instruction:
        lines.append(instruction)
    return "\n".join(lines)


def neutral_phrases(count: int, phrase: str = "the person") -> list[str]:
    """Neutral stand-ins for ``count`` concepts: ``["the person"]`` or ``["the first person", …]``."""
    if count <= 1:
        return [phrase] * count
    words = phrase.split(maxsplit=1)
    out = []
    for i in range(count):
        ordinal = ORDINALS[i] if i < len(ORDINALS) else f"#{i + 1}"
        if len(words) == 2 and words[0].lower() in ("the", "this", "that", "a", "an"):
            out.append(f"the {ordinal} {words[1]}")
        else:
            out.append(f"{phrase} #{i + 1}")
    return out


def neutralize(text: str, names: Sequence[str], phrase: str = "the person") -> str:
    """Replace each ``<name>`` by a neutral phrase (the no-personalization control).

    ``"Is <bo> in this photo?"`` → ``"Is the person in this photo?"``; ``"<bo>'s hair"`` → ``"the person's
    hair"``; a sentence that now starts with the phrase is capitalised.
    """
    out = text
    for name, neutral in zip(names, neutral_phrases(len(names), phrase)):

        def replace(m: re.Match[str], neutral: str = neutral) -> str:
            before = m.string[: m.start()]
            sentence_start = not before.strip() or re.search(r"[.?!:\n]\s*$", before) is not None
            return neutral[:1].upper() + neutral[1:] if sentence_start else neutral

        out = re.sub(re.escape(f"<{name}>"), replace, out)
    return out


# ============================================================================ parsers
def parse_yes_no(text: str) -> Optional[bool]:
    """``True`` / ``False`` from the first standalone "yes"/"no" in ``text``; ``None`` if there is none."""
    m = re.search(r"\b(yes|no)\b", text.lower())
    if m is None:
        return None
    return m.group(1) == "yes"


def parse_letter(text: str, options: dict[str, str]) -> Optional[str]:
    """The option letter a generated answer picks, or ``None``.

    Accepted: a leading letter (``"B"``, ``"(B)"``, ``"B. Brown"``, ``"B) …"``), ``"answer is B"`` /
    ``"option B"``, or the text of exactly one option. A bare article such as ``"A man …"`` is not read as
    option A.
    """
    stripped = text.strip()
    letters = {k.upper() for k in options}
    m = re.match(r"^\(?([A-Za-z])(?:\)|\.|:|,|$)", stripped)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    m = re.search(r"\b(?:answer|option|choice)(?:\s+is)?\s*[:\s]\s*\(?([A-Z])\b", stripped, flags=re.IGNORECASE)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    lowered = stripped.lower()
    hits = [k for k, v in options.items() if v and re.search(rf"\b{re.escape(v.lower())}\b", lowered)]
    if len(hits) == 1:
        return hits[0].upper()
    return None


def extract_mentions(text: str, names: Sequence[str]) -> list[str]:
    """Names among ``names`` written as ``<name>`` in ``text`` (case-insensitive), in order, without repeats."""
    by_lower = {n.lower(): n for n in names}
    found = [by_lower[m.lower()] for m in _NAME.findall(text) if m.lower() in by_lower]
    return list(dict.fromkeys(found))


__all__ = [
    "EvalConversation",
    "IMAGE_SLOT",
    "MC_INSTRUCTION",
    "MULTI_QUESTION",
    "RECOGNITION_QUESTION",
    "extract_mentions",
    "join_names",
    "load_paper_templates",
    "mc_prompt",
    "neutral_phrases",
    "neutralize",
    "parse_letter",
    "parse_yes_no",
    "with_name",
]
