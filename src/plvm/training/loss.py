"""The training objective of PLVM (§3.2, Eq. 2): masked LM loss over the answer, Yes/No word weighted.

For answer tokens ``t`` with targets ``y_t`` and weights ``w_t`` (``w`` on the token(s) of the answer's
Yes/No word, 1 elsewhere)::

    L = Σ_t w_t · CE(logits_t, y_t) / Σ_t w_t

With ``w = 1`` this is the plain mean cross-entropy over answer tokens. The paper finds w ≈ 10–20 best;
w = 1 lets the long, shared answer text dominate and collapses positive recognition (its Table 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_targets(
    hidden: torch.Tensor, labels: torch.Tensor, answer_word: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the positions that predict a labelled token (next-token shift).

    Args:
        hidden: ``[B, T, d]`` hidden states (or logits) of the whole sequence.
        labels: ``[B, T]`` target ids at the positions where they *appear* (``IGNORE_INDEX`` elsewhere).
        answer_word: ``[B, T]`` bool, True where the appearing token belongs to the Yes/No answer word.

    Returns:
        ``(h [N, d], targets [N], is_answer_word [N], rows [N])`` for the N labelled tokens; ``h`` is taken
        at the position *before* each target and ``rows`` is the batch row each comes from.
    """
    shifted_labels = labels[:, 1:].to(hidden.device)
    keep = shifted_labels != IGNORE_INDEX
    rows = torch.arange(labels.shape[0], device=hidden.device).unsqueeze(1).expand_as(shifted_labels)
    return hidden[:, :-1][keep], shifted_labels[keep], answer_word[:, 1:].to(hidden.device)[keep], rows[keep]


def weighted_answer_loss(
    logits: torch.Tensor, targets: torch.Tensor, is_answer_word: torch.Tensor, word_weight: float = 10.0
) -> torch.Tensor:
    """Eq. 2 on gathered positions.

    Args:
        logits: ``[N, V']`` logits of the N answer positions (``V'`` = vocabulary + concept columns).
        targets: ``[N]`` target ids.
        is_answer_word: ``[N]`` bool, the Yes/No word's tokens.
        word_weight: ``w``; 1 gives the plain mean cross-entropy.

    Returns:
        Scalar loss (0 if there is no target).
    """
    if targets.numel() == 0:
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    weights = torch.where(is_answer_word, torch.full_like(ce, float(word_weight)), torch.ones_like(ce))
    return (weights * ce).sum() / weights.sum()
