"""The evaluation harness end to end.

1. With oracle / always-Yes stand-ins for the model (exact expected numbers through every task, the
   controls and the report).
2. On the tiny random LLaVA over a tiny synthetic dataset: all tasks, all five methods (Yo'LLaVA with 3
   tuning steps), JSON + Markdown + PNG + JSONL, and the numbers in the JSON re-derived from the JSONL.
3. The typer command, mounted the way the main CLI mounts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from plvm.cli.evaluate import app as eval_app
from plvm.eval import EvalConfig, MethodOptions, YoLLaVAConfig, build_methods, read_dataset, run_evaluation
from plvm.eval.methods import Binding, Method
from plvm.eval.metrics import binary_metrics, choice_metrics
from plvm.eval.prompts import extract_mentions, mc_prompt, parse_letter, parse_yes_no, with_name
from plvm.eval.scoring import Decision
from plvm.eval.toydata import write_toy_dataset
from plvm.models.tiny_plvm import tiny_plvm


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run much faster on one thread when the 2 cores are shared; restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "toy", n_concepts=3, queries_per_concept=2)


# ============================================================================ 1. oracle stand-ins
@dataclass
class FakeConv:
    kind: str
    text: str
    bindings: list[Binding]
    images: list[Any]


class StandIn(Method):
    """A method whose "conversation" is a record the fake scorer can read."""

    def __init__(self, kind: str):
        super().__init__(lvlm=None)
        self.key = self.label = kind

    def conversation(self, text, bindings, images=()):
        return FakeConv(self.key, text, list(bindings), list(images))

    def concept_tokens(self, concept_id):
        return 7


class FakeScorer:
    """Oracle: answers from the dataset's ground truth, *for the bound concept's data*; "yes": always Yes."""

    def __init__(self, dataset):
        self.present: dict[int, set[str]] = {}
        for cid, record in dataset.concepts.items():
            for q in record.query_images:
                self.present[id(dataset.image(q))] = {cid}
        for m in dataset.multi:
            self.present[id(dataset.image(m.path))] = set(m.concepts)
        self.answers = {}
        for qa in dataset.text_qa + dataset.visual_qa:
            text = mc_prompt(
                with_name(qa.question, dataset.name_of(qa.concept)), qa.options, EvalConfig().mc_instruction
            )
            image = id(dataset.image(qa.image)) if qa.image is not None else None
            self.answers[text, image] = (qa.concept, qa.answer)

    def decide_yes_no(self, convs, mode="logits", max_new_tokens=8):
        out = []
        for c in convs:
            truth = all(b.concept in self.present[id(c.images[0])] for b in c.bindings)
            pred = truth if c.kind == "oracle" else True
            out.append(Decision(pred, score=(1.0 if truth else -1.0) if c.kind == "oracle" else 0.0))
        return out

    def decide_letter(self, convs, options, mode="logits", max_new_tokens=8):
        out = []
        for c, opts in zip(convs, options):
            if not isinstance(c, FakeConv):  # the harness's own no-personalization control
                out.append(Decision(None))
                continue
            concept, answer = self.answers[c.text, id(c.images[0]) if c.images else None]
            wrong = next(letter for letter in opts if letter != answer)
            # the oracle only knows the answer when personalized with the right concept's data
            out.append(Decision(answer if c.bindings[0].concept == concept else wrong))
        return out

    def generate(self, conv, max_new_tokens):
        present = self.present[id(conv.images[0])]
        named = [b.name for b in conv.bindings if conv.kind == "yes" or b.concept in present]
        return "A photo of " + " and ".join(f"<{n}>" for n in named)

    def prompt_length(self, conv):
        return 0


def test_harness_numbers_with_oracle_and_always_yes(toy, tmp_path):
    ds = read_dataset(toy)
    cfg = EvalConfig(negatives_per_image=2)
    result = run_evaluation(
        [StandIn("oracle"), StandIn("yes")], ds, None, tmp_path, cfg, progress=False, scorer=FakeScorer(ds)
    )
    oracle, yes = result.data["methods"]["oracle"]["results"], result.data["methods"]["yes"]["results"]
    # recognition: 6 query images, 1 positive + 2 negatives each
    assert result.data["tasks"]["recog"]["positives"] == 6 and result.data["tasks"]["recog"]["negatives"] == 12
    assert oracle["recog"]["mean_acc"] == 1.0 and oracle["recog"]["f1"] == 1.0 and oracle["recog"]["auc"] == 1.0
    assert yes["recog"]["auc"] == 0.5  # a constant score ranks nothing
    assert yes["recog"]["pos_acc"] == 1.0 and yes["recog"]["neg_acc"] == 0.0 and yes["recog"]["mean_acc"] == 0.5
    assert yes["recog"]["precision"] == pytest.approx(6 / 18) and yes["recog"]["recall"] == 1.0
    # QA: the oracle is right with its own concept, wrong when personalized with another identity
    for task in ("textqa", "vqa"):
        assert oracle[task]["acc"] == 1.0 and oracle[task]["wrong_concept"]["acc"] == 0.0
        assert result.data["controls"][task]["no_personalization"]["acc"] == 0.0
    # multi-concept: 3 scenario concepts; every split present; external images have no positive
    assert oracle["multi"]["all"]["acc"] == 1.0
    assert set(oracle["multi"]) == {"all", "single", "multi", "external"}
    ext = yes["multi"]["external"]["all"]
    assert ext["n_pos"] == 0 and ext["precision"] == 0.0 and ext["recall"] == 0.0 and ext["neg_acc"] == 0.0
    # sets: the pair image's own pair (Yes) and the pair with a member swapped (No)
    assert yes["multi"]["multi"]["set"]["n"] == 2 and yes["multi"]["multi"]["set"]["n_pos"] == 1
    # AUCs of the Yes/No score: the oracle ranks perfectly, a constant score at 0.5, one class → undefined
    for kind in ("all", "concept", "set"):
        assert oracle["multi"]["multi"][kind]["auc"] == 1.0 and yes["multi"]["multi"][kind]["auc"] == 0.5
    assert oracle["multi"]["external"]["all"]["auc"] is None
    # captioning (1 distractor per caption): oracle perfect; naming everyone → precision 9 / 18
    for prompt in ("neutral", "primed"):
        assert oracle["caption"][prompt]["all"]["f1"] == 1.0
        assert yes["caption"][prompt]["all"]["recall"] == 1.0
        assert yes["caption"][prompt]["all"]["precision"] == pytest.approx(0.5)
    # the report shows the numbers
    md = (tmp_path / "results.md").read_text()
    assert "| oracle | multi | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in md
    assert "| yes | external | 0.000 | 0.000 | 0.000 | 0.000 | 0.000 | – | – |" in md
    assert "| oracle | 7 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in md
    assert "| yes | 7 | 1.000 | 0.000 | 0.500 | 0.333 | 1.000 | 0.500 |" in md
    assert json.loads((tmp_path / "results.json").read_text())["methods"]["yes"]["results"]["recog"]["tp"] == 6


class LikelihoodScorer(FakeScorer):
    """The oracle, for ``scoring="likelihood"``: the questions come bare (no lettered options, no instruction)."""

    def __init__(self, dataset):
        super().__init__(dataset)
        self.answers = {
            (with_name(qa.question, dataset.name_of(qa.concept)), id(dataset.image(qa.image)) if qa.image else None): (
                qa.concept,
                qa.answer,
            )
            for qa in dataset.text_qa + dataset.visual_qa
        }
        self.modes: set[str] = set()

    def decide_letter(self, convs, options, mode="logits", max_new_tokens=8):
        self.modes.add(mode)
        return super().decide_letter(convs, options, mode, max_new_tokens)


def test_likelihood_scoring_asks_the_bare_question(toy, tmp_path):
    ds = read_dataset(toy)
    scorer = LikelihoodScorer(ds)
    cfg = EvalConfig(tasks=("textqa", "vqa"), scoring="likelihood")
    result = run_evaluation([StandIn("oracle")], ds, None, tmp_path, cfg, progress=False, scorer=scorer)
    oracle = result.data["methods"]["oracle"]["results"]
    for task in ("textqa", "vqa"):  # every prompt was found among the bare questions, and scored by likelihood
        assert oracle[task]["acc"] == 1.0 and oracle[task]["wrong_concept"]["acc"] == 0.0
    assert scorer.modes == {"likelihood"}
    with pytest.raises(ValueError, match="scoring must be one of"):
        EvalConfig(scoring="letters")


def test_multi_concept_items_ask_each_image_its_own_concepts_and_absent_ones(tmp_path):
    """A scenario larger than ``scenario_size``: each image gets its own concepts plus seeded absent ones, and
    set questions come in pairs — its own set (Yes) and one with a member swapped (No)."""
    from plvm.eval.multiconcept import build_items

    ds = read_dataset(write_toy_dataset(tmp_path / "six", n_concepts=6))
    present = {m.path: set(m.concepts) for m in ds.multi}
    scenario = {c for m in ds.multi for c in m.concepts}
    assert len(scenario) == 3  # the pair (concepts 0, 1) and the single image (concept 5)
    items, info = build_items(ds, EvalConfig(scenario_size=2, seed=3))
    assert info["scenario_size"] == 2 and info["items"] == len(items) == info["items_before_limit"]
    assert info["positives"] == sum(it.label for it in items)
    for path, own in present.items():
        asked = [it.query[0] for it in items if it.image == path and it.kind == "concept"]
        assert len(asked) == len(set(asked)) == max(2, len(own)) and own <= set(asked) <= scenario
        sets = [it for it in items if it.image == path and it.kind == "set"]
        assert all(it.label == set(it.query).issubset(own) and len(it.query) >= 2 for it in sets)
        assert sum(it.label for it in sets) == (len(own) >= 2) and sum(not it.label for it in sets) == 1
    for it in items:
        assert it.label == set(it.query).issubset(present[it.image])
    assert items == build_items(ds, EvalConfig(scenario_size=2, seed=3))[0]  # seeded
    # an image with more concepts than scenario_size is asked its own (and nothing absent)
    few, _ = build_items(ds, EvalConfig(scenario_size=1))
    for path, own in present.items():
        asked = {it.query[0] for it in few if it.image == path and it.kind == "concept"}
        assert own <= asked and len(asked) == max(1, len(own))
    with pytest.raises(ValueError, match="scenario_size"):
        EvalConfig(scenario_size=0)
    # multi_limit overrides limit for this task only: a seeded subset of the same items, in order
    cfg = EvalConfig(scenario_size=2, seed=3, limit=100, multi_limit=4)
    assert cfg.limit_for("multi") == 4 and cfg.limit_for("recog") == 100 and cfg.limit_for("caption") == 100
    subset, sub_info = build_items(ds, cfg)
    assert len(subset) == sub_info["items"] == 4 and sub_info["items_before_limit"] == len(items)
    assert [it for it in items if it in subset] == subset


# ============================================================================ 2. tiny model, all methods
def test_tiny_model_end_to_end(toy, tmp_path):
    ds = read_dataset(toy)
    plvm = tiny_plvm(template="llava15")
    k = plvm.aligner.config.num_queries
    base_before = {n: p.clone() for n, p in plvm.lvlm.model.state_dict().items()}
    methods = build_methods(
        ["none", "text", "image", "yollava", "plvm"],
        plvm.lvlm,
        plvm,
        MethodOptions(yollava=YoLLaVAConfig(steps=3, batch_size=2)),
    )
    cfg = EvalConfig(negatives_per_image=2, caption_max_new_tokens=6, caption_limit=3, batch_size=8)
    result = run_evaluation(
        methods,
        ds,
        ["recog", "textqa", "vqa", "multi", "caption"],
        tmp_path,
        cfg,
        progress=False,
        meta={"model": "tiny"},
    )

    files = {name: Path(p) for name, p in result.files.items()}
    assert set(files) == {"json", "markdown", "plot", "predictions"}
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files["plot"].stat().st_size > 5000
    data = json.loads(files["json"].read_text())
    assert data["config"]["negatives_per_image"] == 2 and data["meta"]["model"] == "tiny"
    lines = [json.loads(line) for line in files["predictions"].read_text().splitlines()]
    assert len(lines) == len(result.predictions)

    methods_json = data["methods"]
    assert list(methods_json) == ["none", "text", "image", "yollava", "plvm"]
    for key, entry in methods_json.items():
        assert set(entry["results"]) == {"recog", "textqa", "vqa", "multi", "caption"}, key
        rec = [r for r in lines if r["task"] == "recog" and r["method"] == key]
        assert len(rec) == 6 + 12
        assert all(r["pred"] == (r["score"] > 0) for r in rec)  # logits mode: Yes iff log-odds > 0
        again = binary_metrics([r["label"] for r in rec], [r["pred"] for r in rec]).to_dict()
        assert {m: entry["results"]["recog"][m] for m in again} == again
        own = [r for r in lines if r["task"] == "textqa" and r["method"] == key and r["variant"] == "own"]
        assert (
            choice_metrics([r["answer"] for r in own], [r["pred"] for r in own]).acc
            == entry["results"]["textqa"]["acc"]
        )
    # every method answered exactly the same recognition questions
    asked = {
        key: sorted(
            (r["concept"], r["image"], r["label"]) for r in lines if r["task"] == "recog" and r["method"] == key
        )
        for key in methods_json
    }
    assert len({json.dumps(v) for v in asked.values()}) == 1

    # token budgets: PLVM and Yo'LLaVA spend 1 + k, the image prompt its reference's image tokens + the name
    assert methods_json["plvm"]["concept_tokens"] == 1 + k
    assert methods_json["yollava"]["concept_tokens"] == 1 + k
    assert methods_json["none"]["concept_tokens"] == 0
    image_method = methods[2]
    ref = ds.image(ds.concepts["toy_red"].reference)
    n_img = plvm.lvlm.image_inputs([ref])[0][0]
    name_tokens = len(plvm.lvlm.tokenizer("<toy_red>", add_special_tokens=False).input_ids)
    assert image_method.concept_tokens("toy_red") == n_img + name_tokens
    assert methods[1].max_tokens == k  # text description capped at PLVM's k (equal budget)

    # controls: wrong concept for personalized methods only; no-personalization control = the none method
    assert methods_json["none"]["results"]["textqa"]["wrong_concept"] is None
    assert methods_json["plvm"]["results"]["vqa"]["wrong_concept"]["n"] == len(ds.visual_qa)
    assert data["controls"]["textqa"]["no_personalization"]["acc"] == methods_json["none"]["results"]["textqa"]["acc"]
    wrong = [r for r in lines if r["task"] == "vqa" and r.get("variant") == "wrong"]
    assert wrong and all(r["personalized_with"] != r["concept"] for r in wrong)

    # Yo'LLaVA really tuned (3 steps per concept, timed) and the base model did not move
    tuning = methods_json["yollava"]["tuning"]
    assert set(tuning) == set(ds.concepts) and all(t["steps"] == 3 for t in tuning.values())
    assert methods_json["yollava"]["prepare_seconds_per_concept"] > 0
    yol = methods[3]
    emb = plvm.lvlm.model.get_input_embeddings().weight
    token = plvm.lvlm.tokenizer.encode(" person", add_special_tokens=False)
    assert all(not torch.allclose(c.e_word, emb[t]) for c in yol.concepts.values() for t in token)
    for n, p in plvm.lvlm.model.state_dict().items():
        assert torch.equal(p, base_before[n]), n

    # captions: mentions are the <name>s in the generated text, restricted to the introduced concepts
    caps = [r for r in lines if r["task"] == "caption"]
    assert len(caps) == 5 * 2 * 3
    names = {c: ds.name_of(c) for c in ds.concepts}
    for r in caps:
        said = extract_mentions(r["caption"], [names[c] for c in r["context"]])
        assert sorted(r["mentioned"]) == sorted(c for c in r["context"] if names[c] in said)

    # the text baseline's wrong-concept prompt carries the *other* identity's description
    text_method = methods[1]
    conv = text_method.conversation("Is <toy_red> here?", [Binding("toy_red", "toy_blue")])
    assert text_method.descriptions["toy_blue"] in conv.turns[0].text

    md = files["markdown"].read_text()
    assert md.count("| Base + image prompt |") >= 3 and "| PLVM (Aligner) | 5 |" in md
    assert "Mean acc" in md and "## QA controls" in md and "## Multi-concept" in md and "## Captioning" in md


def test_yollava_cache_reuses_a_tuning_only_when_it_would_be_the_same(toy, tmp_path, monkeypatch, caplog):
    from plvm.eval.methods import YoLLaVA

    ds = read_dataset(toy)
    plvm = tiny_plvm(template="llava15")
    cfg = YoLLaVAConfig(k=4, steps=2, batch_size=2)
    first = YoLLaVA(plvm.lvlm, cfg, cache=tmp_path / "cache")
    first.prepare(ds, list(ds.concepts))
    assert sorted(p.stem for p in (tmp_path / "cache").glob("*.safetensors")) == sorted(ds.concepts)
    assert first.reused == []

    def no_tuning(*args, **kwargs):
        raise AssertionError("tuned although the cache holds this tuning")

    again = YoLLaVA(plvm.lvlm, cfg, cache=tmp_path / "cache")
    monkeypatch.setattr(again, "tune", no_tuning)
    again.prepare(ds, list(ds.concepts))
    assert sorted(again.reused) == sorted(ds.concepts)
    for cid, concept in first.concepts.items():
        loaded = again.concepts[cid]
        assert loaded.name == concept.name
        assert torch.equal(loaded.context, concept.context) and torch.equal(loaded.e_weight, concept.e_weight)
    # a reused concept reports what its tuning cost and its tuning log
    for cid in ds.concepts:
        assert again.prepare_seconds[cid] == pytest.approx(first.prepare_seconds[cid], rel=0.5)
        assert again.logs[cid] == first.logs[cid]
    assert again.describe()["reused_from_cache"] == again.reused

    # another config, or another set of concepts (other negatives), tunes again
    other = YoLLaVA(plvm.lvlm, YoLLaVAConfig(k=4, steps=3, batch_size=2), cache=tmp_path / "cache")
    other.prepare(ds, list(ds.concepts)[:1])
    assert other.reused == [] and other.logs[list(ds.concepts)[0]]["steps"] == 3
    fewer = ds.subset(2, seed=0)
    cid = list(fewer.concepts)[0]
    assert YoLLaVA(plvm.lvlm, cfg).cache_key(fewer, cid) != YoLLaVA(plvm.lvlm, cfg).cache_key(ds, cid)

    # an unreadable cache file is tuned again (and replaced), with a warning
    victim = list(ds.concepts)[1]
    (tmp_path / "cache" / f"{victim}.safetensors").write_bytes(b"not a safetensors file")
    repaired = YoLLaVA(plvm.lvlm, cfg, cache=tmp_path / "cache")
    with caplog.at_level("WARNING"):
        repaired.prepare(ds, [victim])
    assert repaired.reused == [] and "unusable" in caplog.text
    assert YoLLaVA(plvm.lvlm, cfg, cache=tmp_path / "cache").cache_key(ds, victim) == repaired.cache_key(ds, victim)
    third = YoLLaVA(plvm.lvlm, cfg, cache=tmp_path / "cache")
    third.prepare(ds, [victim])
    assert third.reused == [victim]


class SquareFaces:
    """Face-backend stand-in for the toy set: the coloured square is the 'face', its mean colour the embedding."""

    name = "squares"
    threshold = 0.99

    def detect_and_embed(self, image):
        from types import SimpleNamespace

        import numpy as np

        arr = np.asarray(image.convert("RGB"), dtype=np.float32)
        mask = np.abs(arr - 245).max(-1) > 40
        if not mask.any():
            return []
        ys, xs = np.nonzero(mask)
        return [
            SimpleNamespace(
                box=(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), score=1.0, embedding=arr[mask].mean(0) - 127.0
            )
        ]


def test_identify_methods_rows(toy, tmp_path):
    ds = read_dataset(toy)
    plvm = tiny_plvm(template="llava15")
    methods = build_methods(["identify", "plvm-idp", "plvm"], plvm.lvlm, plvm, MethodOptions(face=SquareFaces()))
    identify, idp, plain = methods
    assert identify.index is idp.index  # one index, one photo cache
    result = run_evaluation(
        methods, ds, ["recog", "vqa"], tmp_path / "faces.md", EvalConfig(negatives_per_image=2), progress=False
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "faces.json",
        "faces.md",
        "faces.png",
        "faces.predictions.jsonl",
    ]
    assert "![results](faces.png)" in (tmp_path / "faces.md").read_text()
    data = result.data["methods"]
    # identify answers recognition only, from the face match; on the toy set the colours identify perfectly
    assert set(data["identify"]["results"]) == {"recog"} and data["identify"]["concept_tokens"] == 0
    assert data["identify"]["results"]["recog"]["acc"] == 1.0
    assert data["identify"]["identify"]["references_with_face"] == 3
    rows = [r for r in result.predictions if r["method"] == "identify"]
    assert len(rows) == 18 and {r["answer"] for r in rows} == {"face"}
    # plvm-idp: the same PLVM concepts, plus a hint exactly when identify found the concept in the photo
    assert set(data["plvm-idp"]["results"]) == {"recog", "vqa"}
    assert data["plvm-idp"]["concept_tokens"] == data["plvm"]["concept_tokens"]
    photo = ds.image(ds.concepts["toy_red"].query_images[0])
    hint = idp.hint([Binding("bo", "toy_red")], photo)
    assert hint.startswith("<bo> is the person ") and hint.endswith(".")
    assert idp.hint([Binding("bo", "toy_blue")], photo) == ""
    conv = idp.conversation("Is <bo> in this photo?", [Binding("bo", "toy_red")], [photo])
    assert conv.turns[0].text == f"{hint}\nIs <bo> in this photo?"
    assert (
        plain.conversation("Is <bo> in this photo?", [Binding("bo", "toy_red")], [photo]).turns[0].text
        == "Is <bo> in this photo?"
    )
    # hints: the 6 recognition positives + each visual question about its own concept (6); none for the 12
    # recognition negatives nor for the wrong-concept control (that identity is not in the photo)
    assert data["plvm-idp"]["questions_with_photo"] == 18 + 2 * len(ds.visual_qa)
    assert data["plvm-idp"]["questions_with_hint"] == 6 + len(ds.visual_qa)
    assert "| PLVM + identify prompt |" in Path(result.files["markdown"]).read_text()


# ============================================================================ 3. CLI
def test_cli_mounted_as_plvm_eval(tmp_path):
    root = typer.Typer()

    @root.command()
    def version() -> None:  # a second command, as in the real CLI
        typer.echo("0")

    root.add_typer(eval_app)
    runner = CliRunner()
    help_out = runner.invoke(root, ["eval", "--help"])
    assert help_out.exit_code == 0 and "--baselines" in help_out.output
    out = tmp_path / "out"
    res = runner.invoke(
        root,
        [
            "eval",
            "--model",
            "tiny",
            "--toy",
            "--data",
            str(tmp_path / "toy"),
            "--out",
            str(out),
            "--tasks",
            "recog,textqa",
            "--baselines",
            "none,plvm",
            "--limit",
            "4",
            "--scoring",
            "generate",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert list(data["methods"]) == ["none", "plvm"]
    assert data["tasks"]["recog"]["items"] == 4 and data["config"]["limit"] == 4
    assert data["config"]["scoring"] == "generate"
    assert (out / "results.md").exists() and (out / "results.png").exists()
    # generate mode: predictions are parsed from the generated text (None when it has no Yes/No or letter)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    recog = [r for r in rows if r["task"] == "recog"]
    assert len(recog) == 8 and all(r["score"] is None and isinstance(r["answer"], str) for r in recog)
    assert all(r["pred"] == parse_yes_no(r["answer"]) for r in recog)
    qa_rows = [r for r in rows if r["task"] == "textqa"]
    assert qa_rows and all(r["pred"] == parse_letter(r["text"], r["options"]) for r in qa_rows)
    invalid = sum(r["pred"] is None for r in recog if r["method"] == "plvm")
    assert data["methods"]["plvm"]["results"]["recog"]["invalid"] == invalid
    bad = runner.invoke(root, ["eval", "--model", "tiny", "--data", str(tmp_path / "toy"), "--baselines", "nope"])
    assert bad.exit_code != 0


def test_best_threshold_and_cross_fitted_metrics_by_hand():
    from plvm.eval.metrics import best_threshold, cross_fitted_metrics

    # separable at any t in (0.5, 2): the midpoint 1.25 is chosen
    assert best_threshold([0.0, 0.5, 2.0, 3.0], [False, False, True, True]) == pytest.approx(1.25)
    # all positives: every threshold below the lowest score is perfect; the one closest to 0 wins
    assert best_threshold([1.0, 2.0], [True, True]) == pytest.approx(0.0)
    # concept "a" has scores shifted by +10: a threshold fitted on "b" (0.5) calls all of "a" Yes, and one
    # fitted on "a" (10.5) calls all of "b" No — a per-concept offset is not calibrated away
    scores = [10.0, 11.0, 0.0, 1.0]
    labels = [False, True, False, True]
    out = cross_fitted_metrics(scores, labels, ["a", "a", "b", "b"])
    assert out["thresholds"] == [pytest.approx(0.5), pytest.approx(10.5)]  # fold 0 = "a" (fitted on "b")
    assert (out["tp"], out["fp"], out["tn"], out["fn"]) == (1, 1, 1, 1) and out["mean_acc"] == pytest.approx(0.5)
    same = cross_fitted_metrics([0.0, 1.0, 0.2, 1.2], labels, ["a", "a", "b", "b"])
    assert same["mean_acc"] == 1.0
    with pytest.raises(ValueError, match="folds"):
        cross_fitted_metrics(scores, labels, ["a"] * 4)
