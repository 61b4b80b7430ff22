"""Eq. 2: the weighted masked-LM loss."""

import math

import torch
import torch.nn.functional as F

from plvm.training.loss import IGNORE_INDEX, shift_targets, weighted_answer_loss


def test_hand_computed_example():
    # two answer tokens: the Yes word (uniform over 2 classes) and a following token (certain)
    logits = torch.tensor([[0.0, 0.0, -1e4], [-1e4, -1e4, 0.0]])
    targets = torch.tensor([0, 2])
    word = torch.tensor([True, False])
    # CE = [ln 2, 0]; w = 10 → (10 ln2 + 0) / 11
    got = weighted_answer_loss(logits, targets, word, word_weight=10.0)
    assert math.isclose(got.item(), 10 * math.log(2) / 11, rel_tol=1e-6)


def test_w1_is_plain_mean_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 11, generator=g)
    targets = torch.randint(0, 11, (7,), generator=g)
    word = torch.tensor([True, True, False, False, False, False, False])
    plain = F.cross_entropy(logits, targets)
    torch.testing.assert_close(weighted_answer_loss(logits, targets, word, 1.0), plain)
    # a larger weight moves the loss towards the answer word's CE
    ce = F.cross_entropy(logits, targets, reduction="none")
    heavy = weighted_answer_loss(logits, targets, word, 1000.0)
    assert abs(heavy - ce[:2].mean()) < abs(plain - ce[:2].mean())


def test_shift_targets_predicts_next_token():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 3], labels[0, 4], labels[1, 2] = 7, 8, 9
    word = torch.zeros(2, 5, dtype=torch.bool)
    word[0, 3] = True
    h, t, w, rows = shift_targets(hidden, labels, word)
    assert h.squeeze(-1).tolist() == [2.0, 3.0, 6.0]  # positions 2, 3 of sample 0 and 1 of sample 1
    assert rows.tolist() == [0, 0, 1]
    assert t.tolist() == [7, 8, 9] and w.tolist() == [True, False, False]


def test_empty_targets_give_zero_with_gradient():
    logits = torch.randn(0, 5, requires_grad=True)
    loss = weighted_answer_loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
