"""A personalized dialogue: turns, images, and the concepts introduced in it.

PLVM's prompt (§3.1) introduces every active concept as ``<name> is <t1>…<tk>.`` before the instruction,
"prefixed to the conversation". A :class:`Conversation` keeps that order: the introductions open the user turn,
before its photo and its question — so in a causal LM the photo's tokens can attend to the concept's tokens, as
they attend to a reference image shown before them — and a concept added mid-dialogue is introduced at the start
of the next user turn, so earlier turns (and their KV cache) stay exactly as they were.

Messages are rendered as HF chat messages (``{"role", "content": [{"type": "image"}, {"type": "text"}]}``)
so the *processor's own* chat template lays them out. Concept slots are written into the text with two
markers that :mod:`plvm.injection` later turns into embeddings:

* ``<name>``            — the name token (embedding ``e_word``, logit row ``e_weight``);
* ``\\ue000name\\ue001`` — the k context tokens ``<t1>…<tk>`` of that concept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .concept import ConceptEmbedding, ConceptError, normalize_name

CONTEXT_OPEN = "\ue000"
CONTEXT_CLOSE = "\ue001"
NAME_IN_TEXT = re.compile(r"<([A-Za-z0-9_-]{1,64})>")


class UnknownConceptError(ConceptError):
    """A message names ``<x>`` but no concept ``x`` is active."""


def context_marker(name: str) -> str:
    """The in-text marker for the k context tokens of concept ``name``."""
    return f"{CONTEXT_OPEN}{name}{CONTEXT_CLOSE}"


def concept_intro(name: str) -> str:
    """``<name> is <t1>…<tk>.`` with the context tokens as a marker (§3.1)."""
    return f"<{name}> is {context_marker(name)}."


def referenced_names(text: str) -> list[str]:
    """Names written as ``<name>`` in ``text`` (``<image>`` excluded), in order of appearance."""
    return [m for m in NAME_IN_TEXT.findall(text) if m.lower() != "image"]


@dataclass
class Turn:
    role: str  # "user" | "assistant"
    text: str
    images: list[Image.Image] = field(default_factory=list)
    introduces: list[str] = field(default_factory=list)


class Conversation:
    """A multi-turn personalized dialogue.

    >>> conv = Conversation()
    >>> conv.add_concept(bo)                          # introduced at the next user turn
    >>> conv.user("Is <bo> in this photo?", image=img)
    >>> conv.assistant("Yes, <bo> is in this photo.")
    """

    def __init__(self, concepts: list[ConceptEmbedding] | None = None, system: str | None = None):
        self.system = system
        self.turns: list[Turn] = []
        self._concepts: dict[str, ConceptEmbedding] = {}
        self._pending: list[str] = []
        for concept in concepts or []:
            self.add_concept(concept)

    # ------------------------------------------------------------------ concepts
    @property
    def concepts(self) -> list[ConceptEmbedding]:
        """Active concepts in the order they were introduced (this order is their logit-row order)."""
        return list(self._concepts.values())

    def add_concept(self, concept: ConceptEmbedding, replace: bool = False) -> None:
        """Activate a concept; it is introduced at the start of the next user turn."""
        if concept.name in self._concepts and not replace:
            raise ConceptError(f"concept <{concept.name}> is already active in this conversation")
        first = concept.name not in self._concepts
        self._concepts[concept.name] = concept
        if first or concept.name not in self._pending:
            self._pending.append(concept.name)

    # ------------------------------------------------------------------ turns
    def user(self, text: str, image: Image.Image | list[Image.Image] | None = None) -> Turn:
        text = text.strip()
        if not text:
            raise ValueError("empty question")
        unknown = [n for n in referenced_names(text) if n not in self._concepts]
        if unknown:
            known = ", ".join(f"<{n}>" for n in self._concepts) or "none"
            raise UnknownConceptError(f"unknown concept <{unknown[0]}>; active concepts: {known}")
        images = [] if image is None else ([image] if isinstance(image, Image.Image) else list(image))
        turn = Turn("user", text, images, introduces=list(self._pending))
        self._pending = []
        self.turns.append(turn)
        return turn

    def assistant(self, text: str) -> Turn:
        turn = Turn("assistant", text)
        self.turns.append(turn)
        return turn

    @property
    def images(self) -> list[Image.Image]:
        return [img for t in self.turns for img in t.images]

    def to_messages(self) -> list[dict[str, Any]]:
        """HF chat messages with concept markers, ready for ``processor.apply_chat_template``."""
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system}]})
        for turn in self.turns:
            if turn.role == "user":
                intro = " ".join(concept_intro(n) for n in turn.introduces)
                images = [{"type": "image"} for _ in turn.images]
                if intro and images:  # the concepts first, then the photo they may be in, then the question
                    content = [{"type": "text", "text": intro + "\n"}, *images, {"type": "text", "text": turn.text}]
                else:
                    text = f"{intro} {turn.text}" if intro else turn.text
                    content = images + [{"type": "text", "text": text}]
            else:
                content = [{"type": "text", "text": turn.text}]
            messages.append({"role": turn.role, "content": content})
        return messages

    def copy(self) -> "Conversation":
        other = type(self)(system=self.system)  # a subclass (e.g. the harness's) keeps its rendering
        other.turns = [Turn(t.role, t.text, list(t.images), list(t.introduces)) for t in self.turns]
        other._concepts = dict(self._concepts)
        other._pending = list(self._pending)
        return other


def single_turn(
    question: str,
    concepts: list[ConceptEmbedding],
    image: Image.Image | list[Image.Image] | None = None,
    answer: str | None = None,
    system: str | None = None,
) -> Conversation:
    """The common case: all concepts introduced, one question (and optionally its answer)."""
    conv = Conversation(concepts, system=system)
    conv.user(question, image=image)
    if answer is not None:
        conv.assistant(answer)
    return conv


__all__ = [
    "CONTEXT_CLOSE",
    "CONTEXT_OPEN",
    "Conversation",
    "Turn",
    "UnknownConceptError",
    "concept_intro",
    "context_marker",
    "normalize_name",
    "referenced_names",
    "single_turn",
]
