"""Configuration of an evaluation run (stored verbatim in ``results.json``) and the per-task context."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

import numpy as np

from .prompts import MC_INSTRUCTION, RECOGNITION_QUESTION, load_paper_templates
from .readers import EvalDataset
from .scoring import Scorer

TASKS = ("recog", "textqa", "vqa", "multi", "caption")
T = TypeVar("T")


#: ``EvalConfig.scoring`` values.
SCORING_MODES = ("logits", "likelihood", "generate")


def _multi_question() -> str:
    return load_paper_templates()["mc_llava_recognition_query"].replace("<sks>", "{names}")


def _caption_prompts() -> dict[str, str]:
    t = load_paper_templates()
    return {"neutral": t["caption_prompt_neutral"], "primed": t["caption_prompt_primed"]}


@dataclass
class EvalConfig:
    """Every knob of a run.

    Attributes:
        tasks: subset of ``recog, textqa, vqa, multi, caption``.
        seed: seeds negative sampling, controls, distractors and ``limit`` subsets (all methods see the
            same items).
        scoring: ``"logits"`` — Yes/No log-odds or option-letter log-probabilities from one forward;
            ``"likelihood"`` — multiple choice asked as the bare question, each option's text scored as the
            answer (mean token log-probability; Yes/No as with ``"logits"``), for a base that knows answers but
            does not map them to letters; ``"generate"`` — greedy answer text, parsed. Captioning always generates.
        negatives_per_image: recognition negatives per query image (other identities, sampled without
            replacement; fewer if the dataset has fewer other identities).
        recognition_question: the recognition question, ``<sks>`` = the concept.
        mc_instruction: appended after the options of multiple-choice questions.
        multi_question: multi-concept question; ``{names}`` becomes ``<a>``, ``<a> and <b>``, …
        scenario_size: multi-concept: concepts asked about per image, one at a time (its own, then seeded absent
            ones of the scenario), when the scenario has more.
        max_set_size: largest concept set asked in one multi-concept "set" question.
        caption_prompts: name → prompt; ``<sks>`` becomes the introduced concepts.
        caption_distractors: concepts introduced in addition to those in the image (captioning).
        caption_max_new_tokens / answer_max_new_tokens: generation lengths.
        limit: at most this many items per task (a seeded subset); ``caption_limit`` overrides it for
            captioning (the slow task), ``multi_limit`` for multi-concept recognition (a run can give it more
            items so that its split and kind AUCs get a smaller standard error).
        batch_size: prompts per forward pass.
        phrase: neutral phrase of the no-personalization rewrite.
        controls: run the wrong-concept and no-personalization QA controls.
    """

    tasks: tuple[str, ...] = TASKS
    seed: int = 0
    scoring: str = "logits"
    negatives_per_image: int = 3
    recognition_question: str = RECOGNITION_QUESTION
    mc_instruction: str = MC_INSTRUCTION
    multi_question: str = field(default_factory=_multi_question)
    scenario_size: int = 4
    max_set_size: int = 4
    caption_prompts: dict[str, str] = field(default_factory=_caption_prompts)
    caption_distractors: int = 1
    caption_max_new_tokens: int = 48
    answer_max_new_tokens: int = 8
    limit: int | None = None
    caption_limit: int | None = None
    multi_limit: int | None = None
    batch_size: int = 8
    phrase: str = "the person"
    controls: bool = True

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
        if self.scoring not in SCORING_MODES:
            raise ValueError(f"scoring must be one of {SCORING_MODES}, not {self.scoring!r}")
        if self.scenario_size < 1 or self.max_set_size < 2:
            raise ValueError(
                f"scenario_size must be ≥ 1 and max_set_size ≥ 2, got {self.scenario_size} and {self.max_set_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def limit_for(self, task: str) -> int | None:
        """The item limit of ``task``: its own override (``caption_limit``, ``multi_limit``) or ``limit``."""
        own = {"caption": self.caption_limit, "multi": self.multi_limit}.get(task)
        return own if own is not None else self.limit

    def rng(self, stream: str) -> np.random.Generator:
        """An independent, reproducible generator per named stream (``"recog"``, ``"qa-controls"``, …)."""
        return np.random.default_rng([self.seed, *stream.encode()])


@dataclass
class TaskContext:
    """What a task's ``evaluate`` needs besides the method and its items."""

    scorer: Scorer
    dataset: EvalDataset
    config: EvalConfig
    progress: bool = False

    def rel(self, path: Any) -> str | None:
        """``path`` relative to the dataset root (for the predictions file)."""
        if path is None:
            return None
        try:
            return str(path.relative_to(self.dataset.root))
        except ValueError:
            return str(path)


def limit_items(items: Sequence[T], limit: int | None, rng: np.random.Generator) -> list[T]:
    """A seeded subset of at most ``limit`` items, in their original order."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(rng.choice(len(items), size=max(0, limit), replace=False).tolist())
    return [items[i] for i in keep]


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


__all__ = ["EvalConfig", "TASKS", "TaskContext", "chunks", "limit_items"]
