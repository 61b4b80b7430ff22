"""Stage-1 data and measurements of LLaVA-mini: multi-turn targets, packed AvatarWorld dialogues, open-QA
candidate scoring, projector calibration (tiny random LLaVA; no packaged weights needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from plvm.injection import IGNORE_INDEX, ConceptTensors, PersonalizedLVLM
from plvm.models.llava_mini.base_eval import candidate_logprobs
from plvm.models.llava_mini.stage1_data import AvatarWorldGenericSource
from plvm.models.llava_mini.stage1_task import GenericExample, generic_conversation
from plvm.models.tiny import tiny_llava
from plvm.synth import qa
from plvm.synth.avatarworld import AvatarWorld
from plvm.synth.samples import iter_generic_samples


@pytest.fixture(scope="module")
def lvlm() -> PersonalizedLVLM:
    model, processor = tiny_llava(template="chatml")
    return PersonalizedLVLM(model, processor, base_model="tiny")


@pytest.fixture(scope="module")
def world() -> AvatarWorld:
    return AvatarWorld(seed=0, num_identities=40)


def photo(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 30, 3), dtype=np.uint8))


def labelled_runs(enc) -> list[list[int]]:
    runs, cur = [], []
    for lab in enc.labels + [IGNORE_INDEX]:
        if lab != IGNORE_INDEX:
            cur.append(lab)
        elif cur:
            runs, cur = runs + [cur], []
    return runs


def test_label_all_turns_targets_every_answer_and_only_answers(lvlm):
    ex = GenericExample(
        [photo(0)], "How many people?", "Two.", follow_up=[("Is it indoors?", "Yes."), ("Hair colour?", "Red.")]
    )
    conv = generic_conversation(ex)
    last = lvlm.encode(conv)
    every = lvlm.encode(conv, label_all_turns=True)
    assert every.ids == last.ids  # same tokens; only the targets differ
    texts = [lvlm.tokenizer.decode(r) for r in labelled_runs(every)]
    assert [t.split("<|im_end|>")[0] for t in texts] == ["Two.", "Yes.", "Red."]
    assert all(t.startswith(a) for t, a in zip(texts, ["Two.", "Yes.", "Red."]))
    assert [lvlm.tokenizer.decode(r).split("<|im_end|>")[0] for r in labelled_runs(last)] == ["Red."]
    # Eq. 2's answer word: the "Yes" of turn 2 only
    flagged = [lvlm.tokenizer.decode([t]) for t, w in zip(every.ids, every.answer_word) if w]
    assert "".join(flagged).strip() == "Yes"
    # single-turn conversations encode the same either way
    one = generic_conversation(GenericExample([photo(0)], "Q?", "No."))
    a, b = lvlm.encode(one), lvlm.encode(one, label_all_turns=True)
    assert (a.ids, a.labels, a.answer_word) == (b.ids, b.labels, b.answer_word)


def test_generic_source_packs_distinct_questions_per_scene(world):
    src = AvatarWorldGenericSource(world, seed=3, mix=(0.0, 1.0, 0.0), turns=6)
    examples = src.examples(0, 12)
    assert all(ex.kind == "vqa" and len(ex.images) == 1 for ex in examples)
    assert max(len(ex.follow_up) for ex in examples) == 5
    for ex in examples:
        questions = [ex.question] + [q for q, _ in ex.follow_up]
        assert len(set(questions)) == len(questions)
    assert src.examples(0, 12)[5].follow_up == examples[5].follow_up  # deterministic per index
    single = AvatarWorldGenericSource(world, seed=3, mix=(1.0, 0.0, 1.0), turns=6).examples(0, 10)
    assert all(ex.follow_up == [] for ex in single)  # captions and same-person questions stay single-turn
    with pytest.raises(ValueError):
        AvatarWorldGenericSource(world, turns=0)


def test_open_question_candidates_contain_exactly_the_kinds_answer_set(world):
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        graph = world.sample_scene(rng, "train").graph
        item = qa.generic_vqa(graph, rng, mc_prob=0.0)
        cands = qa.generic_vqa_candidates(item)
        assert item.answer in cands and len(set(cands)) == len(cands) >= 2
        seen.add(item.meta["visual"])
    assert {"count", "clothing_color", "clothing_type", "expression"} <= seen
    mc = qa.generic_vqa(graph, rng, kind=None, mc_prob=1.0)
    with pytest.raises(ValueError, match="multiple-choice"):
        qa.generic_vqa_candidates(mc)


def test_candidate_logprobs_equal_the_explicit_sum_over_answer_tokens(lvlm):
    ex = GenericExample([photo(1)], "What color is the person wearing?", "")
    cands = ["Red.", "Blue.", "A green hoodie."]
    scores = candidate_logprobs(lvlm, ex, cands)
    none = ConceptTensors.stack([[]], lvlm.hidden_size)
    for cand, score in zip(cands, scores):
        enc = lvlm.encode(generic_conversation(GenericExample(ex.images, ex.question, cand)))
        batch = lvlm.collate([enc])
        with torch.no_grad():
            logp = torch.log_softmax(lvlm.forward(batch, none)[0].float(), -1)
        expected = sum(logp[t - 1, enc.labels[t]] for t in range(1, len(enc.labels)) if enc.labels[t] != IGNORE_INDEX)
        assert score.item() == pytest.approx(float(expected), abs=1e-4)
    assert scores.shape == (3,) and torch.isfinite(scores).all() and len(set(scores.tolist())) == 3


def test_calibrate_projector_standardises_inputs_and_matches_the_word_embedding_norm():
    from plvm.models.llava_mini.assembly import calibrate_projector

    model, processor = tiny_llava(template="chatml")
    pixel_values = processor.image_processor([photo(i) for i in range(4)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.weight.mul_(40.0)  # an oversized projector
        hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        raw = hidden[model.config.vision_feature_layer]
        if model.config.vision_feature_select_strategy == "default":
            raw = raw[:, 1:]
        raw = raw.reshape(-1, raw.shape[-1])
        w1, b1 = (
            t.clone()
            for t in (
                model.model.multi_modal_projector.linear_1.weight,
                model.model.multi_modal_projector.linear_1.bias,
            )
        )
    stats = calibrate_projector(model, pixel_values)
    projector = model.model.multi_modal_projector
    with torch.no_grad():
        # linear_1 now computes the old linear_1 on standardised features, exactly
        z = (raw - raw.mean(0)) / raw.std(0)
        assert torch.allclose(projector.linear_1(raw), z @ w1.T + b1, atol=1e-4)
        feats = model.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        ).pooler_output
    norms = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats]).norm(dim=-1).mean().item()
    target = model.get_input_embeddings().weight.norm(dim=-1).mean().item()
    assert norms == pytest.approx(target, rel=1e-4)
    assert stats["input_mean_norm"] == pytest.approx(raw.mean(0).norm().item(), rel=1e-4)


def test_evaluate_base_counts_what_it_scores_and_writes_strict_json_with_null_for_disabled_measures(lvlm, world):
    import json

    from plvm.models.llava_mini.base_eval import evaluate_base

    result = evaluate_base(lvlm, world, n_open=3, n_vqa=0, n_same=4, seed=5)
    assert (result.n_open, result.n_vqa, result.n_same) == (3, 0, 4)
    assert 0.0 <= result.open_accuracy <= 1.0 and 0.0 < result.open_chance < 1.0
    assert 0.5 <= result.same_majority <= 1.0
    assert sum(v["n"] for v in result.open_by_kind.values()) == 3
    data = json.loads(result.to_json(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert data["vqa_accuracy"] is None and data["vqa_chance"] is None  # switched off, not NaN
    assert data["n_open"] == 3 and data["open_accuracy"] == pytest.approx(result.open_accuracy)
    by = result.same_by_kind
    assert by["portrait"]["n"] + by["scene"]["n"] == 4  # every pair has one second-image kind ...
    n_neg = by["negatives: look-alike"]["n"] + by["negatives: other"]["n"]  # ... and every negative one kind
    assert 0 <= n_neg <= 4 and (n_neg == 4) == math.isnan(result.same_positive_accuracy)
    assert result.n_described == 0 and data["described_accuracy"] is None


def test_evaluate_base_described_person_scores_every_question_and_splits_negatives_by_changes(lvlm, world):
    from plvm.models.llava_mini.base_eval import evaluate_base

    result = evaluate_base(lvlm, world, n_open=0, n_vqa=0, n_same=0, n_described=10, seed=2)
    assert result.n_described == 10 and 0.0 <= result.described_accuracy <= 1.0
    by = result.described_by_kind
    n_neg = sum(by[f"changes: {c}"]["n"] for c in (1, 2, 3))
    assert 0 < n_neg < 10  # both answers occur with this seed, and each negative has 1, 2 or 3 changes
    assert sum(by[f"people: {k}"]["n"] for k in (1, 2, 3, 4)) == 10  # and each photo 1-4 people
    by_prop = [
        by[f"changed: {p}"]["n"] for p in ("gender", "age", "hair_color", "hair_style", "facial_hair", "glasses")
    ]
    assert n_neg <= sum(by_prop) <= 3 * n_neg  # every negative changed 1-3 of them
    assert 0.0 <= result.described_auc <= 1.0
    again = evaluate_base(lvlm, world, n_open=0, n_vqa=0, n_same=0, n_described=10, seed=2)
    assert again.described_auc == result.described_auc  # a fixed item stream


def test_generic_source_passes_described_share_to_first_and_follow_up_questions(world):
    src = AvatarWorldGenericSource(world, seed=1, mix=(0.0, 1.0, 0.0), turns=3, described_share=1.0)
    for ex in src.examples(0, 4):
        for q in [ex.question] + [q for q, _ in ex.follow_up]:
            assert q.startswith("Is there ") and q.endswith(" in this image?")
    assert src.describe()["described_share"] == 1.0
    assert "described_share" not in AvatarWorldGenericSource(world).describe()  # old run records unchanged
    with pytest.raises(ValueError, match="described_share"):
        AvatarWorldGenericSource(world, described_share=-0.1)


def test_generic_source_passes_open_kinds_to_first_and_follow_up_questions(world):
    src = AvatarWorldGenericSource(world, seed=1, mix=(0.0, 1.0, 0.0), turns=4, open_kinds="hair_color=1")
    asked = [q for ex in src.examples(0, 4) for q in [ex.question] + [q for q, _ in ex.follow_up]]
    open_questions = [q for q in asked if "\nA. " not in q]
    assert open_questions and all(q.startswith("What color is the hair of ") for q in open_questions)
    assert src.describe()["open_kinds"] == {"hair_color": 1.0}
    assert "open_kinds" not in AvatarWorldGenericSource(world).describe()  # old run records unchanged
    with pytest.raises(ValueError, match="kind=number"):
        AvatarWorldGenericSource(world, open_kinds="hair_color")


def test_evaluate_base_open_kinds_scores_only_those_kinds_with_their_majority_rate(lvlm, world):
    from plvm.models.llava_mini.base_eval import evaluate_base

    result = evaluate_base(lvlm, world, n_open=6, n_vqa=0, n_same=0, seed=3, open_kinds={"hair_color": 1.0})
    assert set(result.open_by_kind) == {"hair_color"} and result.open_by_kind["hair_color"]["n"] == 6
    assert result.open_by_kind["hair_color"]["majority"] in {k / 6 for k in range(1, 7)}
    assert result.config["open_kinds"] == {"hair_color": 1.0}


def test_described_properties_limit_what_negatives_change(world):
    from plvm.synth import qa

    src = AvatarWorldGenericSource(
        world, seed=2, mix=(0.0, 1.0, 0.0), turns=3, described_share=1.0, described_properties=["hair_color", "glasses"]
    )
    assert src.describe()["described_properties"] == ["hair_color", "glasses"]
    examples = src.examples(0, 8)
    asked = [q for ex in examples for q in [ex.question] + [q for q, _ in ex.follow_up]]
    assert len(asked) > len(examples) and all(q.startswith("Is there ") for q in asked)  # follow-ups too
    stream = iter_generic_samples(
        world, np.random.default_rng(1), weights=(0, 1, 0), described_share=1.0, described_properties=("glasses",)
    )
    metas = [next(stream).meta["qa"]["meta"] for _ in range(40)]
    assert {tuple(m["changed"]) for m in metas} == {(), ("glasses",)}  # a single property never gets stuck
    rng = np.random.default_rng(8)
    seen: set[str] = set()
    for _ in range(60):
        graph = world.sample_scene(rng, "train").graph
        item = qa.described_person_vqa(graph, rng, properties=("hair_color", "glasses"))
        assert item.meta["n_changed"] <= 2 and set(item.meta["changed"]) <= {"hair_color", "glasses"}
        seen.update(item.meta["changed"])
    assert seen == {"hair_color", "glasses"}
    for bad in (["shoes"], [], ["hair_color", "hair_color"], ["facial_hair"]):
        with pytest.raises(ValueError, match="properties"):
            qa.described_person_vqa(graph, rng, properties=bad)
    with pytest.raises(ValueError, match="described properties"):
        AvatarWorldGenericSource(world, described_properties=["hair_color", "hair_color"])


def test_train_base_keeps_the_feature_layer_of_what_it_continues(tmp_path):
    import json

    from safetensors.torch import save_file

    from plvm.models.llava_mini.recipe import resolve_feature_layer
    from plvm.recipe import ConfigError

    projector = tmp_path / "projector.safetensors"
    save_file(
        {"multi_modal_projector.linear_1.bias": torch.zeros(2)},
        str(projector),
        metadata={"vision_feature_layer": "8,-1"},
    )
    run = tmp_path / "checkpoint-000050"
    run.mkdir()
    # before layers were recorded
    (run / "state.json").write_text(json.dumps({"step": 50, "task": {"kind": "projector"}}))
    assert resolve_feature_layer(None, None, None) is None  # fresh: the default
    assert resolve_feature_layer("8", None, None) == 8
    assert resolve_feature_layer(None, projector, None) == [8, -1] == resolve_feature_layer("8,-1", projector, None)
    assert resolve_feature_layer(None, None, run) == -1
    for text, init, resumed in (("8", projector, None), ("8", None, run), ("13", None, None)):
        with pytest.raises(ConfigError):
            resolve_feature_layer(text, init, resumed)


@pytest.mark.parametrize("portrait_share", [1.0, 0.0])
def test_image_prompt_pairs_are_twins_that_differ_only_in_who_is_in_the_query(world, portrait_share):
    src = AvatarWorldGenericSource(
        world, seed=3, mix=(0, 0, 0, 1), same_portrait_share=portrait_share, image_prompt_pairs=True
    )
    examples = src.examples(0, 6)
    rng = np.random.default_rng([3, 0])
    samples = iter_generic_samples(
        world, rng, weights=(0, 0, 0, 1), same_portrait_share=portrait_share, image_prompt_pairs=True
    )
    drawn = [next(samples) for _ in range(6)]
    for k in range(0, 6, 2):
        pos, neg = examples[k], examples[k + 1]
        assert pos.question == neg.question and pos.name == neg.name and pos.name
        assert f"<{pos.name}>" in pos.question
        assert np.array_equal(np.asarray(pos.images[0]), np.asarray(neg.images[0]))  # one reference
        assert not np.array_equal(np.asarray(pos.images[1]), np.asarray(neg.images[1]))
        assert pos.answer.startswith("Yes") and neg.answer.startswith("No")
        s_pos, s_neg = drawn[k], drawn[k + 1]
        assert (s_pos.question, s_pos.answer) == (pos.question, pos.answer)  # the source is the stream
        target = s_pos.meta["identity"]
        # AttentionMatch's targets: one reference head, the named person's head marked in the positive query only
        assert pos.reference_head is not None and pos.reference_head == neg.reference_head
        assert [named for _, named in pos.query_heads].count(True) == 1
        assert not any(named for _, named in neg.query_heads)
        people = 1 if portrait_share == 1.0 else len(s_pos.graphs[1]["people"])
        assert len(pos.query_heads) == people
        assert s_neg.meta["identity"] == target and (s_pos.meta["same"], s_neg.meta["same"]) == (True, False)
        if portrait_share == 1.0:
            assert s_pos.graphs[1] is None and s_neg.graphs[1] is None
            assert s_pos.meta["portrait_of"] == target != s_neg.meta["portrait_of"]
        else:
            assert target in [p["identity"] for p in s_pos.graphs[1]["people"]]
            assert target not in [p["identity"] for p in s_neg.graphs[1]["people"]]
    assert src.describe()["image_prompt_pairs"] is True
    assert "image_prompt_pairs" not in AvatarWorldGenericSource(world).describe()  # old run records unchanged


def test_recognition_pair_qa_uses_one_question_both_template_lists_hold():
    t = qa.load_templates()
    for seed in range(20):
        pos, neg = qa.recognition_pair_qa(np.random.default_rng(seed), name="<bo>")
        assert pos.question == neg.question and "<bo>" in pos.question
        assert (pos.question.replace("<bo>", qa.SKS), pos.answer.replace("<bo>", qa.SKS)) in t.recognition_positive
        assert (neg.question.replace("<bo>", qa.SKS), neg.answer.replace("<bo>", qa.SKS)) in t.recognition_negative
        assert (pos.meta["answer_word"], neg.meta["answer_word"]) == ("Yes", "No")
