"""Head anchoring: the Aligner's context tokens start as the base's own image tokens of the reference's head (not in
the paper; an initialisation before Eq. 2 training).

LLaVA-mini v2 was taught to compare a person in a photo with a reference image's head shown before it
(:class:`plvm.models.llava_mini.stage1_task.AttentionMatch`). On held-out twins the frozen v2 answers PLVM's
``<sks> is <t1>…<t16>.`` nearly as well as the image prompt (Yes/No AUC 0.73 against 0.79) when ``<t1>…<t16>`` *are*
the reference's projected head tokens average-pooled to 4 × 4 (experiments/aligner-v2-base.md); Eq. 2 alone did not
find such tokens. So context token ``j`` is regressed (``1 - cos``, then rescaled to the targets' mean norm;
:func:`~plvm.training.word_anchor.fit_cosine` of the resampler) onto cell ``j`` of the √k × √k average pool of the
base's image tokens over the reference's head box:

    target[j] = AdaptiveAvgPool_{√k×√k}( P(tower(reference))[head box rows, head box cols] )[j]     # [k, d_llm]

Only the resampler trains; the head boxes are AvatarWorld's ground truth (training only).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..diag.identity_probe import region_weights
from .attention import Box
from .word_anchor import fit_cosine


def head_grid_tokens(tokens: torch.Tensor, box: Box, width: int, height: int, k: int) -> torch.Tensor:
    """Image tokens ``[G², d]`` of one image → ``[k, d]``: the tokens of the patches ``box`` (px) touches, as a
    ``rows × cols`` grid average-pooled to √k × √k (row-major). ``k`` must be a square."""
    side = math.isqrt(k)
    if side * side != k:
        raise ValueError(f"head anchoring pools to a square grid: k = {k} is not a square")
    grid = math.isqrt(tokens.shape[0])
    touched = (region_weights(box, width, height, grid) > 0).reshape(grid, grid).nonzero()
    if len(touched) == 0:
        raise ValueError(f"head box {box} covers no patch of a {width}×{height} image")
    (r0, c0), (r1, c1) = touched.min(0).values, touched.max(0).values + 1
    cells = tokens.reshape(grid, grid, -1)[r0:r1, c0:c1].permute(2, 0, 1)  # [d, rows, cols]
    return torch.nn.functional.adaptive_avg_pool2d(cells[None].float(), side)[0].flatten(1).T


@torch.no_grad()
def base_head_targets(
    model: Any, image_processor: Any, samples: Sequence[tuple[Any, Box]], k: int, batch_size: int = 16
) -> torch.Tensor:
    """``[N, k, d_llm]`` :func:`head_grid_tokens` of the base LLaVA ``model``'s image tokens for each
    ``(image, head box)``."""
    from ..models.llava_mini.assembly import image_tokens

    out = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        pixels = image_processor([image for image, _ in chunk], return_tensors="pt")["pixel_values"]
        tokens = image_tokens(model, pixels)  # [B, G², d_llm]
        out += [head_grid_tokens(t, box, *image.size, k) for t, (image, box) in zip(tokens, chunk)]
    return torch.stack(out)


def train_aligner_head_anchor(
    aligner: Any,
    model: Any,
    image_processor: Any,
    reference_pixels: Callable[[list[Any]], torch.Tensor],
    samples: Sequence[tuple[Any, Box]],
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Anchor the Aligner's context tokens to the base's pooled head tokens of each ``(reference, head box)`` (in
    place; resampler only). Returns the held-out (last 10 %) ``1 - cos`` before/after, the output scale, seconds."""
    t0 = time.time()
    k = aligner.config.num_queries
    targets = base_head_targets(model, image_processor, samples, k)
    z = [
        aligner.encode_reference(reference_pixels([image for image, _ in samples[i : i + 32]]))
        for i in range(0, len(samples), 32)
    ]
    z_ref = torch.cat(z)
    before, after, factor = fit_cosine(  # the resampler reads the patch tokens z_ref[:, 1:]
        aligner.resampler,
        aligner.resampler.proj_out,
        z_ref[:, 1:],
        targets,
        steps,
        batch_size,
        lr,
        np.random.default_rng([seed, 31]),
        targets.norm(dim=-1).mean(),
        "head anchor",
    )
    stats = {"loss_before": before, "loss_after": after, "scale": factor, "seconds": time.time() - t0}
    log("head anchor: held-out 1-cos {loss_before:.3f} -> {loss_after:.3f}, scale x{scale:.3f}".format(**stats))
    return stats
