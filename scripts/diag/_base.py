"""Shared by the diagnostics: a LLaVA-mini ``PersonalizedLVLM`` on the committed base or another one."""
import tempfile
from pathlib import Path

from plvm.injection import PersonalizedLVLM
from plvm.models.mini import build_llava_mini, export_stage1


def load_mini_lvlm(base: str | None = None) -> PersonalizedLVLM:
    """``base``: a stage-1 checkpoint directory or a projector file (``None``: the committed base)."""
    projector = base
    if projector and Path(projector).is_dir():
        projector, _ = export_stage1(projector, Path(tempfile.mkdtemp()) / "projector.safetensors")
    model, proc = build_llava_mini(projector=projector)
    return PersonalizedLVLM(model, proc, base_model="plvm/llava-mini")
