"""The prompting baselines: no personalization, a text description, the reference image in the prompt."""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ...conversation import Conversation
from ...injection import PersonalizedLVLM
from ..prompts import IMAGE_PROMPT_TEMPLATE, IMAGE_SLOT, EvalConversation, neutralize
from ..readers import EvalDataset
from .base import Binding, Method


# ============================================================================ (1) no personalization
class NoPersonalization(Method):
    """The base LVLM with every ``<name>`` replaced by a neutral phrase ("Is the person in this photo?")."""

    key = "none"
    label = "Base LVLM (no personalization)"
    personalized = False

    def __init__(self, lvlm: PersonalizedLVLM, phrase: str = "the person"):
        super().__init__(lvlm)
        self.phrase = phrase

    def conversation(self, text: str, bindings: Sequence[Binding], images: Sequence[Image.Image] = ()) -> Conversation:
        conv = EvalConversation()
        conv.raw_user(neutralize(text, [b.name for b in bindings], self.phrase), list(images))
        return conv

    def concept_tokens(self, concept_id: str) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "phrase": self.phrase}


# ============================================================================ (2) text prompt
_LEAD_IN = re.compile(
    r"^(?:(?:the|this|a)\s+(?:person|subject|man|woman|individual)\s+in\s+(?:the|this)\s+(?:image|photo|picture)"
    r"\s+is\s+|(?:the|this)\s+(?:image|photo|picture)\s+(?:shows|depicts|features|is\s+of)\s+)",
    flags=re.IGNORECASE,
)


def _as_predicate(description: str) -> str:
    """``"A man with a beard."`` → ``"a man with a beard"`` (to follow ``"<bo> is "``).

    Angle brackets are dropped (a description must not contain a concept mention) and a lead-in such as
    "The person in this image is" / "The image shows" is removed.
    """
    text = " ".join(description.replace("<", "").replace(">", "").split()).rstrip(" .")
    text = _LEAD_IN.sub("", text)
    first, _, rest = text.partition(" ")
    if first in ("A", "An", "The", "This", "It"):
        text = first.lower() + (" " + rest if rest else "")
    return text


class TextPrompt(Method):
    """ "LLaVA + prompt": a short description of the concept, written by the base model from the reference.

    Args:
        lvlm: the LVLM (it writes the descriptions too).
        max_tokens: description length cap T (set it to PLVM's k for an equal token budget).
        describe_prompt: the instruction shown with the reference image.
    """

    key = "text"
    label = "Base + text prompt"

    def __init__(
        self,
        lvlm: PersonalizedLVLM,
        max_tokens: int = 16,
        describe_prompt: str = "Describe the person in this image in one short sentence.",
    ):
        super().__init__(lvlm)
        self.max_tokens = max_tokens
        self.describe_prompt = describe_prompt
        self.descriptions: dict[str, str] = {}
        self._names: dict[str, str] = {}

    def prepare_concept(self, dataset: EvalDataset, concept_id: str) -> None:
        record = dataset.concepts[concept_id]
        conv = Conversation()
        conv.user(self.describe_prompt, image=dataset.image(record.reference))
        text = self.lvlm.generate(conv, max_new_tokens=self.max_tokens).text
        self.descriptions[concept_id] = _as_predicate(text) or "unknown"
        self._names[concept_id] = record.name

    def intro(self, binding: Binding) -> str:
        return f"<{binding.name}> is {self.descriptions[binding.concept]}."

    def conversation(self, text: str, bindings: Sequence[Binding], images: Sequence[Image.Image] = ()) -> Conversation:
        conv = EvalConversation()
        intro = " ".join(self.intro(b) for b in bindings)
        slots = "".join(f"{IMAGE_SLOT}\n" for _ in images)  # as PLVM's prompt: the concepts, the photo, the question
        conv.raw_user(f"{intro}\n{slots}{text}" if intro else text, list(images))
        return conv

    def concept_tokens(self, concept_id: str) -> int:
        return self._tokens(f"<{self._names[concept_id]}>") + self._tokens(self.descriptions[concept_id])

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "max_tokens": self.max_tokens,
            "describe_prompt": self.describe_prompt,
            "descriptions": dict(self.descriptions),
        }


# ============================================================================ (3) image prompt
class ImagePrompt(Method):
    """The reference photo itself in context: ``"Here is <bo>: <image>."`` before the question."""

    key = "image"
    label = "Base + image prompt"

    def __init__(self, lvlm: PersonalizedLVLM, template: str = IMAGE_PROMPT_TEMPLATE):
        super().__init__(lvlm)
        self.template = template
        self._refs: dict[str, Image.Image] = {}
        self._image_tokens: dict[str, int] = {}
        self._names: dict[str, str] = {}

    def prepare_concept(self, dataset: EvalDataset, concept_id: str) -> None:
        record = dataset.concepts[concept_id]
        ref = dataset.image(record.reference)
        self._refs[concept_id] = ref
        self._image_tokens[concept_id] = self.lvlm.image_inputs([ref])[0][0]
        self._names[concept_id] = record.name

    def conversation(self, text: str, bindings: Sequence[Binding], images: Sequence[Image.Image] = ()) -> Conversation:
        intros = [self.template.format(name=b.name, image=IMAGE_SLOT) for b in bindings]
        query_slots = "".join(f"{IMAGE_SLOT}\n" for _ in images)
        conv = EvalConversation()
        refs = [self._refs[b.concept] for b in bindings]
        conv.raw_user("\n".join(intros + [query_slots + text]), refs + list(images))
        return conv

    def concept_tokens(self, concept_id: str) -> int:
        return self._tokens(f"<{self._names[concept_id]}>") + self._image_tokens[concept_id]

    def describe(self) -> dict[str, Any]:
        ref_tokens = list(self._image_tokens.values())
        return {
            **super().describe(),
            "template": self.template,
            "image_tokens_per_reference": float(np.mean(ref_tokens)) if ref_tokens else 0.0,
        }


__all__ = ["ImagePrompt", "NoPersonalization", "TextPrompt"]
