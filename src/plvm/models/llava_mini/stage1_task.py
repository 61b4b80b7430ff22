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

Optionally (``attention_match=AttentionMatch(...)``) two attention heads of the LM are taught, by direct
targets on their attention patterns, to compare the two people of an image-prompt question and to report the
comparison at the answer (LLaVA-mini v2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image
from torch import nn

from plvm.conversation import Conversation
from plvm.diag.identity_probe import region_weights
from plvm.eval.prompts import IMAGE_PROMPT_TEMPLATE, IMAGE_SLOT, EvalConversation
from plvm.injection import ConceptTensors, PersonalizedLVLM
from plvm.models.llava_mini.assembly import PROJECTOR_PREFIX
from plvm.models.llava_mini.lora import LORA_KEY, MiniLoraConfig, add_lora, load_lora_state_dict, lora_state_dict
from plvm.training.attention import Box, bce_with_logs, captured_attention, check_heads, pooled_attention_logodds
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
    reference_head: Box | None = None
    """``kind == "image_prompt"``: the named person's head box in the reference (first) image, px."""
    query_heads: list[tuple[Box, bool]] = field(default_factory=list)
    """``kind == "image_prompt"``: every head box in the query (last) image, px, and whether it is the named
    person's — the targets of :class:`AttentionMatch` (empty: none)."""


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


@dataclass(frozen=True)
class AttentionMatch:
    """Teach the LM, by targets on two attention heads, to compare the two people of an image prompt and to
    report it.

    "Is <name> in this photo?" after "Here is <name>: <reference>." needs the LM to compare the reference's
    person with each person in the query image, then to carry the result to the answer. One Yes/No word per
    example did not teach either (experiments/llava-mini-v2-identity.md). Each step here gets a direct target
    on an attention pattern, a bilinear form in the LoRA's weights rather than a read-out of hidden states:

    1. **compare** — head ``head`` of layer ``layer``: for each head box ``r`` of the query,
       ``m_p = Σ_{j ∈ reference head} A[p, j]`` (the head's attention from query token ``p``),
       ``Z_r = Σ_p w_rp · log(m_p / (1 − m_p))`` (``w_r``: the box's coverage weights over the query's patches),
       ``BCE(Z_r, [r is the named person])``. On the identity-shaped tokens some heads already do this a little
       (``plvm diag attention-match``); the target makes one do it outright.
    2. **report** (``answer_layer`` set, above ``layer``) — head ``answer_head`` of layer ``answer_layer``, from the
       position that predicts the answer's Yes/No word: its attention log-odds onto the named person's head when
       the query shows them (target 1), onto every person's head when it does not (target 0). It looks at the
       named person if they are there and at no one otherwise — a difference the answer word can read.

    ``L = weight · (compare + report)``. There is no bias: a target 1 needs more than half of the head's
    attention on the region, a target 0 less. Training only (eager attention, which returns the attention
    weights); nothing is added to the base.
    """

    layer: int = 8
    head: int = 0
    weight: float = 1.0
    answer_layer: int | None = None
    answer_head: int = 0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"attention-match weight must be positive, got {self.weight}")
        if self.layer < 0 or self.head < 0 or self.answer_head < 0:
            raise ValueError(f"attention-match layers and heads must be >= 0, got {self.layer}, {self.head}")
        if self.answer_layer is not None and self.answer_layer <= self.layer:
            raise ValueError(
                f"the report head's layer ({self.answer_layer}) must come after the compare head's ({self.layer})"
            )

    def heads(self) -> list[tuple[int, int]]:
        """``(layer, head)`` of the compare head, then of the report head if any."""
        report = [] if self.answer_layer is None else [(self.answer_layer, self.answer_head)]
        return [(self.layer, self.head), *report]


def _image_grids(ids: torch.Tensor, example: GenericExample, image_token_id: int) -> tuple[Any, Any, int]:
    """Positions of the reference's (first) and the query's (last) image tokens in ``ids`` ``[T]``, and the grid."""
    if example.reference_head is None or not example.query_heads:
        raise ValueError("the example has no reference head or no query heads")
    positions = (ids == image_token_id).nonzero().squeeze(-1)  # [n_images · G²]
    per_image = positions.numel() // len(example.images)
    grid = round(per_image**0.5)
    if grid * grid != per_image or per_image * len(example.images) != positions.numel():
        raise ValueError(f"{positions.numel()} image tokens do not split into {len(example.images)} square grids")
    return positions[:per_image], positions[-per_image:], grid


def reference_attention_logodds(
    attention: torch.Tensor, ids: torch.Tensor, example: GenericExample, image_token_id: int
) -> torch.Tensor:
    """Per query head box, the pooled attention log-odds onto the reference's head (:class:`AttentionMatch`'s
    compare target).

    ``attention`` ``[..., T, T]`` (one prompt: rows attend to columns; leading dims kept, e.g. heads),
    ``ids`` ``[T]`` → ``[..., n_query_heads]`` (the order of ``example.query_heads``). The first image's
    tokens are the reference's, the last image's the query's; each image is a square grid of patches.
    """
    reference, query, grid = _image_grids(ids, example, image_token_id)
    cells = reference[region_weights(example.reference_head, *example.images[0].size, grid) > 0]
    width, height = example.images[-1].size
    weights = torch.stack([region_weights(box, width, height, grid) for box, _ in example.query_heads])
    return pooled_attention_logodds(attention, query, cells, weights)


def answer_attention_logodds(
    attention: torch.Tensor, ids: torch.Tensor, answer_position: int, example: GenericExample, image_token_id: int
) -> tuple[torch.Tensor, bool]:
    """:class:`AttentionMatch`'s report target: the attention log-odds ``[...]`` from ``answer_position`` onto the
    named person's head in the query if they are there, else onto every person's head; and whether they are."""
    _, query, grid = _image_grids(ids, example, image_token_id)
    width, height = example.images[-1].size
    present = any(named for _, named in example.query_heads)
    shown = [box for box, named in example.query_heads if named or not present]
    covered = torch.stack([region_weights(box, width, height, grid) > 0 for box in shown]).any(0)
    rows = torch.tensor([answer_position], device=query.device)
    z = pooled_attention_logodds(attention, rows, query[covered], torch.ones(1, 1))
    return z[..., 0], present


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
        attention_match: AttentionMatch | None = None,
    ):
        if not train_projector and lora is None:
            raise ValueError("nothing to train: the projector is frozen and there is no LoRA")
        if not word_weight > 0:
            raise ValueError(f"word_weight must be positive, got {word_weight}")
        if attention_match is not None:
            check_heads(lvlm.model, attention_match.heads())
            lvlm.model.set_attn_implementation("eager")  # the only attention that returns its weights
        self.attention_match = attention_match
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
            **({"attention_match": asdict(self.attention_match)} if self.attention_match else {}),
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
        layers = []
        if self.attention_match is not None and any(ex.query_heads for ex in examples):
            layers = [layer for layer, _ in self.attention_match.heads()]
        with captured_attention(self.lvlm.model, layers) as captured:
            hidden, _ = self.lvlm.hidden_states(batch, none)
        h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        logits = self.lvlm.logits_for_rows(h, rows, none)
        loss = weighted_answer_loss(logits, targets, is_word, word_weight=self.word_weight)
        logs: dict[str, float] = {}
        if captured:
            match_loss, logs = self._attention_match_loss(captured, batch, examples)
            loss = loss + self.attention_match.weight * match_loss
        if not is_word.any():
            return loss, logs
        with torch.no_grad():  # the Yes/No words' own CE (mostly "same person?"), logged when the batch has one
            word_ce = torch.nn.functional.cross_entropy(logits[is_word].float(), targets[is_word])
        return loss, {"loss_word": float(word_ce), **logs}

    def _attention_match_loss(
        self, attention: dict[int, torch.Tensor], batch: Any, examples: list[GenericExample]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """:class:`AttentionMatch`'s loss from the hooked layers' attention ``[B, H, T, T]`` (by layer), and logs."""
        match = self.attention_match
        image = self.lvlm.image_token_id
        compare, labels, report, present = [], [], [], []
        for b, ex in enumerate(examples):
            if not ex.query_heads:
                continue
            compare.append(reference_attention_logodds(attention[match.layer][b, match.head], batch.ids[b], ex, image))
            labels += [float(named) for _, named in ex.query_heads]
            if match.answer_layer is not None:
                word = batch.answer_word[b].nonzero()
                if len(word) == 0:
                    raise ValueError("an image-prompt example without a Yes/No answer word has no report target")
                z, shown = answer_attention_logodds(
                    attention[match.answer_layer][b, match.answer_head], batch.ids[b], int(word[0]) - 1, ex, image
                )
                report.append(z)
                present.append(float(shown))
        loss, logs = bce_with_logs(torch.cat(compare), labels, "match")
        if report:
            report_loss, report_logs = bce_with_logs(torch.stack(report), present, "report")
            loss = loss + report_loss
            logs.update(report_logs)
        return loss, logs
