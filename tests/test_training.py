"""The Aligner trainer on tiny random configs: the loss goes down, resume is exact, the base stays frozen."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil, Dinov2Model

from plvm.aligner import Aligner
from plvm.config import AlignerConfig
from plvm.injection import IGNORE_INDEX, ConceptTensors, PersonalizedLVLM
from plvm.models.tiny import tiny_dinov2_config, tiny_llava
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


class ColourBank(ColourSquares):
    """:class:`ColourSquares` whose examples name their identities (a colour) and that has a reference bank."""

    def examples(self, index: int, n: int) -> list[PersonalExample]:
        out = super().examples(index, n)
        rng = np.random.default_rng([8, index])
        for ex in out:  # recover the colours from the squares' pixels
            ex.concept_id = str(colour_of(ex.reference))
            q = colour_of(ex.query)
            ex.query_identities = (str(q),) if rng.random() < 0.5 else (str(q), str((q + 1) % len(COLOURS)))
            if ex.kind == "recog_neg" and ex.concept_id in ex.query_identities:
                ex.query_identities = (str(q),)
        return out

    def reference_bank(self, renders: int) -> list[tuple[str, Image.Image]]:
        rng = np.random.default_rng(9)
        return [(str(c), square(colour, rng)) for c, colour in enumerate(COLOURS) for _ in range(renders)]


def colour_of(image: Image.Image) -> int:
    a = np.asarray(image).reshape(-1, 3)
    ink = a[(a != 245).any(1)][0]
    return COLOURS.index(tuple(int(v) for v in ink))


def make_task(
    word_weight: float = 10.0, answer_style: str = "paper", data=None, bank_weight: float = 0.0
) -> AlignerTrainingTask:
    model, processor = tiny_llava(template="chatml")
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    torch.manual_seed(1)
    config = AlignerConfig(
        encoder="tiny",
        d_enc=32,
        d_llm=lvlm.hidden_size,
        mlp_hidden=64,
        resampler_hidden=32,
        resampler_blocks=1,
        resampler_heads=2,
        num_queries=4,
        image_size=28,
        base_model="tiny",
    )
    aligner = Aligner(config, Dinov2Model(tiny_dinov2_config()))
    ref_proc = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return AlignerTrainingTask(
        lvlm, aligner, ref_proc, data or ColourSquares(), AlignerTaskConfig(2, word_weight, answer_style, bank_weight)
    )


def condition_output_row(task: AlignerTrainingTask) -> None:
    """What `plvm train` does before a fresh name-first run (:meth:`Aligner.calibrate_output_row`)."""
    probe = ColourSquares().examples(20_000, 8)
    hidden, no_logit = task.answer_states(probe)
    task.aligner.calibrate_output_row(
        task.reference_pixels([ex.reference for ex in probe]), hidden, float(no_logit.mean())
    )


@pytest.mark.parametrize("answer_style", ["paper", "name-first"])
def test_twenty_steps_lower_the_loss_and_leave_the_base_frozen(tmp_path, answer_style):
    task = make_task(answer_style=answer_style)
    if answer_style == "name-first":  # as `plvm train` does: the concept row decides, conditioned first
        condition_output_row(task)
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


def test_name_first_answers_make_the_concept_the_weighted_first_answer_token():
    from plvm.injection import IGNORE_INDEX
    from plvm.synth.qa import load_templates, name_first_answer

    for t in load_templates().recognition_positive:  # every paper template has a name-first form
        assert name_first_answer(t[1]).startswith("<sks> ") and "Yes" not in name_first_answer(t[1])
    assert name_first_answer("Yes. <sks> is there.") == "<sks> is in this photo."  # hand-written data
    task = make_task(answer_style="name-first")
    rng = np.random.default_rng(3)
    ref, query = square(COLOURS[0], rng), square(COLOURS[1], rng)
    V = task.lvlm.vocab_size

    def answer_of(ex):
        enc = task._encode(ex)
        labels = [t for t in enc.labels if t != IGNORE_INDEX]
        flagged = [t for t, w in zip(enc.ids, enc.answer_word) if w]
        return labels, task.lvlm.decode(labels, ["sks"]), task.lvlm.decode(flagged, ["sks"])

    labels, text, word = answer_of(
        PersonalExample(ref, query, "Is <sks> in this photo?", "Yes, <sks> appears in this picture.", "recog_pos")
    )
    assert labels[0] == V and text.startswith("<sks> appears in this picture.") and word == "<sks>"
    _, text, word = answer_of(
        PersonalExample(ref, query, "Is <sks> in this photo?", "No, <sks> is not in this photo.", "recog_neg")
    )
    assert text.startswith("No, <sks> is not") and word == "No"
    _, text, word = answer_of(
        PersonalExample(ref, None, "How would you describe <sks>'s hairstyle?", "<sks> has short hair.", "attribute")
    )
    assert text.startswith("<sks> has short hair.") and word == ""  # an attribute answer's name is not weighted
    assert make_task().describe()["task"]["answer_style"] == "paper"
    with pytest.raises(ValueError, match="answer_style"):
        AlignerTaskConfig(2, 10.0, "yes-first")


def test_output_row_calibration_starts_the_concept_logit_at_the_level_where_training_reads_it():
    task = make_task(answer_style="name-first")
    examples = ColourSquares().examples(123, 6)
    hidden, no_logit = task.answer_states(examples)
    assert hidden.shape == (6, task.lvlm.hidden_size) and no_logit.shape == (6,)
    task.aligner.calibrate_output_row(
        task.reference_pixels([ex.reference for ex in examples]), hidden, float(no_logit.mean())
    )
    # the concept logit at the position whose prediction is the first answer token, as the loss computes it
    e_word, e_weight, context = task.aligner(pixel_values=task.reference_pixels([ex.reference for ex in examples]))
    batch = task.lvlm.collate([task._encode(ex) for ex in examples])
    tensors = ConceptTensors.stack([[(e_word[i], e_weight[i], context[i])] for i in range(6)], task.lvlm.hidden_size)
    with torch.no_grad():
        logits = task.lvlm(batch, tensors)
    first = (batch.labels != IGNORE_INDEX).int().argmax(dim=1)
    at_answer = logits[torch.arange(6), first - 1]  # [6, V + 1]
    concept_logit = at_answer[:, task.lvlm.vocab_size]
    assert float(concept_logit.mean()) == pytest.approx(float(no_logit.mean()), abs=0.05)
    torch.testing.assert_close(at_answer[:, task.lvlm.no_ids].amax(-1), no_logit, atol=1e-3, rtol=1e-4)


def test_identity_bank_loss_is_its_formula_and_trains_only_the_output_row():
    task = make_task(answer_style="name-first", data=ColourBank(), bank_weight=1.0)
    condition_output_row(task)
    assert task.bank_ids == [str(c) for c in range(len(COLOURS)) for _ in range(2)]  # bank_renders = 2
    assert task.bank_tokens.shape == (2 * len(COLOURS), task.aligner.config.d_enc)
    examples = ColourBank().examples(5, 6)
    examples.append(
        PersonalExample(examples[0].reference, None, "What colour is <sks>?", "<sks> is red.", "attribute", "0")
    )  # not a recognition sample: no bank term
    h, no = task.answer_states(examples)
    loss, auc = task.bank_loss(examples, h, no)
    # by hand: balanced logistic loss of h_i · e_j − No_i, y_ij = [bank identity j is in query i]
    e = task.aligner.output_row(task.bank_tokens).detach().double()
    per_query, aucs = [], []
    for i, ex in enumerate(examples[:6]):
        z = (h[i].double() @ e.T - no[i].double()).tolist()
        y = [bid in ex.query_identities for bid in task.bank_ids]
        pos = [np.log1p(np.exp(-v)) for v, t in zip(z, y) if t]
        neg = [np.log1p(np.exp(v)) for v, t in zip(z, y) if not t]
        assert pos and neg
        per_query.append(0.5 * np.mean(pos) + 0.5 * np.mean(neg))
        aucs.append(np.mean([a > b for a, t in zip(z, y) if t for b, u in zip(z, y) if not u]))
    assert float(loss.detach()) == pytest.approx(float(np.mean(per_query)), rel=1e-4)
    assert auc == pytest.approx(np.mean(aucs))
    loss.backward()
    assert all(p.grad is None for m in (task.aligner.f_word, task.aligner.resampler) for p in m.parameters())
    assert sum(float(p.grad.abs().sum()) for p in task.aligner.f_weight.parameters()) > 0
    # steps on the output row alone lower it
    opt = torch.optim.Adam(task.aligner.f_weight.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        task.bank_loss(examples, h, no)[0].backward()
        opt.step()
    assert float(task.bank_loss(examples, h, no)[0]) < float(loss.detach()) - 0.2
    # the task's loss is Eq. 2 plus λ · the bank term, which it logs
    with torch.no_grad():
        total, extras = task.loss(examples)
        task.config = AlignerTaskConfig(2, 10.0, "name-first", bank_weight=0.0)
        eq2, plain = task.loss(examples)
    assert "loss_bank" in extras and "loss_bank" not in plain
    assert float(total) == pytest.approx(float(eq2) + extras["loss_bank"], rel=1e-4)


def test_identity_bank_loss_needs_name_first_answers_and_a_reference_bank():
    with pytest.raises(ValueError, match="name-first"):
        AlignerTaskConfig(2, 10.0, "paper", bank_weight=1.0)
    with pytest.raises(ValueError, match="bank_renders"):
        AlignerTaskConfig(2, 10.0, "name-first", bank_weight=1.0, bank_renders=0)
    with pytest.raises(ValueError, match="reference_bank"):
        make_task(answer_style="name-first", data=ColourSquares(), bank_weight=1.0)


def test_row_fit_fits_only_the_output_row_on_cached_states_and_keeps_the_best_heldout_epoch(tmp_path):
    from plvm.pipeline import aligner_answer_style, load_aligner_weights
    from plvm.training.row_fit import (
        AnswerStates,
        RowFitConfig,
        answer_states_tag,
        collect_answer_states,
        fit_output_row,
        load_or_collect_answer_states,
        own_pair_objective,
        save_row_fit,
    )

    task = make_task(answer_style="name-first", data=ColourBank())  # no bank loss in training: the fit builds it
    condition_output_row(task)
    config = RowFitConfig(queries=12, epochs=40, lr=1e-2, batch=4, eval_every=5, heldout_identities=0.25)
    states = collect_answer_states(task, config, progress=False)
    assert states.h.shape == (12, task.lvlm.hidden_size) and states.no.shape == (12,)
    assert len(states.query_identities) == 12
    again = collect_answer_states(task, config, progress=False)  # deterministic in the source's batches
    torch.testing.assert_close(again.h, states.h)
    states.save(tmp_path / "states.safetensors", "run step 3")  # the cache round trip
    loaded = AnswerStates.load(tmp_path / "states.safetensors", "run step 3")
    assert torch.equal(loaded.h, states.h) and torch.equal(loaded.no, states.no)
    assert loaded.query_identities == states.query_identities and loaded.concept_ids == states.concept_ids
    assert torch.equal(loaded.own_tokens, states.own_tokens) and torch.equal(loaded.own_labels, states.own_labels)
    # each sample's own reference, label and concept: the squares' colours say who is who
    again_examples = [
        ex
        for i in range(config.first_index, config.first_index + 40)
        for ex in task.data.examples(i, config.batch)
        if ex.kind in ("recog_pos", "recog_neg")
    ][:12]
    assert states.concept_ids == [ex.concept_id for ex in again_examples]
    assert states.own_labels.tolist() == [float(ex.kind == "recog_pos") for ex in again_examples]
    assert states.own_tokens.shape == (12, task.aligner.config.d_enc)
    torch.testing.assert_close(
        states.own_tokens[:1],
        task.aligner.encode_reference(task.reference_pixels([again_examples[0].reference]))[:, 0].float(),
    )
    assert AnswerStates.load(tmp_path / "states.safetensors", "run step 4") is None  # computed with another tag
    # the cache is keyed on what the states depend on: the word and context path, not f_weight
    cache = tmp_path / "cache.safetensors"
    cached = load_or_collect_answer_states(task, config, cache, progress=False)
    torch.testing.assert_close(cached.h, states.h)
    tag = answer_states_tag(task, config)
    with torch.no_grad():
        for module, same in ((task.aligner.f_weight, True), (task.aligner.f_word, False)):
            kept = module.net[0].weight.clone()
            module.net[0].weight.add_(1.0)
            assert (answer_states_tag(task, config) == tag) == same
            module.net[0].weight.copy_(kept)
    assert answer_states_tag(task, RowFitConfig(queries=13, batch=4)) != tag
    revision, task.lvlm.base_revision = task.lvlm.base_revision, "projector-sha256:another"  # another trained base
    assert answer_states_tag(task, config) != tag
    task.lvlm.base_revision = revision
    dataclasses.replace(states, h=states.h + 1).save(cache, tag)  # marked: read, not recomputed
    torch.testing.assert_close(load_or_collect_answer_states(task, config, cache, progress=False).h, states.h + 1)
    # the own-pair term by hand: each query against its own concept's row, balanced logistic loss, pooled AUC
    with torch.no_grad():
        rows = task.aligner.output_row(states.own_tokens).double()
        select = torch.tensor([i % 3 != 0 for i in range(12)])
        loss, auc = own_pair_objective(states, rows.float(), select)
        z = [float(states.h[i].double() @ rows[i] - states.no[i]) for i in range(12) if select[i]]
        y = [bool(states.own_labels[i]) for i in range(12) if select[i]]
    pos, neg = [v for v, t in zip(z, y) if t], [v for v, t in zip(z, y) if not t]
    assert pos and neg
    expected = 0.5 * np.mean([np.log1p(np.exp(-v)) for v in pos]) + 0.5 * np.mean([np.log1p(np.exp(v)) for v in neg])
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    assert auc == pytest.approx(np.mean([a > b for a in pos for b in neg]))
    with pytest.raises(ValueError, match="own_weight"):
        RowFitConfig(own_weight=-1.0)
    before = {k: v.clone() for k, v in task.aligner.trainable_state_dict().items()}
    report = fit_output_row(task, states, config)
    assert len(report["heldout_identities"]) == 1 and task.bank_ids  # one of the four colours held out
    history = report["history"]
    assert [r["epoch"] for r in history] == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    assert history[-1]["loss"] < history[1]["loss"]  # the fit lowers its loss
    assert report["kept_heldout_auc"] == max(r["heldout_auc"] for r in history)
    assert all("heldout_rank_auc" in r for r in history)
    after = task.aligner.trainable_state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(k.startswith("f_weight.") for k in changed)
    assert bool(changed) == (report["kept_epoch"] > 0)
    out = save_row_fit(tmp_path / "row-fit", task, 7, {"steps": 7}, report)
    assert aligner_answer_style(out) == "name-first"
    state = json.loads((out / "state.json").read_text())
    assert state["step"] == 7 and state["task"]["row_fit"]["kept_epoch"] == report["kept_epoch"]
    fresh = make_task(answer_style="name-first")
    load_aligner_weights(fresh.aligner, out)
    for key, value in after.items():
        assert torch.equal(fresh.aligner.trainable_state_dict()[key], value), key
    with pytest.raises(ValueError, match="name-first"):
        fit_output_row(make_task(data=ColourBank()), states, config)


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


def test_train_rejects_bank_and_row_fit_options_without_name_first_answers_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from plvm.cli import app

    for args, message in (
        (["--bank-weight", "1"], "name-first"),
        (["--row-fit-queries", "100"], "name-first"),
        (["--answer-style", "name-first", "--bank-weight", "-1"], "bank_weight"),
        (["--answer-style", "shouty"], "answer_style"),
    ):
        result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "run"), *args])
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
