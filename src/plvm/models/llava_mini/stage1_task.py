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
from plvm.models.llava_mini.assembly import MATCH_READOUT_PREFIX, PROJECTOR_PREFIX
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
    query_heads: list[tuple[tuple[float, float, float, float], bool]] = field(default_factory=list)
    """``kind == "image_prompt"``: every head box in the query (last) image (px ``x0, y0, x1, y1``) and whether
    it is the named person's — the targets of :class:`MatchSupervision` (empty: none)."""


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
class MatchSupervision:
    """Deep supervision of the comparison an image-prompt question asks for (LLaVA-mini v2's stage 1).

    The answer to "Is <name> in this photo?" needs the LM to compare the reference's tokens with each person
    in the query image; a single Yes/No word per example is a weak signal for learning that comparison (the
    word loss stayed at ln 2 over 400 steps). Here every head of the query image gets its own target: the
    hidden states of decoder layer ``layer`` are pooled over the head's patch tokens (coverage weights of
    its ground-truth box, :func:`plvm.diag.identity_probe.region_weights`), layer-normalised, and a linear
    read-out says whether
    it is the named person (binary cross-entropy, ``weight`` × added to the answer loss). The read-out is a
    training-only head: :func:`plvm.models.mini.export_stage1` drops it; what stays is the LoRA that learned
    to make layer ``layer`` carry the match.

    ``only=True`` is the routing stage: the LM's forward stops after layer ``layer`` and the match loss is the
    whole loss, so a step costs ``(layer + 1) / n_layers`` of the LM (every example must be an image-prompt one).
    """

    weight: float = 1.0
    layer: int = 15
    only: bool = False

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"match weight must be positive, got {self.weight}")
        if self.layer < 0:
            raise ValueError(f"match layer must be a decoder layer index >= 0, got {self.layer}")


class _StopForward(Exception):
    """Raised by the match hook when :attr:`MatchSupervision.only`: the layers above ``layer`` are not run."""


class ProjectorTrainingTask:
    """:class:`~plvm.training.loop.TrainingTask` that trains ``multi_modal_projector`` (+ optional LM LoRA).

    Checkpoint tensors: ``multi_modal_projector.*`` and, with LoRA, ``lm_lora.*`` (peft adapter keys).
    """

    def __init__(self, lvlm: PersonalizedLVLM, data: GenericDataSource, batch_size: int = 2,
                 lora: MiniLoraConfig | None = None, train_projector: bool = True, word_weight: float = 1.0,
                 match: MatchSupervision | None = None):
        if not train_projector and lora is None:
            raise ValueError("nothing to train: the projector is frozen and there is no LoRA")
        layers = lvlm.model.model.language_model.layers
        if match is not None and match.layer >= len(layers):
            raise ValueError(f"match layer {match.layer} is beyond the LM's {len(layers)} decoder layers")
        self.match = match
        self.match_readout = nn.Linear(lvlm.hidden_size, 1) if match is not None else None
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
            module: nn.Module = self.projector
        else:
            for name, p in self.tuner.named_parameters():
                p.requires_grad_("lora_" in name)
            self.projector.requires_grad_(self.train_projector)  # after the loop: the tuner wraps the projector
            module = (nn.ModuleDict({"projector": self.projector, "lm": self.tuner}) if self.train_projector
                      else self.tuner)
        if self.match_readout is None:
            return module
        return nn.ModuleDict({"base": module, "match_readout": self.match_readout.requires_grad_(True)})

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        state = {PROJECTOR_KEY + k: v for k, v in self.projector.state_dict().items()}
        if self.tuner is not None:
            state.update({LORA_KEY + k: v for k, v in lora_state_dict(self.tuner).items()})
        if self.match_readout is not None:
            state.update({MATCH_READOUT_PREFIX + k: v for k, v in self.match_readout.state_dict().items()})
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        proj = {k[len(PROJECTOR_KEY):]: v for k, v in state.items() if k.startswith(PROJECTOR_KEY)}
        lora = {k[len(LORA_KEY):]: v for k, v in state.items() if k.startswith(LORA_KEY)}
        readout = {k[len(MATCH_READOUT_PREFIX):]: v for k, v in state.items() if k.startswith(MATCH_READOUT_PREFIX)}
        if (bool(lora) != (self.tuner is not None) or bool(readout) != (self.match_readout is not None)
                or len(proj) + len(lora) + len(readout) != len(state)):
            raise ValueError("checkpoint and task disagree on what trains (projector, LoRA, match read-out)")
        self.projector.load_state_dict(proj, strict=True)
        if self.tuner is not None:
            load_lora_state_dict(self.tuner, lora)
        if self.match_readout is not None:
            self.match_readout.load_state_dict(readout, strict=True)

    def describe(self) -> dict[str, Any]:
        return {"kind": "projector", "base_model": self.lvlm.base_model_id, "data": self.data.describe(),
                "batch_size": self.batch_size, "train_projector": self.train_projector,
                "lora": None if self.lora is None else self.lora.metadata(),
                **({"word_weight": self.word_weight} if self.word_weight != 1.0 else {}),
                **({"match": {"weight": self.match.weight, "layer": self.match.layer, "only": self.match.only}}
                   if self.match else {}),
                **self._feature_layer()}

    def _feature_layer(self) -> dict[str, str]:
        """The tower layer(s) the projector reads, when not LLaVA-mini's default (so old records stay as they were)."""
        from plvm.models.llava_mini.assembly import VISION_FEATURE_LAYER, feature_layer_str

        layer = getattr(self.lvlm.model.config, "vision_feature_layer", VISION_FEATURE_LAYER)
        return {} if layer == VISION_FEATURE_LAYER else {"vision_feature_layer": feature_layer_str(layer)}

    def batch(self, step: int) -> list[GenericExample]:
        return self.data.examples(step, self.batch_size)

    def loss(self, examples: list[GenericExample]) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.lvlm.collate([self.lvlm.encode(generic_conversation(ex), label_all_turns=True)
                                   for ex in examples])
        none = ConceptTensors.stack([[] for _ in examples], self.lvlm.hidden_size)
        captured: list[torch.Tensor] = []
        only = self.match is not None and self.match.only
        if only and not all(ex.query_heads for ex in examples):
            raise ValueError("match-only training needs image-prompt examples with head boxes only")
        hook = None
        if self.match is not None and any(ex.query_heads for ex in examples):

            def capture(_module: nn.Module, _inputs: Any, out: Any) -> None:
                captured.append(out[0] if isinstance(out, tuple) else out)
                if only:
                    raise _StopForward

            hook = self.lvlm.model.model.language_model.layers[self.match.layer].register_forward_hook(capture)
        try:
            hidden, _ = self.lvlm.hidden_states(batch, none)
        except _StopForward:
            match_loss, match_logs = self._match_loss(captured[0], batch.ids, examples)
            return self.match.weight * match_loss, match_logs
        finally:
            if hook is not None:
                hook.remove()
        h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        logits = self.lvlm.logits_for_rows(h, rows, none)
        loss = weighted_answer_loss(logits, targets, is_word, word_weight=self.word_weight)
        logs: dict[str, float] = {}
        if captured:
            match_loss, match_logs = self._match_loss(captured[0], batch.ids, examples)
            loss = loss + self.match.weight * match_loss
            logs.update(match_logs)
        if not is_word.any():
            return loss, logs
        with torch.no_grad():  # the Yes/No words' own CE (mostly "same person?"), logged when the batch has one
            word_ce = torch.nn.functional.cross_entropy(logits[is_word].float(), targets[is_word])
        return loss, {"loss_word": float(word_ce), **logs}

    def _match_loss(self, layer_hidden: torch.Tensor, ids: torch.Tensor, examples: list[GenericExample]
                    ) -> tuple[torch.Tensor, dict[str, float]]:
        """:class:`MatchSupervision`'s loss: ``layer_hidden`` ``[B, T, d]`` (decoder layer output), ``ids``
        ``[B, T]`` → mean BCE over every head of every image-prompt query image, and its accuracy."""
        from plvm.diag.identity_probe import region_weights

        pooled, labels = [], []
        for b, ex in enumerate(examples):
            if not ex.query_heads:
                continue
            positions = (ids[b] == self.lvlm.image_token_id).nonzero().squeeze(-1)  # [n_images · G²]
            per_image = positions.numel() // len(ex.images)
            grid = round(per_image ** 0.5)
            if grid * grid != per_image or per_image * len(ex.images) != positions.numel():
                raise ValueError(f"{positions.numel()} image tokens do not split into {len(ex.images)} square grids")
            query = layer_hidden[b, positions[-per_image:]]  # [G², d]: the last image's tokens
            width, height = ex.images[-1].size
            for box, is_named in ex.query_heads:
                w = region_weights(box, width, height, grid).to(query.device, query.dtype)  # [G²]
                pooled.append(w @ query)
                labels.append(float(is_named))
        pooled_t = torch.stack(pooled).float()  # [N_heads, d]; mid-layer states have large norms: normalise
        logit = self.match_readout(nn.functional.layer_norm(pooled_t, pooled_t.shape[-1:])).squeeze(-1)
        target = torch.tensor(labels, device=logit.device)
        loss = nn.functional.binary_cross_entropy_with_logits(logit, target)
        with torch.no_grad():
            accuracy = ((logit > 0).float() == target).float().mean()
            pos, neg = logit[target > 0.5], logit[target < 0.5]
            logs = {"loss_match": float(loss.detach()), "match_acc": float(accuracy), "match_pos": float(target.mean())}
            if len(pos) and len(neg):  # Mann–Whitney AUC of the batch's heads: 0.5 = the read-out compares nothing
                pairs = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
                logs["match_auc"] = float(pairs.mean())
        return loss, logs
