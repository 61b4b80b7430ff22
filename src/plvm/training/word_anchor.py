"""Word anchoring: regress a module's outputs onto target directions (``1 - cos``), typically the LM's own
word embeddings (not in the paper).

* :class:`WordTargets` — the normalised mean input embedding of a word list;
* :func:`fit_cosine` — train one module alone so its outputs point along such targets, then rescale its last
  layer to the targets' mean norm.

LLaVA-mini's stage 0 (the projector's patches anchored to the words of what they show) uses the same fit:
:mod:`plvm.models.llava_mini.anchor`; so does the Aligner's head anchoring (:mod:`plvm.training.head_anchor`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..calibration import rescale_output


class WordTargets:
    """Normalised mean input embedding of a word list (cached per list)."""

    def __init__(self, tokenizer: Any, embeddings: torch.Tensor):
        self.tokenizer = tokenizer
        self.embeddings = embeddings.detach().float()
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}

    def word(self, word: str) -> torch.Tensor:
        ids = self.tokenizer.encode(" " + word, add_special_tokens=False)
        return self.embeddings[ids[0]]

    def __call__(self, words: Sequence[str]) -> torch.Tensor:
        key = tuple(words)
        if key not in self._cache:
            self._cache[key] = F.normalize(torch.stack([self.word(w) for w in words]).mean(0), dim=0)
        return self._cache[key]


def anchor_loss(projected: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` averaged over patches. ``projected``, ``targets``: ``[N, P, d]``."""
    return (1.0 - F.cosine_similarity(projected.float(), targets, dim=-1)).mean()


def fit_cosine(
    module: torch.nn.Module,
    last: torch.nn.Linear,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    target_norm: torch.Tensor,
    desc: str,
) -> tuple[float, float, float]:
    """Train ``module`` (alone, AdamW) so that ``module(inputs)`` ``[N, P, d]`` points along ``targets``; the
    last 10 % of the rows are held out. The cosine loss leaves the length free, so afterwards ``last`` is
    rescaled to give held-out outputs the mean norm ``target_norm``. Restores ``requires_grad``.

    Returns ``(held-out loss before, after, output scale)``.
    """
    n_val = max(1, len(inputs) // 10)
    train_idx = np.arange(len(inputs) - n_val)
    val = slice(len(inputs) - n_val, len(inputs))
    dtype = next(module.parameters()).dtype

    def val_loss() -> float:
        with torch.no_grad():
            return float(anchor_loss(module(inputs[val].to(dtype)), targets[val]))

    before = val_loss()
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(True)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    for _ in tqdm(range(steps), desc=desc, mininterval=5):
        idx = rng.choice(train_idx, size=min(batch_size, len(train_idx)), replace=False)
        loss = anchor_loss(module(inputs[idx].to(dtype)), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p, flag in zip(module.parameters(), flags):
        p.requires_grad_(flag)
    after = val_loss()
    with torch.no_grad():
        factor = rescale_output(last, module(inputs[val].to(dtype)), target_norm)
    return before, after, factor
