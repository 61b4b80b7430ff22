"""Direct targets on attention patterns: read one LM head's attention during a training forward, pool it over
regions and score it with a logistic loss.

LLaVA-mini v2's stage 1 (:class:`plvm.models.llava_mini.stage1_task.AttentionMatch`) teaches the base to compare
two people this way. Training only: the attention weights come from eager attention.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

Box = tuple[float, float, float, float]
"""A box in pixels: ``x0, y0, x1, y1``."""


def check_heads(model: Any, heads: Sequence[tuple[int, int]]) -> None:
    """Refuse a ``(layer, head)`` the LLaVA model's LM does not have."""
    text = model.config.text_config
    for layer, head in heads:
        if layer >= text.num_hidden_layers or head >= text.num_attention_heads:
            raise ValueError(
                f"attention head ({layer}, {head}) is not in the LM's "
                f"{text.num_hidden_layers} layers × {text.num_attention_heads} heads"
            )


@contextmanager
def captured_attention(model: Any, layers: Iterable[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, forwards of LLaVA ``model`` record the attention weights ``[B, H, T, T]`` of each LM
    layer in ``layers`` into the yielded dict (by layer). The model must run eager attention."""
    captured: dict[int, torch.Tensor] = {}
    blocks = model.model.language_model.layers
    hooks = []
    for layer in set(layers):

        def keep(_m: Any, _i: Any, out: Any, layer: int = layer) -> None:
            if out[1] is None:
                raise ValueError("the LM returned no attention weights: set its attention implementation to eager")
            captured[layer] = out[1]

        hooks.append(blocks[layer].self_attn.register_forward_hook(keep))
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


def pooled_attention_logodds(
    attention: torch.Tensor, rows: torch.Tensor, cells: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """``Σ_r w_kr · log(m_r / (1 − m_r))`` with ``m_r = Σ_{c ∈ cells} A[r, c]``: attention ``[..., T, T]`` (rows
    attend to columns), positions ``rows`` ``[R]`` and ``cells`` ``[C]``, ``weights`` ``[K, R]`` → ``[..., K]``."""
    mass = attention[..., rows, :][..., cells].sum(-1).float().clamp(1e-6, 1 - 1e-6)  # [..., R]
    return (torch.log(mass) - torch.log1p(-mass)) @ weights.to(mass.device).T


def bce_with_logs(z: torch.Tensor, labels: Sequence[float], name: str) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE of logits ``z`` ``[N]`` against 0/1 ``labels``, with its loss, accuracy and (both classes) AUC logged."""
    from plvm.eval.metrics import roc_auc

    target = torch.tensor(list(labels), device=z.device, dtype=torch.float32)
    loss = nn.functional.binary_cross_entropy_with_logits(z.float(), target)
    with torch.no_grad():
        logs = {f"loss_{name}": float(loss), f"{name}_acc": float(((z > 0).float() == target).float().mean())}
        pos, neg = z[target > 0.5].tolist(), z[target < 0.5].tolist()
        if pos and neg:  # 0.5: the head does not tell the two apart
            logs[f"{name}_auc"] = float(roc_auc(pos, neg))
    return loss, logs
