"""Data-dependent initialisation of the linear maps that feed a frozen LM (not in the paper).

Two steps shared by LLaVA-mini's projector (:func:`plvm.models.mini.calibrate_projector`), the Aligner
(:meth:`plvm.aligner.Aligner.calibrate`) and stage 0 (:mod:`plvm.training.anchor`):

* :func:`fold_standardisation` — make a first ``nn.Linear`` read per-channel standardised inputs, folded
  exactly into its weights (DINOv2 tokens share a large common component);
* :func:`rescale_output` — scale a last ``nn.Linear`` so its outputs have the LM's embedding norm.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def fold_standardisation(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Make ``linear`` compute its old map on ``(x - μ) / σ`` (per-channel statistics of ``x`` ``[N, d_in]``):
    ``W ← W / σ``, ``b ← b - (W / σ) μ``. Returns ``μ`` ``[d_in]``."""
    x = x.float()
    mu, sigma = x.mean(0), x.std(0).clamp_min(1e-6)
    w = linear.weight.float() / sigma
    linear.weight.copy_(w)
    linear.bias.copy_(linear.bias.float() - w @ mu)
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
