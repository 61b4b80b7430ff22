"""IP-Adapter data synthesis (PLVM §3.3): prompt bank, filters on fixed scores, QA construction, and the whole
pipeline end to end on tiny random diffusers / CLIP / LLaVA components (CPU, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plvm.synth.filters import (
    CLIP_THRESHOLD,
    FACE_THRESHOLD,
    CallableScorer,
    FaceIdentityScorer,
    FilterChain,
    ThresholdFilter,
    make_filters,
    summarize,
)
from plvm.synth.ipadapter.run import SettingsMismatch, SynthConfig, discover_references, image_seed, run_synthesis
from plvm.synth.ipadapter.training_items import (
    CallableAnswerer,
    ConceptData,
    answer_attributes,
    attribute_questions,
    build_items,
    count_kinds,
    to_concept_answer,
)
from plvm.synth.prompts_bank import CLOTHING, PLACES, build_prompt_bank, prompts_for_reference

NO_DIFFUSERS = "diffusers is not installed (pip install 'plvm[synth]'): the tiny SD + IP-Adapter tests need it"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine threads spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _noise(seed: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def refs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "celeba"
    d.mkdir()
    for i in (10, 2):  # natural order: 2 before 10
        _noise(i).save(d / f"{i}.jpg")
    (d / "notes.txt").write_text("not an image")
    return d


# ================================================================================ prompt bank
def test_prompt_bank_is_reproducible_distinct_and_follows_the_template():
    bank = build_prompt_bank(200, seed=0)
    assert len(bank) == 200 and len({p.text for p in bank}) == 200
    assert [p.text for p in bank] == [p.text for p in build_prompt_bank(200, seed=0)]
    assert [p.text for p in bank] != [p.text for p in build_prompt_bank(200, seed=1)]
    places = {p for p, _ in PLACES}
    for p in bank:
        assert p.text.startswith("A person ") and f" is {p.activity} {p.place}." in p.text
        assert p.place in places
        assert (p.clothing is None) == (" wearing " not in p.text)
        assert p.clothing is None or p.clothing in CLOTHING
    assert len({p.place for p in bank}) == len(PLACES)  # every place is used
    assert 0.6 < sum(p.clothing is not None for p in bank) / 200 < 0.95
    assert bank[0].sd_prompt("photo").endswith(", photo")


def test_prompts_per_reference_are_distinct_and_stable():
    bank = build_prompt_bank(200, seed=0)
    five = prompts_for_reference(bank, "00042", 5, seed=0)
    assert len({p.text for p in five}) == 5
    assert five == prompts_for_reference(bank, "00042", 5, seed=0)
    assert five != prompts_for_reference(bank, "00043", 5, seed=0)
    assert image_seed(0, "a", 0) == image_seed(0, "a", 0) != image_seed(0, "a", 1)
    assert 0 <= image_seed(3, "x", 4) < 2**31


# ================================================================================ filters on fixed scores
@pytest.mark.parametrize("score, kept", [(0.35, True), (0.2, True), (0.1999, False), (-0.1, False), (None, False)])
def test_clip_filter_decision_on_fixed_scores(score, kept):
    f = ThresholdFilter(CallableScorer("clip", lambda *a: score), CLIP_THRESHOLD)
    assert CLIP_THRESHOLD == 0.2
    ok, reason = f.decide(score)
    assert ok is kept and (reason is None) is kept


@pytest.mark.parametrize("score, kept", [(0.9, True), (0.5, True), (0.4999, False), (0.0, False), (None, False)])
def test_face_filter_decision_on_fixed_scores(score, kept):
    f = ThresholdFilter(CallableScorer("face", lambda *a: score), FACE_THRESHOLD)
    assert FACE_THRESHOLD == 0.5
    assert f.decide(score)[0] is kept


def test_filter_chain_keeps_every_score_and_says_why():
    scores = {"clip": [0.31, 0.15, 0.25, 0.30], "face": [0.62, 0.70, 0.41, None]}
    chain = make_filters(
        CallableScorer("clip", lambda im, p, r: scores["clip"][im.info["i"]]),
        CallableScorer("face", lambda im, p, r: scores["face"][im.info["i"]]),
    )
    images = []
    for i in range(4):
        im = Image.new("RGB", (4, 4))
        im.info["i"] = i
        images.append(im)
    decisions = chain.evaluate(images, ["p"] * 4, [None] * 4)
    assert [d.accepted for d in decisions] == [True, False, False, False]
    assert decisions[1].scores == {"clip": 0.15, "face": 0.70}  # the face score is kept although CLIP failed
    assert decisions[1].reasons == ("clip: 0.150 < 0.2",)
    assert decisions[2].reasons == ("face: 0.410 < 0.5",)
    assert decisions[3].scores["face"] is None and decisions[3].reasons[0].startswith("face: no score")
    assert summarize(decisions) == {"total": 4, "kept": 1, "rejected": 3, "rejected_by": {"clip": 1, "face": 2}}
    assert ThresholdFilter(CallableScorer("face", lambda *a: None), 0.5, accept_missing=True).decide(None)[0]


def test_face_identity_scorer_is_the_cosine_of_the_embeddings():
    ref, same, other, faceless = (Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue", "white"))
    table = {
        id(ref): np.array([1.0, 0.0]),
        id(same): np.array([0.6, 0.8]),
        id(other): np.array([0.4, 0.9165]),
        id(faceless): None,
    }
    calls = []

    def embed(im):
        calls.append(id(im))
        return table[id(im)]

    scorer = FaceIdentityScorer(embed)
    chain = FilterChain([ThresholdFilter(scorer, FACE_THRESHOLD)])
    d = chain.evaluate([same, other, faceless], ["p"] * 3, [ref] * 3)
    assert d[0].scores["face"] == pytest.approx(0.6) and d[0].accepted
    assert d[1].scores["face"] == pytest.approx(0.4, abs=1e-3) and not d[1].accepted
    assert d[2].scores["face"] is None and not d[2].accepted
    assert calls.count(id(ref)) == 1  # the reference is embedded once


def test_face_embedder_adapts_the_face_encoder(monkeypatch):
    import sys
    import types

    from plvm.synth.filters import face_embedder

    class Face:
        def __init__(self, v):
            self.embedding = np.asarray(v, dtype=np.float32)

    class FaceConfig:  # the shape of plvm.encoders.face.FaceConfig
        def __init__(self, backend="dlib", allow_noncommercial=False):
            self.backend = backend
            self.allow_noncommercial = allow_noncommercial

    class FaceEncoder:
        def __init__(self, config):
            self.backend = config.backend

        @classmethod
        def from_config(cls, config):
            return cls(config)

        def main_face(self, image):
            return None if image.getpixel((0, 0)) == (0, 0, 0) else Face([0.6, 0.8])

    fake = types.ModuleType("plvm.encoders.face")
    fake.FaceConfig = FaceConfig
    fake.FaceEncoder = FaceEncoder
    monkeypatch.setitem(sys.modules, "plvm.encoders", types.ModuleType("plvm.encoders"))
    monkeypatch.setitem(sys.modules, "plvm.encoders.face", fake)
    embed = face_embedder("dlib")
    assert embed(Image.new("RGB", (4, 4), "white")).tolist() == pytest.approx([0.6, 0.8])
    assert embed(Image.new("RGB", (4, 4))) is None
    with pytest.raises(ValueError, match="NON-COMMERCIAL"):
        face_embedder("insightface")
    assert face_embedder("insightface", allow_noncommercial=True) is not None


# ================================================================================ QA construction
def test_attribute_questions_and_answer_rewriting():
    qs = attribute_questions()
    assert len(qs) == 7
    assert ("What is <sks>'s hair color?", "What is this person's hair color?") in qs
    assert ("Is <sks> young or old?", "Is this person young or old?") in qs
    assert all("<sks>" not in asked and "this person" in asked for _, asked in qs)
    assert to_concept_answer("The person's hair is brown") == "<sks>'s hair is brown."
    assert to_concept_answer("  this woman has  blue eyes. ") == "<sks> has blue eyes."
    assert to_concept_answer("She has a small nose.") == "<sks> has a small nose."
    assert to_concept_answer("Yes, the man has a beard.") == "Yes, <sks> has a beard."
    assert to_concept_answer("brown") == "Brown."
    recs = answer_attributes(
        CallableAnswerer(lambda im, q: "The person appears young." if "young" in q else "Fair."),
        Image.new("RGB", (4, 4)),
    )
    young = next(r for r in recs if "young" in r["question"])
    assert young == {
        "question": "Is <sks> young or old?",
        "asked": "Is this person young or old?",
        "raw_answer": "The person appears young.",
        "answer": "<sks> appears young.",
    }


def test_build_items_mixes_positives_negatives_and_attributes():
    concepts = [
        ConceptData("a", [f"a/gen_{k:02d}.png" for k in range(5)], [{"question": "Q <sks>?", "answer": "A."}]),
        ConceptData("b", [f"b/gen_{k:02d}.png" for k in range(5)], []),
        ConceptData("c", [], [{"question": "Q2 <sks>?", "answer": "B."}]),
    ]
    items = build_items(concepts, seed=0, positive_ratio=0.6)
    assert count_kinds(items) == {"recog_pos": 10, "recog_neg": 7, "attribute": 2}  # 10/(10+7) ≈ 0.6
    assert items == build_items(concepts, seed=0, positive_ratio=0.6)
    for it in items:
        assert set(it) >= {"concept", "query_img", "question", "answer", "kind"} and "<sks>" in it["question"]
        if it["kind"] == "recog_pos":
            assert it["query_img"].startswith(it["concept"] + "/") and it["answer"].startswith("Yes")
        elif it["kind"] == "recog_neg":
            assert not it["query_img"].startswith(it["concept"] + "/") and it["answer"].startswith("No")
        else:
            assert it["query_img"] is None


# ================================================================================ the run, with stand-ins
class _FakeGenerator:
    """Solid-colour images; records what it was asked (for the resume test)."""

    class config:  # noqa: N801 - mimics GenerationConfig
        batch_size = 3
        style = "photo"

    def __init__(self):
        self.jobs = []

    def generate(self, jobs):
        from plvm.synth.ipadapter.generator import GeneratedImage

        self.jobs += jobs
        return [GeneratedImage(j, Image.new("RGB", (16, 16), (40 * j.meta["index"], 0, 0)), nsfw=False) for j in jobs]


def test_run_filters_records_scores_and_resumes(refs_dir, tmp_path):
    from plvm.training.data import FolderPersonalSource

    out = tmp_path / "out"
    gen = _FakeGenerator()
    # image k of every reference gets CLIP score 0.1 * (k + 1): k = 0 is rejected (0.1 < 0.2)
    clip = CallableScorer("clip", lambda im, p, r: 0.1 * (1 + im.getpixel((0, 0))[0] // 40))
    face = CallableScorer("face", lambda im, p, r: 0.8)
    answerer = CallableAnswerer(lambda im, q: "The person's hair is dark.")
    cfg = SynthConfig(images_per_ref=3, n_prompts=20)

    def run(generator):
        return run_synthesis(
            refs_dir,
            out,
            cfg,
            lambda: generator,
            lambda: make_filters(clip, face),
            lambda: answerer,
            settings={"model": "fake"},
        )

    report = run(gen)
    assert [r.id for r in discover_references(refs_dir)] == ["2", "10"]
    assert report.generated_now == 6 and report.kept == 4 and report.rejected == 2
    assert report.rejected_by == {"clip": 2} and report.items == {"recog_pos": 4, "recog_neg": 3, "attribute": 14}
    recs = json.loads((out / "2" / "images.json").read_text())["records"]
    assert [r["index"] for r in recs] == [0, 1, 2]
    assert recs[0]["file"] == "2/rejected/gen_00.png" and not recs[0]["accepted"]
    assert recs[0]["scores"] == {"clip": pytest.approx(0.1), "face": 0.8}
    assert recs[1]["file"] == "2/gen_01.png" and recs[1]["seed"] == image_seed(0, "2", 1)
    assert recs[1]["sd_prompt"] == recs[1]["prompt"].rstrip(".") + ", photo"
    assert (out / "2" / "ref_img.jpg").read_bytes() == (refs_dir / "2.jpg").read_bytes()
    attrs = json.loads((out / "10" / "attributes.json").read_text())["records"]
    assert attrs[0]["answer"] == "<sks>'s hair is dark."

    source = FolderPersonalSource(out, seed=1)
    batch = source.examples(0, 16)
    assert {e.kind for e in batch} <= {"recog_pos", "recog_neg", "attribute"}
    assert all(e.reference.size == (40, 48) for e in batch)

    # resume: one record lost -> only that image is made again, with the same seed
    st = json.loads((out / "10" / "images.json").read_text())
    lost = st["records"].pop(2)
    (out / "10" / "images.json").write_text(json.dumps(st))
    gen2 = _FakeGenerator()
    report2 = run(gen2)
    assert report2.generated_now == 1 and report2.attributes_now == 0
    assert [(j.meta["ref"].id, j.meta["index"], j.seed) for j in gen2.jobs] == [("10", 2, lost["seed"])]
    with pytest.raises(SettingsMismatch, match="model"):
        run_synthesis(refs_dir, out, cfg, None, None, None, settings={"model": "other"})


# ================================================================================ tiny diffusers components
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    try:
        import diffusers  # noqa: F401
    except Exception as exc:  # missing, or broken beside this torch
        pytest.skip(f"{NO_DIFFUSERS} [{exc!r}]")
    from plvm.synth.ipadapter.tiny import build_tiny_components

    return build_tiny_components(tmp_path_factory.mktemp("tiny-components"), variant="plus-face")


def test_tiny_ip_adapter_loads_through_diffusers_and_seeds_are_per_image(tiny, tmp_path):
    from plvm.synth.ipadapter.generator import GenerationConfig, GenerationJob, IPAdapterGenerator, IPAdapterSpec
    from plvm.synth.ipadapter.tiny import build_tiny_components

    cfg = GenerationConfig(steps=2, height=32, width=32, batch_size=2)
    gen = IPAdapterGenerator.load(
        IPAdapterSpec(str(tiny.sd), str(tiny.ip_adapter), tiny.ip_subfolder, tiny.ip_weight),
        cfg,
        device="cpu",
        local_files_only=True,
    )
    assert gen.describe()["image_projection"] == "IPAdapterPlusImageProjection"
    r1, r2 = _noise(1), _noise(2)
    park, library = "A person is jogging in a city park.", "A person is reading a book in a library."
    batch = gen.generate([GenerationJob(r2, park, 11), GenerationJob(r2, library, 22)])  # one batch of 2
    alone = gen.generate([GenerationJob(r2, library, 22)])[0]
    mixed = gen.generate([GenerationJob(r1, park, 11), GenerationJob(r2, library, 22)])  # 2 batches: 2 references
    assert [g.image.size for g in batch] == [(32, 32), (32, 32)]
    b = np.asarray(alone.image, dtype=np.int16)

    def diff(g):
        return np.abs(np.asarray(g.image, dtype=np.int16) - b).mean()

    # same (reference, prompt, seed) -> same image whatever else is generated with it
    assert diff(batch[1]) < 1.0 and diff(mixed[1]) < 1.0
    assert diff(gen.generate([GenerationJob(r2, library, 23)])[0]) > 5  # another seed
    assert diff(gen.generate([GenerationJob(r1, library, 22)])[0]) > 1.0  # another reference conditions it
    jobs = [GenerationJob(r1, park, 11)]

    full = build_tiny_components(tmp_path / "full", variant="full-face")
    gen_full = IPAdapterGenerator.load(
        IPAdapterSpec(str(full.sd), str(full.ip_adapter), full.ip_subfolder, full.ip_weight),
        cfg,
        device="cpu",
        local_files_only=True,
    )
    assert gen_full.describe()["image_projection"] == "IPAdapterFullImageProjection"
    assert gen_full.generate(jobs)[0].image.size == (32, 32)


def test_cli_tiny_end_to_end_output_is_read_by_the_trainer(tiny, refs_dir, tmp_path):
    from typer.testing import CliRunner

    from plvm.cli.ipadapter import app
    from plvm.training.data import FolderPersonalSource

    out = tmp_path / "synth"
    args = [
        "ipadapter",
        "--refs",
        str(refs_dir),
        "--out",
        str(out),
        "--tiny",
        "--tiny-dir",
        str(tiny.root),
        "--images-per-ref",
        "2",
        "--n-prompts",
        "30",
        "--attr-max-new-tokens",
        "3",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["generated_now"] == 4 and report["kept"] == 4
    assert report["items"] == {"recog_pos": 4, "recog_neg": 3, "attribute": 14}
    meta = json.loads((out / "synth.json").read_text())
    assert meta["settings"]["clip_threshold"] == -1.0 and meta["settings"]["tiny"] is True
    recs = json.loads((out / "2" / "images.json").read_text())["records"]
    assert {"clip", "face"} == set(recs[0]["scores"]) and all(isinstance(v, float) for v in recs[0]["scores"].values())
    assert Image.open(out / recs[0]["file"]).size == (32, 32)

    examples = FolderPersonalSource(out, seed=0).examples(0, 12)
    assert len(examples) == 12 and any(e.query is not None for e in examples)

    again = CliRunner().invoke(app, args)  # resume: nothing left to do
    assert again.exit_code == 0 and json.loads(again.stdout.strip().splitlines()[-1])["generated_now"] == 0
    changed = CliRunner().invoke(app, args + ["--steps", "3"])
    assert changed.exit_code == 2 and "other settings" in changed.output
    refused = CliRunner().invoke(app, args[:5] + ["--face-backend", "insightface"])
    assert refused.exit_code == 2 and "NON-COMMERCIAL" in refused.output


# ================================================================================ real faces
def _real_face_images():
    import matplotlib.cbook

    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    other = None
    try:
        from skimage import data

        other = Image.fromarray(data.astronaut())
    except Exception:
        pass
    return hopper, other


@pytest.mark.parametrize("backend", ["dlib", "insightface"])
def test_face_filter_on_real_faces(backend):
    try:
        from plvm.synth.filters import face_embedder

        embed = face_embedder(backend, allow_noncommercial=True)
    except ImportError as exc:
        pytest.skip(f"plvm.encoders.face is not available: {exc}")
    except Exception as exc:  # backend missing its package or model file
        pytest.skip(f"face backend {backend!r} unavailable: {exc!r}")
    hopper, astronaut = _real_face_images()
    w, h = hopper.size
    crop = hopper.crop((int(0.05 * w), 0, w, int(0.95 * h))).resize((w // 2, h // 2))  # same person, new framing
    scorer = FaceIdentityScorer(embed)
    chain = FilterChain([ThresholdFilter(scorer, FACE_THRESHOLD)])
    refs = [hopper]
    images = [crop]
    if astronaut is not None:
        images.append(astronaut)
        refs.append(hopper)
    d = chain.evaluate(images, ["p"] * len(images), refs)
    assert d[0].accepted, d[0]
    if astronaut is not None:
        assert not d[1].accepted, d[1]
