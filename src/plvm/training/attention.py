"""Direct targets on attention patterns: read one LM head's attention during a training forward, pool it over
regions and score it with a logistic loss.

LLaVA-mini v2's stage 1 (:class:`plvm.models.llava_mini.stage1_task.AttentionMatch`) teaches the base to compare
two people this way, and the Aligner's compare target (:class:`plvm.training.aligner_task.AlignerTaskConfig`'s
``attention_match``) asks the Aligner for context tokens that the same head matches to the concept's head in a
query photo. Training only: the attention weights come from eager attention.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

Box = tuple[float, float, float, float]
"""A box in pixels: ``x0, y0, x1, y1``."""


def parse_head(text: str) -> tuple[int, int]:
    """``"8,0"`` → ``(8, 0)``, an LM attention head as ``layer,head``; ``ValueError`` otherwise."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"an attention head is 'layer,head', e.g. 8,0; got {text!r}")
    layer, head = (int(p) for p in parts)
    if layer < 0 or head < 0:
        raise ValueError(f"attention head layer and index must be >= 0, got {text!r}")
    return layer, head


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


def region_attention_logodds(
    attention: torch.Tensor,
    ids: torch.Tensor,
    image_token_id: int,
    image_size: tuple[int, int],
    boxes: Sequence[Box],
    cells: torch.Tensor,
) -> torch.Tensor:
    """Per box of the prompt's one image, the pooled attention log-odds of its patches onto positions ``cells``
    ``[C]``: attention ``[..., T, T]``, ``ids`` ``[T]``, the image ``(width, height)`` in px → ``[..., n_boxes]``.
    The image's tokens (``image_token_id`` in ``ids``) form a square grid of patches."""
    from plvm.diag.identity_probe import region_weights

    query = (ids == image_token_id).nonzero().squeeze(-1)
    grid = round(query.numel() ** 0.5)
    if not boxes or grid == 0 or grid * grid != query.numel():
        raise ValueError(
            f"need boxes and one square grid of image tokens; got {len(boxes)} boxes, {query.numel()} tokens"
        )
    weights = torch.stack([region_weights(box, *image_size, grid) for box in boxes])
    return pooled_attention_logodds(attention, query, cells, weights)


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
