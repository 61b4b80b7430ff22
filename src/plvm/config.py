"""Configuration dataclasses and the named presets of PLVM.

All sizes of the paper live here, in one place:

* ``llava-1.5-7b`` — §3.1/§4.1 of the paper: DINOv2-base reference encoder (d_enc 768), LLaVA-1.5-7B
  language model (d_llm 4096), f_word / f_weight MLPs with hidden 4096, a 4-block cross-attention resampler
  with hidden 1024 and k = 16 learnable queries.
* ``onevision-7b`` — the multi-image variant on LLaVA-OneVision-7B (Qwen2-7B, d_llm 3584).
* ``mini`` — LLaVA-mini, the embedded default that runs on a CPU: DINOv2-S/14 (d_enc 384) and
  SmolLM2-135M-Instruct (d_llm 576), with smaller hidden sizes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AlignerConfig:
    """Sizes of the Aligner (§3.1).

    Args:
        encoder: Where the frozen reference encoder comes from: a HF hub name or local directory of a
            ``Dinov2Model`` (``facebook/dinov2-base``) or ``"mini"`` for the packaged DINOv2-S.
        d_enc: Hidden size of the reference encoder (width of z_ref).
        d_llm: Hidden size of the language model the concept embeddings are made for.
        mlp_hidden: Hidden width of the two 3-layer MLPs ``f_word`` and ``f_weight``.
        resampler_hidden: Width ``h`` of the cross-attention resampler.
        resampler_blocks: Number of resampler blocks ``N``.
        resampler_heads: Attention heads per resampler block.
        num_queries: Number ``k`` of learnable queries, i.e. of context tokens ``<t1>…<tk>``.
        image_size: Side in pixels at which reference images are fed to the encoder (224 → 257 tokens).
        base_model: Identifier of the base LVLM these embeddings are for; stored in every concept.
    """

    encoder: str = "facebook/dinov2-base"
    d_enc: int = 768
    d_llm: int = 4096
    mlp_hidden: int = 4096
    resampler_hidden: int = 1024
    resampler_blocks: int = 4
    resampler_heads: int = 16
    num_queries: int = 16
    image_size: int = 224
    base_model: str = "llava-hf/llava-1.5-7b-hf"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AlignerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown AlignerConfig fields: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "AlignerConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class Preset:
    """A named pairing of a base LVLM with the Aligner sizes made for it."""

    name: str
    base_model: str
    aligner: AlignerConfig
    family: str = "llava"  # "llava" (LlavaForConditionalGeneration) or "onevision"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# LLaVA-mini's base-model id (concepts and Aligners record it; another base is refused). Which trained LLaVA-mini
# (projector + LM LoRA) they were made on is recorded beside it as the base revision (the projector file's hash).
MINI_BASE_MODEL = "plvm/llava-mini"

# §3.1 / §4.1: DINOv2-base reference encoder, MLP hidden 4096, 4-block resampler of width 1024, k = 16.
_PAPER_ALIGNER = AlignerConfig(
    encoder="facebook/dinov2-base",
    d_enc=768,
    d_llm=4096,
    mlp_hidden=4096,
    resampler_hidden=1024,
    resampler_blocks=4,
    resampler_heads=16,
    num_queries=16,
    image_size=224,
    base_model="llava-hf/llava-1.5-7b-hf",
)

PRESETS: dict[str, Preset] = {
    "llava-1.5-7b": Preset(
        name="llava-1.5-7b",
        base_model="llava-hf/llava-1.5-7b-hf",
        family="llava",
        aligner=_PAPER_ALIGNER,
        notes="The paper's configuration (§3.1, §4.1).",
    ),
    "onevision-7b": Preset(
        name="onevision-7b",
        base_model="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        family="onevision",
        aligner=_PAPER_ALIGNER.replace(d_llm=3584, base_model="llava-hf/llava-onevision-qwen2-7b-ov-hf"),
        notes="Multi-image variant of the paper on LLaVA-OneVision (Qwen2-7B, hidden 3584).",
    ),
    "mini": Preset(
        name="mini",
        base_model=MINI_BASE_MODEL,
        family="llava",
        aligner=AlignerConfig(
            encoder="mini",
            d_enc=384,
            d_llm=576,
            mlp_hidden=1024,
            resampler_hidden=384,
            resampler_blocks=2,
            resampler_heads=6,
            num_queries=16,
            image_size=224,
            base_model=MINI_BASE_MODEL,
        ),
        notes="LLaVA-mini: DINOv2-S/14 + SmolLM2-135M-Instruct, runs on 2 CPU cores.",
    ),
}


def get_preset(name: str) -> Preset:
    """Return a copy of the named preset, with a clear error for unknown names."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
    return dataclasses.replace(preset, aligner=dataclasses.replace(preset.aligner))
