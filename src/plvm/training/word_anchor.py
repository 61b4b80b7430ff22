"""Word anchoring: regress a module's outputs onto the LM's own word embeddings (``1 - cos``), and the
Aligner's stage 0 built on it (not in the paper).

* :class:`WordTargets` — the normalised mean input embedding of a word list;
* :func:`fit_cosine` — train one module alone so its outputs point along such targets, then rescale its last
  layer to the embeddings' mean norm;
* :func:`train_aligner_anchor` — the Aligner's context tokens ``<t1>…<tk>`` anchored to the words of the
  identity's attributes (token ``j`` ↔ the ``j``-th attribute), an initialisation before Eq. 2 training.

LLaVA-mini's stage 0 (the projector's patches anchored to the words of what they show) uses the same fit:
:mod:`plvm.models.llava_mini.anchor`.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

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


def fit_resampler(
    aligner: Any,
    z_ref: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    target_norm: torch.Tensor,
    desc: str,
) -> tuple[float, float, float]:
    """:func:`fit_cosine` of the Aligner's resampler: its context tokens for references ``z_ref`` ``[N, L, d_enc]``
    (encoder output, the global token first) along ``targets`` ``[N, k, d_llm]``; its output layer rescaled."""
    return fit_cosine(
        aligner.resampler,
        aligner.resampler.proj_out,
        z_ref[:, 1:],
        targets,
        steps,
        batch_size,
        lr,
        rng,
        target_norm,
        desc,
    )


def attribute_words(name: str, value: str) -> list[str]:
    """Words for one identity attribute, e.g. ``("hair_color", "red") → ["red", "hair"]``,
    ``("glasses", "none") → ["no", "glasses"]``."""
    noun = {
        "face_shape": "face",
        "skin_tone": "skin",
        "hair_color": "hair",
        "hair_style": "hair",
        "eye_color": "eyes",
        "eyebrows": "eyebrows",
        "nose": "nose",
        "mouth": "mouth",
        "facial_hair": "beard",
        "glasses": "glasses",
        "mark": "marks",
    }.get(name)
    if value == "none":
        return ["no", noun or name]
    if name in ("facial_hair", "mark"):
        return [value]
    return [value] + ([noun] if noun else [])


def context_word_lists(attributes: Mapping[str, str], k: int) -> list[list[str]]:
    """Words of each of the ``k`` context tokens: token ``j`` ↔ the ``j``-th identity attribute (in
    AvatarWorld's canonical order); tokens beyond the attributes ↔ all of them."""
    per_attribute = [attribute_words(n, v) for n, v in attributes.items()]
    everything = [w for words in per_attribute for w in words]
    return [per_attribute[j] if j < len(per_attribute) else everything for j in range(k)]


def train_aligner_anchor(
    aligner: Any,
    tokenizer: Any,
    embeddings: torch.Tensor,
    reference_pixels: Callable[[list[Any]], torch.Tensor],
    samples: Sequence[tuple[Any, Mapping[str, str]]],
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Anchor the Aligner's context tokens to words describing the identity (in place; resampler only).

    The same idea as the projector's stage 0, for PLVM's ``<sks> is <t1>…<tk>.``: context token ``j`` is
    regressed (``1 - cos``) onto the embedding of the ``j``-th attribute's words, so a fresh Aligner already
    "says" ``<sks> is <young> <man> <round face> …`` to the frozen LM. Not in the paper: an initialisation
    before Eq. 2 training, which then moves all three heads freely.

    Args:
        reference_pixels: images → ``[B, 3, S, S]`` for the Aligner's encoder.
        samples: ``(reference image, identity attributes)`` pairs.

    Returns:
        Held-out (last 10 %) loss before/after, the output scale applied, seconds.
    """
    t0 = time.time()
    k = aligner.config.num_queries
    words = WordTargets(tokenizer, embeddings)
    z = []
    for i in tqdm(range(0, len(samples), 32), desc="anchor: reference features", mininterval=5):
        z.append(aligner.encode_reference(reference_pixels([s[0] for s in samples[i : i + 32]])).to(torch.bfloat16))
    z_ref = torch.cat(z)
    targets = torch.stack([torch.stack([words(w) for w in context_word_lists(a, k)]) for _, a in samples])
    before, after, factor = fit_resampler(
        aligner,
        z_ref,
        targets,
        steps,
        batch_size,
        lr,
        np.random.default_rng([seed, 4242]),
        words.embeddings.norm(dim=-1).mean(),
        "anchor: resampler",
    )
    stats = {
        "val_loss_before": before,
        "val_loss_after": after,
        "output_scale": factor,
        "n_references": len(samples),
        "steps": steps,
        "seconds": time.time() - t0,
    }
    log(f"anchor (Aligner context): held-out 1-cos {before:.3f} -> {after:.3f} ({stats['seconds']:.0f} s)")
    return stats
