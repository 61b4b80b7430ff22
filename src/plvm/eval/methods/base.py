"""The interface of a method compared by the harness (:class:`Method`) and how a question binds its names to
concepts (:class:`Binding`); the methods themselves are in :mod:`plvm.eval.methods`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ...conversation import Conversation
from ...injection import PersonalizedLVLM
from ..readers import EvalDataset


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
        """Prompt tokens this method spends on one concept (see :mod:`plvm.eval.methods`)."""
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


__all__ = ["Binding", "Method"]
