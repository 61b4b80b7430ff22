"""Training the Aligner (§3.2, §4.1): frozen LVLM, frozen encoder, Eq. 2 loss.

Each sample is (reference image, optional query image, question, answer) about one concept ``<sks>``.
The Aligner turns the reference into ``(e_word, e_weight, context)``; the prompt
``<sks> is <t1>…<tk>. <question>`` runs through the frozen LVLM with those embeddings injected
(:class:`~plvm.injection.PersonalizedLVLM`), and the answer is scored with the weighted masked-LM loss of
Eq. 2 (the Yes/No word weighted by ``w``). Only ``f_word``, ``f_weight`` and the resampler train.

Data mixing (§4.1) lives in the data sources: recognition : attribute-QA = 1:1, positive ratio ``p``,
attribute QA text-only (no query image), hard negatives drawn from similar identities.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
from PIL import Image
from torch import nn

from ..aligner import Aligner
from ..concept import ConceptEmbedding
from ..conversation import single_turn
from ..injection import ConceptTensors, PersonalizedLVLM
from .loss import shift_targets, weighted_answer_loss

TRAIN_NAME = "sks"


@dataclass
class PersonalExample:
    """One training example. ``question``/``answer`` use ``<sks>`` for the concept."""

    reference: Image.Image
    query: Image.Image | None
    question: str
    answer: str
    kind: str  # "recog_pos" | "recog_neg" | "attribute" | …


class PersonalDataSource(Protocol):
    def examples(self, index: int, n: int) -> list[PersonalExample]:
        """``n`` examples for batch ``index`` — deterministic in (the source's seed, index)."""

    def describe(self) -> dict[str, Any]: ...


@dataclass
class AlignerTaskConfig:
    batch_size: int = 2
    word_weight: float = 10.0  # w of Eq. 2 (paper best 10–20)
    #: train ``f_word`` and ``f_weight`` only: the context tokens stay as initialised (e.g. head-anchored,
    #: :mod:`plvm.training.head_anchor`); not in the paper
    freeze_context: bool = False


class AlignerTrainingTask:
    """A :class:`~plvm.training.loop.TrainingTask` for the Aligner.

    Args:
        lvlm: the frozen personalized LVLM wrapper.
        aligner: the Aligner (its encoder frozen).
        reference_processor: image processor giving the Aligner's ``pixel_values`` ``[B, 3, S, S]``.
        data: a :class:`PersonalDataSource`.
    """

    def __init__(
        self,
        lvlm: PersonalizedLVLM,
        aligner: Aligner,
        reference_processor: Any,
        data: PersonalDataSource,
        config: AlignerTaskConfig = AlignerTaskConfig(),
    ):
        if aligner.config.d_llm != lvlm.hidden_size:
            raise ValueError(f"Aligner d_llm {aligner.config.d_llm} != LVLM hidden size {lvlm.hidden_size}")
        self.lvlm = lvlm
        self.aligner = aligner
        self.reference_processor = reference_processor
        self.data = data
        self.config = config
        k, d = aligner.config.num_queries, aligner.config.d_llm
        # text-side stand-in: only the name and k matter for tokenization; tensors come from the Aligner
        self._placeholder = ConceptEmbedding(
            TRAIN_NAME, torch.zeros(d), torch.zeros(d), torch.zeros(k, d), lvlm.base_model_id
        )

    def _encode(self, ex: PersonalExample) -> Any:
        """The example's prompt + answer (its "Yes" / "No" flagged as Eq. 2's answer word)."""
        return self.lvlm.encode(single_turn(ex.question, [self._placeholder], image=ex.query, answer=ex.answer))

    # TrainingTask protocol -------------------------------------------------
    def trainable_module(self) -> nn.Module:
        for p in self.aligner.parameters():
            p.requires_grad_(False)
        for p in self.aligner.trainable_parameters():
            p.requires_grad_(True)
        if self.config.freeze_context:
            self.aligner.resampler.requires_grad_(False)
        self.aligner.train()
        return self.aligner

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.aligner.trainable_state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.aligner.load_trainable_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "aligner",
            "aligner": self.aligner.config.to_dict(),
            "base_model": self.lvlm.base_model_id,
            **({"base_revision": self.lvlm.base_revision} if self.lvlm.base_revision is not None else {}),
            "task": dataclasses.asdict(self.config),
            "data": self.data.describe(),
        }

    def batch(self, step: int) -> list[PersonalExample]:
        return self.data.examples(step, self.config.batch_size)

    def reference_pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[B, 3, S, S]`` pixel values for the Aligner's encoder."""
        return self.reference_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def loss(self, examples: list[PersonalExample]) -> tuple[torch.Tensor, dict[str, float]]:
        pixels = self.reference_pixels([ex.reference for ex in examples])
        e_word, e_weight, context = self.aligner(pixel_values=pixels)
        return self.loss_from_embeddings(examples, e_word, e_weight, context)

    def loss_from_embeddings(
        self,
        examples: list[PersonalExample],
        e_word: torch.Tensor,
        e_weight: torch.Tensor,
        context: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 2 loss of ``examples`` given their concept embeddings ``[B, d]``, ``[B, d]``, ``[B, k, d]``."""
        batch = self.lvlm.collate([self._encode(ex) for ex in examples])
        tensors = ConceptTensors.stack(
            [[(e_word[i], e_weight[i], context[i])] for i in range(len(examples))], self.lvlm.hidden_size
        )
        hidden, _ = self.lvlm.hidden_states(batch, tensors)
        h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        logits = self.lvlm.logits_for_rows(h, rows, tensors)
        loss = weighted_answer_loss(logits, targets, is_word, self.config.word_weight)
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            word_ce = float(ce[is_word].mean()) if is_word.any() else 0.0
        return loss, {"loss_word": word_ce, "loss_plain": float(ce.mean())}
