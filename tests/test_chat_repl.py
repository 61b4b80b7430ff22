"""The chat REPL driven through its terminal (pexpect), the streaming loop, and the CLI's one-line errors."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from plvm.chat import ChatSession, run_repl
from plvm.cli.product import register
from plvm.identify import Identifier, ReferenceEncoder
from plvm.models.tiny_plvm import tiny_plvm
from plvm.store import ConceptStore, StoreIdentity

REPO = Path(__file__).resolve().parents[1]


def photo(path: Path, seed: int, size=(48, 48)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def plvm():
    return tiny_plvm()


@pytest.fixture()
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


# ---------------------------------------------------------------------- REPL through a terminal
def test_repl_add_concept_mid_dialogue_ask_and_list(tmp_path):
    pexpect = pytest.importorskip("pexpect", reason="pexpect drives the REPL through a pseudo-terminal")
    ref, first, second = photo(tmp_path / "bo.png", 1), photo(tmp_path / "party.png", 2), photo(tmp_path / "b.png", 3)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TERM="dumb", PYTHONUNBUFFERED="1")
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "plvm.cli",
            "chat",
            "--model",
            "tiny",
            "--store",
            str(tmp_path / "store"),
            "--image",
            str(first),
            "--max-new-tokens",
            "8",
            "--threshold",
            "0.999",
        ],
        env=env,
        encoding="utf-8",
        timeout=90,
        dimensions=(40, 200),
    )
    try:
        child.expect(r"plvm chat — model tiny \(base tiny\)")
        child.expect("you> ")
        child.sendline("/concepts")
        child.expect(r"active: none")
        child.expect(r"stored \(0\): none")
        child.expect("you> ")
        child.sendline(f"/add bo {ref}")  # a concept made mid-dialogue
        child.expect(r"added <bo> from ")
        child.expect("you> ")
        child.sendline("Is <bo> in this photo?")
        child.expect(r"plvm> ")
        child.expect("you> ")  # the streamed answer, then the prompt again
        child.sendline("/concepts")
        child.expect(r"active: <bo> \(added\)")
        child.expect(r"stored \(1\): <bo>")
        child.expect("you> ")
        child.sendline("Is <zz> here?")
        child.expect(r"error: unknown concept <zz>; known concepts: <bo>")
        child.expect("you> ")
        child.sendline(f"/image {second}")
        child.expect(r"image: .*b\.png")
        child.expect(r"identify \(threshold 0\.999\): <bo> ")
        child.expect("you> ")
        child.sendline("And now?")
        child.expect("plvm> ")
        child.expect("you> ")
        child.sendline("/history")
        child.expect(r"user: Is <bo> in this photo\?")
        child.expect(r"assistant: ")
        child.expect(r"user: And now\? \[\+1 image\]")
        child.expect("you> ")
        child.sendline("/add ../evil {}".format(ref))
        child.expect("error: invalid concept name")
        child.expect("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    assert ConceptStore(tmp_path / "store").names() == ["bo"]


# ---------------------------------------------------------------------- the loop, in process
def test_answers_stream_in_chunks_and_history_is_kept(tmp_path, plvm):
    store = ConceptStore(tmp_path / "s", StoreIdentity.of(plvm))
    encoder = ReferenceEncoder(plvm)
    session = ChatSession(plvm, store, Identifier(store, encoder, threshold=0.999), max_new_tokens=8)
    ref = photo(tmp_path / "ref.png", 4)

    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.writes: list[str] = []

        def write(self, s):
            self.writes.append(s)
            return super().write(s)

    lines = iter([f"/image {ref}", f"/add bo {ref}", "Is <bo> in this photo?", "", "   ", "/nope", "Again?", "/quit"])
    out = Recorder()
    answered = run_repl(session, read=lambda prompt: next(lines), out=out)
    assert answered == 2
    start = out.writes.index("plvm> ")
    end = out.writes.index("\n", start)
    assert end - start > 2  # the answer arrived in several writes (streamed), not one
    text = out.getvalue()
    assert "unknown command /nope" in text and "Traceback" not in text
    turns = session.history()
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[0]["images"] == 1 and turns[0]["introduces"] == ["bo"] and turns[2]["images"] == 0
    assert turns[1]["text"] == "".join(out.writes[start + 1 : end]).strip()


# ---------------------------------------------------------------------- CLI
def test_cli_concepts_ask_identify(tmp_path, cli):
    store = tmp_path / "store"
    ref = photo(tmp_path / "bo.png", 1)
    r = cli("concepts", "add", "<bo>", ref, "--model", "tiny", "--store", store)
    assert r.exit_code == 0 and "added <bo>" in r.stdout
    r = cli("concepts", "add", "bo", ref, "--model", "tiny", "--store", store)
    assert r.exit_code == 2 and r.stderr.strip() == (
        "error: concept <bo> already exists; use --replace (replace=true) to overwrite it"
    )
    assert cli("concepts", "add", "bo", ref, "--replace", "--model", "tiny", "--store", store).exit_code == 0
    r = cli("concepts", "list", "--json", "--store", store)
    assert [c["name"] for c in __import__("json").loads(r.stdout)] == ["bo"]
    assert "<bo>" in cli("concepts", "list", "--store", store).stdout
    r = cli(
        "ask", "--image", ref, "Is <bo> in this photo?", "--model", "tiny", "--store", store, "--max-new-tokens", "5"
    )
    assert r.exit_code == 0 and "concepts: <bo> (named)" in r.stderr
    r = cli("identify", "--image", ref, "--model", "tiny", "--store", store, "--box", "0,0,24,24", "--json")
    assert r.exit_code == 0 and __import__("json").loads(r.stdout)["matches"][0]["name"] == "bo"
    out = tmp_path / "bo.concept.safetensors"
    assert cli("concepts", "export", "bo", "-o", out, "--store", store).exit_code == 0
    assert cli("concepts", "rename", "bo", "bob", "--store", store).exit_code == 0
    assert cli("concepts", "import", out, "--store", store).exit_code == 0
    assert "<bob>" in cli("concepts", "show", "bob", "--store", store).stdout
    assert cli("concepts", "rm", "bo", "bob", "--store", store).exit_code == 0
    assert "no concepts" in cli("concepts", "list", "--store", store).stdout


def test_cli_concepts_list_shows_the_base_revision_each_concept_was_made_on(tmp_path, cli):
    made_on = tiny_plvm()  # its own instance: its base revision is set below
    made_on.lvlm.base_revision = "projector-sha256:aaaa"
    store = ConceptStore(tmp_path / "store", StoreIdentity.of(made_on))
    store.add_from_image("bo", photo(tmp_path / "bo.png", 1), ReferenceEncoder(made_on))
    store.add_from_image("al", photo(tmp_path / "al.png", 2), ReferenceEncoder(tiny_plvm()))  # no revision
    rows = {
        line.split()[1]: line
        for line in cli("concepts", "list", "--store", tmp_path / "store").stdout.splitlines()
        if line.split()[1:2] in (["<bo>"], ["<al>"])
    }
    assert "projector-sha256:aaaa" in rows["<bo>"] and "projector-sha256" not in rows["<al>"]


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_errors_are_one_line(tmp_path, cli):
    store = tmp_path / "store"
    ref = photo(tmp_path / "bo.png", 1)
    assert cli("concepts", "add", "bo", ref, "--model", "tiny", "--store", store).exit_code == 0
    (tmp_path / "broken.png").write_bytes(ref.read_bytes()[:300])
    (tmp_path / "notes.png").write_text("not an image")
    one_line_error(
        cli("ask", "--image", ref, "Is <zz> here?", "--model", "tiny", "--store", store),
        "unknown concept <zz>",
        "stored concepts: <bo>",
    )
    one_line_error(cli("ask", "--image", ref, "  ", "--model", "tiny", "--store", store), "empty question")
    one_line_error(
        cli("ask", "--image", tmp_path / "broken.png", "hi", "--model", "tiny", "--store", store), "truncated"
    )
    one_line_error(
        cli("identify", "--image", tmp_path / "notes.png", "--model", "tiny", "--store", store), "not an image"
    )
    one_line_error(
        cli("identify", "--image", tmp_path / "missing.png", "--model", "tiny", "--store", store), "no such image file"
    )
    one_line_error(cli("concepts", "add", "a/b", ref, "--model", "tiny", "--store", store), "invalid concept name")
    one_line_error(cli("concepts", "show", "zz", "--store", store), "unknown concept <zz>")
    one_line_error(cli("serve", "--host", "0.0.0.0", "--model", "tiny", "--store", store), "refusing", "--token")
    other = tmp_path / "other"
    ConceptStore(other, StoreIdentity("plvm/llava-mini", 576)).close()
    one_line_error(
        cli("identify", "--image", ref, "--model", "tiny", "--store", other),
        "made for base model 'plvm/llava-mini'",
        "not 'tiny'",
    )
