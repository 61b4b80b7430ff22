"""Load the base LVLM that PLVM personalises: LLaVA-mini by name, or any saved LLaVA / LLaVA-OneVision.

* ``load_base("mini")`` (also ``"plvm/llava-mini"``, the ``mini`` preset's ``base_model``) →
  :func:`plvm.models.llava_mini.assembly.build_llava_mini` with the trained projector
  ``llava-mini-v2/projector.safetensors`` found by :func:`plvm.weight_files.find` (committed under ``models/`` of a
  checkout, or shipped under ``plvm/data/`` of an installed package); without one, a random projector and
  a loud warning. A projector trained together with LM LoRA names its ``lm_lora.safetensors`` (beside it)
  in its metadata; the LoRA is merged into the LM at load.
* anything else → a hub name or local directory of a full-scale model: ``AutoConfig`` decides between
  ``LlavaForConditionalGeneration`` (``model_type == "llava"``) and
  ``LlavaOnevisionForConditionalGeneration`` (``"llava_onevision"``); the processor comes from
  ``AutoProcessor``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    LlavaForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedModel,
    ProcessorMixin,
)

from plvm import weight_files
from plvm.config import MINI_BASE_MODEL

MINI_NAMES = ("mini", "llava-mini", MINI_BASE_MODEL)

_FAMILIES: dict[str, type[PreTrainedModel]] = {
    "llava": LlavaForConditionalGeneration,
    "llava_onevision": LlavaOnevisionForConditionalGeneration,
}


def find_mini_projector() -> Path | None:
    """The trained LLaVA-mini projector that ``load_base("mini")`` loads (:func:`plvm.weight_files.find`), or
    ``None``."""
    return weight_files.find(weight_files.LLAVA_MINI_PROJECTOR)


def mini_base_revision(projector: str | Path | None = None) -> str | None:
    """:func:`plvm.models.llava_mini.assembly.base_revision` of ``projector`` (default: the one ``load_base("mini")``
    loads); ``None`` when there is no trained projector."""
    projector = projector or find_mini_projector()
    if projector is None:
        return None
    from plvm.models.llava_mini.assembly import base_revision

    return base_revision(projector)


def load_base(name_or_path: str, **kw: Any) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a base LVLM and its processor (model in eval mode).

    Args:
        name_or_path: ``"mini"`` (LLaVA-mini) or a hub id / local directory of a LLaVA or LLaVA-OneVision
            model saved with ``save_pretrained``.
        **kw: For LLaVA-mini: ``projector`` (path; default: the committed trained projector),
            ``lora`` (default: the one the projector names), ``image_size``, ``dtype``. Otherwise: passed to
            ``from_pretrained`` of the model (e.g. ``dtype``, ``local_files_only``, ``revision``);
            ``processor_kwargs`` (dict) goes to ``AutoProcessor.from_pretrained``; ``processor`` (a ready
            processor) skips ``AutoProcessor``.

    Raises:
        ValueError: the checkpoint is neither LLaVA nor LLaVA-OneVision.
        RuntimeError: ``AutoProcessor`` could not build a multimodal processor.
    """
    if name_or_path in MINI_NAMES:
        from plvm.models.llava_mini.assembly import build_llava_mini

        projector = kw.pop("projector", None) or find_mini_projector()
        if projector is None:
            warnings.warn(
                "LLaVA-mini: NO TRAINED PROJECTOR FOUND (looked in "
                + ", ".join(str(p) for p in weight_files.candidates(weight_files.LLAVA_MINI_PROJECTOR))
                + "); using a RANDOMLY INITIALISED projector — the model cannot see images until the "
                "projector is trained.",
                UserWarning,
                stacklevel=2,
            )
        return build_llava_mini(projector=projector, **kw)

    processor = kw.pop("processor", None)
    processor_kwargs = kw.pop("processor_kwargs", {})
    hub_kwargs = {k: kw[k] for k in ("revision", "local_files_only", "token", "cache_dir") if k in kw}
    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    try:
        model_class = _FAMILIES[config.model_type]
    except KeyError:
        raise ValueError(
            f"{name_or_path!r} is a {config.model_type!r} model; PLVM supports "
            f"{', '.join(sorted(_FAMILIES))} (or 'mini')"
        ) from None
    kw.setdefault("dtype", torch.float32)
    model = model_class.from_pretrained(name_or_path, config=config, **kw).eval()
    if processor is None:
        processor = AutoProcessor.from_pretrained(name_or_path, **hub_kwargs, **processor_kwargs)
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
        # AutoProcessor silently falls back to the bare tokenizer when the processor class cannot be built
        # (e.g. LLaVA-OneVision's processor needs a video processor, which needs torchvision).
        raise RuntimeError(
            f"could not build a multimodal processor for {name_or_path!r} (AutoProcessor gave "
            f"{type(processor).__name__}); for LLaVA-OneVision this happens without torchvision or without a "
            "video_preprocessor_config.json — build the processor yourself and pass it as processor=..."
        )
    return model, processor
