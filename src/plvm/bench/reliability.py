"""Hostile inputs and faults, through the CLI, the HTTP API and the Python API: every input a clear answer,
nothing acknowledged lost (``plvm bench reliability`` → ``docs/RELIABILITY.md``; ``tests/test_hostile.py``).

Each case sends one input (or injects one fault) and classifies what came back:

* ``clear``     — refused with a one-line message: CLI exit status 2 and one ``error: …`` line; HTTP 4xx/503/507
  with a one-line ``detail``; in Python a plvm error (a ``ValueError`` subclass) with a one-line message;
* ``accepted``  — the input was valid and was served;
* ``traceback`` — a traceback, an HTTP 500, or an exception plvm does not own;
* ``wrong``     — nonsense silently accepted, a valid input refused, or a multi-line/unhelpful refusal.

Faults run a store operation in a forked child that ``os._exit``-s (the effect of ``kill -9``: no cleanup,
no ``finally``) at the n-th ``os.unlink``, ``os.replace`` or SQLite ``COMMIT`` (before it, or right after
the COMMIT), for every n the operation reaches; the parent then reopens the store and checks that every
acknowledged concept is there with its files, that no row dangles, and that no orphan file survives the
reopen. Nothing here times anything; the load test is :mod:`plvm.bench.serve`.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing as mp
import os
import resource
import signal
import sqlite3
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

CLEAR, ACCEPTED, TRACEBACK, WRONG = "clear", "accepted", "traceback", "wrong"


@dataclass
class Outcome:
    """One input or fault and what plvm did with it."""

    group: str
    surface: str  # cli | api | python | store
    case: str
    expect: str  # "refuse" | "accept" | "survive"
    result: str  # clear | accepted | traceback | wrong
    detail: str = ""
    lost: int = 0  # acknowledged concepts lost (faults)

    @property
    def ok(self) -> bool:
        if self.result == TRACEBACK or self.lost:
            return False
        if self.expect == "refuse":
            return self.result == CLEAR
        if self.expect == "accept":
            return self.result == ACCEPTED
        return self.result in (CLEAR, ACCEPTED)


def _one_line(text: str) -> bool:
    return bool(text.strip()) and "\n" not in text.strip() and "Traceback" not in text


def png_bytes(seed: int, size: tuple[int, int] = (48, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def big_flat_png(size: tuple[int, int] = (16000, 2400)) -> bytes:
    """A small file that decodes to many pixels (a flat PNG: ~40 KB for 16000×2400)."""
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


# ---------------------------------------------------------------------- classification per surface
def classify_python(fn: Callable[[], Any]) -> tuple[str, str]:
    from ..concept import ConceptError
    from ..images import ImageError
    from ..store import StoreError
    from ..validation import InvalidInputError

    try:
        fn()
    except (InvalidInputError, ConceptError, StoreError, ImageError) as exc:
        msg = str(exc)
        return (CLEAR if _one_line(msg) else WRONG), msg
    except Exception as exc:  # anything else is a bug surfacing as a traceback
        return TRACEBACK, f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return ACCEPTED, ""


def classify_http(response: Any) -> tuple[str, str]:
    status = response.status_code
    if status < 300:
        return ACCEPTED, str(status)
    try:
        detail = response.json().get("detail")
    except Exception:
        detail = response.text
    text = f"{status} {detail}"
    if status >= 500 and status not in (503, 507):
        return TRACEBACK, text
    return (CLEAR if isinstance(detail, str) and _one_line(detail) else WRONG), text


def classify_cli(result: Any) -> tuple[str, str]:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return TRACEBACK, f"{type(result.exception).__name__}: {' '.join(str(result.exception).split())[:160]}"
    err = (result.stderr or "").strip()
    if "Traceback" in (result.output or "") or "Traceback" in err:
        return TRACEBACK, err[-200:]
    if result.exit_code == 0:
        return ACCEPTED, "exit 0"
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    if result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return CLEAR, lines[0]
    return WRONG, f"exit {result.exit_code}: {err[:200]}"


# ---------------------------------------------------------------------- the world the cases run in
@dataclass
class World:
    """A tiny random PLVM, a store with two concepts, the app and a CLI runner around them."""

    root: Path
    plvm: Any
    store: Any
    encoder: Any
    identifier: Any
    client: Any
    photo: Path
    cli: Callable[..., Any]

    @classmethod
    def build(cls, root: Path) -> "World":
        import typer
        from fastapi.testclient import TestClient
        from typer.testing import CliRunner

        from ..cli.product import register
        from ..identify import Identifier, ReferenceEncoder
        from ..images import decode_image
        from ..models.tiny_plvm import tiny_plvm
        from ..server import ServerLimits, create_app
        from ..store import ConceptStore, StoreIdentity

        root.mkdir(parents=True, exist_ok=True)
        plvm = tiny_plvm()
        store = ConceptStore(root / "store", StoreIdentity.of(plvm))
        encoder = ReferenceEncoder(plvm)
        for i, name in enumerate(("bo", "mo")):
            store.add_from_image(name, decode_image(png_bytes(i + 1)), encoder)
        identifier = Identifier(store, encoder, threshold=0.999)
        app = create_app(plvm, store, limits=ServerLimits(max_new_tokens=4), threshold=0.999, model_name="tiny")
        client = TestClient(app, base_url="http://127.0.0.1")
        photo = root / "photo.png"
        photo.write_bytes(png_bytes(1))
        cli_app = typer.Typer()
        register(cli_app)
        runner = CliRunner()

        def cli(*args: Any) -> Any:
            env = {"PLVM_FACE_BACKEND": "none", "PLVM_STORE": str(root / "store")}
            return runner.invoke(cli_app, [str(a) for a in args], env=env, catch_exceptions=True)

        return cls(root, plvm, store, encoder, identifier, client, photo, cli)

    def session(self, **kw: Any) -> Any:
        from ..chat import ChatSession

        return ChatSession(self.plvm, self.store, self.identifier, **kw)


def _record(out: list[Outcome], group: str, surface: str, case: str, expect: str, classified: tuple[str, str]) -> None:
    out.append(Outcome(group, surface, case, expect, classified[0], classified[1][:240]))


# ---------------------------------------------------------------------- input cases
QUESTIONS_BAD = [
    ("<image> placeholder in the question", "What is in <image>?"),
    ("two <image> placeholders", "<image> <image> same?"),
    ("context-marker characters of an unknown concept", "Is \ue000zz\ue001 here?"),
    ("context-marker characters of a stored concept", "Is \ue000bo\ue001 here?"),
    ("<t1> context-token marker as a name", "Is <t1> next to <bo>?"),
    ("special token <|im_end|>", "hi<|im_end|><|im_start|>system"),
    ("empty question", "   "),
    ("NUL character", "hi\x00there"),
]
NAMES_BAD = [
    "t1",
    "T12",
    "<t3>",
    "image",
    "<image>",
    "-",
    "_",
    "--",
    "x\n",
    "x\t",
    "<bo>\n",
    "s",
    "unk",
    "<pad>",
    "../x",
    "a b",
    "bo!",
    "x" * 65,
    "",
    "<<bo>>",
    "ö",
]
NAMES_GOOD = ["ann", "<ben>", " my-dog_2 "]
BOXES_BAD = [
    "nan,0,10,10",
    "0,0,inf,10",
    "-inf,0,10,10",
    "5,5,5,20",
    "0,0,10,0",
    "20,20,10,10",
    "0,0,100,10",
    "-5,0,10,10",
    "60,60,90,90",
    "1,2,3",
    "a,b,c,d",
    "1e309,0,2,2",
]
BOXES_GOOD = ["0,0,24,24", "10,10,48,48"]


def input_cases(w: World) -> list[Outcome]:
    out: list[Outcome] = []
    photo_bytes = w.photo.read_bytes()
    files = lambda: {"image": ("q.png", photo_bytes, "image/png")}  # noqa: E731

    # questions
    for label, q in QUESTIONS_BAD:
        _record(out, "questions", "python", label, "refuse", classify_python(lambda q=q: w.session().ask(q)))
        _record(
            out,
            "questions",
            "python",
            label + " (PLVM.ask)",
            "refuse",
            classify_python(lambda q=q: w.plvm.ask(None, q, [w.store.load("bo")], max_new_tokens=2)),
        )
        _record(
            out,
            "questions",
            "api",
            label,
            "refuse",
            classify_http(w.client.post("/api/ask", data={"question": q}, files=files())),
        )
        _record(
            out,
            "questions",
            "api",
            label + " (chat)",
            "refuse",
            classify_http(
                w.client.post(
                    f"/api/chats/{w.client.post('/api/chats').json()['session_id']}/messages", data={"text": q}
                )
            ),
        )
        if "\x00" not in q:  # argv cannot carry NUL
            _record(
                out,
                "questions",
                "cli",
                label,
                "refuse",
                classify_cli(w.cli("ask", q, "--model", "tiny", "--image", w.photo)),
            )
            _record(
                out,
                "questions",
                "cli",
                label + " (no --image)",
                "refuse",
                classify_cli(w.cli("ask", q, "--model", "tiny")),
            )
    _record(
        out,
        "questions",
        "api",
        "valid question",
        "accept",
        classify_http(w.client.post("/api/ask", data={"question": "Is <bo> in this photo?"}, files=files())),
    )
    _record(
        out,
        "questions",
        "cli",
        "valid question",
        "accept",
        classify_cli(w.cli("ask", "Is <bo> here?", "--model", "tiny", "--image", w.photo, "--max-new-tokens", 2)),
    )

    # numbers
    for n in (0, -1, 10**9):
        _record(
            out,
            "numbers",
            "cli",
            f"--max-new-tokens {n}",
            "refuse",
            classify_cli(w.cli("ask", "hi", "--model", "tiny", "--max-new-tokens", n)),
        )
        _record(
            out,
            "numbers",
            "cli",
            f"chat --max-new-tokens {n}",
            "refuse",
            classify_cli(w.cli("chat", "--model", "tiny", "--max-new-tokens", n)),
        )
        _record(
            out,
            "numbers",
            "python",
            f"ChatSession(max_new_tokens={n})",
            "refuse",
            classify_python(lambda n=n: w.session(max_new_tokens=n)),
        )
        _record(
            out,
            "numbers",
            "python",
            f"PLVM.ask(max_new_tokens={n})",
            "refuse",
            classify_python(lambda n=n: w.plvm.ask(None, "hi", [], max_new_tokens=n)),
        )
    for t in ("nan", "inf", "-inf", "1.5", "-2"):
        _record(
            out,
            "numbers",
            "cli",
            f"identify --threshold {t}",
            "refuse",
            classify_cli(w.cli("identify", "--image", w.photo, "--model", "tiny", "--threshold", t)),
        )
        _record(
            out,
            "numbers",
            "cli",
            f"ask --threshold {t}",
            "refuse",
            classify_cli(w.cli("ask", "hi", "--model", "tiny", "--threshold", t)),
        )
        _record(
            out,
            "numbers",
            "api",
            f"identify threshold={t}",
            "refuse",
            classify_http(w.client.post("/api/identify", data={"threshold": t}, files=files())),
        )
        _record(
            out,
            "numbers",
            "python",
            f"identify(threshold={t})",
            "refuse",
            classify_python(lambda t=t: w.identifier.identify(Image.open(w.photo), threshold=float(t))),
        )
    for k in (0, -5, 10**7):
        _record(
            out,
            "numbers",
            "cli",
            f"identify --top-k {k}",
            "refuse",
            classify_cli(w.cli("identify", "--image", w.photo, "--model", "tiny", "--top-k", k)),
        )
        _record(
            out,
            "numbers",
            "api",
            f"identify top_k={k}",
            "refuse",
            classify_http(w.client.post("/api/identify", data={"top_k": str(k)}, files=files())),
        )
        _record(
            out,
            "numbers",
            "python",
            f"identify(top_k={k})",
            "refuse",
            classify_python(lambda k=k: w.identifier.identify(Image.open(w.photo), top_k=k)),
        )
    _record(
        out,
        "numbers",
        "api",
        "identify top_k=abc",
        "refuse",
        classify_http(w.client.post("/api/identify", data={"top_k": "abc"}, files=files())),
    )
    _record(
        out,
        "numbers",
        "cli",
        "identify --top-k 3 --threshold 0.5",
        "accept",
        classify_cli(w.cli("identify", "--image", w.photo, "--model", "tiny", "--top-k", 3, "--threshold", 0.5)),
    )
    for label, args in (
        ("serve --port 70000", ["--port", 70000]),
        ("serve --max-request-mb 0", ["--max-request-mb", 0]),
        ("serve --max-megapixels nan", ["--max-megapixels", "nan"]),
        ("serve --max-new-tokens 0", ["--max-new-tokens", 0]),
    ):
        _record(out, "numbers", "cli", label, "refuse", classify_cli(w.cli("serve", "--model", "tiny", *args)))

    # boxes (48x48 photo)
    for b in BOXES_BAD:
        _record(
            out,
            "boxes",
            "cli",
            f"--box {b}",
            "refuse",
            classify_cli(w.cli("identify", "--image", w.photo, "--model", "tiny", "--box", b)),
        )
        try:
            api_box = json.dumps([[float(v) for v in b.split(",")]])
        except ValueError:
            api_box = json.dumps([b.split(",")])
        _record(
            out,
            "boxes",
            "api",
            f"boxes [{b}]",
            "refuse",
            classify_http(w.client.post("/api/identify", data={"boxes": api_box}, files=files())),
        )

        def py_box(b: str = b) -> Any:
            values = [float(v) for v in b.split(",")] if "a" not in b else b.split(",")
            return w.identifier.identify(Image.open(w.photo), regions=[values])

        _record(out, "boxes", "python", f"regions=[{b}]", "refuse", classify_python(py_box))
    for raw in ("NaN", "[[0,0,Infinity,4]]", '{"a": 1}', "[[1,2]]", "[" * 5000, json.dumps([[0, 0, 10, 10]] * 40)):
        _record(
            out,
            "boxes",
            "api",
            f"boxes={raw[:24]!r}",
            "refuse",
            classify_http(w.client.post("/api/identify", data={"boxes": raw}, files=files())),
        )
    for b in BOXES_GOOD:
        _record(
            out,
            "boxes",
            "cli",
            f"--box {b}",
            "accept",
            classify_cli(w.cli("identify", "--image", w.photo, "--model", "tiny", "--box", b)),
        )
        _record(
            out,
            "boxes",
            "api",
            f"boxes [{b}]",
            "accept",
            classify_http(
                w.client.post(
                    "/api/identify", data={"boxes": json.dumps([[float(v) for v in b.split(",")]])}, files=files()
                )
            ),
        )

    # names
    for name in NAMES_BAD:
        _record(
            out,
            "names",
            "python",
            f"add {name!r}",
            "refuse",
            classify_python(lambda name=name: w.store.add_from_image(name, w.photo, w.encoder)),
        )
        _record(
            out,
            "names",
            "api",
            f"add {name!r}",
            "refuse",
            classify_http(
                w.client.post(
                    "/api/concepts", data={"name": name}, files={"image": ("r.png", photo_bytes, "image/png")}
                )
            ),
        )
        _record(
            out,
            "names",
            "api",
            f"rename bo → {name!r}",
            "refuse",
            classify_http(w.client.patch("/api/concepts/bo", json={"name": name})),
        )
        if name and "\x00" not in name:
            _record(
                out,
                "names",
                "cli",
                f"concepts add {name!r}",
                "refuse",
                classify_cli(w.cli("concepts", "add", "--model", "tiny", "--", name, w.photo)),
            )
            _record(
                out,
                "names",
                "cli",
                f"concepts rename bo {name!r}",
                "refuse",
                classify_cli(w.cli("concepts", "rename", "--", "bo", name)),
            )
    for name in NAMES_GOOD:
        _record(
            out,
            "names",
            "api",
            f"add {name!r}",
            "accept",
            classify_http(
                w.client.post(
                    "/api/concepts", data={"name": name}, files={"image": ("r.png", photo_bytes, "image/png")}
                )
            ),
        )
        w.store.remove(name)
    _record(
        out,
        "names",
        "cli",
        "concepts add ann",
        "accept",
        classify_cli(w.cli("concepts", "add", "ann", w.photo, "--model", "tiny")),
    )
    w.store.remove("ann")

    # store path
    a_file = w.root / "a-file"
    a_file.write_text("not a store")
    for cmd in (
        ["concepts", "list"],
        ["concepts", "add", "bo", w.photo, "--model", "tiny"],
        ["ask", "hi", "--model", "tiny"],
        ["identify", "--image", w.photo, "--model", "tiny"],
    ):
        _record(
            out,
            "store path",
            "cli",
            f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} --store FILE".replace("  ", " "),
            "refuse",
            classify_cli(w.cli(*cmd, "--store", a_file)),
        )
    from ..store import ConceptStore

    _record(
        out, "store path", "python", "ConceptStore(a file)", "refuse", classify_python(lambda: ConceptStore(a_file))
    )
    _record(
        out,
        "store path",
        "python",
        "ConceptStore(a file/sub)",
        "refuse",
        classify_python(lambda: ConceptStore(a_file / "sub")),
    )
    return out


# ---------------------------------------------------------------------- imported concept files
def _rewrite(
    src: Path, dst: Path, tensors: Callable[[dict], dict] = lambda t: t, header: Callable[[dict], dict] = lambda h: h
) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        h = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors(t), str(dst), metadata=header(h))
    return dst


def import_cases(w: World) -> list[Outcome]:
    import torch

    out: list[Outcome] = []
    from safetensors import safe_open

    src = w.store.export("bo", w.root / "bo.concept.safetensors")

    with safe_open(str(src), framework="pt") as f:
        features = json.loads(f.metadata()["features"])
    ref_tensor = features[w.encoder.kind]

    def with_tensor(name: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], dict]:
        return lambda t: {**t, name: value(t[name])}

    def with_header(key: str, value: str) -> Callable[[dict], dict]:
        return lambda h: {**h, key: value}

    bad: list[tuple[str, Callable[[dict], dict], Callable[[dict], dict]]] = [
        ("feature of the wrong dimension", with_tensor(ref_tensor, lambda x: torch.ones(16)), lambda h: h),
        ("integer e_word", with_tensor("e_word", lambda x: x.to(torch.int32)), lambda h: h),
        ("integer context", with_tensor("context", lambda x: x.to(torch.int64)), lambda h: h),
        ("2-D e_word", with_tensor("e_word", lambda x: x.repeat(3, 1)), lambda h: h),
        ("oversized e_word (100000)", with_tensor("e_word", lambda x: torch.zeros(100_000)), lambda h: h),
        (
            "huge k (context 300 x d)",
            with_tensor("context", lambda x: torch.zeros(300, x.shape[1])),
            with_header("num_context_tokens", "300"),
        ),
        ("k disagrees with header", lambda t: t, with_header("num_context_tokens", "99")),
        ("integer feature", with_tensor(ref_tensor, lambda x: x.to(torch.int32)), lambda h: h),
        ("2-D feature", with_tensor(ref_tensor, lambda x: x.repeat(2, 1)), lambda h: h),
        ("NaN feature", with_tensor(ref_tensor, lambda x: torch.full_like(x, float("nan"))), lambda h: h),
        ("feature naming a missing tensor", lambda t: t, with_header("features", json.dumps({"ref:x:32:28": "nope"}))),
        ("feature naming e_word", lambda t: t, with_header("features", json.dumps({"ref:x:64:28": "e_word"}))),
        ("features header not JSON", lambda t: t, with_header("features", "{oops")),
        ("features header a list", lambda t: t, with_header("features", "[1, 2]")),
        ("record metadata a list", lambda t: t, with_header("record_metadata", "[1, 2]")),
        ("record metadata not JSON", lambda t: t, with_header("record_metadata", "nope")),
        ("record metadata face a string", lambda t: t, with_header("record_metadata", json.dumps({"face": "x"}))),
        (
            "record metadata face box of 3",
            lambda t: t,
            with_header("record_metadata", json.dumps({"face": {"backend": "f", "faces_found": 1, "box": [1, 2, 3]}})),
        ),
        ("record metadata 1 MB", lambda t: t, with_header("record_metadata", json.dumps({"x": "y" * 1_000_000}))),
        ("concept metadata a number", lambda t: t, with_header("metadata", "5")),
        ("reference image as float", with_tensor("reference_image", lambda x: x.float()), lambda h: h),
        (
            "reference image of garbage",
            with_tensor("reference_image", lambda x: torch.zeros(100, dtype=torch.uint8)),
            lambda h: h,
        ),
        ("name t1 in the header", lambda t: t, with_header("name", "t1")),
        ("name with a newline", lambda t: t, with_header("name", "zz\n")),
        ("traversal name", lambda t: t, with_header("name", "../../x")),
        ("another base model", lambda t: t, with_header("base_model", "other/model")),
        ("format header missing", lambda t: t, lambda h: {k: v for k, v in h.items() if k != "format"}),
    ]
    for i, (label, tensors, header) in enumerate(bad):
        path = _rewrite(src, w.root / f"bad{i}.safetensors", tensors, header)
        rename = "imp" if "name" not in label else None
        _record(
            out,
            "imports",
            "python",
            label,
            "refuse",
            classify_python(lambda path=path, rename=rename: w.store.import_file(path, name=rename)),
        )
        _record(
            out,
            "imports",
            "cli",
            label,
            "refuse",
            classify_cli(w.cli("concepts", "import", path, *(["--name", rename] if rename else []))),
        )
        with open(path, "rb") as fh:
            _record(
                out,
                "imports",
                "api",
                label,
                "refuse",
                classify_http(
                    w.client.post(
                        "/api/concepts/import",
                        data={"name": rename} if rename else {},
                        files={"file": ("c.safetensors", fh.read(), "application/octet-stream")},
                    )
                ),
            )
    for label, data in (
        ("empty file", b""),
        ("truncated file", src.read_bytes()[:200]),
        ("a PNG", png_bytes(3)),
        ("oversized header length", (10**12).to_bytes(8, "little") + b"{}"),
    ):
        path = w.root / f"raw-{label.replace(' ', '-')}.safetensors"
        path.write_bytes(data)
        _record(out, "imports", "python", label, "refuse", classify_python(lambda path=path: w.store.import_file(path)))
        _record(out, "imports", "cli", label, "refuse", classify_cli(w.cli("concepts", "import", path)))
    _record(out, "imports", "cli", "a directory", "refuse", classify_cli(w.cli("concepts", "import", w.root)))
    _record(
        out,
        "imports",
        "python",
        "valid export under a new name",
        "accept",
        classify_python(lambda: w.store.import_file(src, name="bo-copy")),
    )
    # after all of that, identify and ask still work for every concept
    _record(
        out, "imports", "python", "identify after the bad imports", "accept", classify_python(lambda: _identify_all(w))
    )
    _record(
        out,
        "imports",
        "cli",
        "identify after the bad imports",
        "accept",
        classify_cli(w.cli("identify", "--image", w.photo, "--model", "tiny")),
    )
    w.store.remove("bo-copy")
    return out


def _identify_all(w: World) -> None:
    result = w.identifier.identify(Image.open(w.photo), top_k=None)
    if len(result.matches) != len(w.store):
        raise RuntimeError(f"identify ranked {len(result.matches)} of {len(w.store)} concepts")


# ---------------------------------------------------------------------- the server's own guards
def server_cases(w: World) -> list[Outcome]:
    out: list[Outcome] = []
    add = {"data": {"name": "bo", "replace": "true"}, "files": {"image": ("x.png", png_bytes(9), "image/png")}}
    before = w.store.get("bo").image_sha256
    for host in ("rebind.evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "localhost.evil"):
        _record(
            out,
            "server",
            "api",
            f"GET image with Host {host!r}",
            "refuse",
            classify_http(w.client.get("/api/concepts/bo/image", headers={"Host": host})),
        )
    for label, headers in (
        ("Origin http://evil.example", {"Origin": "http://evil.example"}),
        ("Origin null", {"Origin": "null"}),
        ("Origin of another port", {"Origin": "http://127.0.0.1:9"}),
        ("Referer of another site", {"Referer": "http://evil.example/page"}),
        ("Sec-Fetch-Site cross-site", {"Sec-Fetch-Site": "cross-site"}),
        ("Sec-Fetch-Site same-site", {"Sec-Fetch-Site": "same-site"}),
    ):
        _record(
            out,
            "server",
            "api",
            f"replace concept, {label}",
            "refuse",
            classify_http(w.client.post("/api/concepts", headers=headers, **add)),
        )
        _record(
            out,
            "server",
            "api",
            f"delete concept, {label}",
            "refuse",
            classify_http(w.client.delete("/api/concepts/bo", headers=headers)),
        )
        _record(
            out,
            "server",
            "api",
            f"ask, {label}",
            "refuse",
            classify_http(w.client.post("/api/ask", data={"question": "hi"}, headers=headers)),
        )
    _record(
        out,
        "server",
        "api",
        "the concept survived the cross-origin writes",
        "accept",
        (ACCEPTED, "") if w.store.get("bo").image_sha256 == before else (WRONG, "concept <bo> was overwritten"),
    )
    _record(
        out,
        "server",
        "api",
        "same-origin write (Origin http://127.0.0.1)",
        "accept",
        classify_http(
            w.client.post(
                "/api/ask",
                data={"question": "hi"},
                headers={"Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"},
            )
        ),
    )
    _record(
        out,
        "server",
        "api",
        "GET with Host localhost:8000",
        "accept",
        classify_http(w.client.get("/api/info", headers={"Host": "localhost:8000"})),
    )
    # with a token: a cross-origin request that carries the token is allowed, one without is not
    from fastapi.testclient import TestClient

    from ..server import ServerLimits, create_app

    tokened = TestClient(
        create_app(w.plvm, w.store, token="s3cret", limits=ServerLimits(max_new_tokens=2)), base_url="http://127.0.0.1"
    )
    _record(
        out,
        "server",
        "api",
        "token server: cross-origin ask without token",
        "refuse",
        classify_http(tokened.post("/api/ask", data={"question": "hi"}, headers={"Origin": "http://evil.example"})),
    )
    _record(
        out,
        "server",
        "api",
        "token server: cross-origin ask with the token",
        "accept",
        classify_http(
            tokened.post(
                "/api/ask",
                data={"question": "hi"},
                headers={"Origin": "http://evil.example", "Authorization": "Bearer s3cret"},
            )
        ),
    )
    # decoded-pixel budget: 8 concurrent 16000x2400 uploads never hold more than the budget
    import concurrent.futures as cf

    big = big_flat_png()
    app = w.client.app
    budget = app.state.pixel_budget
    budget.peak = 0
    with cf.ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda _: w.client.post("/api/identify", files={"image": ("big.png", big, "image/png")}), range(8))
        )
    statuses = sorted({r.status_code for r in responses})
    _record(
        out,
        "server",
        "api",
        "8 concurrent 16000x2400 uploads: all answered",
        "accept",
        (ACCEPTED, str(statuses))
        if statuses == [200]
        else classify_http(next(r for r in responses if r.status_code != 200)),
    )
    _record(
        out,
        "server",
        "api",
        "8 concurrent 16000x2400 uploads: decoded pixels held <= budget",
        "accept",
        (ACCEPTED, f"peak {budget.peak} of {budget.capacity}")
        if budget.peak <= budget.capacity
        else (WRONG, f"peak {budget.peak} > {budget.capacity}"),
    )
    return out


# ---------------------------------------------------------------------- faults
POINTS = ("unlink", "replace", "commit", "after-commit")


def _fake_concept(name: str, seed: int) -> Any:
    import torch

    from ..concept import ConceptEmbedding

    rng = np.random.default_rng(seed)
    t = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
    return ConceptEmbedding(name, t(64), t(64), t(4, 64), "tiny")


def _op(store: Any, op: str) -> None:
    from ..images import decode_image

    if op == "add":
        store.add(_fake_concept("new", 7), decode_image(png_bytes(7)), {"f": np.ones(8, np.float32)})
    elif op == "replace":
        store.add(_fake_concept("a", 8), decode_image(png_bytes(8)), {"f": np.ones(8, np.float32)}, replace=True)
    elif op == "rm":
        store.remove("a")
    elif op == "rename-replace":
        store.rename("b", "a", replace=True)
    elif op == "rm-shared-image":
        store.remove("c")  # c shares its photo with d: the image must stay
    else:  # pragma: no cover
        raise ValueError(op)


class _DB:
    """A proxy of the store's sqlite3 connection that calls ``hit`` around ``COMMIT``."""

    def __init__(self, db: sqlite3.Connection, hit: Callable[[str], None]):
        self._db, self._hit = db, hit

    def execute(self, sql: str, *args: Any) -> Any:
        is_commit = sql.strip().upper() == "COMMIT"
        if is_commit:
            self._hit("commit")
        result = self._db.execute(sql, *args)
        if is_commit:
            self._hit("after-commit")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def _fault_child(root: str, op: str, point: str, nth: int, conn: Any) -> None:
    """Forked child: run ``op`` and ``os._exit(137)`` at the ``nth`` ``point`` (0: count the points)."""
    from ..store import ConceptStore, StoreIdentity

    counts = {p: 0 for p in POINTS}
    store = ConceptStore(root, StoreIdentity("tiny", 64))

    def hit(name: str) -> None:
        counts[name] += 1
        if name == point and counts[name] == nth:
            os._exit(137)  # what kill -9 leaves: no finally, no atexit, no flush

    real_unlink, real_replace = os.unlink, os.replace

    def unlink(path: Any, *a: Any, **k: Any) -> None:
        hit("unlink")
        real_unlink(path, *a, **k)

    def replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        hit("replace")
        real_replace(src, dst, *a, **k)

    os.unlink, os.replace = unlink, replace  # this child only; it exits without returning
    store._db = _DB(store._db, hit)
    try:
        _op(store, op)
        conn.send(("done", counts))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    os._exit(0)


def _seed_store(root: Path) -> dict[str, str]:
    """A store with a, b (own photos), c and d (one shared photo); returns name → image sha."""
    from ..images import decode_image
    from ..store import ConceptStore, NewConcept, StoreIdentity

    with ConceptStore(root, StoreIdentity("tiny", 64)) as store:
        shared = decode_image(png_bytes(30))
        store.add_many(
            [
                NewConcept(_fake_concept("a", 1), decode_image(png_bytes(1)), {"f": np.ones(8, np.float32)}),
                NewConcept(_fake_concept("b", 2), decode_image(png_bytes(2)), {"f": np.ones(8, np.float32)}),
                NewConcept(_fake_concept("c", 3), shared),
                NewConcept(_fake_concept("d", 4), shared),
            ]
        )
        return {r.name: r.image_sha256 for r in store.list()}


def check_store(root: Path) -> tuple[list[str], list[str]]:
    """Reopen ``root`` (sweeping orphans); returns ``(usable names, problems)``: a concept whose row dangles
    (file or photo missing, unreadable) is not usable; orphan files left after the sweep are problems."""
    from ..store import ConceptStore

    problems: list[str] = []
    with ConceptStore(root) as store:
        names = []
        for name in store.names():
            try:
                store.load(name)
                if store.get(name).image_sha256:
                    store.image_file(name)
                names.append(name)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"<{name}>: {exc}")
        ids = {r.id for r in store.list()}
        shas = {r.image_sha256 for r in store.list() if r.image_sha256}
    for f in (root / "concepts").iterdir():
        if f.name[: -len(".safetensors")] not in ids:
            problems.append(f"orphan {f.name}")
    for f in (root / "images").iterdir():
        if f.name.split(".")[0] not in shas:
            problems.append(f"orphan image {f.name}")
    return names, problems


EXPECTED_AFTER = {  # op → (names before, names after): a crash may leave either, nothing else
    "add": ({"a", "b", "c", "d"}, {"a", "b", "c", "d", "new"}),
    "replace": ({"a", "b", "c", "d"}, {"a", "b", "c", "d"}),
    "rm": ({"a", "b", "c", "d"}, {"b", "c", "d"}),
    "rename-replace": ({"a", "b", "c", "d"}, {"a", "c", "d"}),
    "rm-shared-image": ({"a", "b", "c", "d"}, {"a", "b", "d"}),
}


def fault_cases(workdir: Path, ops: Sequence[str] = tuple(EXPECTED_AFTER)) -> list[Outcome]:
    """``kill -9`` (``os._exit``) at every unlink / replace / COMMIT / after-COMMIT each op reaches."""
    ctx = mp.get_context("fork")
    out: list[Outcome] = []
    template = workdir / "template"
    _seed_store(template)
    import shutil

    def run(op: str, point: str, nth: int) -> tuple[Path, Any]:
        root = workdir / f"{op}-{point}-{nth}"
        shutil.copytree(template, root)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_fault_child, args=(str(root), op, point, nth, child))
        proc.start()
        proc.join(120)
        message = parent.recv() if parent.poll() else ("killed", proc.exitcode)
        return root, message

    for op in ops:
        _, (kind, counts) = run(op, "none", 0)
        if kind != "done":
            out.append(Outcome("faults", "store", f"{op} (no fault)", "survive", TRACEBACK, str(counts)))
            continue
        before, after = EXPECTED_AFTER[op]
        for point in POINTS:
            for nth in range(1, counts[point] + 1):
                root, message = run(op, point, nth)
                names, problems = check_store(root)
                state = set(names)
                lost = len((before & after) - state)  # concepts neither side of the op may lose
                if state not in (before, after):
                    problems.append(f"names {sorted(state)} are neither the state before nor after {op}")
                result = (
                    ACCEPTED
                    if not problems and message[0] == "killed"
                    else (WRONG if message[0] != "killed" else TRACEBACK)
                )
                detail = "; ".join(problems) or f"killed; store has {sorted(state)}"
                out.append(
                    Outcome(
                        "faults", "store", f"kill -9 at {point} #{nth} of {op}", "survive", result, detail[:240], lost
                    )
                )
    return out


def _writer(root: str, prefix: str, n: int, start: Any, conn: Any) -> None:
    from ..store import ConceptStore, StoreIdentity

    store = ConceptStore(root, StoreIdentity("tiny", 64))
    start.wait(timeout=60)
    acked = []
    for i in range(n):
        from ..images import decode_image

        store.add(_fake_concept(f"{prefix}{i}", i), decode_image(png_bytes(i % 4)), {"f": np.ones(8, np.float32)})
        acked.append(f"{prefix}{i}")
    conn.send(acked)
    os._exit(0)


def concurrency_cases(workdir: Path, n: int = 50) -> list[Outcome]:
    """Two processes adding ``n`` concepts each at once (images partly shared)."""
    ctx = mp.get_context("fork")
    root = workdir / "concurrent"
    from ..store import ConceptStore, StoreIdentity

    ConceptStore(root, StoreIdentity("tiny", 64)).close()
    start = ctx.Event()
    pipes = [ctx.Pipe() for _ in range(2)]
    procs = [ctx.Process(target=_writer, args=(str(root), p, n, start, pipes[i][1])) for i, p in enumerate("xy")]
    for p in procs:
        p.start()
    start.set()
    acked: list[str] = []
    for (parent, _), p in zip(pipes, procs):
        p.join(300)
        acked += parent.recv() if parent.poll() else []
    names, problems = check_store(root)
    lost = len(set(acked) - set(names))
    ok = len(acked) == 2 * n and not problems and not lost
    return [
        Outcome(
            "faults",
            "store",
            f"2 processes adding 2 x {n} concepts at once",
            "survive",
            ACCEPTED if ok else WRONG,
            f"{len(acked)} acknowledged, {len(names)} stored; "
            + ("; ".join(problems)[:200] or "no dangling rows or orphans"),
            lost,
        )
    ]


def corruption_cases(w: World, workdir: Path) -> list[Outcome]:
    """A store index and a concept file corrupted on purpose: reported with the path, never replaced."""
    import shutil

    from ..store import ConceptStore

    out: list[Outcome] = []
    with contextlib.closing(sqlite3.connect(str(w.store.root / "index.sqlite"))) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the copies below then hold every commit in the index
    root = workdir / "corrupt-index"
    shutil.copytree(w.store.root, root)
    index = root / "index.sqlite"
    for extra in ("index.sqlite-wal", "index.sqlite-shm"):
        with contextlib.suppress(FileNotFoundError):
            (root / extra).unlink()
    data = bytearray(index.read_bytes())
    data[:16] = b"garbage garbage!"
    index.write_bytes(bytes(data))
    before = index.read_bytes()
    res = classify_python(lambda: ConceptStore(root))
    named = res[0] == CLEAR and str(index) in res[1] and "Recover" in res[1]
    out.append(
        Outcome(
            "faults",
            "python",
            "index.sqlite header overwritten",
            "refuse",
            res[0] if named or res[0] != CLEAR else WRONG,
            res[1][:240],
        )
    )
    res = classify_cli(w.cli("concepts", "list", "--store", root))
    out.append(
        Outcome(
            "faults",
            "cli",
            "index.sqlite header overwritten",
            "refuse",
            res[0] if res[0] != CLEAR or str(index) in res[1] else WRONG,
            res[1][:240],
        )
    )
    out.append(
        Outcome(
            "faults",
            "store",
            "the corrupt index was left as it was",
            "survive",
            ACCEPTED if index.read_bytes() == before else WRONG,
            "",
        )
    )
    root2 = workdir / "corrupt-page"
    shutil.copytree(w.store.root, root2)
    index2 = root2 / "index.sqlite"
    with contextlib.suppress(FileNotFoundError):
        (root2 / "index.sqlite-wal").unlink()
    data = bytearray(index2.read_bytes())
    if len(data) > 4096 + 200:
        data[4096 + 100 : 4096 + 200] = b"\xff" * 100
    index2.write_bytes(bytes(data))
    res = classify_python(lambda: (lambda s: (s.list(), s.feature_matrix(w.encoder.kind)))(ConceptStore(root2)))
    out.append(Outcome("faults", "python", "index.sqlite page scribbled", "survive", res[0], res[1][:240]))
    root3 = workdir / "corrupt-concept"
    shutil.copytree(w.store.root, root3)
    with ConceptStore(root3) as s3:
        victim = root3 / "concepts" / f"{s3.get('bo').id}.safetensors"
    victim.write_bytes(b"\x00" * 40)
    res = classify_python(lambda: ConceptStore(root3).load("bo"))
    out.append(
        Outcome(
            "faults",
            "python",
            "a concept file zeroed",
            "refuse",
            res[0] if res[0] != CLEAR or str(victim) in res[1] else WRONG,
            res[1][:240],
        )
    )
    res = classify_cli(w.cli("ask", "Is <bo> here?", "--model", "tiny", "--store", root3))
    out.append(Outcome("faults", "cli", "a concept file zeroed (ask)", "refuse", res[0], res[1][:240]))
    out.append(
        Outcome(
            "faults",
            "store",
            "the zeroed concept file was left as it was",
            "survive",
            ACCEPTED if victim.read_bytes() == b"\x00" * 40 else WRONG,
            "",
        )
    )
    return out


def _full_disk_child(root: str, limit: int, side: int, conn: Any) -> None:
    from ..images import decode_image
    from ..store import ConceptStore, StoreIdentity

    try:
        store = ConceptStore(root, StoreIdentity("tiny", 64))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        store.add(_fake_concept("big", 5), decode_image(png_bytes(5, (side, side))), {"f": np.ones(8, np.float32)})
        conn.send(("accepted", ""))
    except Exception as exc:  # noqa: BLE001
        from ..store import StoreError

        conn.send(
            (
                "clear" if isinstance(exc, StoreError) and _one_line(str(exc)) else "traceback",
                f"{type(exc).__name__}: {exc}",
            )
        )
    os._exit(0)


def full_disk_cases(workdir: Path) -> list[Outcome]:
    """A full disk, simulated with ``RLIMIT_FSIZE`` (no root needed): every write past the limit fails
    with ``EFBIG``, as ``ENOSPC`` would. The add must fail clearly and leave the store as it was."""
    ctx = mp.get_context("fork")
    out: list[Outcome] = []
    for limit, side in ((64 * 1024, 400), (12 * 1024, 40), (4 * 1024, 8)):
        root = workdir / f"full-{limit}-{side}"
        _seed_store(root)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_full_disk_child, args=(str(root), limit, side, child))
        proc.start()
        proc.join(120)
        kind, detail = parent.recv() if parent.poll() else ("traceback", f"child exit {proc.exitcode}")
        names, problems = check_store(root)
        lost = len({"a", "b", "c", "d"} - set(names))
        result = {"clear": CLEAR, "accepted": ACCEPTED}.get(kind, TRACEBACK)
        if problems:
            result, detail = WRONG, "; ".join(problems)
        out.append(
            Outcome(
                "faults",
                "store",
                f"disk full: add a {side}x{side} photo, writes past {limit // 1024} KiB fail (EFBIG)",
                "survive",
                result,
                detail[:240],
                lost,
            )
        )
    return out


# ---------------------------------------------------------------------- checkpoints and weight files
def _save_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def weight_file_variants(good: dict, metadata: dict[str, str], root: Path) -> list[tuple[str, Path]]:
    """Hostile versions of a weights file (``good``: its tensors): the bytes a user may hand over by mistake
    (empty, truncated, oversized header, a pickle, text) and well-formed files with wrong contents."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    ok = _save_tensors(root / "good.safetensors", good, metadata)
    data = ok.read_bytes()
    first = sorted(good)[0]
    out: list[tuple[str, Path]] = []

    def raw(label: str, content: bytes) -> None:
        path = root / f"{len(out):02d}.safetensors"
        path.write_bytes(content)
        out.append((label, path))

    def tensors(label: str, new: dict) -> None:
        out.append((label, _save_tensors(root / f"{len(out):02d}.safetensors", new, metadata)))

    raw("empty file", b"")
    raw("truncated to half", data[: len(data) // 2])
    raw("truncated inside the header", data[:5])
    raw("truncated by one byte", data[:-1])
    raw("oversized header length (10^12)", (10**12).to_bytes(8, "little") + b"{}")
    raw("header not JSON", (16).to_bytes(8, "little") + b"{not json at all")
    raw("a text file", b"these are not weights\n" * 4)
    for label, legacy in (("pickle (torch.save)", False), ("pickle (torch.save, legacy format)", True)):
        path = root / f"{len(out):02d}.pt"
        torch.save(good, path, _use_new_zipfile_serialization=not legacy)
        out.append((label, path))
    bad = good[first]
    tensors("wrong shape", {**good, first: torch.zeros(*(s + 1 for s in bad.shape))})
    tensors("missing tensor", {k: v for k, v in good.items() if k != first})
    tensors("unexpected tensor", {**good, first.rsplit(".", 1)[0] + ".extra": torch.zeros(3)})
    for label, value in (
        ("NaN in a tensor", float("nan")),
        ("+inf in a tensor", float("inf")),
        ("-inf in a tensor", float("-inf")),
    ):
        spoiled = good[first].clone()
        spoiled.view(-1)[0] = value
        tensors(label, {**good, first: spoiled})
    tensors("integer tensor", {**good, first: good[first].to(torch.int32)})
    out.append(("no such file", root / "absent.safetensors"))
    (root / "a-directory").mkdir(exist_ok=True)
    out.append(("a directory", root / "a-directory"))
    return out


def _ckpt(root: Path, state: Any, trainable: Path | None) -> Path:
    """A checkpoint directory: ``state`` (a dict → JSON, bytes → as they are, ``None`` → no state.json) and
    ``trainable`` linked as trainable.safetensors (``None``: none)."""
    root.mkdir(parents=True, exist_ok=True)
    if state is not None:
        (root / "state.json").write_bytes(state if isinstance(state, bytes) else json.dumps(state).encode())
    if trainable is not None:
        (root / "trainable.safetensors").symlink_to(trainable.resolve())
    return root


def state_variants(good: dict[str, Any], trainable: Path, root: Path) -> list[tuple[str, Path]]:
    """Checkpoint directories whose state.json (or trainable.safetensors) is missing or corrupt."""
    text = json.dumps(good).encode()
    out: list[tuple[str, Path]] = []
    for label, state, weights in (
        ("state.json missing", None, trainable),
        ("state.json empty", b"", trainable),
        ("state.json truncated", text[: len(text) // 2], trainable),
        ("state.json not UTF-8", b"\xff\xfe\x00garbage", trainable),
        ("state.json a JSON list", b"[1, 2]", trainable),
        ("state.json without step", {k: v for k, v in good.items() if k != "step"}, trainable),
        ("state.json step not a number", {**good, "step": "ten"}, trainable),
        ("state.json without task", {k: v for k, v in good.items() if k != "task"}, trainable),
        ("trainable.safetensors missing", good, None),
    ):
        out.append((label, _ckpt(root / f"s{len(out):02d}", state, weights)))
    return out


def checkpoint_cases(workdir: Path) -> list[Outcome]:
    """``plvm eval --aligner-weights``, ``plvm eval-base --projector``, ``plvm export`` (and the Python calls
    under them: ``PLVM.from_preset``, ``load_base``, ``read_aligner_weights``, ``check_projector_file``,
    ``read_lora``, ``export_stage1``) given broken weight files and checkpoints: every one a one-line error that
    names the file, exit status 2, before any model loads; the committed weights still load."""
    import torch
    import typer
    from typer.testing import CliRunner

    from ..cli.evaluate import eval_base, eval_command
    from ..cli.train import export
    from ..config import get_preset
    from ..eval.toydata import write_toy_dataset
    from ..models.base import load_base
    from ..models.llava_mini.assembly import (
        LORA_FILE_KEY,
        LORA_SHA_KEY,
        PROJECTOR_PREFIX,
        _sha256,
        check_projector_file,
        export_stage1,
        projector_shapes,
        read_projector,
    )
    from ..models.llava_mini.lora import MiniLoraConfig, read_lora
    from ..models.llava_mini.stage1_task import LORA_KEY
    from ..pipeline import MINI_ALIGNER, PLVM, aligner_shapes, read_aligner_weights
    from ..weight_files import LLAVA_MINI_PROJECTOR, locate

    runner = CliRunner()
    cli_app = typer.Typer()  # the three commands as `plvm` has them (typer rebuilds a whole app per invoke)
    cli_app.command("eval")(eval_command)
    cli_app.command("eval-base")(eval_base)
    cli_app.command("export")(export)
    out: list[Outcome] = []
    config = get_preset("mini").aligner
    toy = write_toy_dataset(workdir / "toy")
    gen = torch.Generator().manual_seed(0)
    rand = lambda shape: torch.randn(tuple(shape), generator=gen) * 0.02  # noqa: E731

    def cli(*args: Any) -> Any:
        return runner.invoke(cli_app, [str(a) for a in args], env={"PLVM_FACE_BACKEND": "none"}, catch_exceptions=True)

    def record(
        surface: str, case: str, expect: str, classified: tuple[str, str], *names: Path, not_written: Path | None = None
    ) -> None:
        result, detail = classified
        if result == CLEAR and names and not any(str(n) in detail for n in names):
            result, detail = WRONG, f"the message does not name {names[0]}: {detail}"
        if not_written is not None and not_written.exists():
            result, detail = WRONG, f"{not_written} was written from a bad checkpoint; {detail}"
        _record(out, "checkpoints", surface, case, expect, (result, detail))

    # the files: a LLaVA-mini projector naming a small LM LoRA, Aligner weights of the mini preset
    lora_config = MiniLoraConfig()
    lora = {
        "model.layers.0.self_attn.q_proj.lora_A.weight": rand((lora_config.r, 576)),
        "model.layers.0.self_attn.q_proj.lora_B.weight": rand((576, lora_config.r)),
    }
    projector = {PROJECTOR_PREFIX + k: rand(s) for k, s in projector_shapes().items()}
    aligner = {k: rand(s) for k, s in aligner_shapes(config).items()}

    # eval --aligner-weights FILE (and PLVM.from_preset under it)
    eval_args = (
        "eval",
        "--model",
        "mini",
        "--data",
        toy,
        "--baselines",
        "plvm",
        "--tasks",
        "recog",
        "--no-progress",
        "--out",
        workdir / "eval-out",
    )
    for label, path in weight_file_variants(aligner, {}, workdir / "aligner"):
        record(
            "cli",
            f"eval --aligner-weights: {label}",
            "refuse",
            classify_cli(cli(*eval_args, "--aligner-weights", path)),
            path,
        )
        record(
            "python",
            f"PLVM.from_preset(aligner_weights=…): {label}",
            "refuse",
            classify_python(lambda path=path: PLVM.from_preset("mini", aligner_weights=path)),
            path,
        )
    record(
        "cli",
        "eval --aligner-weights: no such file, no Aligner method (--baselines text)",
        "refuse",
        classify_cli(cli(*eval_args[:6], "text", *eval_args[7:], "--aligner-weights", workdir / "absent")),
        workdir / "absent",
    )

    # eval-base --projector FILE (and load_base under it)
    lora_file = _save_tensors(
        workdir / "projector" / "lm_lora.safetensors", lora, {**lora_config.metadata(), "vision_feature_layer": "-1"}
    )
    paired = {"vision_feature_layer": "-1", LORA_FILE_KEY: lora_file.name, LORA_SHA_KEY: _sha256(lora_file)}
    projector_variants = weight_file_variants(projector, paired, workdir / "projector")
    for label, path in projector_variants:
        record(
            "cli",
            f"eval-base --projector: {label}",
            "refuse",
            classify_cli(cli("eval-base", "--projector", path)),
            path,
        )
        record(
            "python",
            f"load_base('mini', projector=…): {label}",
            "refuse",
            classify_python(lambda path=path: load_base("mini", projector=path)),
            path,
        )
    wide = {PROJECTOR_PREFIX + k: rand(s) for k, s in projector_shapes(n_layers=2).items()}
    lora_variants = workdir / "lora"
    specials: list[tuple[str, Path, Path]] = []  # label, projector file, file the message must name

    def special(label: str, tensors: dict, meta: dict[str, str], named: str | None = None) -> None:
        path = _save_tensors(workdir / "special" / f"{len(specials):02d}" / "projector.safetensors", tensors, meta)
        specials.append((label, path, path.with_name(named) if named else path))

    special("vision_feature_layer not a layer ('banana')", projector, {"vision_feature_layer": "banana"})
    special("vision_feature_layer '8,-1' but linear_1 384 wide", projector, {"vision_feature_layer": "8,-1"})
    special("vision_feature_layer '-1' but linear_1 768 wide", wide, {"vision_feature_layer": "-1"})
    special("names a LoRA that is missing", projector, {LORA_FILE_KEY: "lm_lora.safetensors"}, "lm_lora.safetensors")
    special("names a LoRA outside its folder", projector, {LORA_FILE_KEY: "../../lm_lora.safetensors"})
    for label, tensors, meta in (
        ("LoRA with a NaN", {**lora, sorted(lora)[0]: lora[sorted(lora)[0]] * float("nan")}, lora_config.metadata()),
        ("LoRA of another rank than its metadata", lora, {**lora_config.metadata(), "r": "8"}),
        ("LoRA without r in its metadata", lora, {k: v for k, v in lora_config.metadata().items() if k != "r"}),
        ("LoRA with target_modules not JSON", lora, {**lora_config.metadata(), "target_modules": "q_proj"}),
        ("LoRA not marked as a LLaVA-mini LoRA", lora, {}),
        ("LoRA missing its lora_B", {k: v for k, v in lora.items() if "lora_A" in k}, lora_config.metadata()),
        ("LoRA empty file", None, {}),
    ):
        folder = workdir / "special" / f"{len(specials):02d}"
        lpath = folder / "lm_lora.safetensors"
        if tensors is None:
            folder.mkdir(parents=True, exist_ok=True)
            lpath.write_bytes(b"")
        else:
            _save_tensors(lpath, tensors, meta)
        special(
            f"names a {label}",
            projector,
            {LORA_FILE_KEY: lpath.name, LORA_SHA_KEY: _sha256(lpath)},
            "lm_lora.safetensors",
        )
    folder = workdir / "special" / f"{len(specials):02d}"
    _save_tensors(folder / "lm_lora.safetensors", lora, lora_config.metadata())
    special(
        "names a LoRA whose sha256 differs",
        projector,
        {LORA_FILE_KEY: "lm_lora.safetensors", LORA_SHA_KEY: "0" * 64},
        "lm_lora.safetensors",
    )
    for label, path, named in specials:
        record(
            "cli",
            f"eval-base --projector: {label}",
            "refuse",
            classify_cli(cli("eval-base", "--projector", path)),
            named,
        )
        record(
            "python",
            f"check_projector_file: {label}",
            "refuse",
            classify_python(lambda path=path: check_projector_file(path)),
            named,
        )
    for label, path in weight_file_variants(lora, lora_config.metadata(), lora_variants)[:-2]:
        record("python", f"read_lora: {label}", "refuse", classify_python(lambda path=path: read_lora(path)), path)
    for label, path in projector_variants:
        if label in ("wrong shape", "NaN in a tensor", "truncated to half"):
            record(
                "cli",
                f"eval --base-projector: {label}",
                "refuse",
                classify_cli(cli(*eval_args, "--base-projector", path)),
                path,
            )

    # export CHECKPOINT (and eval-base --projector / eval --aligner-weights given a checkpoint directory)
    stage1_state = {
        "step": 20,
        "loop": {"steps": 20},
        "task": {"kind": "projector", "base_model": "plvm/llava-mini", "lora": lora_config.metadata()},
    }
    aligner_state = {
        "step": 30,
        "loop": {"steps": 30},
        "task": {"kind": "aligner", "aligner": config.to_dict(), "base_model": "plvm/llava-mini"},
    }
    stage1_tensors = {**projector, **{LORA_KEY + k: v for k, v in lora.items()}}
    exported = workdir / "exported"
    for kind, state, tensors in (("stage-1", stage1_state, stage1_tensors), ("Aligner", aligner_state, aligner)):
        variants = weight_file_variants(tensors, {}, workdir / f"{kind}-trainable")[:-2]
        cases = [
            (
                f"{kind} checkpoint, trainable.safetensors: {label}",
                _ckpt(workdir / f"{kind}-ckpt-{i:02d}", state, path),
                path,
            )
            for i, (label, path) in enumerate(variants)
        ]
        good = workdir / f"{kind}-trainable" / "good.safetensors"
        cases += [
            (f"{kind} checkpoint, {label}", path, path)
            for label, path in state_variants(state, good, workdir / f"{kind}-state")
        ]
        cases.append((f"{kind} checkpoint: no such directory", workdir / "absent-ckpt", workdir / "absent-ckpt"))
        cases.append((f"{kind} checkpoint: a file, not a directory", good, good))
        for label, ckpt, named in cases:
            target = exported / f"{kind}-{len(out)}" / "projector.safetensors"
            record(
                "cli",
                f"export: {label}",
                "refuse",
                classify_cli(cli("export", ckpt, target)),
                named,
                ckpt,
                not_written=target.parent,
            )
            if kind == "stage-1":
                record(
                    "python",
                    f"export_stage1: {label}",
                    "refuse",
                    classify_python(lambda ckpt=ckpt, target=target: export_stage1(ckpt, target)),
                    named,
                    ckpt,
                    not_written=target.parent,
                )
                record(
                    "cli",
                    f"eval-base --projector DIR: {label}",
                    "refuse",
                    classify_cli(cli("eval-base", "--projector", ckpt)),
                    named,
                    ckpt,
                )
            elif ckpt != good:  # a good weights file is valid --aligner-weights
                record(
                    "cli",
                    f"eval --aligner-weights DIR: {label}",
                    "refuse",
                    classify_cli(cli(*eval_args, "--aligner-weights", ckpt)),
                    named,
                    ckpt,
                )
    good_stage1_trainable = workdir / "stage-1-trainable" / "good.safetensors"
    for label, tensors, state in (
        (
            "projector linear_1 768 wide, no vision_feature_layer recorded",
            {**stage1_tensors, PROJECTOR_PREFIX + "linear_1.weight": rand((576, 768))},
            stage1_state,
        ),
        ("projector linear_2 missing", {k: v for k, v in stage1_tensors.items() if "linear_2" not in k}, stage1_state),
        (
            "a tensor that is neither projector nor LoRA",
            {**stage1_tensors, "lm_head.weight": rand((4, 4))},
            stage1_state,
        ),
        (
            "LoRA tensors but no LoRA configuration",
            stage1_tensors,
            {**stage1_state, "task": {**stage1_state["task"], "lora": None}},
        ),
        (
            "vision_feature_layer '8,-1' with a 384-wide projector",
            stage1_tensors,
            {**stage1_state, "task": {**stage1_state["task"], "vision_feature_layer": "8,-1"}},
        ),
        (
            "vision_feature_layer not a layer",
            stage1_tensors,
            {**stage1_state, "task": {**stage1_state["task"], "vision_feature_layer": "last"}},
        ),
    ):
        folder = workdir / f"stage-1-special-{len(out):03d}"
        weights = (
            good_stage1_trainable
            if tensors is stage1_tensors
            else _save_tensors(folder / "weights.safetensors", tensors)
        )
        ckpt = _ckpt(folder / "checkpoint-000020", state, weights)
        target = exported / f"special-{len(out)}" / "projector.safetensors"
        record(
            "cli",
            f"export: stage-1 checkpoint, {label}",
            "refuse",
            classify_cli(cli("export", ckpt, target)),
            ckpt,
            not_written=target.parent,
        )
        record(
            "cli",
            f"eval-base --projector DIR: stage-1 checkpoint, {label}",
            "refuse",
            classify_cli(cli("eval-base", "--projector", ckpt)),
            ckpt,
        )
    wrong_kind = _ckpt(workdir / "wrong-kind", aligner_state, workdir / "Aligner-trainable" / "good.safetensors")
    record(
        "cli",
        "eval-base --projector: an Aligner checkpoint",
        "refuse",
        classify_cli(cli("eval-base", "--projector", wrong_kind)),
        wrong_kind,
    )
    wrong_kind2 = _ckpt(workdir / "wrong-kind-2", stage1_state, workdir / "stage-1-trainable" / "good.safetensors")
    record(
        "cli",
        "eval --aligner-weights: a stage-1 checkpoint",
        "refuse",
        classify_cli(cli(*eval_args, "--aligner-weights", wrong_kind2)),
        wrong_kind2,
    )
    bad_config = _ckpt(
        workdir / "bad-config",
        {**aligner_state, "task": {"kind": "aligner", "aligner": {"d_enc": "x", "zz": 1}}},
        workdir / "Aligner-trainable" / "good.safetensors",
    )
    record(
        "cli",
        "export: Aligner checkpoint recording a malformed Aligner config",
        "refuse",
        classify_cli(cli("export", bad_config, exported / "bad-config.safetensors")),
        bad_config,
    )

    # what must keep working: good checkpoints export, the committed weights and a two-layer projector load
    good_stage1 = _ckpt(workdir / "good-stage1", stage1_state, workdir / "stage-1-trainable" / "good.safetensors")
    target = exported / "good" / "projector.safetensors"
    record("cli", "export: a good stage-1 checkpoint", "accept", classify_cli(cli("export", good_stage1, target)))
    record(
        "python",
        "check_projector_file: the exported projector + LoRA",
        "accept",
        classify_python(lambda: check_projector_file(target)),
    )
    good_aligner = _ckpt(workdir / "good-aligner", aligner_state, workdir / "Aligner-trainable" / "good.safetensors")
    target2 = exported / "good" / "aligner.safetensors"
    record("cli", "export: a good Aligner checkpoint", "accept", classify_cli(cli("export", good_aligner, target2)))
    record(
        "python",
        "read_aligner_weights: the exported Aligner and its checkpoint",
        "accept",
        classify_python(lambda: (read_aligner_weights(target2, config), read_aligner_weights(good_aligner, config))),
    )
    two = _save_tensors(workdir / "two-layer" / "projector.safetensors", wide, {"vision_feature_layer": "8,-1"})
    record(
        "python",
        "check_projector_file: vision_feature_layer '8,-1', linear_1 768 wide",
        "accept",
        classify_python(lambda: check_projector_file(two)),
    )
    committed = locate(LLAVA_MINI_PROJECTOR)
    if committed.is_file():
        record(
            "python",
            "check_projector_file: committed projector + its LoRA",
            "accept",
            classify_python(lambda: check_projector_file(committed)),
        )
        record(
            "python",
            "read_lora: committed lm_lora.safetensors",
            "accept",
            classify_python(lambda: read_lora(committed.with_name("lm_lora.safetensors"))),
        )
        record(
            "python",
            "read_projector: committed projector",
            "accept",
            classify_python(lambda: read_projector(committed)),
        )
    if MINI_ALIGNER.is_file():
        record(
            "python",
            "read_aligner_weights: committed aligner.safetensors",
            "accept",
            classify_python(lambda: read_aligner_weights(MINI_ALIGNER, config)),
        )
    return out


# ---------------------------------------------------------------------- running and reporting
def run_all(workdir: Path | None = None, writers: int = 50) -> list[Outcome]:
    """Every case; ``workdir`` (default: a temporary directory) holds the stores."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plvm-hostile-")))
        workdir = Path(workdir)
        # faults first: forked children then copy a process that has not started torch's thread pools
        out = fault_cases(workdir / "faults") + concurrency_cases(workdir / "faults", writers)
        out += full_disk_cases(workdir / "faults")
        w = World.build(workdir / "world")
        out += input_cases(w) + import_cases(w) + server_cases(w) + corruption_cases(w, workdir / "corrupt")
        w.store.close()
        out += checkpoint_cases(workdir / "checkpoints")
        return out


#: Groups that run on their own (``plvm bench reliability --only GROUP`` re-runs one of them and keeps the other
#: groups' cases, the memory and the load figures from the previous report's JSON).
STANDALONE_GROUPS: dict[str, Callable[[Path], list[Outcome]]] = {"checkpoints": lambda d: checkpoint_cases(d)}


def run_group(group: str, workdir: Path | None = None) -> list[Outcome]:
    if group not in STANDALONE_GROUPS:
        raise ValueError(f"--only runs one of {', '.join(STANDALONE_GROUPS)}; got {group!r}")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plvm-hostile-")))
        return STANDALONE_GROUPS[group](Path(workdir))


def from_json(cases: Iterable[dict[str, Any]]) -> list[Outcome]:
    return [Outcome(**c) for c in cases]


GROUP_TITLES = {
    "questions": "Questions (`<image>`, context markers, special tokens, empty, NUL)",
    "numbers": "Numbers (`--max-new-tokens`, `--threshold`, `--top-k`, serve limits)",
    "boxes": "Boxes (NaN, ±inf, empty, inverted, outside the image, malformed)",
    "names": "Concept names (`t1`, `image`, `-`, trailing newline/tab, special tokens, traversal)",
    "store path": "`--store` that is a file",
    "imports": "Imported concept files (dtype, shape, k, dimensions, metadata, bytes)",
    "server": "Server: foreign Host, cross-origin writes, 8 concurrent 16000×2400 uploads",
    "faults": "Faults: kill -9 at every unlink/replace/commit, concurrent writers, full disk, corruption",
    "checkpoints": "Checkpoints and weight files (`eval --aligner-weights`, `eval-base --projector`, `export`: empty, "
    "truncated, oversized header, pickle, wrong shape, missing key, NaN/±inf, int, corrupt state.json)",
}


def summary(outcomes: Iterable[Outcome]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        r = rows.setdefault(
            o.group,
            {
                "group": o.group,
                "tried": 0,
                "clear": 0,
                "accepted": 0,
                "traceback": 0,
                "wrong": 0,
                "lost": 0,
                "surfaces": set(),
            },
        )
        r["tried"] += 1
        r[o.result] += 1
        r["lost"] += o.lost
        r["surfaces"].add(o.surface)
        if not o.ok and o.result in (CLEAR, ACCEPTED):
            r["wrong"] += 1
            r[o.result] -= 1
    order = list(GROUP_TITLES)
    out = sorted(rows.values(), key=lambda r: order.index(r["group"]) if r["group"] in order else 99)
    for r in out:
        r["surfaces"] = ", ".join(sorted(r["surfaces"]))
    return out


def failures(outcomes: Iterable[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if not o.ok]


def markdown(
    outcomes: Sequence[Outcome],
    load: dict[str, Any] | None = None,
    memory: dict[str, Any] | None = None,
    command: str = "plvm bench reliability",
    took_s: float | None = None,
    rerun: tuple[str, float] | None = None,
) -> str:
    """The report; ``rerun = (group, seconds)``: only that group was measured now (``--only``), the rest comes
    from the previous full run."""
    rows = summary(outcomes)
    total = {k: sum(r[k] for r in rows) for k in ("tried", "clear", "accepted", "traceback", "wrong", "lost")}
    lines = [
        "# Reliability: hostile input, faults and load",
        "",
        f"Regenerate with `{command}`"
        + (f" (this run took {took_s:.0f} s on a shared 2-core CPU)" if took_s else "")
        + "; the same cases run in `tests/test_hostile.py`. Every number below was measured by that command; "
        "nothing is hand-edited."
        + (
            f" The {GROUP_TITLES.get(rerun[0], rerun[0]).split(' (')[0].lower()} group was last re-run on its own "
            f"with `plvm bench reliability --only {rerun[0]}` ({rerun[1]:.0f} s); the other groups, the memory and "
            "the load figures are from the last full run."
            if rerun
            else ""
        ),
        "",
        "Each input is sent through the CLI (`typer` runner, exit status and stderr), the HTTP API "
        "(FastAPI `TestClient`, status and `detail`) and/or the Python API, on the tiny random model "
        "(`--model tiny`). *Clear error*: refused with a one-line message saying what is allowed (CLI exit 2, "
        "HTTP 4xx/503/507). *Accepted*: a valid input (or a fault the store survived) served. *Traceback*: a "
        "traceback or HTTP 500. *Wrong*: nonsense accepted, a valid input refused, or a refusal that is not one "
        "line. *Lost*: concepts acknowledged before a fault and missing after it.",
        "",
        "| input or fault | surfaces | tried | clear errors | accepted | tracebacks / 500s | wrong | concepts lost |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {GROUP_TITLES.get(r['group'], r['group'])} | {r['surfaces']} | {r['tried']} | {r['clear']} | "
            f"{r['accepted']} | {r['traceback']} | {r['wrong']} | {r['lost']} |"
        )
    lines.append(
        f"| **all** | | **{total['tried']}** | **{total['clear']}** | **{total['accepted']}** | "
        f"**{total['traceback']}** | **{total['wrong']}** | **{total['lost']}** |"
    )
    lines += [
        "",
        "## Behaviour by input",
        "",
        "| group | surface | input or fault | result | what came back |",
        "|---|---|---|---|---|",
    ]
    seen: set[tuple[str, str]] = set()
    for o in outcomes:  # one line per distinct case label and surface (the first occurrence)
        key = (o.surface, o.case)
        if key in seen:
            continue
        seen.add(key)
        detail = o.detail.replace("|", "\\|").replace("\n", " ")[:160]
        mark = "" if o.ok else " ✗"
        lines.append(f"| {o.group} | {o.surface} | {o.case.replace('|', '/')!s} | {o.result}{mark} | {detail} |")
    if memory:
        lines += ["", "## Memory under 8 concurrent large uploads", "", memory_markdown(memory)]
    if load:
        lines += ["", "## Load (`plvm bench serve`)", "", load_markdown(load)]
    lines += [
        "",
        "## Not covered",
        "",
        "- A real full disk (a small tmpfs needs root here): simulated with `RLIMIT_FSIZE`, which makes every "
        "write past the limit fail with `EFBIG` as `ENOSPC` would.",
        "- `kill -9` is `os._exit(137)` in a forked child at the n-th `os.unlink` / `os.replace` / SQLite "
        "`COMMIT` (before and right after it) — the process dies there without cleanup, as with `kill -9`; "
        "SQLite's own writes inside a COMMIT are not interrupted at finer grain (its journal covers them).",
        "- Checkpoint cases stop at the file checks, before any model loads (a bad file must fail there); "
        "the accepted weights are checked by the same readers, not by running a whole `plvm eval` or "
        "`plvm eval-base`, and a LoRA whose tensors fit their own rank but not SmolLM2's layers is refused "
        "only when it is merged (after the model loads).",
        "",
    ]
    return "\n".join(lines)


def memory_markdown(m: dict[str, Any]) -> str:
    rows = ["| server | idle RSS | peak RSS during the uploads | peak / idle | answered |", "|---|---:|---:|---:|---|"]
    for label, r in m["runs"].items():
        rows.append(
            f"| {label} | {r['idle_mb']:.0f} MB | {r['peak_mb']:.0f} MB | {r['peak_mb'] / r['idle_mb']:.2f}× | "
            f"{r['statuses']} |"
        )
    return (
        f"`{m['command']}`: {m['uploads']} concurrent `/api/identify` uploads of a {m['file_kb']:.0f} KB "
        f"{m['size'][0]}×{m['size'][1]} PNG to a `plvm serve --model tiny` process (RSS from /proc, sampled "
        "while the requests run).\n\n" + "\n".join(rows)
    )


def load_markdown(r: dict[str, Any]) -> str:
    rows = ["| request | n | errors | p50 | p95 | max |", "|---|---:|---:|---:|---:|---:|"]
    for kind, s in r["by_kind"].items():
        rows.append(
            f"| {kind} | {s['n']} | {s['errors']} | {s['p50_ms']:.0f} ms | {s['p95_ms']:.0f} ms | "
            f"{s['max_ms']:.0f} ms |"
        )
    a = r["all"]
    rows.append(
        f"| **all** | **{a['n']}** | **{a['errors']}** | {a['p50_ms']:.0f} ms | {a['p95_ms']:.0f} ms | "
        f"{a['max_ms']:.0f} ms |"
    )
    return (
        f"`{r['command']}`: {r['requests']} requests at concurrency {r['concurrency']} against "
        f"{r['url']} (`--model tiny`, {r['wall_s']:.1f} s wall, {r['requests'] / r['wall_s']:.1f} req/s; "
        f"statuses {r['statuses']}). Latencies are for humans, on a shared 2-core machine.\n\n" + "\n".join(rows)
    )


def to_json(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    return [asdict(o) for o in outcomes]


__all__ = [
    "Outcome",
    "World",
    "checkpoint_cases",
    "failures",
    "from_json",
    "markdown",
    "run_all",
    "run_group",
    "summary",
]
