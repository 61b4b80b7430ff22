"""Metrics of plvm.eval on hand-made predictions (values, edge cases with empty denominators)."""

from __future__ import annotations

import pytest

from plvm.eval.metrics import binary_metrics, choice_metrics, f1_score, mention_metrics, roc_auc, safe_div


def test_binary_perfect_predictor():
    m = binary_metrics([True, True, False, False, False], [True, True, False, False, False])
    assert (m.tp, m.fp, m.tn, m.fn, m.invalid) == (2, 0, 3, 0, 0)
    assert m.pos_acc == m.neg_acc == m.mean_acc == m.acc == m.precision == m.recall == m.f1 == 1.0


def test_binary_mixed_with_unparsed_answers():
    labels = [True, True, True, False, False]
    preds = [True, False, None, True, False]
    m = binary_metrics(labels, preds)
    assert (m.tp, m.fn, m.fp, m.tn, m.invalid_pos, m.invalid_neg) == (1, 2, 1, 1, 1, 0)
    assert m.pos_acc == pytest.approx(1 / 3)
    assert m.neg_acc == pytest.approx(1 / 2)
    assert m.mean_acc == pytest.approx((1 / 3 + 1 / 2) / 2)  # the paper's mean: average of pos and neg acc
    assert m.acc == pytest.approx(2 / 5)
    assert m.precision == pytest.approx(1 / 2)
    assert m.recall == pytest.approx(1 / 3)
    assert m.f1 == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))


def test_binary_mean_acc_is_not_overall_accuracy():
    # 1 positive (missed), 9 negatives (all right): overall acc 0.9, mean acc 0.5
    m = binary_metrics([True] + [False] * 9, [False] * 10)
    assert m.acc == pytest.approx(0.9)
    assert m.mean_acc == pytest.approx(0.5)


def test_binary_zero_positives_is_defined():
    m = binary_metrics([False, False, False], [False, True, False])
    assert m.n_pos == 0 and m.tp == 0 and m.fp == 1
    assert m.recall == 0.0 and m.pos_acc == 0.0 and m.precision == 0.0 and m.f1 == 0.0
    assert m.neg_acc == pytest.approx(2 / 3)


def test_binary_zero_predicted_positives_is_defined():
    m = binary_metrics([True, True, False], [False, False, False])
    assert m.tp + m.fp == 0
    assert m.precision == 0.0 and m.recall == 0.0 and m.f1 == 0.0
    assert m.neg_acc == 1.0 and m.mean_acc == 0.5


def test_binary_unparsed_negative_is_wrong_but_not_a_predicted_positive():
    m = binary_metrics([False], [None])
    assert m.neg_acc == 0.0 and m.acc == 0.0
    assert m.fp == 0 and m.invalid_neg == 1 and m.n_neg == 1 and m.precision == 0.0


def test_binary_empty_and_mismatch():
    m = binary_metrics([], [])
    assert m.n == 0 and m.acc == 0.0 and m.mean_acc == 0.0 and m.f1 == 0.0
    with pytest.raises(ValueError):
        binary_metrics([True], [True, False])


def test_choice_metrics():
    m = choice_metrics(["A", "B", "C", "D"], ["A", None, "c", "A"])
    assert (m.n, m.correct, m.invalid) == (4, 2, 1)
    assert m.acc == pytest.approx(0.5)
    assert choice_metrics([], []).acc == 0.0
    assert choice_metrics(["B"], ["B"]).acc == 1.0


def test_mention_metrics_micro_counts():
    gold = [{"a"}, {"a", "b"}, set()]
    said = [{"a"}, {"a", "c"}, {"b"}]
    m = mention_metrics(gold, said)
    assert (m.tp, m.fp, m.fn) == (2, 2, 1)
    assert m.precision == pytest.approx(0.5)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m.captions_with_mention == 3


def test_mention_metrics_edge_cases():
    none_said = mention_metrics([{"a"}, {"b"}], [set(), set()])
    assert none_said.precision == 0.0 and none_said.recall == 0.0 and none_said.f1 == 0.0
    assert none_said.captions_with_mention == 0
    nothing_present = mention_metrics([set()], [set()])
    assert nothing_present.recall == 0.0 and nothing_present.precision == 0.0
    perfect = mention_metrics([{"a", "b"}, {"c"}], [{"a", "b"}, {"c"}])
    assert perfect.precision == perfect.recall == perfect.f1 == 1.0


def test_safe_div_and_f1():
    assert safe_div(1, 0) == 0.0 and safe_div(3, 4) == 0.75
    assert f1_score(0.0, 0.0) == 0.0 and f1_score(1.0, 1.0) == 1.0


def test_roc_auc_against_hand_counts():
    # 2 positives x 3 negatives = 6 pairs: 3 beats all three (3), 1 ties 1 (1/2) and loses to 2 and 2.5 -> 3.5 / 6
    assert roc_auc([3.0, 1.0], [1.0, 2.0, 2.5]) == pytest.approx(3.5 / 6)
    assert roc_auc([5.0], [1.0, 2.0]) == 1.0 and roc_auc([0.0], [1.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5  # a constant score separates nothing
    assert roc_auc([], [1.0]) is None and roc_auc([1.0], []) is None
