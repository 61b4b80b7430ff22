"""Scoring answers of the frozen LVLM: Yes/No and option-letter logits in one forward, each option's text as the
answer (likelihood), or generation.

All methods are scored by the same :class:`Scorer` on the same :class:`~plvm.injection.PersonalizedLVLM`,
so the only thing that differs between methods is the conversation they build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..conversation import Conversation
from ..injection import PersonalizedLVLM
from ..training.loss import shift_targets
from .prompts import parse_letter, parse_yes_no
from .readers import LETTERS


@dataclass
class Decision:
    """One scored answer: the prediction (``None`` = unparsed), the logit score if any, the text if generated.

    For Yes/No ``pred`` is a bool and ``score`` the log-odds; for multiple choice ``pred`` is a letter and
    ``scores`` holds every option's log-probability.
    """

    pred: Optional[object]
    score: Optional[float] = None
    text: Optional[str] = None
    scores: Optional[dict[str, float]] = None


@dataclass
class Scorer:
    """Batched scoring on one LVLM.

    Args:
        lvlm: the frozen personalized LVLM every method runs on.
        batch_size: conversations per forward pass (fast paths).
    """

    lvlm: PersonalizedLVLM
    batch_size: int = 8
    _letter_ids: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)

    # ------------------------------------------------------------------ Yes / No
    def yes_no(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        """Log-odds ``log p(Yes) − log p(No)`` of the first answer token, ``[N]`` (``> 0`` means Yes).

        Uses :meth:`PersonalizedLVLM.score_yes_no` (one forward per batch of ``batch_size``).
        """
        out = [
            self.lvlm.score_yes_no(list(conversations[i : i + self.batch_size]))
            for i in range(0, len(conversations), self.batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0)

    # ------------------------------------------------------------------ option letters
    def letter_token_ids(self) -> dict[str, list[int]]:
        """First-token ids with which an answer can start with each letter (``"A"`` and ``" A"``).

        Ids shared by several letters (a bare space token in some tokenizers) are dropped, so each letter's
        score only reflects that letter.
        """
        if not self._letter_ids:
            tok = self.lvlm.tokenizer
            cand = {
                letter: {tok.encode(s, add_special_tokens=False)[0] for s in (letter, " " + letter)}
                for letter in LETTERS
            }
            counts: dict[int, int] = {}
            for ids in cand.values():
                for i in ids:
                    counts[i] = counts.get(i, 0) + 1
            for letter, ids in cand.items():
                kept = sorted(i for i in ids if counts[i] == 1)
                if not kept:
                    raise RuntimeError(f"the tokenizer has no token that starts an answer with {letter!r} alone")
                self._letter_ids[letter] = kept
        return self._letter_ids

    @torch.no_grad()
    def last_logprobs(self, conversations: Sequence[Conversation]) -> tuple[torch.Tensor, list[int]]:
        """Next-token log-probabilities after each prompt, ``[B, V + C]``, and the prompt lengths ``[B]``."""
        batch, tensors = self.lvlm.prepare(list(conversations))
        hidden, _ = self.lvlm.hidden_states(batch, tensors)
        last = torch.tensor(batch.lengths, device=hidden.device) - 1
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, d]
        logp = torch.log_softmax(self.lvlm.logits_from_hidden(h, tensors).float(), dim=-1)
        return logp.cpu(), list(batch.lengths)

    def letters(
        self, conversations: Sequence[Conversation], options: Sequence[Sequence[str]]
    ) -> list[dict[str, float]]:
        """For each conversation, ``{letter: log p(answer starts with letter)}`` over its options (one forward).

        Args:
            conversations: ``[N]`` prompts ending with the user's multiple-choice question.
            options: ``[N]`` the letters each question offers (e.g. ``["A", "B", "C"]``).
        """
        ids = self.letter_token_ids()
        out: list[dict[str, float]] = []
        for i in range(0, len(conversations), self.batch_size):
            logp, _ = self.last_logprobs(conversations[i : i + self.batch_size])
            for row, letters in zip(logp, options[i : i + self.batch_size]):
                out.append({c: float(torch.logsumexp(row[ids[c.upper()]], dim=-1)) for c in letters})
        return out

    # ------------------------------------------------------------------ option texts as answers
    @torch.no_grad()
    def answer_logprobs(self, conversations: Sequence[Conversation]) -> torch.Tensor:
        """``[N]`` mean log-probability per token of each conversation's closing assistant turn (its labelled
        tokens, the template's end-of-turn included) — the cloze score of multiple-choice evaluation."""
        out = []
        for i in range(0, len(conversations), self.batch_size):
            batch, tensors = self.lvlm.prepare(list(conversations[i : i + self.batch_size]))
            hidden, _ = self.lvlm.hidden_states(batch, tensors)
            h, targets, _, rows = shift_targets(hidden, batch.labels, batch.answer_word)
            logp = torch.log_softmax(self.lvlm.logits_for_rows(h, rows, tensors).float(), dim=-1)
            token = logp.gather(-1, targets[:, None])[:, 0]
            n = len(batch.lengths)
            total = torch.zeros(n, device=token.device).index_add_(0, rows, token)
            count = torch.zeros(n, device=token.device).index_add_(0, rows, torch.ones_like(token))
            if bool((count == 0).any()):
                raise ValueError("a conversation does not end with an assistant turn to score")
            out.append((total / count).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def option_likelihoods(
        self, conversations: Sequence[Conversation], options: Sequence[dict[str, str]]
    ) -> list[dict[str, float]]:
        """For each prompt, ``{letter: mean log p(option text as the answer)}`` (:meth:`answer_logprobs`)."""
        answered = []
        for conv, opts in zip(conversations, options):
            for text in opts.values():
                full = conv.copy()
                full.assistant(text)
                answered.append(full)
        scores = self.answer_logprobs(answered).tolist()
        out, k = [], 0
        for opts in options:
            out.append({letter: scores[k + j] for j, letter in enumerate(opts)})
            k += len(opts)
        return out

    # ------------------------------------------------------------------ generation
    def generate(self, conversation: Conversation, max_new_tokens: int) -> str:
        """Greedy answer text (concept tokens appear as ``<name>``)."""
        return self.lvlm.generate(conversation, max_new_tokens=max_new_tokens).text

    # ------------------------------------------------------------------ decisions (either mode)
    def decide_yes_no(
        self, conversations: Sequence[Conversation], mode: str = "logits", max_new_tokens: int = 8
    ) -> list[Decision]:
        """Yes/No decisions: ``mode="logits"`` (log-odds > 0, one forward per batch; also ``"likelihood"``, where the
        two options are the one-word answers "Yes" and "No") or ``"generate"`` (parse)."""
        if mode in ("logits", "likelihood"):
            return [Decision(bool(s > 0), float(s)) for s in self.yes_no(conversations)]
        if mode == "generate":
            out = []
            for conv in conversations:
                text = self.generate(conv, max_new_tokens)
                out.append(Decision(parse_yes_no(text), text=text))
            return out
        raise ValueError(f"unknown scoring mode {mode!r} (logits | generate)")

    def decide_letter(
        self,
        conversations: Sequence[Conversation],
        options: Sequence[dict[str, str]],
        mode: str = "logits",
        max_new_tokens: int = 8,
    ) -> list[Decision]:
        """Multiple-choice decisions: highest letter log-probability (``"logits"``), the option whose text is the
        likeliest answer (``"likelihood"``; the prompt should then ask the bare question), or the letter parsed from
        generated text (``"generate"``)."""
        if mode in ("logits", "likelihood"):
            if mode == "logits":
                scores = self.letters(conversations, [list(o) for o in options])
            else:
                scores = self.option_likelihoods(conversations, options)
            return [Decision(max(s, key=s.get), scores=s) for s in scores]
        if mode == "generate":
            out = []
            for conv, opts in zip(conversations, options):
                text = self.generate(conv, max_new_tokens)
                out.append(Decision(parse_letter(text, opts), text=text))
            return out
        raise ValueError(f"unknown scoring mode {mode!r} (logits | generate)")

    def prompt_length(self, conversation: Conversation) -> int:
        """Number of tokens of the prompt (image tokens and concept slots included)."""
        return len(self.lvlm.encode(conversation))


__all__ = ["Decision", "Scorer"]
