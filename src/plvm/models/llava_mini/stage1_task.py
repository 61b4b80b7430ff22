"""Stage 1 of LLaVA-mini: train the vision→language projector on generic, non-personalized data.

The LLaVA recipe's first stage: the vision tower and the language model stay frozen and only the
2-layer MLP projector learns to map DINOv2 patch features into SmolLM2's embedding space, from captions,
generic visual QA and two-image "same person?" questions (AvatarWorld's generic data). The loss is the
masked LM loss over the answers; a dialogue may ask several questions about one image, and every answer
is a target. By default every answer token weighs the same (Eq. 2 with w = 1); ``word_weight`` gives a
Yes/No answer word the weight w of Eq. 2, so that a one-token "same person?" answer is not drowned by
the ~30 answer tokens of an 8-turn visual-QA dialogue in the same batch.

Optionally (``lora=MiniLoraConfig(...)``) low-rank adapters on the LM train together with the projector
(:mod:`plvm.models.mini_lora`); they are merged into the LM when LLaVA-mini is built, so the base the
Aligner later sees is still a plain, frozen ``LlavaForConditionalGeneration``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image
from torch import nn

from plvm.conversation import Conversation
from plvm.eval.prompts import IMAGE_PROMPT_TEMPLATE, IMAGE_SLOT, EvalConversation
from plvm.injection import ConceptTensors, PersonalizedLVLM
from plvm.models.llava_mini.assembly import PROJECTOR_PREFIX
from plvm.models.llava_mini.lora import LORA_KEY, MiniLoraConfig, add_lora, load_lora_state_dict, lora_state_dict
from plvm.training.loss import shift_targets, weighted_answer_loss


@dataclass
class GenericExample:
    """One generic dialogue: ``images`` with ``question`` → ``answer``, then optional follow-up turns.

    ``follow_up`` holds further ``(question, answer)`` pairs about the same images (LLaVA's multi-turn
    instruction format: the image tokens are paid once and every answer is a training target).
    """

    images: list[Image.Image]
    question: str
    answer: str
    kind: str = "generic"
    follow_up: list[tuple[str, str]] = field(default_factory=list)
    name: str | None = None
    """``kind == "image_prompt"``: the concept name the first image introduces (the harness's image prompt)."""


class GenericDataSource(Protocol):
    def examples(self, index: int, n: int) -> list[GenericExample]: ...

    def describe(self) -> dict[str, Any]: ...


def generic_conversation(example: GenericExample, with_answer: bool = True) -> Conversation:
    """The dialogue of ``example``; without answers only its first question (what evaluation asks).

    An ``image_prompt`` example is laid out exactly as the harness's image-prompt baseline asks:
    ``"Here is <name>: <image>.\n<image>\n<question>"``."""
    if example.kind == "image_prompt":
        if not example.name or len(example.images) != 2:
            raise ValueError("an image_prompt example needs a name and two images (reference, query)")
        conv = EvalConversation()
        intro = IMAGE_PROMPT_TEMPLATE.format(name=example.name, image=IMAGE_SLOT)
        conv.raw_user(f"{intro}\n{IMAGE_SLOT}\n{example.question}", example.images)
    else:
        conv = Conversation()
        conv.user(example.question, image=example.images or None)
    if with_answer:
        conv.assistant(example.answer)
        for question, answer in example.follow_up:
            conv.user(question)
            conv.assistant(answer)
    return conv


PROJECTOR_KEY = PROJECTOR_PREFIX  # checkpoint keys of the projector's tensors


class ProjectorTrainingTask:
    """:class:`~plvm.training.loop.TrainingTask` that trains ``multi_modal_projector`` (+ optional LM LoRA).

    Checkpoint tensors: ``multi_modal_projector.*`` and, with LoRA, ``lm_lora.*`` (peft adapter keys).
    """

    def __init__(
        self,
        lvlm: PersonalizedLVLM,
        data: GenericDataSource,
        batch_size: int = 2,
        lora: MiniLoraConfig | None = None,
        train_projector: bool = True,
        word_weight: float = 1.0,
    ):
        if not train_projector and lora is None:
            raise ValueError("nothing to train: the projector is frozen and there is no LoRA")
        if not word_weight > 0:
            raise ValueError(f"word_weight must be positive, got {word_weight}")
        self.word_weight = float(word_weight)
        self.train_projector = train_projector
        self.lvlm = lvlm
        self.data = data
        self.batch_size = batch_size
        self.lora = lora
        self.projector: nn.Module = lvlm.model.model.multi_modal_projector
        lvlm.model.requires_grad_(False)
        self.tuner = add_lora(lvlm.model, lora) if lora is not None else None

    def trainable_module(self) -> nn.Module:
        if self.tuner is None:
            self.projector.requires_grad_(True)
            return self.projector
        for name, p in self.tuner.named_parameters():
            p.requires_grad_("lora_" in name)
        self.projector.requires_grad_(self.train_projector)  # after the loop: the tuner wraps the projector too
        if not self.train_projector:
            return self.tuner
        return nn.ModuleDict({"projector": self.projector, "lm": self.tuner})

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {PROJECTOR_KEY + k: v for k, v in self.projector.state_dict().items()}
        if self.tuner is not None:
            state.update({LORA_KEY + k: v for k, v in lora_state_dict(self.tuner).items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        proj = {k[len(PROJECTOR_KEY) :]: v for k, v in state.items() if k.startswith(PROJECTOR_KEY)}
        lora = {k[len(LORA_KEY) :]: v for k, v in state.items() if k.startswith(LORA_KEY)}
        if bool(lora) != (self.tuner is not None) or len(proj) + len(lora) != len(state):
            raise ValueError("checkpoint and task disagree on what trains (projector only vs projector + LoRA)")
        self.projector.load_state_dict(proj, strict=True)
        if self.tuner is not None:
            load_lora_state_dict(self.tuner, lora)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "projector",
            "base_model": self.lvlm.base_model_id,
            "data": self.data.describe(),
            "batch_size": self.batch_size,
            "train_projector": self.train_projector,
            "lora": None if self.lora is None else self.lora.metadata(),
            **({"word_weight": self.word_weight} if self.word_weight != 1.0 else {}),
            **self._feature_layer(),
        }

    def _feature_layer(self) -> dict[str, str]:
        """The tower layer(s) the projector reads, when not LLaVA-mini's default (so old records stay as they were)."""
        from plvm.models.llava_mini.assembly import VISION_FEATURE_LAYER, feature_layer_str

        layer = getattr(self.lvlm.model.config, "vision_feature_layer", VISION_FEATURE_LAYER)
        return {} if layer == VISION_FEATURE_LAYER else {"vision_feature_layer": feature_layer_str(layer)}

    def batch(self, step: int) -> list[GenericExample]:
        return self.data.examples(step, self.batch_size)

    def loss(self, examples: list[GenericExample]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.lvlm.collate([self.lvlm.encode(generic_conversation(ex), label_all_turns=True) for ex in examples])
        none = ConceptTensors.stack([[] for _ in examples], self.lvlm.hidden_size)
        hidden, _ = self.lvlm.hidden_states(batch, none)
        h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        logits = self.lvlm.logits_for_rows(h, rows, none)
        loss = weighted_answer_loss(logits, targets, is_word, word_weight=self.word_weight)
        if not is_word.any():
            return loss, {}
        with torch.no_grad():  # the Yes/No words' own CE (mostly "same person?"), logged when the batch has one
            word_ce = torch.nn.functional.cross_entropy(logits[is_word].float(), targets[is_word])
        return loss, {"loss_word": float(word_ce)}
