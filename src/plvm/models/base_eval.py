"""Held-out check of a base LVLM (no personalization) on AvatarWorld's generic questions.

Two measurements, both scored from the first answer token's logits in one forward pass:

* **generic visual QA** (multiple choice: count, position, clothing colour/type, expression) — the
  option letter with the highest logit among the offered letters; chance = mean of 1/#options;
* **two-image same/different** ("Is the person in the first image the same person as in the second
  image?") — Yes/No log-odds > 0; chance = 50 %, and the majority-class rate is reported too.

Samples come from the *test* identities of the world (never seen in training), drawn with a fixed seed.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..injection import ConceptTensors, PersonalizedLVLM
from ..training.stage1_task import GenericExample, generic_conversation


@dataclass
class BaseEvalResult:
    vqa_accuracy: float
    vqa_chance: float
    vqa_by_kind: dict[str, dict[str, float]]
    same_accuracy: float
    same_majority: float
    same_positive_accuracy: float
    same_negative_accuracy: float
    n_vqa: int
    n_same: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


def _first_token_logits(lvlm: PersonalizedLVLM, example: GenericExample) -> torch.Tensor:
    conv = generic_conversation(example, with_answer=False)
    batch, _ = lvlm.prepare([conv])
    none = ConceptTensors.stack([[]], lvlm.hidden_size)
    with torch.no_grad():
        hidden, _ = lvlm.hidden_states(batch, none)
        return lvlm.logits_from_hidden(hidden[0, batch.lengths[0] - 1], none).float()


def letter_ids(lvlm: PersonalizedLVLM, letters: list[str]) -> list[list[int]]:
    return [sorted({lvlm.tokenizer.encode(s, add_special_tokens=False)[0] for s in (x, " " + x)}) for x in letters]


def evaluate_base(
    lvlm: PersonalizedLVLM, world: Any, n_vqa: int = 200, n_same: int = 200, seed: int = 1234
) -> BaseEvalResult:
    """Score ``n_vqa`` multiple-choice and ``n_same`` same-person questions on test identities."""
    t0 = time.time()
    rng = np.random.default_rng(seed)
    stream = world.iter_generic_samples(rng, split="test", weights=(0.0, 0.5, 0.5))
    vqa_hits: dict[str, list[bool]] = defaultdict(list)
    chance: list[float] = []
    same_hits: list[tuple[bool, bool]] = []
    bar = tqdm(total=n_vqa + n_same, desc="base eval", mininterval=5)
    while len(chance) < n_vqa or len(same_hits) < n_same:
        s = next(stream)
        ex = GenericExample(list(s.images), s.question, s.answer, s.kind)
        if s.kind == "vqa" and s.meta["qa"]["options"] and len(chance) < n_vqa:
            options = s.meta["qa"]["options"]
            letters = sorted(options)
            logits = _first_token_logits(lvlm, ex)
            scores = [torch.logsumexp(logits[ids], 0).item() for ids in letter_ids(lvlm, letters)]
            pred = letters[int(np.argmax(scores))]
            vqa_hits[str(s.meta["qa"]["meta"].get("visual", "other"))].append(pred == s.answer)
            chance.append(1.0 / len(letters))
            bar.update(1)
        elif s.kind == "same_person" and len(same_hits) < n_same:
            logits = torch.log_softmax(_first_token_logits(lvlm, ex), -1)
            score = torch.logsumexp(logits[lvlm.yes_ids], 0) - torch.logsumexp(logits[lvlm.no_ids], 0)
            truth = s.answer == "Yes"
            same_hits.append((truth, bool(score > 0) == truth))
            bar.update(1)
    bar.close()
    all_vqa = [h for hits in vqa_hits.values() for h in hits]
    pos = [ok for truth, ok in same_hits if truth]
    neg = [ok for truth, ok in same_hits if not truth]
    share_pos = len(pos) / max(1, len(same_hits))
    return BaseEvalResult(
        vqa_accuracy=float(np.mean(all_vqa)),
        vqa_chance=float(np.mean(chance)),
        vqa_by_kind={k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in sorted(vqa_hits.items())},
        same_accuracy=float(np.mean([ok for _, ok in same_hits])),
        same_majority=float(max(share_pos, 1 - share_pos)),
        same_positive_accuracy=float(np.mean(pos)) if pos else float("nan"),
        same_negative_accuracy=float(np.mean(neg)) if neg else float("nan"),
        n_vqa=len(all_vqa),
        n_same=len(same_hits),
        seconds=time.time() - t0,
        config={"seed": seed, "world_seed": getattr(world, "seed", None), "split": "test"},
    )
