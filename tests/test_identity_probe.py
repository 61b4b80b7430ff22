"""The identity probe (plvm.diag.identity_probe): region weights, re-ID scores, the LDA adapter, an end-to-end
run on a tiny random LLaVA, and the image-prompt stage-1 samples it motivates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plvm.diag.identity_probe import (
    ProbeConfig,
    RegionItems,
    fit_lda,
    probe_readings,
    region_weights,
    reid_scores,
    run_identity_probe,
)


def test_region_weights_cover_the_box_cells_only():
    w = region_weights((0, 0, 14, 14), 28, 28, 2)  # exactly the top-left cell of a 2x2 grid
    assert torch.allclose(w, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    w = region_weights((7, 0, 21, 14), 28, 28, 2)  # half of each top cell
    assert torch.allclose(w, torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert float(region_weights((3, 5, 25, 20), 28, 28, 4).sum()) == pytest.approx(1.0)


def test_region_weights_follow_the_pad_to_square():
    # a 28x14 image is padded to 28x28 with 7 px above: its top row (y 0..7) lands in the grid's top cells
    w = region_weights((0, 0, 14, 7), 28, 14, 2)
    assert torch.allclose(w, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    w = region_weights((0, 7, 14, 14), 28, 14, 2)  # y 14..21 of the padded square: the bottom-left cell
    assert torch.allclose(w, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="covers no patch"):
        region_weights((40, 40, 50, 50), 28, 28, 2)


def test_reid_scores_rank_the_right_reference():
    refs = torch.eye(3)
    queries = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.2], [0.3, 0.0, 1.0], [0.0, 0.9, 0.1]])
    out = reid_scores(queries, ["a", "b", "c", "b"], refs, ["a", "b", "c"])
    assert out["top1"] == 1.0 and out["auc"] == 1.0 and out["n_queries"] == 4 and out["n_refs"] == 3
    swapped = reid_scores(queries, ["b", "a", "c", "a"], refs, ["a", "b", "c"])
    assert swapped["top1"] == 0.25  # only the third query is still right
    assert swapped["auc"] < 0.5
    with pytest.raises(ValueError, match="without a reference"):
        reid_scores(queries, ["a", "b", "c", "z"], refs, ["a", "b", "c"])


def test_lda_adapter_finds_identity_hidden_under_nuisance():
    """Identity lives in 2 weak dimensions, 30 strong nuisance dimensions vary per image: the raw cosine cannot
    re-identify, the LDA map fitted on *other* identities can."""
    gen = torch.Generator().manual_seed(0)

    def items(n_ids: int, per_id: int, prefix: str) -> tuple[RegionItems, torch.Tensor]:
        codes = torch.randn(n_ids, 2, generator=gen)
        rows, ids, is_ref = [], [], []
        for k in range(n_ids):
            for j in range(per_id):
                nuisance = 5.0 * torch.randn(30, generator=gen)
                rows.append(torch.cat([codes[k] + 0.05 * torch.randn(2, generator=gen), nuisance]))
                ids.append(f"{prefix}{k}")
                is_ref.append(j == 0)
        n = len(rows)
        return RegionItems([], list(range(n)), [(0, 0, 1, 1)] * n, ids, is_ref), torch.stack(rows)

    gallery, g = items(10, 4, "g")
    fit, f = items(40, 4, "f")
    out = probe_readings(gallery, g, fit, f, lda_dim=2)
    assert out["adapter"]["auc"] > 0.95 and out["adapter"]["top1"] > 0.8
    assert out["zero_shot"]["auc"] < 0.75
    assert fit_lda(f, fit.identity, dim=100).shape == (32, 32)  # capped at the feature dimension
    assert fit_lda(f[:40], fit.identity[:40], dim=100).shape == (32, 9)  # and at identities - 1


def test_probe_runs_end_to_end_on_a_tiny_llava():
    from plvm.models.tiny import tiny_llava

    model, processor = tiny_llava()
    config = ProbeConfig(gallery_ids=3, scenes_per_id=2, fit_ids=4, fit_scenes_per_id=1, lda_dim=8)
    out = run_identity_probe(model, processor.image_processor, config)
    assert out["config"]["gallery_ids"] == 3
    for feature in ("tower", "tokens"):
        for reading in ("zero_shot", "adapter"):
            r = out[feature][reading]
            assert r["n_queries"] == 6 and r["n_refs"] == 3
            assert 0.0 <= r["top1"] <= 1.0 and 0.0 <= r["auc"] <= 1.0


def test_probe_config_refuses_degenerate_sizes():
    with pytest.raises(ValueError, match="gallery_ids"):
        ProbeConfig(gallery_ids=1)
    with pytest.raises(ValueError, match="scenes_per_id"):
        ProbeConfig(scenes_per_id=0)


def test_image_prompt_samples_are_laid_out_as_the_harness_asks():
    from plvm.eval.prompts import IMAGE_SLOT
    from plvm.models.llava_mini.stage1_data import AvatarWorldGenericSource
    from plvm.models.llava_mini.stage1_task import generic_conversation
    from plvm.synth.avatarworld import AvatarWorld
    from plvm.synth.samples import iter_generic_samples

    world = AvatarWorld(seed=0, num_identities=40, size=64)
    source = AvatarWorldGenericSource(world, seed=3, mix=(0, 0, 0, 1), same_portrait_share=0.5)
    examples = [ex for i in range(6) for ex in source.examples(i, 2)]
    answers = {ex.answer.split(",")[0] for ex in examples}
    assert answers == {"Yes", "No"}  # both labels occur in 12 samples
    for ex in examples:
        assert ex.kind == "image_prompt" and len(ex.images) == 2 and ex.name
        assert f"<{ex.name}>" in ex.question and f"<{ex.name}>" in ex.answer
        messages = generic_conversation(ex).to_messages()
        content = messages[0]["content"]
        assert [c["type"] for c in content] == ["text", "image", "text", "image", "text"]
        assert content[0]["text"] == f"Here is <{ex.name}>: " and content[-1]["text"] == "\n" + ex.question
        assert IMAGE_SLOT not in str(messages)
        assert messages[1] == {"role": "assistant", "content": [{"type": "text", "text": ex.answer}]}
    with pytest.raises(ValueError, match="3 or 4"):
        next(iter_generic_samples(world, np.random.default_rng(0), weights=(1, 1)))


@pytest.mark.mini
@pytest.mark.slow
def test_diag_identity_probe_command_on_the_committed_base(tmp_path):
    """`plvm diag identity-probe` on LLaVA-mini: prints both feature rows and writes the JSON it printed."""
    import json

    from typer.testing import CliRunner

    from plvm.cli import app
    from plvm.models.base import find_mini_projector

    pytest.importorskip("gguf", reason="the gguf package is needed to read the packaged SmolLM2")
    pytest.importorskip("onnx", reason="the onnx package is needed to read the packaged DINOv2")
    if find_mini_projector() is None:
        pytest.skip("no committed LLaVA-mini projector")
    out = tmp_path / "probe.json"
    result = CliRunner().invoke(
        app,
        [
            "diag",
            "identity-probe",
            "--gallery-ids",
            "3",
            "--scenes-per-id",
            "1",
            "--fit-ids",
            "4",
            "--fit-scenes-per-id",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "vision tower (projector input)" in result.output and "image tokens (projector output)" in result.output
    data = json.loads(out.read_text())
    assert data["base_revision"].startswith("projector-sha256:")
    assert data["tokens"]["adapter"]["n_queries"] == 3 and data["tokens"]["zero_shot"]["n_refs"] == 3
    missing = CliRunner().invoke(app, ["diag", "identity-probe", "--projector", str(tmp_path / "none.safetensors")])
    assert missing.exit_code == 2 and "no projector file" in missing.output
