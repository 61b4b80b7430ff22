"""Stage 1 of LLaVA-mini: train the vision→language projector on generic, non-personalized data.

The LLaVA recipe's first stage: the vision tower and the language model stay frozen and only the
2-layer MLP projector learns to map DINOv2 patch features into SmolLM2's embedding space, from captions,
generic visual QA and two-image "same person?" questions (AvatarWorld's generic data). The loss is the
masked LM loss over the answer (Eq. 2 with w = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image
from torch import nn

from ..conversation import Conversation
from ..injection import ConceptTensors, PersonalizedLVLM
from .loss import shift_targets, weighted_answer_loss


@dataclass
class GenericExample:
    images: list[Image.Image]
    question: str
    answer: str
    kind: str = "generic"


class GenericDataSource(Protocol):
    def examples(self, index: int, n: int) -> list[GenericExample]: ...

    def describe(self) -> dict[str, Any]: ...


def generic_conversation(example: GenericExample, with_answer: bool = True) -> Conversation:
    conv = Conversation()
    conv.user(example.question, image=example.images or None)
    if with_answer:
        conv.assistant(example.answer)
    return conv


class ProjectorTrainingTask:
    """:class:`~plvm.training.loop.TrainingTask` that trains ``multi_modal_projector`` only."""

    def __init__(self, lvlm: PersonalizedLVLM, data: GenericDataSource, batch_size: int = 2):
        self.lvlm = lvlm
        self.data = data
        self.batch_size = batch_size
        self.projector: nn.Module = lvlm.model.model.multi_modal_projector

    def trainable_module(self) -> nn.Module:
        self.projector.requires_grad_(True)
        return self.projector

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"multi_modal_projector.{k}": v for k, v in self.projector.state_dict().items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        prefix = "multi_modal_projector."
        self.projector.load_state_dict({k[len(prefix):]: v for k, v in state.items()}, strict=True)

    def describe(self) -> dict[str, Any]:
        return {"kind": "projector", "base_model": self.lvlm.base_model_id, "data": self.data.describe(),
                "batch_size": self.batch_size}

    def batch(self, step: int) -> list[GenericExample]:
        return self.data.examples(step, self.batch_size)

    def loss(self, examples: list[GenericExample]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.lvlm.collate([self.lvlm.encode(generic_conversation(ex)) for ex in examples])
        none = ConceptTensors.stack([[] for _ in examples], self.lvlm.hidden_size)
        hidden, _ = self.lvlm.hidden_states(batch, none)
        h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        logits = self.lvlm.logits_for_rows(h, rows, none)
        loss = weighted_answer_loss(logits, targets, is_word, word_weight=1.0)
        return loss, {}
