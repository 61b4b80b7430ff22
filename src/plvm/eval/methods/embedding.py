"""The embedding methods: ``<bo> is <t1>…<tk>.`` from PLVM's Aligner (one pass) or tuned per concept (Yo'LLaVA)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ...concept import ConceptEmbedding, ConceptError
from ...conversation import Conversation, single_turn
from ...injection import ConceptTensors, PersonalizedLVLM
from ...training.loss import shift_targets, weighted_answer_loss
from ..prompts import load_paper_templates
from ..readers import EvalDataset
from .base import Binding, Method

logger = logging.getLogger(__name__)


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
        return {
            **super().describe(),
            "preset": getattr(self.plvm, "preset", None),
            "k": self.plvm.aligner.config.num_queries,
        }


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

    ``cache``: a folder where each tuned concept is saved (``<concept id>.safetensors``) and reused by a later
    run whose tuning would be the same — same config, base model and revision, and the same training photos
    (a fingerprint of their paths). Tuning costs minutes per concept on a CPU, so a table over many concepts
    can be built over several runs. A reused concept reports the seconds its tuning took, not the load time.
    """

    key = "yollava"
    label = "Yo'LLaVA-style tuning"

    def __init__(
        self, lvlm: PersonalizedLVLM, config: YoLLaVAConfig = YoLLaVAConfig(), cache: str | Path | None = None
    ):
        super().__init__(lvlm)
        self.config = config
        self.cache = Path(cache) if cache is not None else None
        self.logs: dict[str, dict[str, Any]] = {}
        self.reused: list[str] = []
        self._tuning_seconds: dict[str, float] = {}
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

    def prepare(self, dataset: EvalDataset, concept_ids: Sequence[str], progress: bool = False) -> None:
        super().prepare(dataset, concept_ids, progress)
        self.prepare_seconds.update(self._tuning_seconds)  # a reused concept costs what its tuning cost

    def prepare_concept(self, dataset: EvalDataset, concept_id: str) -> None:
        key = self.cache_key(dataset, concept_id)
        path = self.cache / f"{concept_id}.safetensors" if self.cache is not None else None
        if path is not None and path.is_file():
            try:
                cached = ConceptEmbedding.load(
                    path, base_model=self.lvlm.base_model_id, hidden_size=self.lvlm.hidden_size
                )
            except ConceptError as exc:
                logger.warning("Yo'LLaVA cache: %s unusable (%s); tuning again", path, exc)
            else:
                if cached.metadata.get("cache_key") == key:
                    self.concepts[concept_id] = cached.renamed(dataset.concepts[concept_id].name)
                    self.logs[concept_id] = dict(cached.metadata.get("tuning", {}))
                    self._tuning_seconds[concept_id] = float(cached.metadata.get("tuning_seconds", 0.0))
                    self.reused.append(concept_id)
                    return
        start = time.perf_counter()
        concept = self.tune(dataset, concept_id)
        if path is not None:
            concept.metadata.update(
                cache_key=key, tuning=self.logs[concept_id], tuning_seconds=time.perf_counter() - start
            )
            concept.save(path)
        self.concepts[concept_id] = concept

    def cache_key(self, dataset: EvalDataset, concept_id: str) -> str:
        """What the tuning of ``concept_id`` depends on: config, base (model, revision) and training photos."""
        record = dataset.concepts[concept_id]

        def names(paths: Sequence[Path]) -> list[str]:  # relative to the dataset: a moved copy still matches
            root = Path(dataset.root)
            return [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in map(Path, paths)]

        photos = {
            cid: names(r.train_images) + (names(r.negative_images) if cid == concept_id else [])
            for cid, r in dataset.concepts.items()
        }
        blob = json.dumps(
            {
                "config": asdict(self.config),
                "base_model": self.lvlm.base_model_id,
                "base_revision": self.lvlm.base_revision,
                "name": record.name,
                "photos": photos,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

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
        placeholder = ConceptEmbedding(
            record.name, torch.zeros(d), torch.zeros(d), torch.zeros(cfg.k, d), self.lvlm.base_model_id
        )
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
                    convs.append(
                        single_turn(
                            question.replace("<sks>", name),
                            [placeholder],
                            image=image,
                            answer=answer.replace("<sks>", name),
                        )
                    )
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
        return {
            **super().describe(),
            "config": asdict(self.config),
            "tuning": dict(self.logs),
            "reused_from_cache": list(self.reused),
        }


__all__ = ["EmbeddingMethod", "PLVMMethod", "YoLLaVA", "YoLLaVAConfig"]
