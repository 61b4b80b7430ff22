"""A tiny random :class:`~plvm.pipeline.PLVM` (tiny LLaVA + tiny DINOv2 Aligner) for tests and smoke runs.

Deterministic for a given ``seed``: two processes build the same weights, so concepts and identify
features stored by one are meaningful to the other. Answers are random text — this model exists to
exercise the product surface (store, CLI, HTTP API, web page) without downloads or trained weights.
"""

from __future__ import annotations

import torch

TINY_BASE_MODEL = "tiny"


def tiny_plvm(seed: int = 0, template: str = "chatml"):
    """Build the tiny PLVM: ``tiny_llava`` (hidden 64) + an Aligner on a 2-layer DINOv2 (28 px, d_enc 32)."""
    from transformers import Dinov2Model

    from ..aligner import Aligner
    from ..injection import PersonalizedLVLM
    from ..pipeline import PLVM, reference_image_processor
    from .tiny import tiny_aligner_config, tiny_dinov2_config, tiny_llava

    model, processor = tiny_llava(template=template, seed=seed)
    lvlm = PersonalizedLVLM(model, processor, base_model=TINY_BASE_MODEL)
    config = tiny_aligner_config(lvlm.hidden_size, TINY_BASE_MODEL)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed + 1)
        aligner = Aligner(config, Dinov2Model(tiny_dinov2_config()))
    finally:
        torch.random.set_rng_state(state)
    return PLVM(lvlm, aligner, reference_image_processor(config.image_size), preset="tiny")


__all__ = ["TINY_BASE_MODEL", "tiny_plvm"]
