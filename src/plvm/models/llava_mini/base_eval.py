"""Held-out check of a base LVLM (no personalization) on AvatarWorld's generic questions.

Three measurements:

* **open visual QA** (count, clothing colour / type, expression, hair colour, age, glasses, objects,
  indoor/outdoor; the question as asked in training, no options shown) — every well-formed answer of the
  question's kind (:func:`plvm.synth.qa.generic_vqa_candidates`) is scored by its log-likelihood (answer
  tokens + end of turn) and the best is the prediction; chance = mean of 1/#candidates. This measures
  whether the model *sees* the property, independent of the multiple-choice letter format;
* **multiple-choice visual QA** (count, position, clothing colour/type, expression) — the
  option letter with the highest first-token logit among the offered letters; chance = mean of 1/#options;
* **two-image same/different** ("Is the person in the first image the same person as in the second
  image?") — Yes/No log-odds > 0; chance = 50 %, and the majority-class rate is reported too. The
  log-odds' ROC AUC (threshold-free: does the model rank same pairs above different ones, even when its
  Yes/No bias is off?) is reported overall, by the second image's kind (``portrait`` / ``scene``) and by
  the negative's kind (``look-alike``: within ``hard_negative_distance`` attributes of the reference, or
  ``other``; each against all positives);
* **described person** ("Is there a young woman with long red hair in this image?", one photo): Yes for the
  description of someone present, No for one with 1–3 properties changed
  (:func:`plvm.synth.qa.described_person_vqa`) — the single-image check by which a frozen LVLM can
  recognise a concept that is *described* to it. Yes/No log-odds accuracy and ROC AUC, and both by the
  negatives' number of changes (1, 2, 3; each against all positives) and by the people in the photo (1–4).

Samples come from the *test* identities of the world (never seen in training), drawn with a fixed seed.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from plvm.eval.metrics import roc_auc
from plvm.injection import ConceptTensors, PersonalizedLVLM
from plvm.models.llava_mini.stage1_task import GenericExample, generic_conversation
from plvm.synth.qa import generic_vqa_candidates, open_kind_weights
from plvm.synth.samples import iter_generic_samples
from plvm.training.loss import shift_targets


@dataclass
class BaseEvalResult:
    open_accuracy: float
    open_chance: float
    open_by_kind: dict[str, dict[str, float]]
    vqa_accuracy: float
    vqa_chance: float
    vqa_by_kind: dict[str, dict[str, float]]
    same_accuracy: float
    same_majority: float
    same_positive_accuracy: float
    same_negative_accuracy: float
    same_auc: float
    same_by_kind: dict[str, dict[str, float]]
    n_open: int
    n_vqa: int
    n_same: int
    described_accuracy: float = float("nan")
    described_auc: float = float("nan")
    described_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    n_described: int = 0
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Strict JSON: a measure that was switched off (n = 0, value NaN) is written as ``null``."""
        return json.dumps(_nan_to_none(self.__dict__), indent=2, sort_keys=True, allow_nan=False)


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    return value


def _first_token_logits(lvlm: PersonalizedLVLM, example: GenericExample) -> torch.Tensor:
    conv = generic_conversation(example, with_answer=False)
    batch, _ = lvlm.prepare([conv])
    none = ConceptTensors.stack([[]], lvlm.hidden_size)
    with torch.no_grad():
        hidden, _ = lvlm.hidden_states(batch, none)
        return lvlm.logits_from_hidden(hidden[0, batch.lengths[0] - 1], none).float()


def candidate_logprobs(lvlm: PersonalizedLVLM, example: GenericExample, candidates: list[str]) -> torch.Tensor:
    """``[K]`` log-likelihood of each candidate answer (its tokens + the end of turn) after ``example``'s
    question and images, from one batched forward pass."""
    batch = lvlm.collate(
        [lvlm.encode(generic_conversation(GenericExample(example.images, example.question, c))) for c in candidates]
    )
    none = ConceptTensors.stack([[] for _ in candidates], lvlm.hidden_size)
    with torch.no_grad():
        hidden, _ = lvlm.hidden_states(batch, none)
        h, targets, _, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        logp = torch.log_softmax(lvlm.logits_for_rows(h, rows, none).float(), -1)
        token_lp = logp.gather(1, targets.unsqueeze(1)).squeeze(1)
    return torch.zeros(len(candidates)).index_add_(0, rows.cpu(), token_lp.cpu())


def _mean(values: list) -> float:
    """Mean of a measure, NaN when it was switched off (``to_json`` writes that as ``null``)."""
    return float(np.mean(values)) if len(values) else float("nan")


def _auc(positive_scores: list[float], negative_scores: list[float]) -> float:
    """ROC AUC (:func:`plvm.eval.metrics.roc_auc`), NaN when a side is empty (``to_json`` writes ``null``)."""
    value = roc_auc(positive_scores, negative_scores)
    return float("nan") if value is None else value


def _same_pair_kinds(
    world: Any, meta: dict[str, Any], graph: dict[str, Any] | None, same: bool, hard_negative_distance: int
) -> tuple[str, str | None]:
    """``(second image kind, negative kind)`` of a same-person sample: ``portrait``/``scene`` and, for a
    negative, ``look-alike`` (someone within ``hard_negative_distance`` attributes of the reference) or ``other``."""
    image_kind = "portrait" if graph is None else "scene"
    if same:
        return image_kind, None
    others = [meta["other"]] if graph is None else [p["identity"] for p in graph["people"]]
    ref = world.identity(meta["identity"])
    near = any(world.attribute_distance(ref, world.identity(o)) <= hard_negative_distance for o in others)
    return image_kind, "look-alike" if near else "other"


def _yes_no_log_odds(lvlm: PersonalizedLVLM, example: GenericExample) -> float:
    """log P(Yes) - log P(No) for the first answer token."""
    logits = torch.log_softmax(_first_token_logits(lvlm, example), -1)
    return float(torch.logsumexp(logits[lvlm.yes_ids], 0) - torch.logsumexp(logits[lvlm.no_ids], 0))


def evaluate_described(
    lvlm: PersonalizedLVLM, world: Any, n: int, seed: int = 1234
) -> tuple[float, float, dict[str, dict[str, float]], int]:
    """``n`` described-person questions on test scenes: ``(accuracy, AUC, breakdown, n)``; the breakdown
    has the negatives with 1, 2, 3 changed properties and the negatives in which each property was changed
    (each against all positives), and the photos with 1–4 people."""
    from plvm.synth.qa import DESCRIBED_PROPERTIES, described_person_vqa

    rng = np.random.default_rng([seed, 7])  # its own stream: the other measures' items stay the same
    rows: list[tuple[int, int, float]] = []  # (properties changed, people in the photo, log-odds); 0 = a Yes
    changed: list[list[str]] = []
    for _ in tqdm(range(n), desc="described person", mininterval=5, disable=n == 0):
        scene = world.sample_scene(rng, "test")
        item = described_person_vqa(scene.graph, rng)
        score = _yes_no_log_odds(lvlm, GenericExample([scene.image], item.question, item.answer, "vqa"))
        # the properties that really changed: meta["n_changed"] also counts a woman's skipped facial hair
        rows.append((len(item.meta["changed"]), len(scene.graph["people"]), score))
        changed.append(list(item.meta["changed"]))
    pos = [x for c, _, x in rows if c == 0]
    breakdown = {}
    for c in (1, 2, 3):
        neg = [x for k, _, x in rows if k == c]
        breakdown[f"changes: {c}"] = {"accuracy": _mean([x <= 0 for x in neg]), "n": len(neg), "auc": _auc(pos, neg)}
    for prop in DESCRIBED_PROPERTIES:
        neg = [x for (_, _, x), props in zip(rows, changed) if prop in props]
        breakdown[f"changed: {prop}"] = {"accuracy": _mean([x <= 0 for x in neg]), "n": len(neg), "auc": _auc(pos, neg)}
    for people in (1, 2, 3, 4):
        sub = [(c, x) for c, k, x in rows if k == people]
        breakdown[f"people: {people}"] = {
            "accuracy": _mean([(x > 0) == (c == 0) for c, x in sub]),
            "n": len(sub),
            "auc": _auc([x for c, x in sub if c == 0], [x for c, x in sub if c]),
        }
    accuracy = _mean([(x > 0) == (c == 0) for c, _, x in rows])
    return accuracy, _auc(pos, [x for c, _, x in rows if c]), breakdown, len(rows)


def letter_ids(lvlm: PersonalizedLVLM, letters: list[str]) -> list[list[int]]:
    return [sorted({lvlm.tokenizer.encode(s, add_special_tokens=False)[0] for s in (x, " " + x)}) for x in letters]


def evaluate_base(
    lvlm: PersonalizedLVLM,
    world: Any,
    n_vqa: int = 200,
    n_same: int = 200,
    seed: int = 1234,
    n_open: int | None = None,
    hard_negative_distance: int = 2,
    n_described: int = 0,
    open_kinds: Mapping[str, float] | None = None,
) -> BaseEvalResult:
    """Score ``n_open`` open (default ``n_vqa``) and ``n_vqa`` multiple-choice visual questions,
    ``n_same`` same-person questions and ``n_described`` described-person questions on test identities.

    ``open_kinds`` weights the open question kinds (:func:`plvm.synth.qa.open_kind_weights`), e.g. to score
    enough hair-colour questions; ``None`` draws the default stream. Each open kind is reported with its
    accuracy and the majority rate of its true answers (what always giving the commonest answer scores)."""
    from plvm.synth.qa import QA

    t0 = time.time()
    n_open = n_vqa if n_open is None else n_open
    rng = np.random.default_rng(seed)
    stream = iter_generic_samples(
        world,
        rng,
        split="test",
        weights=(0.0, 0.5, 0.5),
        hard_negative_distance=hard_negative_distance,
        open_kinds=open_kinds,
    )
    vqa_hits: dict[str, list[bool]] = defaultdict(list)
    open_hits: dict[str, list[bool]] = defaultdict(list)
    open_truths: dict[str, list[str]] = defaultdict(list)
    chance: list[float] = []
    open_chance: list[float] = []
    same_hits: list[tuple[bool, bool]] = []
    same_scores: list[tuple[bool, float, str, str | None]] = []  # (truth, log-odds, image kind, negative kind)
    bar = tqdm(total=n_open + n_vqa + n_same, desc="base eval", mininterval=5)
    while len(open_chance) < n_open or len(chance) < n_vqa or len(same_hits) < n_same:
        s = next(stream)
        ex = GenericExample(list(s.images), s.question, s.answer, s.kind)
        if s.kind == "vqa" and not s.meta["qa"]["options"] and len(open_chance) < n_open:
            cands = list(generic_vqa_candidates(QA(**s.meta["qa"])))
            scores = candidate_logprobs(lvlm, ex, cands)
            kind = str(s.meta["qa"]["meta"]["visual"])
            open_hits[kind].append(cands[int(scores.argmax())] == s.answer)
            open_truths[kind].append(s.answer)
            open_chance.append(1.0 / len(cands))
            bar.update(1)
        elif s.kind == "vqa" and s.meta["qa"]["options"] and len(chance) < n_vqa:
            options = s.meta["qa"]["options"]
            letters = sorted(options)
            logits = _first_token_logits(lvlm, ex)
            scores = [torch.logsumexp(logits[ids], 0).item() for ids in letter_ids(lvlm, letters)]
            pred = letters[int(np.argmax(scores))]
            vqa_hits[str(s.meta["qa"]["meta"].get("visual", "other"))].append(pred == s.answer)
            chance.append(1.0 / len(letters))
            bar.update(1)
        elif s.kind == "same_person" and len(same_hits) < n_same:
            score = _yes_no_log_odds(lvlm, ex)
            truth = s.answer == "Yes"
            same_hits.append((truth, bool(score > 0) == truth))
            same_scores.append(
                (truth, float(score), *_same_pair_kinds(world, s.meta, s.graphs[1], truth, hard_negative_distance))
            )
            bar.update(1)
    bar.close()
    described = evaluate_described(lvlm, world, n_described, seed)
    all_vqa = [h for hits in vqa_hits.values() for h in hits]
    all_open = [h for hits in open_hits.values() for h in hits]
    pos = [ok for truth, ok in same_hits if truth]
    neg = [ok for truth, ok in same_hits if not truth]
    share_pos = len(pos) / max(1, len(same_hits))
    pos_scores = [x for truth, x, _, _ in same_scores if truth]
    same_by_kind: dict[str, dict[str, float]] = {}
    for image_kind in ("portrait", "scene"):
        rows = [(truth, x) for truth, x, kind, _ in same_scores if kind == image_kind]
        same_by_kind[image_kind] = {
            "accuracy": _mean([(x > 0) == truth for truth, x in rows]),
            "n": len(rows),
            "auc": _auc([x for truth, x in rows if truth], [x for truth, x in rows if not truth]),
        }
    for neg_kind in ("look-alike", "other"):
        neg_scores = [x for truth, x, _, kind in same_scores if kind == neg_kind]
        same_by_kind["negatives: " + neg_kind] = {
            "accuracy": _mean([x <= 0 for x in neg_scores]),
            "n": len(neg_scores),
            "auc": _auc(pos_scores, neg_scores),
        }
    return BaseEvalResult(
        open_accuracy=_mean(all_open),
        open_chance=_mean(open_chance),
        open_by_kind={
            k: {
                "accuracy": float(np.mean(v)),
                "n": len(v),
                "majority": Counter(open_truths[k]).most_common(1)[0][1] / len(v),
            }
            for k, v in sorted(open_hits.items())
        },
        vqa_accuracy=_mean(all_vqa),
        vqa_chance=_mean(chance),
        vqa_by_kind={k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in sorted(vqa_hits.items())},
        same_accuracy=_mean([ok for _, ok in same_hits]),
        same_majority=float(max(share_pos, 1 - share_pos)) if same_hits else float("nan"),
        same_positive_accuracy=_mean(pos),
        same_negative_accuracy=_mean(neg),
        same_auc=_auc(pos_scores, [x for truth, x, _, _ in same_scores if not truth]),
        same_by_kind=same_by_kind,
        n_open=len(all_open),
        n_vqa=len(all_vqa),
        n_same=len(same_hits),
        described_accuracy=described[0],
        described_auc=described[1],
        described_by_kind=described[2],
        n_described=described[3],
        seconds=time.time() - t0,
        config={
            "seed": seed,
            "world_seed": getattr(world, "seed", None),
            "split": "test",
            "hard_negative_distance": hard_negative_distance,
            **({"open_kinds": open_kind_weights(open_kinds)} if open_kinds is not None else {}),
        },
    )
