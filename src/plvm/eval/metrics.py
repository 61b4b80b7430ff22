"""Metrics of the evaluation harness, computed from plain predictions (no model in here).

Conventions (the same everywhere in :mod:`plvm.eval`):

* A binary prediction is ``True`` (the model said Yes), ``False`` (No) or ``None`` (the answer could not be
  parsed). ``None`` is never correct: it counts as a miss for a positive and as an error for a negative, but
  it is *not* a predicted positive, so it does not enter the precision denominator.
* Every ratio with an empty denominator is defined as ``0.0`` (no exception, no NaN): precision with zero
  predicted positives, recall with zero positives, F1 when precision + recall = 0, accuracy of an empty set.
  The counts are always reported next to the ratios so a reader can tell "0 because empty" from "0 because
  wrong".
* ``mean_acc`` is the paper's "mean accuracy" (§4.1, Table 1): the average of the positive accuracy and the
  negative accuracy (a balanced accuracy), not the accuracy over all examples (that is ``acc``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence


def safe_div(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or ``0.0`` when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator else 0.0


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall; ``0.0`` when both are 0."""
    return safe_div(2.0 * precision * recall, precision + recall)


def roc_auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> Optional[float]:
    """Threshold-free ranking quality of a score (e.g. Yes/No log-odds): P(a random positive scores above a
    random negative), ties counted ½ — the Mann–Whitney U statistic over ``n₊·n₋`` pairs.

    0.5 = the score does not separate the classes (whatever the Yes/No bias); ``None`` when either side is
    empty (undefined, not 0 — unlike the ratios above, 0 would mean a perfectly inverted ranking).
    """
    if not len(positive_scores) or not len(negative_scores):
        return None
    wins = 0.0
    for p in positive_scores:
        for n in negative_scores:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(positive_scores) * len(negative_scores))


def score_auc(labels: Sequence[bool], scores: Sequence[Optional[float]]) -> Optional[float]:
    """:func:`roc_auc` of per-question Yes/No scores split by their labels; ``None`` when any score is missing
    (e.g. ``scoring="generate"``) or a class is empty."""
    if any(s is None for s in scores):
        return None
    return roc_auc([s for s, y in zip(scores, labels) if y], [s for s, y in zip(scores, labels) if not y])


@dataclass
class BinaryMetrics:
    """Confusion counts and the ratios derived from them.

    Attributes:
        tp, fp, tn, fn: confusion counts; an unparsed answer (``None``) on a positive is a ``fn``, on a
            negative it is counted in ``invalid_neg`` (an error, but not a predicted positive).
        invalid: number of unparsed answers (``invalid_pos + invalid_neg``).
        pos_acc: accuracy on positives (= recall).
        neg_acc: accuracy on negatives (``tn / n_neg``).
        mean_acc: ``(pos_acc + neg_acc) / 2`` — the paper's mean accuracy.
        acc: accuracy over all examples.
        precision, recall, f1: for the positive class.
    """

    n: int
    n_pos: int
    n_neg: int
    tp: int
    fp: int
    tn: int
    fn: int
    invalid: int
    invalid_pos: int
    invalid_neg: int
    pos_acc: float
    neg_acc: float
    mean_acc: float
    acc: float
    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def binary_metrics(labels: Sequence[bool], predictions: Sequence[Optional[bool]]) -> BinaryMetrics:
    """Recognition-style metrics of Yes/No predictions.

    Args:
        labels: ``[N]`` ground truth (True = the concept is there / the answer is Yes).
        predictions: ``[N]`` True / False / None (unparsed).
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    tp = fp = tn = fn = inv_pos = inv_neg = 0
    for label, pred in zip(labels, predictions):
        label = bool(label)
        if pred is None:
            if label:
                fn += 1
                inv_pos += 1
            else:
                inv_neg += 1
        elif label and pred:
            tp += 1
        elif label:
            fn += 1
        elif pred:
            fp += 1
        else:
            tn += 1
    n_pos, n_neg = tp + fn, fp + tn + inv_neg
    pos_acc, neg_acc = safe_div(tp, n_pos), safe_div(tn, n_neg)
    precision, recall = safe_div(tp, tp + fp), safe_div(tp, n_pos)
    return BinaryMetrics(
        n=n_pos + n_neg,
        n_pos=n_pos,
        n_neg=n_neg,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        invalid=inv_pos + inv_neg,
        invalid_pos=inv_pos,
        invalid_neg=inv_neg,
        pos_acc=pos_acc,
        neg_acc=neg_acc,
        mean_acc=(pos_acc + neg_acc) / 2.0,
        acc=safe_div(tp + tn, n_pos + n_neg),
        precision=precision,
        recall=recall,
        f1=f1_score(precision, recall),
    )


def best_threshold(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """The score threshold ``t`` ("Yes" iff ``score > t``) with the highest mean accuracy on these examples.

    Candidates are the midpoints between consecutive distinct scores (and below the lowest / above the
    highest); ties of mean accuracy go to the threshold closest to 0, the model's own Yes/No boundary."""
    if len(scores) != len(labels) or not len(scores):
        raise ValueError("best_threshold needs as many labels as scores, at least one")
    values = sorted(set(float(x) for x in scores))
    candidates = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1.0]

    def mean_acc(t: float) -> float:
        return binary_metrics(labels, [x > t for x in scores]).mean_acc

    return max(candidates, key=lambda t: (round(mean_acc(t), 12), -abs(t)))


def cross_fitted_metrics(
    scores: Sequence[float], labels: Sequence[bool], groups: Sequence[str], folds: int = 2
) -> dict[str, Any]:
    """Yes/No metrics at a *calibrated* threshold that never saw the examples it decides.

    ``groups`` (e.g. the concept asked about) are dealt into ``folds`` folds by sorted name; each fold is decided
    at :func:`best_threshold` of the other folds' examples, so no threshold is fitted on the identities it is
    scored on. Returns :meth:`BinaryMetrics.to_dict` plus ``"thresholds"`` (one per fold)."""
    if not len(scores) == len(labels) == len(groups):
        raise ValueError("scores, labels and groups must have the same length")
    names = sorted(set(groups))
    if len(names) < folds:
        raise ValueError(f"{len(names)} groups cannot fill {folds} folds")
    fold_of = {name: i % folds for i, name in enumerate(names)}
    preds: list[Optional[bool]] = [None] * len(scores)
    thresholds = []
    for f in range(folds):
        train = [i for i, g in enumerate(groups) if fold_of[g] != f]
        t = best_threshold([scores[i] for i in train], [labels[i] for i in train])
        thresholds.append(t)
        for i, g in enumerate(groups):
            if fold_of[g] == f:
                preds[i] = scores[i] > t
    return {**binary_metrics(labels, preds).to_dict(), "thresholds": thresholds}


@dataclass
class ChoiceMetrics:
    """Multiple-choice accuracy. ``invalid`` answers (no letter could be read) are wrong."""

    n: int
    correct: int
    invalid: int
    acc: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choice_metrics(answers: Sequence[str], predictions: Sequence[Optional[str]]) -> ChoiceMetrics:
    """Accuracy of predicted option letters ``[N]`` (``None`` = unparsed) against the correct letters ``[N]``."""
    if len(answers) != len(predictions):
        raise ValueError(f"{len(answers)} answers but {len(predictions)} predictions")
    correct = sum(1 for a, p in zip(answers, predictions) if p is not None and p.upper() == a.upper())
    invalid = sum(1 for p in predictions if p is None)
    return ChoiceMetrics(n=len(answers), correct=correct, invalid=invalid, acc=safe_div(correct, len(answers)))


@dataclass
class MentionMetrics:
    """Micro-averaged precision / recall / F1 of concept mentions (captioning).

    Per caption: ``tp`` = mentioned concepts that are in the image, ``fp`` = mentioned concepts that are
    not, ``fn`` = concepts in the image that were not mentioned; summed over captions.
    ``captions_with_mention`` counts captions that mention at least one concept.
    """

    n: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    captions_with_mention: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mention_metrics(gold: Iterable[Iterable[str]], mentioned: Iterable[Iterable[str]]) -> MentionMetrics:
    """Mentions in ``[N]`` captions (sets of concept ids) against the concepts present ``[N]``."""
    gold, mentioned = [set(g) for g in gold], [set(m) for m in mentioned]
    if len(gold) != len(mentioned):
        raise ValueError(f"{len(gold)} gold sets but {len(mentioned)} mention sets")
    tp = sum(len(g & m) for g, m in zip(gold, mentioned))
    fp = sum(len(m - g) for g, m in zip(gold, mentioned))
    fn = sum(len(g - m) for g, m in zip(gold, mentioned))
    precision, recall = safe_div(tp, tp + fp), safe_div(tp, tp + fn)
    return MentionMetrics(
        n=len(gold),
        tp=tp,
        fp=fp,
        fn=fn,
        precision=precision,
        recall=recall,
        f1=f1_score(precision, recall),
        captions_with_mention=sum(1 for m in mentioned if m),
    )


__all__ = [
    "BinaryMetrics",
    "ChoiceMetrics",
    "MentionMetrics",
    "binary_metrics",
    "choice_metrics",
    "f1_score",
    "mention_metrics",
    "safe_div",
]
