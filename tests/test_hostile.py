"""Reliability suite: hostile inputs through CLI, HTTP API and Python; kill -9 at every unlink/replace/commit
of add, replace, rm and rename; concurrent writers; a full disk (RLIMIT_FSIZE); corrupted store files.

The cases live in :mod:`plvm.bench.reliability` (``plvm bench reliability`` runs the same ones and writes
docs/RELIABILITY.md); here each group must show 0 tracebacks / HTTP 500s, 0 concepts lost, and every
nonsense input refused with a one-line message.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from plvm.bench import reliability as rel
from plvm.concept import ConceptError, lookup_name, normalize_name
from plvm.server.guard import PixelBudget, RequestGuardMiddleware, allowed_host_names, split_host
from plvm.store import ConceptStore, CorruptStoreError, StoreError, StoreIdentity
from plvm.validation import (
    InvalidInputError,
    check_box,
    check_max_new_tokens,
    check_name_for_tokenizer,
    check_question,
    check_threshold,
    check_top_k,
    parse_box,
)


def _no_failures(outcomes):
    bad = [f"{o.surface} / {o.case}: {o.result} — {o.detail}" for o in rel.failures(outcomes)]
    assert not bad, "\n".join(bad)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = rel.World.build(tmp_path_factory.mktemp("hostile"))
    yield w
    w.store.close()


# ---------------------------------------------------------------------- the whole suite, group by group
def test_hostile_inputs_get_clear_answers(world):
    outcomes = rel.input_cases(world)
    _no_failures(outcomes)
    groups = {o.group for o in outcomes}
    assert {"questions", "numbers", "boxes", "names", "store path"} <= groups
    assert {o.surface for o in outcomes} == {"cli", "api", "python"}
    assert sum(o.expect == "refuse" for o in outcomes) > 200  # the suite really tries many inputs


def test_bad_concept_files_are_refused_and_the_store_keeps_working(world):
    outcomes = rel.import_cases(world)
    _no_failures(outcomes)
    assert world.store.names() == ["bo", "mo"]  # nothing half-imported


def test_server_refuses_foreign_hosts_and_cross_origin_writes(world):
    outcomes = rel.server_cases(world)
    _no_failures(outcomes)
    assert world.client.app.state.pixel_budget.peak <= world.client.app.state.pixel_budget.capacity


def test_kill_9_at_every_unlink_replace_and_commit_loses_nothing(tmp_path):
    outcomes = rel.fault_cases(tmp_path)
    _no_failures(outcomes)
    cases = {o.case for o in outcomes}
    for op in ("add", "replace", "rm", "rename-replace", "rm-shared-image"):
        assert f"kill -9 at commit #1 of {op}" in cases and f"kill -9 at after-commit #1 of {op}" in cases
    # the unlinks of rm and replace happen after the COMMIT: killed there, the change is already durable
    rm = {o.case: o.detail for o in outcomes if o.case.endswith(" of rm")}
    assert "['b', 'c', 'd']" in rm["kill -9 at unlink #1 of rm"]
    assert "['a', 'b', 'c', 'd']" in rm["kill -9 at commit #1 of rm"]


def test_two_processes_adding_50_concepts_each_lose_nothing(tmp_path):
    outcomes = rel.concurrency_cases(tmp_path, 50)
    _no_failures(outcomes)
    assert "100 acknowledged, 100 stored" in outcomes[0].detail


def test_full_disk_fails_clearly_and_keeps_the_store(tmp_path):
    outcomes = rel.full_disk_cases(tmp_path)
    _no_failures(outcomes)
    assert all(o.result == "clear" and "nothing was stored" in o.detail for o in outcomes)


def test_corrupted_store_files_are_reported_with_path_and_recovery(world, tmp_path):
    outcomes = rel.corruption_cases(world, tmp_path)
    _no_failures(outcomes)


# ---------------------------------------------------------------------- the pieces, directly
def test_orphans_are_swept_at_open_and_rm_unlinks_after_commit(tmp_path):
    rel._seed_store(tmp_path / "s")
    (tmp_path / "s" / "concepts" / ("0" * 32 + ".safetensors")).write_bytes(b"orphan")
    (tmp_path / "s" / "images" / ".x.png.abc.tmp").write_bytes(b"stale")
    with ConceptStore(tmp_path / "s") as store:
        assert sorted(p.name for p in store.sweep_orphans()) == []  # the open already swept them
        assert not (tmp_path / "s" / "concepts" / ("0" * 32 + ".safetensors")).exists()
        assert not (tmp_path / "s" / "images" / ".x.png.abc.tmp").exists()
        record = store.get("c")
        store.remove("c")  # c shares its photo with d: the photo stays
        assert store.image_file("d").name.startswith(record.image_sha256)
        assert not (tmp_path / "s" / "concepts" / f"{record.id}.safetensors").exists()


def test_store_refuses_a_file_path_and_a_corrupt_index(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a directory"):
        ConceptStore(tmp_path / "f")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "index.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(CorruptStoreError, match=r"index\.sqlite is unreadable.*left as it is.*Recover"):
        ConceptStore(tmp_path / "s")
    assert (tmp_path / "s" / "index.sqlite").read_bytes() == b"not a database at all" * 100


def test_feature_dimensions_must_agree_within_a_kind(tmp_path):
    store = ConceptStore(tmp_path / "s", StoreIdentity("tiny", 64))
    store.add(rel._fake_concept("a", 1), features={"face:x": np.ones(8, np.float32)})
    with pytest.raises(ConceptError, match="has 4 values; the stored concepts' have 8"):
        store.add(rel._fake_concept("b", 2), features={"face:x": np.ones(4, np.float32)})
    with pytest.raises(ConceptError, match="its encoder gives 32"):
        store.add(rel._fake_concept("b", 2), features={"ref:enc:32:28": np.ones(16, np.float32)})
    assert store.names() == ["a"] and store.feature_matrix("face:x").matrix.shape == (1, 8)


@pytest.mark.parametrize("bad", ["t1", "T7", "<t12>", "image", "-", "_-_", "x\n", "x\t", "\tx", "s", "<unk>", "pad"])
def test_names_colliding_with_prompt_syntax_are_refused(bad):
    with pytest.raises(ConceptError) as err:
        normalize_name(bad)
    assert "\n" not in str(err.value)


def test_existing_concepts_with_now_reserved_names_can_still_be_looked_up():
    assert lookup_name("<t1>") == "t1" and lookup_name("-") == "-"
    with pytest.raises(ConceptError):
        lookup_name("x\n")


def test_tokenizer_special_tokens_are_reserved_names_and_refused_in_questions():
    tok = SimpleNamespace(
        all_special_tokens=["<|im_end|>", "<filename>"],
        additional_special_tokens=[],
        get_added_vocab=lambda: {"<gh_stars>": 5},
    )
    with pytest.raises(ConceptError, match="special token of this model's tokenizer"):
        check_name_for_tokenizer("filename", tok)
    with pytest.raises(ConceptError):
        check_name_for_tokenizer("GH_STARS", tok)
    assert check_name_for_tokenizer("bo", tok) == "bo"
    with pytest.raises(InvalidInputError, match="special token <filename>"):
        check_question("what is <filename>?", special_tokens=["<filename>"])


@pytest.mark.parametrize("value", [0, -1, 10**9, 1.5, True, "8", float("nan")])
def test_max_new_tokens_out_of_range(value):
    with pytest.raises(InvalidInputError, match="max_new_tokens .* must be a whole number from 1 to"):
        check_max_new_tokens(value)


def test_number_and_box_checks_say_what_is_allowed():
    assert check_threshold(None) is None and check_threshold(0.5) == 0.5 and check_top_k(None) is None
    for bad in (float("nan"), float("inf"), 1.01, -1.5):
        with pytest.raises(InvalidInputError, match="from -1 to 1"):
            check_threshold(bad)
    with pytest.raises(InvalidInputError, match="from 1 to 10000"):
        check_top_k(0)
    assert parse_box("0, 0, 10, 12") == (0.0, 0.0, 10.0, 12.0)
    assert check_box([0, 0, 48, 48], (48, 48)) == (0.0, 0.0, 48.0, 48.0)
    for bad, size in (
        ([0, 0, 49, 10], (48, 48)),
        ([5, 5, 5, 9], None),
        ([9, 9, 2, 2], None),
        ([0, 0, float("nan"), 4], None),
        ([0, 0, 1, 1], None),
        ("0,0,4,4", None),
    ):
        with pytest.raises(InvalidInputError, match="box"):
            check_box(bad, size)


def test_pixel_budget_serialises_large_reservations():
    budget = PixelBudget(100, timeout=0.01)
    with budget.hold(80):
        with budget.hold(20):
            assert budget.in_use == 100
        with pytest.raises(Exception, match="busy"):
            budget.acquire(30)  # no room while 80 are held
    with budget.hold(10**9) as reserved:  # larger than the budget: runs alone
        assert reserved == 100
    assert budget.in_use == 0 and budget.peak == 100


def test_host_and_origin_rules():
    hosts = allowed_host_names("127.0.0.1", ["plvm.lan"])
    guard = RequestGuardMiddleware(None, hosts, token="t")
    assert split_host("[::1]:8000") == "::1" and split_host("LocalHost:80") == "localhost"
    assert guard.host_allowed("127.0.0.2:8000") and guard.host_allowed("plvm.lan") and not guard.host_allowed("a.b")
    assert allowed_host_names("0.0.0.0") is None  # wildcard bind: only with a token (check_bind)
    same = {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}
    assert guard.write_refusal("POST", same) is None
    assert guard.write_refusal("GET", {"host": "x", "origin": "http://evil"}) is None  # reads: Host rule only
    assert "cross-origin" in guard.write_refusal("POST", {"host": "127.0.0.1:8000", "origin": "http://evil"})
    assert guard.write_refusal("POST", {"host": "h", "origin": "http://evil", "authorization": "Bearer t"}) is None
    assert guard.write_refusal("POST", {"host": "h", "origin": "http://evil", "authorization": "Bearer x"})
    assert guard.write_refusal("DELETE", {"host": "h"}) is None  # curl: no browser headers


def test_cli_store_file_and_unknown_marker_are_one_line(tmp_path):
    from plvm.cli.product import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    (tmp_path / "f").write_text("x")
    r = runner.invoke(app, ["concepts", "list", "--store", str(tmp_path / "f")])
    assert r.exit_code == 2 and r.stderr.strip().count("\n") == 0 and "is a file, not a directory" in r.stderr
    r = runner.invoke(app, ["ask", "Is <t2> here?", "--model", "tiny", "--store", str(tmp_path / "s")])
    assert r.exit_code == 2 and "context tokens are written" in r.stderr


# ---------------------------------------------------------------------- checkpoints and weight files
def test_broken_weight_files_and_checkpoints_are_one_line_errors(tmp_path):
    """eval --aligner-weights, eval-base --projector, export (and the Python calls under them) on empty,
    truncated, oversized-header, pickle, wrong-shape, missing-key, NaN/inf/int files and checkpoints with a
    missing or corrupt state.json: exit 2, one line naming the file, no traceback; good files still load."""
    outcomes = rel.checkpoint_cases(tmp_path)
    _no_failures(outcomes)
    cases = {(o.surface, o.case) for o in outcomes}
    for label in (
        "empty file",
        "truncated to half",
        "oversized header length (10^12)",
        "pickle (torch.save)",
        "wrong shape",
        "missing tensor",
        "NaN in a tensor",
        "+inf in a tensor",
        "integer tensor",
    ):
        assert ("cli", f"eval --aligner-weights: {label}") in cases
        assert ("cli", f"eval-base --projector: {label}") in cases
        assert ("cli", f"export: stage-1 checkpoint, trainable.safetensors: {label}") in cases
        assert ("cli", f"export: Aligner checkpoint, trainable.safetensors: {label}") in cases
    for label in ("state.json missing", "state.json truncated", "state.json without step"):
        assert ("cli", f"export: stage-1 checkpoint, {label}") in cases
        assert ("cli", f"eval-base --projector DIR: stage-1 checkpoint, {label}") in cases
        assert ("cli", f"eval --aligner-weights DIR: Aligner checkpoint, {label}") in cases
    accepted = {o.case for o in outcomes if o.result == "accepted"}
    assert "check_projector_file: vision_feature_layer '8,-1', linear_1 768 wide" in accepted
    assert {"export: a good stage-1 checkpoint", "export: a good Aligner checkpoint"} <= accepted
    assert sum(o.expect == "refuse" for o in outcomes) > 200


def test_committed_weights_pass_the_checks():
    from plvm.config import get_preset
    from plvm.models.base import find_mini_projector
    from plvm.models.llava_mini.assembly import check_projector_file
    from plvm.models.llava_mini.lora import read_lora
    from plvm.pipeline import MINI_ALIGNER, aligner_shapes, read_aligner_weights
    from plvm.weight_files import REPO_ROOT

    projector = find_mini_projector()
    if projector is None or not MINI_ALIGNER.is_file():
        pytest.skip("committed weights not present")
    assert projector == REPO_ROOT / "models" / "llava-mini-v2" / "projector.safetensors"  # the default base is v2
    tensors, metadata = check_projector_file(projector)
    # v2's projector reads DINOv2 blocks 8 and 12, concatenated (2 x 384)
    assert tensors["linear_1.weight"].shape == (576, 768) and metadata["lm_lora"] == "lm_lora.safetensors"
    assert read_lora(projector.with_name("lm_lora.safetensors"))[1].r == 16
    config = get_preset("mini").aligner
    assert read_aligner_weights(MINI_ALIGNER, config).keys() == aligner_shapes(config).keys()


def test_weight_file_reader_pieces(tmp_path):
    import torch
    from safetensors.torch import save_file

    from plvm.validation import (
        MissingWeightFileError,
        WeightFileError,
        read_checkpoint_state,
        read_weights,
        shape_problems,
    )

    with pytest.raises(MissingWeightFileError) as err:  # still a FileNotFoundError for older callers
        read_weights(tmp_path / "nope.safetensors", "weights")
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ValueError)
    save_file({"a": torch.ones(4, dtype=torch.float16), "b": torch.zeros(0)}, str(tmp_path / "ok.safetensors"))
    tensors, _ = read_weights(tmp_path / "ok.safetensors", "weights")
    assert set(tensors) == {"a", "b"}
    save_file({"a": torch.tensor([1.0, float("nan"), float("inf")])}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(WeightFileError, match=r"tensor a of .*nan\.safetensors has 2 non-finite values"):
        read_weights(tmp_path / "nan.safetensors", "weights")
    assert shape_problems({"x": (2, 3), "y": (1,)}, {"x": (3, 2), "z": (4,)}, optional=()) == [
        "missing z (4,)",
        "unexpected y (1,)",
        "x: file has (2, 3), model needs (3, 2)",
    ]
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.json").write_text('{"step": 3, "task": {}, "loop": {}}')
    assert read_checkpoint_state(tmp_path / "ck")["step"] == 3
    (tmp_path / "ck" / "state.json").write_text('{"step": true, "task": {}, "loop": {}}')
    with pytest.raises(WeightFileError, match="no whole-number 'step'"):
        read_checkpoint_state(tmp_path / "ck")


def test_tiny_eval_loads_aligner_weights_it_is_given(tmp_path):
    import torch
    from safetensors.torch import save_file

    from plvm.cli.evaluate import load_plvm
    from plvm.models.tiny_plvm import tiny_plvm
    from plvm.validation import WeightFileError

    state = tiny_plvm(template="llava15").aligner.trainable_state_dict()
    save_file({k: v.contiguous() + 1 for k, v in state.items()}, str(tmp_path / "a.safetensors"))
    loaded = load_plvm("tiny", tmp_path / "a.safetensors").aligner.trainable_state_dict()
    assert all(torch.equal(loaded[k], state[k] + 1) for k in state)  # no longer silently ignored
    save_file({k: torch.zeros(3) for k in state}, str(tmp_path / "b.safetensors"))
    with pytest.raises(WeightFileError, match="do not fit the tiny Aligner"):
        load_plvm("tiny", tmp_path / "b.safetensors")
