"""The Aligner trainer on tiny random configs: the loss goes down, resume is exact, the base stays frozen."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, Dinov2Model

from plvm.aligner import Aligner
from plvm.injection import PersonalizedLVLM
from plvm.models.tiny import tiny_aligner_config, tiny_dinov2_config, tiny_llava
from plvm.training.aligner_task import AlignerTaskConfig, AlignerTrainingTask, PersonalExample
from plvm.training.loop import LoopConfig, run_training

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30)]


def square(colour, rng) -> Image.Image:
    img = np.full((28, 28, 3), 245, np.uint8)
    x, y = rng.integers(0, 12, 2)
    img[y : y + 14, x : x + 14] = colour
    return Image.fromarray(img)


class ColourSquares:
    """Toy concept world: a concept is a colour; the query shows it (Yes) or another colour (No)."""

    def examples(self, index: int, n: int) -> list[PersonalExample]:
        rng = np.random.default_rng([7, index])
        out = []
        for _ in range(n):
            c = int(rng.integers(len(COLOURS)))
            positive = rng.random() < 0.6
            q = c if positive else int((c + rng.integers(1, len(COLOURS))) % len(COLOURS))
            answer = "Yes, <sks> is in this photo." if positive else "No, <sks> is not in this photo."
            out.append(
                PersonalExample(
                    square(COLOURS[c], rng),
                    square(COLOURS[q], rng),
                    "Is <sks> in this photo?",
                    answer,
                    "recog_pos" if positive else "recog_neg",
                )
            )
        return out

    def describe(self):
        return {"source": "colour-squares"}


def make_task(word_weight: float = 10.0) -> AlignerTrainingTask:
    model, processor = tiny_llava(template="chatml")
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    torch.manual_seed(1)
    config = tiny_aligner_config(lvlm.hidden_size)
    aligner = Aligner(config, Dinov2Model(tiny_dinov2_config()))
    ref_proc = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return AlignerTrainingTask(lvlm, aligner, ref_proc, ColourSquares(), AlignerTaskConfig(2, word_weight))


def test_twenty_steps_lower_the_loss_and_leave_the_base_frozen(tmp_path):
    task = make_task()
    base_before = {k: v.clone() for k, v in task.lvlm.model.state_dict().items()}
    enc_before = {k: v.clone() for k, v in task.aligner.encoder.state_dict().items()}
    fixed = ColourSquares().examples(10_000, 8)
    with torch.no_grad():
        loss_before = task.loss(fixed)[0].item()
    summary = run_training(task, LoopConfig(steps=20, lr=3e-3, save_every=10, log_every=5), tmp_path)
    with torch.no_grad():
        loss_after = task.loss(fixed)[0].item()
    assert summary["step"] == 20
    assert loss_after < loss_before - 0.3, (loss_before, loss_after)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and rows[-1]["loss"] < rows[0]["loss"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
    for k, v in task.lvlm.model.state_dict().items():
        assert torch.equal(v, base_before[k]), k
    for k, v in task.aligner.encoder.state_dict().items():
        assert torch.equal(v, enc_before[k]), k


def test_resume_is_exact(tmp_path):
    straight = make_task()
    run_training(straight, LoopConfig(steps=6, lr=1e-3, save_every=3, log_every=3), tmp_path / "a")
    interrupted = make_task()
    run_training(interrupted, LoopConfig(steps=3, lr=1e-3, save_every=3, log_every=3), tmp_path / "b")
    resumed = make_task()  # a fresh process: new model objects, state only from the checkpoint
    run_training(resumed, LoopConfig(steps=6, lr=1e-3, save_every=3, log_every=3), tmp_path / "b")
    a, b = straight.trainable_state_dict(), resumed.trainable_state_dict()
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    rows_a = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [json.loads(r)["loss"] for r in rows_a] == [json.loads(r)["loss"] for r in rows_b]


class ColourCaptions:
    """Generic toy data for stage 1: name the colour of the square."""

    names = ["red", "green", "blue", "yellow"]

    def examples(self, index: int, n: int):
        from plvm.models.llava_mini.stage1_task import GenericExample

        rng = np.random.default_rng([3, index])
        out = []
        for _ in range(n):
            c = int(rng.integers(len(COLOURS)))
            out.append(GenericExample([square(COLOURS[c], rng)], "What colour is the square?", self.names[c]))
        return out

    def describe(self):
        return {"source": "colour-captions"}


def stage1_loss_before_after(task, tmp_path) -> tuple[float, float]:
    """Loss of a stage-1 task on 8 fixed colour captions before and after 20 training steps."""
    fixed = ColourCaptions().examples(999, 8)
    with torch.no_grad():
        before = task.loss(fixed)[0].item()
    run_training(task, LoopConfig(steps=20, lr=2e-2, save_every=20, log_every=10), tmp_path)
    with torch.no_grad():
        after = task.loss(fixed)[0].item()
    return before, after


def test_stage1_trains_only_the_projector(tmp_path):
    from plvm.models.llava_mini.stage1_task import ProjectorTrainingTask

    model, processor = tiny_llava(template="chatml")
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    task = ProjectorTrainingTask(lvlm, ColourCaptions(), batch_size=2)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if "multi_modal_projector" not in k}
    proj_before = {k: v.clone() for k, v in task.trainable_state_dict().items()}
    before, after = stage1_loss_before_after(task, tmp_path)
    assert after < before - 0.1, (before, after)  # a random 2-layer LM: only the projector can move
    state = model.state_dict()
    for k, v in frozen_before.items():
        assert torch.equal(state[k], v), k
    assert any(not torch.equal(v, proj_before[k]) for k, v in task.trainable_state_dict().items())


def test_folder_source_reads_the_training_layout(tmp_path):
    from plvm.training.data import FolderPersonalSource

    rng = np.random.default_rng(0)
    for cid, colour, ext in (("c1", COLOURS[0], "jpg"), ("c2", COLOURS[1], "png")):
        (tmp_path / cid).mkdir()
        square(colour, rng).save(tmp_path / cid / f"ref_img.{ext}")
        square(colour, rng).save(tmp_path / cid / "q0.png")
    items = [
        {
            "concept": "c1",
            "query_img": "c1/q0.png",
            "question": "Is <sks> here?",
            "answer": "Yes, <sks> is.",
            "kind": "recog_pos",
        },
        {
            "concept": "c2",
            "query_img": None,
            "question": "What colour is <sks>?",
            "answer": "<sks> is green.",
            "kind": "attribute",
        },
    ]
    (tmp_path / "train.json").write_text(json.dumps(items))
    source = FolderPersonalSource(tmp_path, seed=3)
    batch = source.examples(0, 6)
    again = source.examples(0, 6)  # deterministic per batch index
    assert [(e.kind, e.question) for e in batch] == [(e.kind, e.question) for e in again]
    assert {e.kind for e in batch} == {"recog_pos", "attribute"}
    for ex in batch:
        if ex.kind == "attribute":
            assert ex.query is None and ex.answer == "<sks> is green."
            assert (np.asarray(ex.reference) == COLOURS[1]).all(-1).any()  # c2's own reference image
        else:
            assert ex.query is not None and ex.question == "Is <sks> here?"
    (tmp_path / "train.json").write_text(
        json.dumps([{"concept": "../etc", "question": "q", "answer": "a", "query_img": "../../x.png"}])
    )
    with pytest.raises((ValueError, FileNotFoundError)):
        FolderPersonalSource(tmp_path).examples(0, 1)


def test_export_writes_a_loadable_aligner_file(tmp_path):
    from safetensors import safe_open
    from typer.testing import CliRunner

    from plvm.cli import app
    from plvm.pipeline import load_aligner_weights

    task = make_task()
    run_training(task, LoopConfig(steps=2, lr=1e-3, save_every=2, log_every=1), tmp_path / "run")
    out = tmp_path / "aligner.safetensors"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run" / "checkpoint-000002"), str(out)])
    assert result.exit_code == 0, result.output
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["step"] == "2" and json.loads(f.metadata()["task"])["kind"] == "aligner"
    fresh = make_task()
    load_aligner_weights(fresh.aligner, out)
    for key, value in task.trainable_state_dict().items():
        assert torch.equal(fresh.trainable_state_dict()[key], value), key


def test_stage1_word_weight_is_eq2_on_yes_no_answers():
    """Stage 1 with ``word_weight`` w: L(w) = (w·c_word + c_rest) / (w·k + n_rest), Eq. 2 on generic data.

    c_word and c_rest are solved from w = 1 and w = 10; w = 100 must then match the prediction, and the
    loss must move towards the Yes/No word's own CE (a 1-token "same person?" answer is no longer drowned)."""
    from plvm.models.llava_mini.stage1_task import GenericExample, ProjectorTrainingTask, generic_conversation

    model, processor = tiny_llava(template="chatml")
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    rng = np.random.default_rng(0)
    batch = [
        GenericExample([square(COLOURS[0], rng), square(COLOURS[0], rng)], "Same colour?", "Yes"),
        GenericExample(
            [square(COLOURS[1], rng)],
            "What colour is the square?",
            "a green square, small",
            follow_up=[("Where is it?", "near the top left corner")],
        ),
    ]
    encoded = [lvlm.encode(generic_conversation(ex), label_all_turns=True) for ex in batch]
    k = sum(sum(e.answer_word) for e in encoded)
    n = sum(sum(lab != -100 for lab in e.labels) for e in encoded)
    assert k >= 1 and n > 10 * k

    def loss(w):
        task = ProjectorTrainingTask(lvlm, ColourCaptions(), batch_size=2, word_weight=w)
        with torch.no_grad():
            return task.loss(batch)[0].item(), task.describe()

    (l1, d1), (l10, d10), (l100, _) = loss(1.0), loss(10.0), loss(100.0)
    assert "word_weight" not in d1 and d10["word_weight"] == 10.0  # w = 1 keeps old runs' descriptions
    # l1 * n = c_w + c_r ; l10 * (10k + n - k) = 10 c_w + c_r
    c_w = (l10 * (10 * k + n - k) - l1 * n) / 9.0
    c_r = l1 * n - c_w
    assert l100 == pytest.approx((100 * c_w + c_r) / (100 * k + n - k), rel=1e-4)
    assert abs(l100 - c_w / k) < abs(l1 - c_w / k)
    with pytest.raises(ValueError, match="word_weight"):
        ProjectorTrainingTask(lvlm, ColourCaptions(), batch_size=2, word_weight=0.0)


def test_train_base_rejects_bad_stage1_options_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from plvm.cli import app

    for args, message in (
        (["--anchor-regions", "face"], "--anchor-regions"),
        (["--mix", "1,2"], "--mix"),
        (["--attention-match", "17"], "--attention-match"),
    ):
        result = CliRunner().invoke(app, ["train-base", "--out", str(tmp_path / "run"), *args])
        assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "run").exists()  # nothing written


def test_head_grid_tokens_pool_the_patches_the_head_box_touches():
    from plvm.training.head_anchor import head_grid_tokens

    tokens = torch.arange(16 * 2, dtype=torch.float32).reshape(16, 2)  # a 4 × 4 grid of 14-px patches, d = 2
    box = (15.0, 15.0, 41.0, 27.0)  # rows 1, cols 1-2 of a 56-px image
    cells = tokens.reshape(4, 4, 2)[1:2, 1:3].reshape(-1, 2)
    torch.testing.assert_close(head_grid_tokens(tokens, box, 56, 56, 1), cells.mean(0, keepdim=True))
    box = (0.0, 14.0, 56.0, 42.0)  # rows 1-2, every column: 2 × 4 cells pooled to 2 × 2
    grid = tokens.reshape(4, 4, 2)[1:3]
    expected = torch.stack([grid[r, 2 * c : 2 * c + 2].mean(0) for r in range(2) for c in range(2)])
    torch.testing.assert_close(head_grid_tokens(tokens, box, 56, 56, 4), expected)
    with pytest.raises(ValueError, match="not a square"):
        head_grid_tokens(tokens, box, 56, 56, 3)
    with pytest.raises(ValueError, match="covers no patch"):
        head_grid_tokens(tokens, (100.0, 100.0, 120.0, 120.0), 56, 56, 4)


def test_freeze_context_trains_the_name_heads_and_leaves_the_context_tokens(tmp_path):
    task = make_task()
    task.config = AlignerTaskConfig(2, 10.0, freeze_context=True)
    resampler = {k: v.clone() for k, v in task.aligner.resampler.state_dict().items()}
    f_word = {k: v.clone() for k, v in task.aligner.f_word.state_dict().items()}
    run_training(task, LoopConfig(steps=5, lr=3e-3, save_every=5, log_every=5), tmp_path)
    for k, v in task.aligner.resampler.state_dict().items():
        assert torch.equal(v, resampler[k]), k
    assert any(not torch.equal(v, f_word[k]) for k, v in task.aligner.f_word.state_dict().items())
