"""The Aligner (§3.1) and the ConceptEmbedding record."""

from __future__ import annotations

import pytest
import torch
from transformers import Dinov2Model

from plvm.aligner import Aligner
from plvm.concept import ConceptEmbedding, ConceptError, IncompatibleConceptError, normalize_name
from plvm.config import PRESETS, get_preset
from plvm.models.tiny import tiny_aligner_config, tiny_dinov2_config


def tiny_aligner(image_size: int = 28, k: int = 4) -> Aligner:
    torch.manual_seed(0)
    encoder = Dinov2Model(tiny_dinov2_config(image_size=image_size))
    config = tiny_aligner_config(24).replace(
        mlp_hidden=48, resampler_hidden=16, resampler_blocks=2, num_queries=k, image_size=image_size
    )
    return Aligner(config, encoder)


@pytest.mark.parametrize("size,tokens", [(28, 5), (42, 10), (56, 17)])
def test_shapes_at_several_resolutions(size, tokens):
    aligner = tiny_aligner()
    pixels = torch.randn(3, 3, size, size)
    z_ref = aligner.encode_reference(pixels)
    assert z_ref.shape == (3, tokens, 32)  # CLS + (size/14)^2 patches
    e_word, e_weight, context = aligner(pixel_values=pixels)
    assert e_word.shape == (3, 24) and e_weight.shape == (3, 24) and context.shape == (3, 4, 24)
    # f_word and f_weight are different functions of the same global token
    assert not torch.allclose(e_word, e_weight)
    # each sample's output depends only on its own image
    e_word_0, _, context_0 = aligner(pixel_values=pixels[:1])
    torch.testing.assert_close(e_word_0[0], e_word[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(context_0[0], context[0], atol=1e-5, rtol=1e-5)


def test_word_depends_on_cls_and_context_on_patches():
    aligner = tiny_aligner()
    z = torch.randn(1, 5, 32)
    e_word, e_weight, context = aligner(z_ref=z)
    z_patch = z.clone()
    z_patch[:, 1:] += 1.0
    e_word2, e_weight2, context2 = aligner(z_ref=z_patch)
    torch.testing.assert_close(e_word2, e_word)
    torch.testing.assert_close(e_weight2, e_weight)
    assert not torch.allclose(context2, context)
    z_cls = z.clone()
    z_cls[:, 0] += 1.0
    e_word3, _, context3 = aligner(z_ref=z_cls)
    assert not torch.allclose(e_word3, e_word)
    torch.testing.assert_close(context3, context)


def test_only_mlps_and_resampler_train():
    aligner = tiny_aligner()
    aligner.train()
    assert not aligner.encoder.training
    before = {k: v.clone() for k, v in aligner.encoder.state_dict().items()}
    opt = torch.optim.AdamW(aligner.trainable_parameters(), lr=1e-2)
    e_word, e_weight, context = aligner(pixel_values=torch.randn(2, 3, 28, 28))
    (e_word.square().mean() + e_weight.square().mean() + context.square().mean()).backward()
    opt.step()
    assert all(p.grad is None for p in aligner.encoder.parameters())
    assert aligner.resampler.queries.grad is not None
    for k, v in aligner.encoder.state_dict().items():
        assert torch.equal(v, before[k])
    trainable = set(map(id, aligner.trainable_parameters()))
    assert not trainable & set(map(id, aligner.encoder.parameters()))
    assert "encoder.embeddings.cls_token" not in aligner.trainable_state_dict()


def test_trainable_state_round_trip_and_shape_mismatch():
    a, b = tiny_aligner(), tiny_aligner()
    with torch.no_grad():
        for p in b.trainable_parameters():
            p.add_(1.0)
    b.load_trainable_state_dict(a.trainable_state_dict())
    z = torch.randn(1, 5, 32)
    for x, y in zip(a(z_ref=z), b(z_ref=z)):
        torch.testing.assert_close(x, y)
    wrong = tiny_aligner(k=6)
    with pytest.raises(ValueError, match="shape"):
        wrong.load_trainable_state_dict(a.trainable_state_dict())


def test_paper_sized_aligner_parameter_count_on_meta_device():
    preset = get_preset("llava-1.5-7b")
    assert preset.aligner.d_llm == 4096 and preset.aligner.mlp_hidden == 4096
    assert preset.aligner.resampler_hidden == 1024 and preset.aligner.num_queries == 16
    with torch.device("meta"):
        aligner = Aligner(preset.aligner)  # trainable parts only; the frozen DINOv2-base is separate
    counts = aligner.num_trainable_parameters()
    # f_word = f_weight: 768*4096 + 4096*4096 + 4096*4096 weights (+ biases)
    mlp = (768 * 4096 + 4096) + 2 * (4096 * 4096 + 4096)
    assert counts["f_word"] == counts["f_weight"] == mlp
    # resampler: queries, in/out projections, 4 blocks of attention (4h^2) + MLP (8h^2) + norms
    h = 1024
    block = (4 * h * h + 4 * h) + (8 * h * h + 5 * h) + 3 * 2 * h
    resampler = 16 * h + (768 * h + h) + 4 * block + 2 * h + (h * 4096 + 4096)
    assert counts["resampler"] == resampler
    assert 120e6 < counts["total"] < 135e6  # the paper reports ~128M trainable parameters
    assert set(PRESETS) == {"llava-1.5-7b", "onevision-7b", "mini"}


def make(name="bo", d=24, k=4, base="tiny", seed=0):
    g = torch.Generator().manual_seed(seed)
    return ConceptEmbedding(
        name,
        torch.randn(d, generator=g),
        torch.randn(d, generator=g),
        torch.randn(k, d, generator=g),
        base,
        {"source": "unit"},
    )


def test_concept_round_trip_is_exact(tmp_path):
    c = make()
    path = c.save(tmp_path / "bo.safetensors")
    loaded = ConceptEmbedding.load(path, base_model="tiny", hidden_size=24)
    assert loaded.name == "bo" and loaded.base_model == "tiny" and loaded.metadata == {"source": "unit"}
    assert torch.equal(loaded.e_word, c.e_word)
    assert torch.equal(loaded.e_weight, c.e_weight)
    assert torch.equal(loaded.context, c.context)


def test_concept_for_another_model_fails_clearly(tmp_path):
    path = make(d=24).save(tmp_path / "bo.safetensors")
    with pytest.raises(IncompatibleConceptError, match="hidden size 24"):
        ConceptEmbedding.load(path, hidden_size=576)
    with pytest.raises(IncompatibleConceptError, match="made for base model 'tiny'"):
        ConceptEmbedding.load(path, base_model="plvm/llava-mini")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ConceptError, match="not a readable concept file"):
        ConceptEmbedding.load(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("raw,name", [("bo", "bo"), ("<bo>", "bo"), (" my-dog_2 ", "my-dog_2")])
def test_name_normalisation(raw, name):
    assert normalize_name(raw) == name


@pytest.mark.parametrize("bad", ["", "<>", "a b", "../x", "bo!", "<image>", "x" * 65, "<<bo>>"])
def test_bad_names_are_refused(bad):
    with pytest.raises(ConceptError):
        normalize_name(bad)


def test_non_finite_embeddings_are_refused():
    with pytest.raises(ConceptError, match="non-finite"):
        ConceptEmbedding("bo", torch.full((4,), float("nan")), torch.zeros(4), torch.zeros(2, 4), "tiny")


def test_calibrate_standardises_inputs_and_sets_the_mean_output_norms():
    aligner = tiny_aligner()
    pixels = torch.randn(6, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    z_ref = aligner.encode_reference(pixels)
    first_before = aligner.f_word.net[0](z_ref[:, 0]).detach()
    w, b = aligner.f_word.net[0].weight.detach().clone(), aligner.f_word.net[0].bias.detach().clone()
    aligner.calibrate(pixels, word_norm=3.0, weight_norm=5.0)
    cls = z_ref[:, 0]
    standardised = (cls - cls.mean(0)) / cls.std(0)
    assert torch.allclose(aligner.f_word.net[0](cls), standardised @ w.T + b, atol=1e-4)
    assert not torch.allclose(aligner.f_word.net[0](cls), first_before, atol=1e-3)
    e_word, e_weight, context = aligner(pixel_values=pixels)
    assert e_word.norm(dim=-1).mean().item() == pytest.approx(3.0, rel=1e-4)
    assert e_weight.norm(dim=-1).mean().item() == pytest.approx(5.0, rel=1e-4)
    assert context.norm(dim=-1).mean().item() == pytest.approx(3.0, rel=1e-4)


# ----------------------------------------------------------------------------- base revisions
def test_concept_made_on_another_base_revision_is_refused_and_unrecorded_revisions_pass(tmp_path):
    c = make()
    c.metadata["base_revision"] = "projector-sha256:aaaa"
    loaded = ConceptEmbedding.load(c.save(tmp_path / "bo.safetensors"))
    assert loaded.base_revision == "projector-sha256:aaaa"
    loaded.check_compatible("tiny", 24, "projector-sha256:aaaa")
    loaded.check_compatible("tiny", 24, None)  # a base that tracks no revision (hub models)
    with pytest.raises(IncompatibleConceptError, match="revision projector-sha256:aaaa.*projector-sha256:bbbb"):
        loaded.check_compatible("tiny", 24, "projector-sha256:bbbb")
    make().check_compatible("tiny", 24, "projector-sha256:bbbb")  # made before revisions were recorded


def test_mini_base_revision_names_the_projector_file_bytes(tmp_path):
    from plvm.models.llava_mini.assembly import base_revision

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"projector one")
    b.write_bytes(b"projector two")
    assert base_revision(a) == base_revision(a) and base_revision(a) != base_revision(b)
    assert base_revision(a).startswith("projector-sha256:") and len(base_revision(a)) == len("projector-sha256:") + 16


def test_plvm_stamps_concepts_with_the_base_revision_and_refuses_them_on_another(tmp_path):
    from PIL import Image

    from plvm.conversation import single_turn
    from plvm.models.tiny_plvm import tiny_plvm

    plvm = tiny_plvm()
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    assert "base_revision" not in plvm.make_concept("bo", image).metadata  # tiny tracks none
    plvm.lvlm.base_revision = "projector-sha256:aaaa"
    bo = plvm.make_concept("bo", image)
    assert bo.base_revision == "projector-sha256:aaaa"
    plvm.lvlm.prepare([single_turn("Is <bo> here?", [bo], image=image)])  # same revision: fine
    plvm.lvlm.base_revision = "projector-sha256:bbbb"
    with pytest.raises(IncompatibleConceptError, match="re-create it"):
        plvm.lvlm.prepare([single_turn("Is <bo> here?", [bo], image=image)])


def write_aligner_records(tmp_path, state, task):
    """An exported Aligner file and a training checkpoint directory, both recording ``task``."""
    import json

    from safetensors.torch import save_file

    exported = tmp_path / "aligner.safetensors"
    save_file(state, str(exported), metadata={"task": json.dumps(task)})
    ckpt = tmp_path / "checkpoint-000010"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"step": 10, "task": task}))
    return exported, ckpt


def test_aligner_weights_record_their_base_revision_and_a_mismatch_is_refused(tmp_path, caplog):
    import json

    from safetensors.torch import save_file

    from plvm.models.tiny_plvm import tiny_plvm
    from plvm.pipeline import IncompatibleAlignerError, aligner_base_revision, check_aligner_base

    plvm = tiny_plvm()
    state = plvm.aligner.trainable_state_dict()
    task = {"kind": "aligner", "base_model": "tiny", "base_revision": "projector-sha256:aaaa"}
    exported, ckpt = write_aligner_records(tmp_path, state, task)
    old = tmp_path / "old.safetensors"
    save_file(state, str(old), metadata={"task": json.dumps({"kind": "aligner", "base_model": "tiny"})})
    assert aligner_base_revision(exported) == aligner_base_revision(ckpt) == "projector-sha256:aaaa"
    assert aligner_base_revision(old) is None

    check_aligner_base(exported, plvm.lvlm)  # the base tracks no revision: nothing to compare
    plvm.lvlm.base_revision = "projector-sha256:aaaa"
    check_aligner_base(exported, plvm.lvlm)
    plvm.lvlm.base_revision = "projector-sha256:bbbb"
    with pytest.raises(IncompatibleAlignerError, match="trained on tiny revision projector-sha256:aaaa"):
        check_aligner_base(exported, plvm.lvlm)
    with caplog.at_level("WARNING", logger="plvm.pipeline"):
        check_aligner_base(ckpt, plvm.lvlm, allow_mismatch=True)
        check_aligner_base(old, plvm.lvlm)
    assert "BASE MISMATCH (allowed)" in caplog.text and "do not record" in caplog.text


def test_committed_mini_aligner_records_the_committed_base_revision():
    from plvm.models.base import mini_base_revision
    from plvm.pipeline import MINI_ALIGNER, aligner_base_revision

    if not MINI_ALIGNER.is_file() or mini_base_revision() is None:
        pytest.skip("no committed LLaVA-mini projector + Aligner in this checkout")
    assert aligner_base_revision(MINI_ALIGNER) == mini_base_revision()
