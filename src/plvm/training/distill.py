"""Distilling the image prompt into PLVM's recognition answer (not in the paper).

The frozen base answers "Is <sks> in this photo?" best when the reference photo itself is in the prompt
(``Here is <sks>: <reference image>.``, ~9× PLVM's tokens). The teacher is that prompt on the same frozen base; the
student is PLVM's prompt ``<sks> is <t1>…<tk>.`` on the same question and photo. For a recognition example the
distillation term is the squared gap of their Yes/No log-odds::

    L_distill = (s − (t − τ))²,   s, t = log p(Yes) − log p(No) of the student / teacher

``τ`` moves the teacher's zero point (the image prompt says "No" too often on AvatarWorld: its log-odds sit ~1.8
below a balanced threshold); the Eq. 2 answer loss still sets the student's own zero point. Only examples with a
query photo and a Yes/No answer take part (attribute QA has no photo to compare with).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..eval.prompts import IMAGE_PROMPT_TEMPLATE, IMAGE_SLOT, EvalConversation
from ..injection import PersonalizedLVLM

RECOGNITION_KINDS = ("recog_pos", "recog_neg")


def teacher_conversation(reference, query, question: str, name: str) -> EvalConversation:
    """The image prompt's conversation: ``Here is <name>: <reference>.`` then the photo and ``question``."""
    conv = EvalConversation()
    intro = IMAGE_PROMPT_TEMPLATE.format(name=name, image=IMAGE_SLOT)
    conv.raw_user(f"{intro}\n{IMAGE_SLOT}\n{question}", [reference, query])
    return conv


class ImagePromptTeacher:
    """Yes/No log-odds of the image prompt on the frozen base (no gradient).

    Args:
        lvlm: the frozen base (the student's own).
        name: how the question writes the concept (``<name>`` is plain text here).
    """

    def __init__(self, lvlm: PersonalizedLVLM, name: str):
        self.lvlm = lvlm
        self.name = name

    @torch.no_grad()
    def log_odds(self, examples: Sequence) -> torch.Tensor:
        """``[B]`` teacher log-odds of ``examples`` (each with ``reference``, ``query``, ``question``)."""
        convs = [teacher_conversation(ex.reference, ex.query, ex.question, self.name) for ex in examples]
        return self.lvlm.score_yes_no(convs).float()


def answer_log_odds(
    logits: torch.Tensor, is_word: torch.Tensor, rows: torch.Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's Yes/No log-odds at the first token of each row's answer word.

    Args:
        logits: ``[N, V']`` logits of the gathered answer positions (:func:`~plvm.training.loss.shift_targets`).
        is_word: ``[N]`` bool, the Yes/No word's tokens.
        rows: ``[N]`` batch row of each position.

    Returns:
        ``(log_odds [M], row [M])`` for the M rows that have an answer word.
    """
    idx = torch.nonzero(is_word).squeeze(-1)
    if idx.numel() == 0:
        return logits.new_zeros(0), rows.new_zeros(0)
    word_rows = rows[idx]
    first = torch.ones_like(word_rows, dtype=torch.bool)
    first[1:] = word_rows[1:] != word_rows[:-1]  # positions are in row order
    idx, word_rows = idx[first], word_rows[first]
    logp = torch.log_softmax(logits[idx].float(), dim=-1)
    yes = torch.logsumexp(logp[:, list(yes_ids)], dim=-1)
    no = torch.logsumexp(logp[:, list(no_ids)], dim=-1)
    return yes - no, word_rows


__all__ = ["ImagePromptTeacher", "RECOGNITION_KINDS", "answer_log_odds", "teacher_conversation"]
