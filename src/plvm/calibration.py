"""Data-dependent initialisation of the linear maps that feed a frozen LM (not in the paper).

Two steps shared by LLaVA-mini's projector (:func:`plvm.models.llava_mini.assembly.calibrate_projector`), the
Aligner (:meth:`plvm.aligner.Aligner.calibrate`) and the cosine fits of stage 0 and head anchoring
(:func:`plvm.training.word_anchor.fit_cosine`):

* :func:`fold_standardisation` — make a first ``nn.Linear`` read per-channel standardised inputs, folded
  exactly into its weights (DINOv2 tokens share a large common component);
* :func:`rescale_output` — scale a last ``nn.Linear`` so its outputs have the LM's embedding norm.
"""

from __future__ import annotations

import torch
from torch import nn


def channel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (floored at 1e-6) of ``x`` ``[N, d]``: ``(μ [d], σ [d])``."""
    x = x.float()
    return x.mean(0), x.std(0).clamp_min(1e-6)


@torch.no_grad()
def fold_statistics(linear: nn.Linear, mu: torch.Tensor, sigma: torch.Tensor) -> None:
    """Make ``linear`` compute its old map on ``(x - μ) / σ``: ``W ← W / σ``, ``b ← b - (W / σ) μ``."""
    w = linear.weight.float() / sigma
    linear.weight.copy_(w)
    linear.bias.copy_(linear.bias.float() - w @ mu)


@torch.no_grad()
def unfold_statistics(linear: nn.Linear, mu: torch.Tensor, sigma: torch.Tensor) -> None:
    """The inverse of :func:`fold_statistics`: ``linear`` then computes, on ``(x - μ) / σ``, the map it computed
    on ``x`` (``W ← W σ``, ``b ← b + W μ``) — so it can be trained on standardised inputs and folded back."""
    w = linear.weight.float()
    linear.bias.copy_(linear.bias.float() + w @ mu)
    linear.weight.copy_(w * sigma)


def fold_standardisation(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Make ``linear`` compute its old map on ``(x - μ) / σ`` (per-channel statistics of ``x`` ``[N, d_in]``):
    ``W ← W / σ``, ``b ← b - (W / σ) μ``. Returns ``μ`` ``[d_in]``."""
    mu, sigma = channel_statistics(x)
    fold_statistics(linear, mu, sigma)
    return mu


@torch.no_grad()
def rescale_output(linear: nn.Linear, outputs: torch.Tensor, target_norm: float | torch.Tensor) -> float:
    """Scale ``linear`` (weight and bias) so that ``outputs`` ``[..., d]`` — what it produced — would have mean
    L2 norm ``target_norm``; returns the factor."""
    factor = float(target_norm / outputs.float().norm(dim=-1).mean())
    linear.weight.mul_(factor)
    if linear.bias is not None:
        linear.bias.mul_(factor)
    return factor
