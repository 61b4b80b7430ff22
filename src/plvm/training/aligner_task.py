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
from ..concept import ConceptEmbedding, normalize_name
from ..conversation import single_turn
from ..injection import ConceptTensors, PersonalizedLVLM
from ..synth.samples import OTHER_NAMES as SAMPLE_OTHER_NAMES
from .loss import shift_targets, weighted_answer_loss

TRAIN_NAME = "sks"
OTHER_NAMES = tuple(normalize_name(n) for n in SAMPLE_OTHER_NAMES)


@dataclass
class PersonalExample:
    """One training example. ``question``/``answer`` use ``<sks>`` for the concept.

    ``others``: reference images of further concepts active in the prompt (multi-concept examples), named
    ``OTHER_NAMES[i]`` (``<sks2>``, ``<sks3>``); ``<sks>`` is introduced at ``position`` among them.
    """

    reference: Image.Image
    query: Image.Image | None
    question: str
    answer: str
    kind: str  # "recog_pos" | "recog_neg" | "attribute" | …
    others: tuple[Image.Image, ...] = ()
    position: int = 0


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
        # text-side stand-ins: only the names and k matter for tokenization; tensors come from the Aligner
        self._placeholders = [
            ConceptEmbedding(name, torch.zeros(d), torch.zeros(d), torch.zeros(k, d), lvlm.base_model_id)
            for name in (TRAIN_NAME, *OTHER_NAMES)
        ]

    @staticmethod
    def _order(ex: PersonalExample) -> list[int]:
        """Indices (0 = ``<sks>``, i = ``others[i - 1]``) in the order the concepts are introduced."""
        order = list(range(1, len(ex.others) + 1))
        order.insert(ex.position, 0)
        return order

    def _encode(self, ex: PersonalExample) -> Any:
        """The example's prompt + answer (its "Yes" / "No" flagged as Eq. 2's answer word)."""
        if len(ex.others) > len(OTHER_NAMES):
            raise ValueError(f"at most {len(OTHER_NAMES)} further concepts per example, got {len(ex.others)}")
        concepts = [self._placeholders[i] for i in self._order(ex)]
        return self.lvlm.encode(single_turn(ex.question, concepts, image=ex.query, answer=ex.answer))

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
        """Eq. 2 loss; every reference of the batch (each example's own, then its ``others``) in one encoder
        forward."""
        refs = [ex.reference for ex in examples] + [o for ex in examples for o in ex.others]
        e_word, e_weight, context = self.aligner(pixel_values=self.reference_pixels(refs))
        return self.loss_from_embeddings(examples, e_word, e_weight, context)

    def loss_from_embeddings(
        self,
        examples: list[PersonalExample],
        e_word: torch.Tensor,
        e_weight: torch.Tensor,
        context: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 2 loss of ``examples`` given their concept embeddings ``[N, d]``, ``[N, d]``, ``[N, k, d]``: rows
        ``0 … B-1`` are the examples' own concepts, the following rows their ``others`` in order (``N = B`` for
        single-concept batches)."""
        rows_of, nxt = [], len(examples)
        for i, ex in enumerate(examples):
            rows = [i, *range(nxt, nxt + len(ex.others))]
            nxt += len(ex.others)
            rows_of.append([rows[j] for j in self._order(ex)])
        if nxt != e_word.shape[0]:
            raise ValueError(f"{e_word.shape[0]} concept embeddings for {nxt} references")
        batch = self.lvlm.collate([self._encode(ex) for ex in examples])
        tensors = ConceptTensors.stack(
            [[(e_word[r], e_weight[r], context[r]) for r in rows] for rows in rows_of], self.lvlm.hidden_size
        )
        hidden, _ = self.lvlm.hidden_states(batch, tensors)
        h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        logits = self.lvlm.logits_for_rows(h, rows, tensors)
        loss = weighted_answer_loss(logits, targets, is_word, self.config.word_weight)
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            word_ce = float(ce[is_word].mean()) if is_word.any() else 0.0
        return loss, {"loss_word": word_ce, "loss_plain": float(ce.mean())}
