"""The methods compared by the harness — PLVM and its baselines behind one interface.

Every method turns *a question about concepts* into *a conversation for the same frozen LVLM*; the harness
scores all of them the same way (:mod:`plvm.eval.scoring`). A question is text with ``<name>`` for each
concept and a list of :class:`Binding` saying whose data personalizes each name (normally the concept
itself; another identity for the wrong-concept control).

=========================  ==================================================  =========================
method (key)               what the LVLM sees about concept ``<bo>``            prompt tokens per concept
=========================  ==================================================  =========================
``none``                   nothing: ``<bo>`` is rewritten "the person"          0
``text``                   ``<bo> is <description>.`` — a ≤ T-token            name + description tokens
                           description the base model wrote from the reference
``image``                  ``Here is <bo>: <image>.`` — the reference image     name + image tokens
``yollava``                ``<bo> is <t1>…<tk>.`` learnt per concept by         1 + k
                           gradient descent (Eq. 2) on its train images
``plvm``                   ``<bo> is <t1>…<tk>.`` from the Aligner, one pass    1 + k
=========================  ==================================================  =========================

"Prompt tokens per concept" counts the tokens that carry the concept (glue words such as ``is`` or ``Here
is`` are not counted); name tokens of the prompting baselines are ordinary text tokens (``<``, ``bo``, ``>``).
"""

from __future__ import annotations

import re
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..concept import ConceptEmbedding
from ..conversation import Conversation, single_turn
from ..injection import ConceptTensors, PersonalizedLVLM
from ..training.loss import shift_targets, weighted_answer_loss
from .prompts import IMAGE_PROMPT_TEMPLATE, IMAGE_SLOT, EvalConversation, load_paper_templates, neutralize
from .readers import EvalDataset


@dataclass(frozen=True)
class Binding:
    """``<name>`` in the question is personalized with the data of concept ``concept`` (a dataset id)."""

    name: str
    concept: str


class Method:
    """Interface of a compared method.

    Subclasses set ``key`` (CLI name), ``label`` (table row) and ``personalized`` and implement
    :meth:`conversation` and :meth:`concept_tokens`; :meth:`prepare_concept` does the per-concept work
    (description, tuning, Aligner pass) and is timed by :meth:`prepare`.
    """

    key = "method"
    label = "method"
    personalized = True
    tasks: tuple[str, ...] | None = None  # the tasks it can answer (None: all)

    def supports(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    def __init__(self, lvlm: PersonalizedLVLM):
        self.lvlm = lvlm
        self.prepare_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ preparation
    def prepare(self, dataset: EvalDataset, concept_ids: Sequence[str], progress: bool = False) -> None:
        """Make whatever the method needs for ``concept_ids`` (idempotent: done concepts are skipped)."""
        todo = [c for c in concept_ids if c not in self.prepare_seconds]
        for cid in tqdm(todo, desc=f"{self.key}: prepare", disable=not progress or not todo, leave=False):
            start = time.perf_counter()
            self.prepare_concept(dataset, cid)
            self.prepare_seconds[cid] = time.perf_counter() - start

    def prepare_concept(self, dataset: EvalDataset, concept_id: str) -> None:
        """Per-concept preparation (default: nothing)."""

    # ------------------------------------------------------------------ prompts
    def conversation(self, text: str, bindings: Sequence[Binding], images: Sequence[Image.Image] = ()) -> Conversation:
        """The conversation asking ``text`` (which writes each bound concept as ``<name>``) about ``images``."""
        raise NotImplementedError

    def concept_tokens(self, concept_id: str) -> int:
        """Prompt tokens this method spends on one concept (see the module docstring)."""
        raise NotImplementedError

    def token_budget(self) -> float:
        """Mean :meth:`concept_tokens` over the prepared concepts."""
        ids = list(self.prepare_seconds)
        return float(np.mean([self.concept_tokens(c) for c in ids])) if ids else float("nan")

    def describe(self) -> dict[str, Any]:
        secs = list(self.prepare_seconds.values())
        return {
            "key": self.key,
            "label": self.label,
            "personalized": self.personalized,
            "concept_tokens": self.token_budget(),
            "prepare_seconds_per_concept": float(np.mean(secs)) if secs else 0.0,
            "prepare_seconds_total": float(np.sum(secs)) if secs else 0.0,
            "concepts_prepared": len(secs),
        }

    # ------------------------------------------------------------------ helpers
    def _tokens(self, text: str) -> int:
        return len(self.lvlm.tokenizer(text, add_special_tokens=False).input_ids) if text else 0


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
    """"LLaVA + prompt": a short description of the concept, written by the base model from the reference.

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
        conv.raw_user(f"{intro}\n{text}" if intro else text, list(images))
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
        return {**super().describe(), "template": self.template,
                "image_tokens_per_reference": float(np.mean(ref_tokens)) if ref_tokens else 0.0}


# ============================================================================ embedding methods
class EmbeddingMethod(Method):
    """A method whose concepts are :class:`ConceptEmbedding` records (``<bo> is <t1>…<tk>.``)."""

    def __init__(self, lvlm: PersonalizedLVLM):
        super().__init__(lvlm)
        self.concepts: dict[str, ConceptEmbedding] = {}

    def conversation(self, text: str, bindings: Sequence[Binding], images: Sequence[Image.Image] = ()) -> Conversation:
        concepts = [self.concepts[b.concept].renamed(b.name) for b in bindings]
        conv = Conversation(concepts)
        conv.user(text, image=list(images) or None)
        return conv

    def concept_tokens(self, concept_id: str) -> int:
        return 1 + self.concepts[concept_id].num_context_tokens


class PLVMMethod(EmbeddingMethod):
    """PLVM: the Aligner makes ``<bo>``'s embeddings from the one reference photo (no tuning).

    Args:
        plvm: a :class:`plvm.pipeline.PLVM` (Aligner + the same LVLM the other methods use).
    """

    key = "plvm"
    label = "PLVM (Aligner)"

    def __init__(self, plvm: Any):
        super().__init__(plvm.lvlm)
        self.plvm = plvm

    def prepare_concept(self, dataset: EvalDataset, concept_id: str) -> None:
        record = dataset.concepts[concept_id]
        self.concepts[concept_id] = self.plvm.make_concept(record.name, dataset.image(record.reference))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "preset": getattr(self.plvm, "preset", None),
                "k": self.plvm.aligner.config.num_queries}


# ============================================================================ (4) Yo'LLaVA-style tuning
@dataclass
class YoLLaVAConfig:
    """Test-time tuning of one concept (Yo'LLaVA-style, trained with PLVM's Eq. 2 loss).

    Attributes:
        k: number of soft context tokens (set equal to PLVM's k for an equal token budget).
        steps: optimisation steps per concept; ``batch_size`` examples per step.
        lr: AdamW learning rate of the concept tensors.
        positive_ratio: share of positive recognition examples per batch.
        word_weight: ``w`` of Eq. 2 (the Yes/No word weight).
        init_word: ``e_word``, ``e_weight`` and the context start from this word's embedding / LM-head row
            (context tokens get small seeded noise so they can diverge).
        seed: base seed; each concept's stream is seeded by ``(seed, crc32(concept id))``.
    """

    k: int = 16
    steps: int = 100
    lr: float = 5e-3
    batch_size: int = 4
    positive_ratio: float = 0.5
    word_weight: float = 10.0
    init_word: str = "person"
    seed: int = 0


class YoLLaVA(EmbeddingMethod):
    """Learn ``e_word``, ``e_weight`` and k context tokens per concept by gradient descent.

    Positives are the concept's training photos (the reference only, for PLVM-format data); negatives are
    the other identities' training photos (plus the concept's own retrieved negatives, if the dataset has
    them). Questions and answers are the paper's recognition templates. The LVLM stays frozen.
    """

    key = "yollava"
    label = "Yo'LLaVA-style tuning"

    def __init__(self, lvlm: PersonalizedLVLM, config: YoLLaVAConfig = YoLLaVAConfig()):
        super().__init__(lvlm)
        self.config = config
        self.logs: dict[str, dict[str, Any]] = {}
        templates = load_paper_templates()
        self._pos = [(t["question"], t["answer"]) for t in templates["recognition_positive"]]
        self._neg = [(t["question"], t["answer"]) for t in templates["recognition_negative"]]

    def _init_tensors(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tok = self.lvlm.tokenizer
        ids = tok.encode(" " + self.config.init_word, add_special_tokens=False)
        space = set(tok.encode(" ", add_special_tokens=False))
        token = ([i for i in ids if i not in space] or ids)[0]
        emb_in = self.lvlm.model.get_input_embeddings().weight.detach().float().cpu()
        emb_out = self.lvlm.model.get_output_embeddings().weight.detach().float().cpu()
        e_word = emb_in[token].clone()
        e_weight = emb_out[token].clone()
        noise = torch.randn(self.config.k, e_word.shape[0], generator=generator) * (0.1 * float(emb_in.std()))
        return e_word, e_weight, e_word.unsqueeze(0).repeat(self.config.k, 1) + noise

    def prepare_concept(self, dataset: EvalDataset, concept_id: str) -> None:
        self.concepts[concept_id] = self.tune(dataset, concept_id)

    def tune(self, dataset: EvalDataset, concept_id: str) -> ConceptEmbedding:
        """Run :attr:`config.steps` steps of Eq. 2 on ``concept_id``'s data; return its embedding."""
        cfg = self.config
        record = dataset.concepts[concept_id]
        positives = list(record.train_images)
        negatives = [p for cid, r in dataset.concepts.items() if cid != concept_id for p in r.train_images]
        negatives += list(record.negative_images)
        rng = np.random.default_rng([cfg.seed, zlib.crc32(concept_id.encode())])
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        device = self.lvlm.model.get_input_embeddings().weight.device
        params = [torch.nn.Parameter(t.to(device)) for t in self._init_tensors(generator)]
        e_word, e_weight, context = params
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        d = self.lvlm.hidden_size
        placeholder = ConceptEmbedding(record.name, torch.zeros(d), torch.zeros(d), torch.zeros(cfg.k, d),
                                       self.lvlm.base_model_id)
        losses: list[float] = []
        with torch.enable_grad():
            for _ in range(cfg.steps):
                convs = []
                for _ in range(cfg.batch_size):
                    positive = not negatives or rng.random() < cfg.positive_ratio
                    pool, templates = (positives, self._pos) if positive else (negatives, self._neg)
                    image = dataset.image(pool[int(rng.integers(len(pool)))])
                    question, answer = templates[int(rng.integers(len(templates)))]
                    name = f"<{record.name}>"
                    convs.append(single_turn(question.replace("<sks>", name), [placeholder], image=image,
                                             answer=answer.replace("<sks>", name)))
                batch = self.lvlm.collate([self.lvlm.encode(c) for c in convs])
                tensors = ConceptTensors.stack([[(e_word, e_weight, context)]] * len(convs), d)
                hidden, _ = self.lvlm.hidden_states(batch, tensors)
                h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
                logits = self.lvlm.logits_for_rows(h, rows, tensors)
                loss = weighted_answer_loss(logits, targets, is_word, cfg.word_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        self.logs[concept_id] = {
            "steps": cfg.steps,
            "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "positives": len(positives),
            "negatives": len(negatives),
        }
        return ConceptEmbedding(
            record.name,
            e_word.detach().float().cpu(),
            e_weight.detach().float().cpu(),
            context.detach().float().cpu(),
            self.lvlm.base_model_id,
            metadata={"method": "yollava", "concept": concept_id, "steps": cfg.steps},
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "config": asdict(self.config), "tuning": dict(self.logs)}


# ============================================================================ factory
METHOD_KEYS = ("none", "text", "image", "yollava", "plvm", "identify", "plvm-idp")


@dataclass
class MethodOptions:
    """Knobs of :func:`build_methods` (the CLI's method flags)."""

    phrase: str = "the person"
    text_tokens: int | None = None  # default: PLVM's k (equal budget), else 16
    describe_prompt: str = "Describe the person in this image in one short sentence."
    yollava: YoLLaVAConfig = field(default_factory=YoLLaVAConfig)
    yollava_k: int | None = None  # default: PLVM's k
    face: Any = None  # face backend of identify / plvm-idp (plvm.encoders.face.FaceEncoder); None: image features
    identify_threshold: float | None = None  # image-feature cosine threshold (None: plvm.identify's default)


def build_methods(
    keys: Sequence[str], lvlm: PersonalizedLVLM, plvm: Any = None, options: MethodOptions | None = None
) -> list[Method]:
    """Instantiate methods by key (:data:`METHOD_KEYS`) on one shared LVLM."""
    from .identify import IdentifyIndex, IdentifyRecognition, PLVMIdentifyPrompt

    options = options or MethodOptions()
    k = plvm.aligner.config.num_queries if plvm is not None else None
    shared: dict[str, IdentifyIndex] = {}

    def index() -> IdentifyIndex:  # one index (and one photo cache) for both identify methods
        if "index" not in shared:
            if plvm is None:
                raise ValueError("the identify methods need a PLVM (its reference encoder)")
            kw = {} if options.identify_threshold is None else {"threshold": options.identify_threshold}
            shared["index"] = IdentifyIndex(plvm, options.face, **kw)
        return shared["index"]

    factories: dict[str, Callable[[], Method]] = {
        "none": lambda: NoPersonalization(lvlm, options.phrase),
        "text": lambda: TextPrompt(lvlm, options.text_tokens or k or 16, options.describe_prompt),
        "image": lambda: ImagePrompt(lvlm),
        "yollava": lambda: YoLLaVA(
            lvlm, YoLLaVAConfig(**{**asdict(options.yollava), "k": options.yollava_k or k or options.yollava.k})
        ),
        "plvm": lambda: _plvm_method(plvm, lvlm),
        "identify": lambda: IdentifyRecognition(lvlm, index()),
        "plvm-idp": lambda: PLVMIdentifyPrompt(_plvm_method(plvm, lvlm).plvm, index()),
    }
    unknown = [key for key in keys if key not in factories]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_KEYS)}")
    return [factories[key]() for key in dict.fromkeys(keys)]


def _plvm_method(plvm: Any, lvlm: PersonalizedLVLM) -> PLVMMethod:
    if plvm is None:
        raise ValueError("method 'plvm' needs a PLVM (Aligner + LVLM)")
    if plvm.lvlm is not lvlm:
        raise ValueError("PLVM must wrap the same LVLM as the other methods")
    return PLVMMethod(plvm)


__all__ = [
    "Binding",
    "EmbeddingMethod",
    "ImagePrompt",
    "METHOD_KEYS",
    "Method",
    "MethodOptions",
    "NoPersonalization",
    "PLVMMethod",
    "TextPrompt",
    "YoLLaVA",
    "YoLLaVAConfig",
    "build_methods",
]
