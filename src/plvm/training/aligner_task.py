"""Training the Aligner (§3.2, §4.1): frozen LVLM, frozen encoder, Eq. 2 loss.

Each sample is (reference image, optional query image, question, answer) about one concept ``<sks>``.
The Aligner turns the reference into ``(e_word, e_weight, context)``; the prompt
``<sks> is <t1>…<tk>. <question>`` runs through the frozen LVLM with those embeddings injected
(:class:`~plvm.injection.PersonalizedLVLM`), and the answer is scored with the weighted masked-LM loss of
Eq. 2 (the Yes/No word weighted by ``w``). Only ``f_word``, ``f_weight`` and the resampler train.

Data mixing (§4.1) lives in the data sources: recognition : attribute-QA = 1:1, positive ratio ``p``,
attribute QA text-only (no query image), hard negatives drawn from similar identities.

Identity-bank loss (not in the paper; ``bank_weight > 0``, name-first answers only). Eq. 2 gives each query
photo one reference per step, so the concept's output row sees one comparison per recognition sample. With
name-first answers the decision at the first answer position is ``h · e_weight`` against the logit of "No";
the bank loss scores that same ``h`` (detached) against the output rows of *every* training identity's
reference portraits, positive where the identity is in the photo, with a class-balanced logistic loss::

    z_ij = h_i · e_weight(ref_j) − logit_No(h_i)          y_ij = [identity of ref_j is in query_i]
    L_bank = mean_i ( ½ mean_{j: y=1} BCE(z_ij, 1) + ½ mean_{j: y=0} BCE(z_ij, 0) )

``h`` is detached so the bank only teaches ``f_weight`` to read the photo; the context tokens learn from
Eq. 2 alone (a gradient through ``h_i`` would let ``ref_i``'s own prompt push ``h_i`` away from every other
row, which says nothing about the photo). The encoder is frozen, so the bank's global tokens are computed once.
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
from ..eval.metrics import roc_auc
from ..injection import IGNORE_INDEX, ConceptTensors, PersonalizedLVLM
from ..synth.qa import name_first_answer
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
    concept_id: str | None = None  # the concept's identity, where the source knows it
    query_identities: tuple[str, ...] | None = None  # everyone in ``query``, where the source knows it


class PersonalDataSource(Protocol):
    def examples(self, index: int, n: int) -> list[PersonalExample]:
        """``n`` examples for batch ``index`` — deterministic in (the source's seed, index)."""

    def describe(self) -> dict[str, Any]: ...


RECOGNITION_KINDS = ("recog_pos", "recog_neg")


@dataclass
class AlignerTaskConfig:
    batch_size: int = 2
    word_weight: float = 10.0  # w of Eq. 2 (paper best 10–20)
    #: "paper": positive recognition answers as in Table 10 ("Yes, <sks> is in this photo."); "name-first":
    #: they start with the concept ("<sks> is in this photo.", :func:`plvm.synth.qa.name_first_answer`), and
    #: the concept token is the answer word Eq. 2 weights.
    answer_style: str = "paper"
    #: λ of the identity-bank loss (module docstring; not in the paper); 0 = off, the paper's objective
    bank_weight: float = 0.0
    #: reference portraits per training identity in the bank
    bank_renders: int = 2
    #: train ``f_word`` and ``f_weight`` only: the context tokens stay as initialised (e.g. head-anchored,
    #: :mod:`plvm.training.head_anchor`); not in the paper
    freeze_context: bool = False

    def __post_init__(self) -> None:
        from ..synth.qa import check_answer_style

        check_answer_style(self.answer_style)
        if self.bank_weight < 0:
            raise ValueError(f"bank_weight must be >= 0, got {self.bank_weight}")
        if self.bank_weight > 0 and self.answer_style != "name-first":
            raise ValueError(
                "the identity-bank loss scores the concept's output row, which decides only "
                "name-first answers: use answer_style='name-first'"
            )
        if self.bank_renders < 1:
            raise ValueError(f"bank_renders must be >= 1, got {self.bank_renders}")


def bank_objective(
    h: torch.Tensor, no: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, with_auc: bool = True
) -> tuple[torch.Tensor, float | None]:
    """The identity-bank loss and its mean per-query ROC AUC (module docstring).

    Args:
        h: ``[n, d]`` answer-position states of n recognition queries (detached here).
        no: ``[n]`` logits of "No" there (detached here).
        rows: ``[M, d]`` output rows of the bank's references (the gradient flows into these).
        y: ``[n, M]`` 1 where bank identity ``j`` is in query ``i``.

    Returns:
        ``(loss, auc)``: the class-balanced logistic loss of ``z = h · rows^T − no`` (a scalar tensor) and the
        mean over queries of P(z of a row in the photo > z of a row not in it) (a float, for logs; ``None``
        without ``with_auc``).
    """
    device = rows.device
    y = y.to(device)
    with torch.autocast(device_type=device.type, enabled=False):
        z = h.detach().float().to(device) @ rows.float().T - no.detach().float().to(device)[:, None]  # [n, M]
    return balanced_logistic_loss(z, y).mean(), mean_query_auc(z.detach(), y) if with_auc else None


def balanced_logistic_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Class-balanced logistic loss along the last axis: ``z``, ``y`` ``[..., M]`` → ``[...]``, the mean BCE over
    the positives plus the mean over the negatives, halved (a class that is absent adds 0)."""
    with torch.autocast(device_type=z.device.type, enabled=False):
        z, y = z.float(), y.to(z.device).float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
        pos = (bce * y).sum(-1) / y.sum(-1).clamp(min=1)
        neg = (bce * (1 - y)).sum(-1) / (1 - y).sum(-1).clamp(min=1)
    return 0.5 * pos + 0.5 * neg


def mean_query_auc(z: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over rows of the ROC AUC of ``z`` ``[n, M]`` for labels ``y`` ``[n, M]`` (rows lacking a class skipped;
    0.5 if every row does)."""
    aucs = [roc_auc(zi[yi > 0.5].tolist(), zi[yi <= 0.5].tolist()) for zi, yi in zip(z.cpu(), y.cpu())]
    aucs = [a for a in aucs if a is not None]
    return float(sum(aucs) / len(aucs)) if aucs else 0.5


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
        self.bank_ids: list[str] = []
        self.bank_tokens = torch.zeros(0, aligner.config.d_enc)  # [M, d_enc] global tokens of the bank
        if config.bank_weight > 0:
            self.build_bank()

    @torch.no_grad()
    def build_bank(self, chunk: int = 32) -> None:
        """Encode the data source's reference bank once (the encoder is frozen): ``bank_renders`` portraits of
        each identity → :attr:`bank_ids` and their global tokens :attr:`bank_tokens` ``[M, d_enc]``."""
        bank = getattr(self.data, "reference_bank", None)
        if bank is None:
            raise ValueError(
                f"the identity-bank loss needs a data source with reference_bank(); {type(self.data).__name__} has none"
            )
        items = bank(self.config.bank_renders)
        if len({i for i, _ in items}) < 2:
            raise ValueError("the identity-bank loss needs references of at least two identities")
        self.bank_ids = [i for i, _ in items]
        tokens = [
            self.aligner.encode_reference(self.reference_pixels([img for _, img in items[s : s + chunk]]))[:, 0]
            for s in range(0, len(items), chunk)
        ]
        self.bank_tokens = torch.cat(tokens).float().cpu()

    def _encode(self, ex: PersonalExample) -> Any:
        """The example's prompt + answer; a name-first positive answer flags its leading concept as Eq. 2's word."""
        answer, words = ex.answer, ("Yes", "No")
        if self.config.answer_style == "name-first" and ex.kind == "recog_pos":
            marker = f"<{TRAIN_NAME}>"
            answer, words = name_first_answer(answer, marker), (marker,)
        conv = single_turn(ex.question, [self._placeholder], image=ex.query, answer=answer)
        return self.lvlm.encode(conv, answer_words=words)

    @torch.no_grad()
    def answer_states(
        self, examples: list[PersonalExample], z_ref: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen LM at the first answer position of each example's prompt (current Aligner): last hidden
        states ``[N, d]`` and the logit of "No" there ``[N]`` (for :meth:`Aligner.calibrate_output_row`).
        ``z_ref``: the references' encoder output ``[N, L, d_enc]``, if the caller has it already."""
        if z_ref is None:
            z_ref = self.aligner.encode_reference(self.reference_pixels([ex.reference for ex in examples]))
        e_word, e_weight, context = self.aligner(z_ref=z_ref)
        batch = self.lvlm.collate([self._encode(ex) for ex in examples])  # the position training reads is the
        tensors = ConceptTensors.stack(  # one before the first answer label (templates differ on the space)
            [[(e_word[i], e_weight[i], context[i])] for i in range(len(examples))], self.lvlm.hidden_size
        )
        hidden, _ = self.lvlm.hidden_states(batch, tensors)
        return self._answer_position(hidden, batch.labels)

    def _answer_position(self, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``hidden`` ``[N, T, d]`` → the fp32 states ``[N, d]`` that predict each row's first answer token
        and the logit of "No" there ``[N]``."""
        first = (labels != IGNORE_INDEX).int().argmax(dim=1)  # [N]
        h = hidden[torch.arange(hidden.shape[0]), first - 1].float()
        no = self.lvlm.model.get_output_embeddings()(h.to(hidden.dtype)).float()[:, self.lvlm.no_ids].amax(-1)
        return h, no

    def bank_targets(self, query_identities: Sequence[tuple[str, ...]]) -> torch.Tensor:
        """``y`` ``[n, M]``: 1 where the bank's identity ``j`` is in query ``i``."""
        return torch.tensor([[bid in ids for bid in self.bank_ids] for ids in query_identities], dtype=torch.float32)

    def bank_rows(self) -> torch.Tensor:
        """The bank's output rows ``e_weight`` ``[M, d_llm]`` in fp32, from the current ``f_weight``."""
        return self.output_rows(self.bank_tokens)

    def output_rows(self, global_tokens: torch.Tensor) -> torch.Tensor:
        """References' global tokens ``z_ref[:, 0]`` ``[M, d_enc]`` → their output rows ``e_weight`` ``[M, d_llm]``
        in fp32, from the current ``f_weight`` (autocast off)."""
        device = self.aligner.f_weight.net[0].weight.device
        with torch.autocast(device_type=device.type, enabled=False):
            return self.aligner.output_row(global_tokens.to(device)).float()

    def bank_loss(
        self, examples: list[PersonalExample], h: torch.Tensor, no: torch.Tensor
    ) -> tuple[torch.Tensor, float] | None:
        """The identity-bank loss (module docstring) of the recognition examples among ``examples``, given
        their answer-position states ``h`` ``[N, d]`` and "No" logits ``[N]``, and the mean over those queries
        of the ROC AUC of ``z`` between the bank's identities in the photo and the others (to log);
        ``None`` if there is no recognition example."""
        rows = [i for i, ex in enumerate(examples) if ex.kind in RECOGNITION_KINDS and ex.query_identities is not None]
        if not rows:
            return None
        y = self.bank_targets([examples[i].query_identities for i in rows])
        return bank_objective(h[rows], no[rows], self.bank_rows(), y)

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
        extras = {"loss_word": word_ce, "loss_plain": float(ce.mean())}
        if self.config.bank_weight > 0:
            scored = self.bank_loss(examples, *self._answer_position(hidden, batch.labels))
            if scored is not None:
                bank, auc = scored
                loss = loss + self.config.bank_weight * bank
                extras.update(loss_bank=float(bank.detach()), bank_auc=auc)
        return loss, extras
