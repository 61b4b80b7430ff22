"""Stage-1 LM LoRA (plvm.models.llava_mini.lora): merge = adapter forward, only adapters + projector train,
exact checkpoint round trip, and the projector ↔ LoRA pairing of exported files."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

from plvm.injection import PersonalizedLVLM
from plvm.models.llava_mini.assembly import export_stage1, projector_lora
from plvm.models.llava_mini.lora import MiniLoraConfig, add_lora, lora_state_dict, merge_lora, save_lora
from plvm.models.llava_mini.stage1_task import ProjectorTrainingTask
from plvm.models.tiny import tiny_llava
from test_training import ColourCaptions, stage1_loss_before_after

SMALL = MiniLoraConfig(r=4, lora_alpha=8)


def _randomise_b(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def test_new_adapter_is_identity_and_merge_equals_adapter_forward(tmp_path):
    model, _ = tiny_llava(template="chatml")
    ids = torch.randint(5, 300, (2, 9))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    tuner = add_lora(model, SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain, atol=0, rtol=0)  # B = 0
    _randomise_b(model)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    assert (adapted - plain).abs().max() > 1e-3  # the adapter changes the output
    path = save_lora(lora_state_dict(tuner), SMALL, tmp_path / "lm_lora.safetensors")

    fresh, _ = tiny_llava(template="chatml")
    assert merge_lora(fresh, path) == SMALL
    assert all(type(m) is nn.Linear for n, m in fresh.model.language_model.named_modules() if n.endswith("q_proj"))
    assert not any("lora" in k for k in fresh.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_stage1_with_lora_trains_projector_and_adapters_only(tmp_path):
    model, processor = tiny_llava(template="chatml")
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "multi_modal_projector" not in k}
    task = ProjectorTrainingTask(lvlm, ColourCaptions(), batch_size=2, lora=SMALL)
    module = task.trainable_module()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") or "lora_" in n for n in trainable)
    assert any("lora_A" in n for n in trainable) and any(n.startswith("projector.") for n in trainable)

    before, after = stage1_loss_before_after(task, tmp_path)
    assert after < before - 0.1, (before, after)
    state = model.state_dict()
    for key, value in frozen.items():  # base weights (adapted layers keep them under base_layer) untouched
        adapted = key.replace(".weight", ".base_layer.weight")
        assert torch.equal(state[adapted if adapted in state else key], value), key

    saved = task.trainable_state_dict()
    assert {k.split(".")[0] for k in saved} == {"multi_modal_projector", "lm_lora"}
    other = ProjectorTrainingTask(
        PersonalizedLVLM(*tiny_llava(template="chatml"), base_model="tiny"), ColourCaptions(), batch_size=2, lora=SMALL
    )
    other.load_trainable_state_dict(saved)
    for key, value in other.trainable_state_dict().items():
        torch.testing.assert_close(value, saved[key], atol=0, rtol=0)
    with pytest.raises(ValueError, match="disagree"):
        ProjectorTrainingTask(
            PersonalizedLVLM(*tiny_llava(template="chatml"), base_model="tiny"), ColourCaptions()
        ).load_trainable_state_dict(saved)

    # export splits the checkpoint into a projector that names its LoRA (by sha256) and the LoRA itself
    projector, lora = export_stage1(tmp_path / "checkpoint-000020", tmp_path / "out" / "projector.safetensors")
    assert lora == tmp_path / "out" / "lm_lora.safetensors"
    assert projector_lora(projector) == lora
    with safe_open(str(projector), framework="pt") as handle:
        assert all(k.startswith("multi_modal_projector.") for k in handle.keys())
        assert handle.metadata()["lm_lora"] == "lm_lora.safetensors"
    merged, _ = tiny_llava(template="chatml")
    merge_lora(merged, lora)
    ids = torch.randint(5, 300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)

    lora.write_bytes(lora.read_bytes()[:-1] + b" ")  # a different file under the recorded name
    with pytest.raises(ValueError, match="sha256"):
        projector_lora(projector)
    lora.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        projector_lora(projector)


def test_stage1_lora_with_a_frozen_projector_trains_the_adapters_only(tmp_path):
    model, processor = tiny_llava(template="chatml")
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    projector_before = {k: v.clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
    task = ProjectorTrainingTask(lvlm, ColourCaptions(), batch_size=2, lora=SMALL, train_projector=False)
    trainable = {n for n, p in task.trainable_module().named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before, after = stage1_loss_before_after(task, tmp_path)
    assert after < before - 0.1, (before, after)
    for k, v in model.model.multi_modal_projector.state_dict().items():
        assert torch.equal(v, projector_before[k]), k
    assert any(k.startswith("multi_modal_projector.") for k in task.trainable_state_dict())  # still exported
    with pytest.raises(ValueError, match="nothing to train"):
        ProjectorTrainingTask(lvlm, ColourCaptions(), train_projector=False)
