"""Personalization of a frozen HF LLaVA without mutating it (§3.1, "Prompt").

The base model (``LlavaForConditionalGeneration`` or ``LlavaOnevisionForConditionalGeneration``) is never
changed: no vocabulary resize, no new parameters, no hooks. Personalization is *data handed to the forward
pass*, the way a peft adapter wraps a model:

* **input side** — the prompt is tokenized segment by segment around the concept markers of
  :mod:`plvm.conversation`; every ``<name>`` position gets ``e_word`` of its concept and every context slot
  gets the concept's ``<t_j>`` embedding; everything else is the model's own token embedding, and image
  placeholders are filled with image features by the model's own code (``pixel_values`` are passed on);
* **output side** — each active concept adds one logit column ``h · e_weight``, so the vocabulary seen by
  decoding is ``V + C`` (C active concepts). Id ``V + c`` *is* concept ``c``; it decodes to ``<name>`` and,
  when generated, is fed back with embedding ``e_word``.

This is exactly equivalent to a copy of the model whose vocabulary was extended with those rows (tested).

Token-id convention used throughout (an "extended id"):
    ``0 ≤ id < V``  a token of the base vocabulary;  ``id = V + c``  the name token of active concept ``c``;
    ``id = CONTEXT_SLOT`` (−1)  a context-token slot (which concept and which ``j`` are kept alongside).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image
from torch import nn

from .concept import ConceptEmbedding
from .conversation import CONTEXT_CLOSE, CONTEXT_OPEN, Conversation

IGNORE_INDEX = -100
CONTEXT_SLOT = -1
REGULAR = -1  # value of ``slot`` for ordinary tokens


@dataclass
class EncodedPrompt:
    """One tokenized personalized prompt (lists; collated to tensors by :meth:`PersonalizedLVLM.collate`).

    Attributes:
        ids: ``[T]`` extended ids (see module docstring).
        slot: ``[T]`` −1 for ordinary tokens, 0 for a name token, ``j`` (1…k) for context token ``<t_j>``.
        concept: ``[T]`` index of the concept a name/context position belongs to, else −1.
        labels: ``[T]`` extended ids to predict (answer tokens) or ``IGNORE_INDEX``.
        answer_word: ``[T]`` True on the label positions of the answer's first word (Eq. 2's Yes/No word).
        images: the images, in prompt order.
        concept_names: names of the active concepts; ``concept[t] = c`` refers to ``concept_names[c]``.
        vision: the processor's image tensors for ``images`` (e.g. ``pixel_values`` ``[N_img, 3, S, S]``).
    """

    ids: list[int]
    slot: list[int]
    concept: list[int]
    labels: list[int]
    answer_word: list[bool]
    images: list[Image.Image]
    concept_names: list[str]
    vision: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class PersonalizedBatch:
    """Collated tensors for one forward pass of :class:`PersonalizedLVLM` (right-padded).

    Shapes: ``ids``, ``slot``, ``concept``, ``attention_mask``, ``labels``, ``answer_word`` — ``[B, T]``;
    ``vision`` — the processor's image tensors for all images of the batch in order (``pixel_values``
    ``[N_img, 3, S, S]`` for LLaVA-1.5, plus ``image_sizes`` for OneVision), or empty.
    """

    ids: torch.Tensor
    slot: torch.Tensor
    concept: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    answer_word: torch.Tensor
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)

    def to(self, device: torch.device | str) -> "PersonalizedBatch":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return PersonalizedBatch(
            ids=move(self.ids),
            slot=move(self.slot),
            concept=move(self.concept),
            attention_mask=move(self.attention_mask),
            labels=move(self.labels),
            answer_word=move(self.answer_word),
            vision={k: move(v) for k, v in self.vision.items()},
            lengths=list(self.lengths),
        )


def concat_vision(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-prompt image tensors along the image axis.

    Tensors whose trailing shapes differ (OneVision's any-res ``pixel_values`` ``[N, P, 3, S, S]`` with a
    different number of patches ``P``) are zero-padded on axis 1 first, as the OneVision processor does.
    """
    keys = [k for k in dict.fromkeys(k for p in parts for k in p)]
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        tensors = [p[key] for p in parts if key in p]
        if len({t.shape[1:] for t in tensors}) > 1 and all(t.ndim >= 2 for t in tensors):
            longest = max(t.shape[1] for t in tensors)
            tensors = [
                torch.cat([t, t.new_zeros(t.shape[0], longest - t.shape[1], *t.shape[2:])], dim=1) for t in tensors
            ]
        out[key] = torch.cat(tensors, dim=0)
    return out


@dataclass
class ConceptTensors:
    """Per-sample concept embeddings, padded over concepts.

    Shapes: ``e_word`` / ``e_weight`` ``[B, C, d]``, ``context`` ``[B, C, k, d]``, ``mask`` ``[B, C]`` (bool,
    False for padding concepts — their logit columns are −inf).
    """

    e_word: torch.Tensor
    e_weight: torch.Tensor
    context: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_concepts(
        cls, per_sample: Sequence[Sequence[ConceptEmbedding]], hidden_size: int, k: int | None = None
    ) -> "ConceptTensors":
        """Stack :class:`ConceptEmbedding` records (inference path)."""
        rows = [[(c.e_word, c.e_weight, c.context) for c in concepts] for concepts in per_sample]
        return cls.stack(rows, hidden_size, k)

    @classmethod
    def stack(
        cls,
        per_sample: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]],
        hidden_size: int,
        k: int | None = None,
    ) -> "ConceptTensors":
        """Stack ``(e_word [d], e_weight [d], context [k, d])`` triples; keeps autograd (training path)."""
        batch = len(per_sample)
        n_max = max((len(s) for s in per_sample), default=0)
        ks = {t[2].shape[0] for s in per_sample for t in s}
        if len(ks) > 1:
            raise ValueError(f"all active concepts must have the same number of context tokens, got {sorted(ks)}")
        k = ks.pop() if ks else (k or 1)
        ref = next((t[0] for s in per_sample for t in s), None)
        dtype = ref.dtype if ref is not None else torch.float32
        device = ref.device if ref is not None else torch.device("cpu")
        zeros_d = torch.zeros(hidden_size, dtype=dtype, device=device)
        zeros_kd = torch.zeros(k, hidden_size, dtype=dtype, device=device)
        e_word, e_weight, context, mask = [], [], [], []
        for sample in per_sample:
            pad = n_max - len(sample)
            for t in sample:
                if t[0].shape[-1] != hidden_size:
                    raise ValueError(f"concept hidden size {t[0].shape[-1]} != model hidden size {hidden_size}")
            e_word.append(torch.stack([t[0] for t in sample] + [zeros_d] * pad) if n_max else zeros_d[:0])
            e_weight.append(torch.stack([t[1] for t in sample] + [zeros_d] * pad) if n_max else zeros_d[:0])
            context.append(torch.stack([t[2] for t in sample] + [zeros_kd] * pad) if n_max else zeros_kd[:0])
            mask.append([True] * len(sample) + [False] * pad)
        if n_max == 0:
            return cls(
                e_word=torch.zeros(batch, 0, hidden_size, dtype=dtype, device=device),
                e_weight=torch.zeros(batch, 0, hidden_size, dtype=dtype, device=device),
                context=torch.zeros(batch, 0, k, hidden_size, dtype=dtype, device=device),
                mask=torch.zeros(batch, 0, dtype=torch.bool, device=device),
            )
        return cls(
            e_word=torch.stack(e_word),
            e_weight=torch.stack(e_weight),
            context=torch.stack(context),
            mask=torch.tensor(mask, dtype=torch.bool, device=device),
        )


@dataclass
class GenerationResult:
    text: str
    ids: list[int]
    finished: bool


class PersonalizedLVLM(nn.Module):
    """A frozen HF LLaVA plus the machinery to run it with personalized concepts.

    Args:
        model: ``LlavaForConditionalGeneration`` / ``LlavaOnevisionForConditionalGeneration`` (any size).
        processor: Its processor (tokenizer, image processor, chat template).
        base_model: Identifier stored in concepts made for this model (defaults to the model's
            ``name_or_path``); concepts made for another base are refused.
        base_revision: Which trained weights of that base (e.g. LLaVA-mini's
            :func:`plvm.models.llava_mini.assembly.base_revision`); concepts that record another revision are refused.
            ``None``: not tracked (hub models are named by ``base_model``).

    The wrapped model is put in eval mode and its parameters get ``requires_grad=False``; nothing else of
    it is touched. Gradients still flow to concept embeddings (training the Aligner).
    """

    def __init__(
        self, model: nn.Module, processor: Any, base_model: str | None = None, base_revision: str | None = None
    ):
        super().__init__()
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.base_model_id = base_model or getattr(model.config, "_name_or_path", "") or "custom"
        self.base_revision = base_revision
        model.eval()
        model.requires_grad_(False)
        text_config = model.config.get_text_config()
        self.hidden_size: int = text_config.hidden_size
        self.vocab_size: int = model.get_output_embeddings().weight.shape[0]
        self.image_token: str = processor.image_token
        self.image_token_id: int = model.config.image_token_id
        self._special_prefix = self._find_special_prefix()
        self._anchor = self.tokenizer.encode("a", add_special_tokens=False)[:1]
        self.eos_token_ids = self._find_eos_ids()
        self.yes_ids, self.no_ids = self._answer_word_ids("Yes"), self._answer_word_ids("No")

    def train(self, mode: bool = True) -> "PersonalizedLVLM":
        # the base model stays in eval mode whatever happens (frozen: no dropout)
        super().train(mode)
        self.model.eval()
        return self

    # ------------------------------------------------------------------ tokenizer facts
    def _find_special_prefix(self) -> list[int]:
        with_special = self.tokenizer("x", add_special_tokens=True).input_ids
        without = self.tokenizer("x", add_special_tokens=False).input_ids
        n = len(with_special) - len(without)
        if n > 0 and with_special[n:] == without:
            return list(with_special[:n])
        return []

    def _find_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for source in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id and tid >= 0:
                ids.add(tid)
        return ids

    def _answer_word_ids(self, word: str) -> list[int]:
        """First token ids with which an answer can start with ``word`` (with and without a leading space)."""
        ids = {self.tokenizer.encode(w, add_special_tokens=False)[0] for w in (word, " " + word)}
        return sorted(ids)

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids if text else []

    # ------------------------------------------------------------------ images
    def image_inputs(self, images: Sequence[Image.Image]) -> tuple[list[int], dict[str, torch.Tensor]]:
        """Run the processor on ``images``; return the image-token count of each and the vision tensors."""
        if not images:
            return [], {}
        text = "\n".join([self.image_token] * len(images))
        out = self.processor(text=[text], images=list(images), return_tensors="pt")
        ids = out["input_ids"][0].tolist()
        counts, run = [], 0
        for tid in ids + [None]:
            if tid == self.image_token_id:
                run += 1
            elif run:
                counts.append(run)
                run = 0
        if len(counts) != len(images):
            raise RuntimeError(f"processor produced {len(counts)} image-token runs for {len(images)} images")
        vision = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
        return counts, vision

    # ------------------------------------------------------------------ prompts
    def encode(
        self,
        conversation: Conversation,
        add_generation_prompt: bool = True,
        answer_words: Sequence[str] = ("Yes", "No"),
        label_all_turns: bool = False,
    ) -> EncodedPrompt:
        """Tokenize a conversation with concept markers into an :class:`EncodedPrompt`.

        If the conversation ends with an assistant turn, that turn is the training target: its tokens (and
        the template's end-of-turn) get labels, and if its first word is one of ``answer_words`` (Eq. 2's
        Yes/No word) the tokens of that word are flagged in ``answer_word``. With ``label_all_turns`` every
        assistant turn is a target (LLaVA's multi-turn instruction data: several questions about one image
        share its image tokens in one sequence).
        """
        messages = conversation.to_messages()
        names = [c.name for c in conversation.concepts]
        # (text, answer) pieces whose texts concatenate to the rendered conversation; ``answer`` is the
        # assistant text a target piece starts with (None for prompt pieces)
        pieces: list[tuple[str, str | None]] = []
        if messages and messages[-1]["role"] == "assistant":
            done = ""
            targets = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            for i in targets if label_all_turns else targets[-1:]:
                answer = messages[i]["content"][0]["text"]
                full = self.processor.apply_chat_template(messages[: i + 1], tokenize=False)
                prompt = self.processor.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
                if not (full.startswith(prompt) and prompt.startswith(done)) or answer not in full[len(prompt) :]:
                    raise RuntimeError("chat template does not render the answer as a suffix of the prompt")
                start = len(prompt) + full[len(prompt) :].index(answer)
                pieces += [(full[len(done) : start], None), (full[start:], answer)]
                done = full
        else:
            pieces.append(
                (
                    self.processor.apply_chat_template(
                        messages, tokenize=False, add_generation_prompt=add_generation_prompt
                    ),
                    None,
                )
            )
        k_by_name = {c.name: c.num_context_tokens for c in conversation.concepts}
        images = conversation.images
        counts, vision = self.image_inputs(images)
        enc = EncodedPrompt([], [], [], [], [], list(images), names, vision)
        if self._special_prefix and not any(
            pieces[0][0].startswith(t) for t in self.tokenizer.convert_ids_to_tokens(self._special_prefix)
        ):
            self._append_ids(enc, self._special_prefix, label=False)
        image_counts = iter(counts)
        for text, answer in pieces:
            if answer is None:
                self._append_text(enc, text, k_by_name, image_counts, label=False)
                continue
            first = answer.split(maxsplit=1)[0].rstrip(",.!?") if answer.strip() else ""
            cut = answer.index(first) + len(first) if first in answer_words else 0
            if cut:
                self._append_text(enc, text[:cut], k_by_name, image_counts, label=True, word=True)
            self._append_text(enc, text[cut:], k_by_name, image_counts, label=True)
        if next(image_counts, None) is not None:
            raise ValueError("more images than <image> placeholders in the rendered prompt")
        return enc

    def _segment_pattern(self, names: Sequence[str]) -> re.Pattern[str]:
        parts = [re.escape(self.image_token)]
        if names:
            alt = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
            parts.append(f"<(?P<name>{alt})>")
            parts.append(f"{re.escape(CONTEXT_OPEN)}(?P<ctx>{alt}){re.escape(CONTEXT_CLOSE)}")
        return re.compile("|".join(f"(?:{p})" for p in parts))

    def _append_ids(self, enc: EncodedPrompt, ids: Iterable[int], label: bool, word: bool = False) -> None:
        for tid in ids:
            enc.ids.append(tid)
            enc.slot.append(REGULAR)
            enc.concept.append(-1)
            enc.labels.append(tid if label else IGNORE_INDEX)
            enc.answer_word.append(word and label)

    def _append_text(
        self,
        enc: EncodedPrompt,
        text: str,
        k_by_name: dict[str, int],
        image_counts: Iterator[int],
        label: bool,
        word: bool = False,
    ) -> None:
        names = list(k_by_name)
        pattern = self._segment_pattern(names)
        pos = 0
        for m in pattern.finditer(text):
            self._append_ids(enc, self._tokenize(text[pos : m.start()]), label, word)
            pos = m.end()
            if m.group(0) == self.image_token:
                if label:
                    raise ValueError("images cannot appear in an answer")
                n = next(image_counts, None)
                if n is None:
                    raise ValueError("more <image> placeholders than images")
                self._append_ids(enc, [self.image_token_id] * n, label=False)
            elif m.group("name") is not None:
                c = names.index(m.group("name"))
                enc.ids.append(self.vocab_size + c)
                enc.slot.append(0)
                enc.concept.append(c)
                enc.labels.append(self.vocab_size + c if label else IGNORE_INDEX)
                enc.answer_word.append(word and label)
            else:
                if label:
                    raise ValueError("context tokens cannot appear in an answer")
                c = names.index(m.group("ctx"))
                for j in range(1, k_by_name[m.group("ctx")] + 1):
                    enc.ids.append(CONTEXT_SLOT)
                    enc.slot.append(j)
                    enc.concept.append(c)
                    enc.labels.append(IGNORE_INDEX)
                    enc.answer_word.append(False)
        self._append_ids(enc, self._tokenize(text[pos:]), label, word)

    def collate(self, encoded: Sequence[EncodedPrompt]) -> PersonalizedBatch:
        """Right-pad a list of prompts into a :class:`PersonalizedBatch` (image tensors concatenated)."""
        lengths = [len(e) for e in encoded]
        t_max = max(lengths)
        pad_id = self.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else 0

        def pad(rows: list[list[Any]], value: Any, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([r + [value] * (t_max - len(r)) for r in rows], dtype=dtype)

        return PersonalizedBatch(
            ids=pad([e.ids for e in encoded], pad_id, torch.long),
            slot=pad([e.slot for e in encoded], REGULAR, torch.long),
            concept=pad([e.concept for e in encoded], -1, torch.long),
            attention_mask=pad([[1] * len(e) for e in encoded], 0, torch.long),
            labels=pad([e.labels for e in encoded], IGNORE_INDEX, torch.long),
            answer_word=pad([e.answer_word for e in encoded], False, torch.bool),
            vision=concat_vision([e.vision for e in encoded]),
            lengths=lengths,
        )

    def prepare(
        self, conversations: Sequence[Conversation], add_generation_prompt: bool = True
    ) -> tuple[PersonalizedBatch, ConceptTensors]:
        """Encode and collate conversations, stacking their concepts' tensors (inference)."""
        per_sample = [conv.concepts for conv in conversations]
        for concepts in per_sample:
            for c in concepts:
                c.check_compatible(self.base_model_id, self.hidden_size, self.base_revision)
        encoded = [self.encode(conv, add_generation_prompt) for conv in conversations]
        batch = self.collate(encoded)
        tensors = ConceptTensors.from_concepts(per_sample, self.hidden_size)
        return batch, tensors

    # ------------------------------------------------------------------ forward
    def _model_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        weight = self.model.get_input_embeddings().weight
        return weight.device, weight.dtype

    def embed(self, batch: PersonalizedBatch, concepts: ConceptTensors) -> torch.Tensor:
        """``inputs_embeds`` ``[B, T, d]``: base embeddings with name / context slots replaced."""
        device, dtype = self._model_device_dtype()
        ids = batch.ids.to(device)
        slot, concept = batch.slot.to(device), batch.concept.to(device)
        regular = (slot == REGULAR) & (ids >= 0) & (ids < self.vocab_size)
        safe_ids = torch.where(regular, ids, torch.zeros_like(ids))
        embeds = self.model.get_input_embeddings()(safe_ids)
        if concepts.e_word.shape[1] == 0:
            if (slot != REGULAR).any():
                raise ValueError("prompt has concept slots but no concept tensors were given")
            return embeds
        c = concept.clamp(min=0)
        b = torch.arange(ids.shape[0], device=device).unsqueeze(1).expand_as(ids)
        e_word = concepts.e_word.to(device, dtype)
        context = concepts.context.to(device, dtype)
        name_vec = e_word[b, c]  # [B, T, d]
        ctx_vec = context[b, c, (slot - 1).clamp(min=0, max=context.shape[2] - 1)]  # [B, T, d]
        embeds = torch.where((slot == 0).unsqueeze(-1), name_vec, embeds)
        return torch.where((slot > 0).unsqueeze(-1), ctx_vec, embeds)

    def hidden_states(
        self,
        batch: PersonalizedBatch,
        concepts: ConceptTensors,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Run the frozen LVLM on the injected embeddings: → (last hidden state ``[B, T, d]``, cache)."""
        device, dtype = self._model_device_dtype()
        embeds = self.embed(batch, concepts)
        vision = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.vision.items()}
        out = self.model.model(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask.to(device),
            past_key_values=past_key_values,
            use_cache=use_cache,
            **vision,
        )
        return out.last_hidden_state, out.past_key_values

    def logits_from_hidden(self, hidden: torch.Tensor, concepts: ConceptTensors) -> torch.Tensor:
        """``hidden`` ``[B, ..., d]`` → logits ``[B, ..., V + C]``: the LM head plus one column per concept."""
        base = self.model.get_output_embeddings()(hidden)
        if concepts.e_weight.shape[1] == 0:
            return base
        e_weight = concepts.e_weight.to(hidden.device, hidden.dtype)  # [B, C, d]
        shape = hidden.shape
        extra = torch.einsum("bnd,bcd->bnc", hidden.reshape(shape[0], -1, shape[-1]), e_weight)
        extra = extra.reshape(*shape[:-1], -1)
        mask = concepts.mask.to(hidden.device).view(shape[0], *([1] * (hidden.ndim - 2)), -1)
        extra = extra.masked_fill(~mask, float("-inf"))
        return torch.cat([base, extra], dim=-1)

    def logits_for_rows(self, hidden: torch.Tensor, rows: torch.Tensor, concepts: ConceptTensors) -> torch.Tensor:
        """Gathered ``hidden`` ``[N, d]`` from batch rows ``rows`` ``[N]`` → logits ``[N, V + C]``.

        The training path: only answer positions need logits, so the LM head runs on N ≪ B·T rows.
        """
        base = self.model.get_output_embeddings()(hidden)
        if concepts.e_weight.shape[1] == 0:
            return base
        e_weight = concepts.e_weight.to(hidden.device, hidden.dtype)[rows]  # [N, C, d]
        extra = torch.einsum("nd,ncd->nc", hidden, e_weight)
        extra = extra.masked_fill(~concepts.mask.to(hidden.device)[rows], float("-inf"))
        return torch.cat([base, extra], dim=-1)

    def forward(self, batch: PersonalizedBatch, concepts: ConceptTensors) -> torch.Tensor:
        """Full logits ``[B, T, V + C]`` of the personalized prompt."""
        hidden, _ = self.hidden_states(batch, concepts)
        return self.logits_from_hidden(hidden, concepts)

    # ------------------------------------------------------------------ recognition fast path
    @torch.no_grad()
    def score_yes_no(self, conversations: Conversation | Sequence[Conversation]) -> torch.Tensor:
        """One forward: log-odds ``log p(Yes) − log p(No)`` of the first answer token, ``[B]``.

        Each conversation must end with a user turn (the question). Both "Yes" and " Yes" spellings count
        (log-sum-exp), likewise for "No". ``> 0`` means the model answers Yes.
        """
        convs = [conversations] if isinstance(conversations, Conversation) else list(conversations)
        batch, tensors = self.prepare(convs)
        hidden, _ = self.hidden_states(batch, tensors)
        last = torch.tensor(batch.lengths, device=hidden.device) - 1
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, d]
        logp = torch.log_softmax(self.logits_from_hidden(h, tensors).float(), dim=-1)
        yes = torch.logsumexp(logp[:, self.yes_ids], dim=-1)
        no = torch.logsumexp(logp[:, self.no_ids], dim=-1)
        return (yes - no).cpu()

    # ------------------------------------------------------------------ generation
    def decode(self, ids: Sequence[int], concept_names: Sequence[str]) -> str:
        """Extended ids → text; concept ids become ``<name>``, special tokens are dropped."""
        pieces: list[str] = []
        run: list[int] = []
        anchor_text = self.tokenizer.decode(self._anchor, skip_special_tokens=True)

        def flush() -> None:
            if run:
                text = self.tokenizer.decode(self._anchor + run, skip_special_tokens=True)
                pieces.append(text[len(anchor_text) :])
                run.clear()

        for tid in ids:
            if tid >= self.vocab_size:
                flush()
                pieces.append(f"<{concept_names[tid - self.vocab_size]}>")
            else:
                run.append(int(tid))
        flush()
        return "".join(pieces)

    @torch.no_grad()
    def generate(
        self,
        conversation: Conversation,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Greedy or sampled decoding with KV cache over the ``V + C`` vocabulary.

        ``on_text`` receives the text as it grows (streaming); the result's ``text`` contains ``<name>`` for
        every generated concept token.
        """
        batch, tensors = self.prepare([conversation])
        names = [c.name for c in conversation.concepts]
        device, dtype = self._model_device_dtype()
        generator = torch.Generator(device="cpu").manual_seed(seed) if seed is not None else None
        hidden, cache = self.hidden_states(batch, tensors, use_cache=True)
        attention = batch.attention_mask.to(device)
        out_ids: list[int] = []
        emitted = ""
        finished = False
        e_word = tensors.e_word.to(device, dtype)
        for _ in range(max_new_tokens):
            logits = self.logits_from_hidden(hidden[:, -1], tensors)[0].float()
            next_id = self._pick(logits, do_sample, temperature, top_p, generator)
            if next_id in self.eos_token_ids:
                finished = True
                break
            out_ids.append(next_id)
            if on_text is not None:
                text = self.decode(out_ids, names)
                if not text.endswith("\ufffd") and len(text) > len(emitted):
                    on_text(text[len(emitted) :])
                    emitted = text
            if next_id >= self.vocab_size:
                step_embeds = e_word[:, next_id - self.vocab_size].unsqueeze(1)
            else:
                step_embeds = self.model.get_input_embeddings()(torch.tensor([[next_id]], device=device))
            attention = torch.cat([attention, attention.new_ones(1, 1)], dim=1)
            out = self.model.model(
                inputs_embeds=step_embeds, attention_mask=attention, past_key_values=cache, use_cache=True
            )
            hidden, cache = out.last_hidden_state, out.past_key_values
        text = self.decode(out_ids, names)
        if on_text is not None and len(text) > len(emitted):
            on_text(text[len(emitted) :])
        return GenerationResult(text=text.strip(), ids=out_ids, finished=finished)

    @staticmethod
    def _pick(
        logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator: torch.Generator | None
    ) -> int:
        if not do_sample:
            return int(logits.argmax())
        probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        return int(torch.multinomial(probs.cpu(), 1, generator=generator))

    def chat(self, conversation: Conversation, **kwargs: Any) -> str:
        """Generate the assistant's reply and append it to ``conversation``."""
        result = self.generate(conversation, **kwargs)
        conversation.assistant(result.text)
        return result.text
