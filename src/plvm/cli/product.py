"""The product commands of the ``plvm`` CLI: concept store, ask, identify, chat, serve.

:func:`register` adds them to :mod:`plvm.cli`'s typer app. Every command takes ``--model mini|tiny``
(``tiny`` is a random test model) and ``--store DIR`` (default ``$PLVM_STORE`` or ``~/.local/share/plvm``).
Errors users can cause (bad image, unknown or invalid name, store of another base model, empty question, …)
print one ``error:`` line and exit with status 2 — no traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar

import typer

from plvm.concept import ConceptError
from plvm.images import ImageError
from plvm.store import ConceptStore, StoreError, StoreIdentity, default_store_path
from plvm.validation import (
    InvalidInputError,
    check_boxes,
    check_int,
    check_max_new_tokens,
    check_positive,
    check_question,
    check_threshold,
    check_top_k,
    parse_box,
    special_token_texts,
    unknown_name_message,
)

F = TypeVar("F", bound=Callable[..., Any])


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded (weights missing, optional packages absent)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ImageError,
    ConceptError,
    StoreError,
    InvalidInputError,
    ModelUnavailableError,
)


def _bind_error() -> tuple[type[BaseException], ...]:
    try:
        from plvm.server.security import BindError

        return (BindError,)
    except ImportError:  # fastapi not installed
        return ()


def friendly(fn: F) -> F:
    """Turn the errors users cause into one ``error: …`` line and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS + _bind_error() as exc:
            typer.secho(f"error: {' '.join(str(exc).split())}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------- shared options and loaders
MODEL_HELP = "mini (LLaVA-mini + trained Aligner) | tiny (random test model) | a preset name"
STORE_HELP = "concept store directory [default: $PLVM_STORE or ~/.local/share/plvm]"


def _store_path(store: Optional[Path]) -> Path:
    return store if store is not None else default_store_path()


def load_model(name: str) -> Any:
    """A :class:`plvm.pipeline.PLVM` by name: ``tiny`` (random, for tests) or a preset (``mini``, …)."""
    if name == "tiny":
        from plvm.models.tiny_plvm import tiny_plvm

        return tiny_plvm()
    try:
        from plvm.pipeline import MINI_ALIGNER, PLVM

        if name == "mini" and not MINI_ALIGNER.exists():  # fail before loading the base model
            raise FileNotFoundError(f"no trained Aligner at {MINI_ALIGNER}; train one with `plvm train`")
        return PLVM.from_preset(name)
    except (FileNotFoundError, ImportError, KeyError, ValueError) as exc:
        raise ModelUnavailableError(
            f"model {name!r} is not available ({' '.join(str(exc).split())[:300]}); "
            "`--model tiny` runs a random test model"
        ) from None


def load_face_backend(backend: str | None = None) -> Any:
    """The face encoder ``backend``, default ``$PLVM_FACE_BACKEND`` (default ``dlib``, CC0 weights; ``none``: off).

    ``insightface`` additionally needs ``PLVM_ALLOW_NONCOMMERCIAL=1``: its weights are licensed for
    non-commercial research only.
    """
    backend = backend or os.environ.get("PLVM_FACE_BACKEND", "dlib")
    if backend.lower() == "none":
        raise ModelUnavailableError("face backend turned off (PLVM_FACE_BACKEND=none)")
    try:
        from plvm.encoders.face import FaceConfig, FaceEncoder
    except ImportError as exc:
        raise ModelUnavailableError(f"no face backend available ({exc})") from None
    config = FaceConfig(
        backend=backend,
        allow_noncommercial=os.environ.get("PLVM_ALLOW_NONCOMMERCIAL") == "1",
    )
    try:
        return FaceEncoder.from_config(config)
    except (ImportError, PermissionError, ValueError) as exc:
        raise ModelUnavailableError(f"face backend {config.backend!r} unavailable: {exc}") from None


FACES_HELP = (
    "face detection + embedding for person concepts: on by default when a face backend is installed "
    "($PLVM_FACE_BACKEND, default dlib); --faces requires one, --no-faces turns it off"
)


def face_backend_option(faces: Optional[bool]) -> Any:
    """``--faces`` → the backend (error if unavailable); ``--no-faces`` → ``None``; default → if available."""
    if faces is False:
        return None
    try:
        return load_face_backend()
    except ModelUnavailableError as exc:
        if faces:
            raise
        typer.secho(f"note: no face embeddings ({exc})", err=True, fg=typer.colors.BRIGHT_BLACK)
        return None


def open_store(store: Optional[Path], plvm: Any = None) -> ConceptStore:
    """The store at ``--store``; bound to ``plvm``'s base model when given (refuses another)."""
    return ConceptStore(_store_path(store), StoreIdentity.of(plvm) if plvm is not None else None)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


# ---------------------------------------------------------------------- concepts
concepts_app = typer.Typer(help="Manage the concept store (add from one photo, list, rename, …).", no_args_is_help=True)


@concepts_app.command("add")
@friendly
def concepts_add(
    name: str = typer.Argument(..., help="concept name, e.g. bo or <bo>"),
    image: Path = typer.Argument(..., help="one reference photo"),
    replace: bool = typer.Option(False, "--replace", help="overwrite an existing concept of this name"),
    model: str = typer.Option("mini", "--model", help=MODEL_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    faces: Optional[bool] = typer.Option(None, "--faces/--no-faces", help=FACES_HELP),
) -> None:
    """Make a concept from NAME and one IMAGE (one Aligner pass; + its main face's embedding) and store it."""
    from plvm.identify import ReferenceEncoder
    from plvm.images import load_image

    s = open_store(store)
    bare = s.check_available(name, replace)  # fail fast, before loading the model
    loaded = load_image(image)
    plvm = load_model(model)
    s.bind(StoreIdentity.of(plvm))
    encoder = ReferenceEncoder(plvm, face=face_backend_option(faces))
    record = s.add_from_image(bare, loaded, encoder, replace=replace)
    face = record.metadata.get("face")
    face_note = (
        ""
        if face is None
        else (
            f", main face {face['box']} stored ({face['backend']})"
            if face.get("box")
            else f", no face found ({face['backend']})"
        )
    )
    typer.echo(
        f"added {record.token} ({record.image_width}x{record.image_height}, base {record.base_model}"
        f"{face_note}) to {s.root}"
    )


@concepts_app.command("list")
@friendly
def concepts_list(
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """List stored concepts."""
    s = open_store(store)
    records = s.list()
    if as_json:
        _echo_json([r.to_dict() for r in records])
        return
    if not records:
        typer.echo(f"no concepts in {s.root} (add one with `plvm concepts add NAME IMAGE`)")
        return
    from rich.console import Console
    from rich.table import Table

    identity = s.identity
    table = Table(
        title=f"{len(records)} concept(s) in {s.root}" + (f" — base {identity.base_model}" if identity else "")
    )
    for col in ("name", "image", "k", "features", "base revision", "added"):
        table.add_column(col)
    import datetime as dt

    from plvm.concept import BASE_REVISION_KEY

    for r in records:
        table.add_row(
            r.token,
            f"{r.image_width}x{r.image_height}" if r.image_width else "-",
            str(r.num_context_tokens),
            ", ".join(r.feature_kinds) or "-",
            str(r.metadata.get(BASE_REVISION_KEY) or "-"),
            dt.datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M"),
        )
    Console(width=max(100, Console().width)).print(table)


@concepts_app.command("show")
@friendly
def concepts_show(
    name: str = typer.Argument(...),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Show one concept's record (JSON)."""
    s = open_store(store)
    record = s.get(name)
    data = record.to_dict()
    if record.image_sha256:
        data["image_file"] = str(s.image_file(record.name))
    _echo_json(data)


@concepts_app.command("rename")
@friendly
def concepts_rename(
    old: str = typer.Argument(...),
    new: str = typer.Argument(...),
    replace: bool = typer.Option(False, "--replace", help="overwrite a concept already called NEW"),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Rename a concept."""
    record = open_store(store).rename(old, new, replace=replace)
    typer.echo(f"renamed to {record.token}")


@concepts_app.command("rm")
@friendly
def concepts_rm(
    names: List[str] = typer.Argument(..., help="one or more names"),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Remove concepts (and their reference images when no other concept uses them)."""
    s = open_store(store)
    for name in names:
        typer.echo(f"removed {s.remove(name).token}")


@concepts_app.command("export")
@friendly
def concepts_export(
    name: str = typer.Argument(...),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="file [default: NAME.concept.safetensors]"),
    no_image: bool = typer.Option(False, "--no-image", help="leave the reference photo out"),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Export one concept as a self-contained .safetensors file (embeddings, features, photo)."""
    s = open_store(store)
    record = s.get(name)
    path = s.export(record.name, out or Path(f"{record.name}.concept.safetensors"), include_image=not no_image)
    typer.echo(f"exported {record.token} to {path}")


@concepts_app.command("import")
@friendly
def concepts_import(
    files: List[Path] = typer.Argument(..., help="exported .safetensors files"),
    name: Optional[str] = typer.Option(None, "--name", help="store under this name (one file only)"),
    replace: bool = typer.Option(False, "--replace"),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Import exported concepts (the store must serve the same base model)."""
    if name is not None and len(files) > 1:
        raise ConceptError("--name works with one file only")
    s = open_store(store)
    for f in files:
        typer.echo(f"imported {s.import_file(f, name=name, replace=replace).token} from {f}")


# ---------------------------------------------------------------------- ask / identify / chat / serve
@friendly
def ask(
    question: str = typer.Argument(..., help="e.g. 'Is <bo> in this photo?'"),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="the photo to ask about"),
    concept: List[str] = typer.Option([], "--concept", "-c", help="also use this stored concept"),
    auto_identify: bool = typer.Option(
        True, "--auto-identify/--no-auto-identify", help="also use stored concepts identified in the photo"
    ),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="identify threshold (cosine)"),
    faces: Optional[bool] = typer.Option(None, "--faces/--no-faces", help=FACES_HELP),
    visual_prompt: bool = typer.Option(
        False,
        "--visual-prompt/--no-visual-prompt",
        help="tell the model where identified people are ('<bo> is the person on the left.')",
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of streaming"),
    model: str = typer.Option("mini", "--model", help=MODEL_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Ask one question; concepts written as <name> are loaded from the store."""
    from plvm.chat import ChatSession, format_active, format_identify
    from plvm.conversation import UnknownConceptError, referenced_names
    from plvm.identify import DEFAULT_THRESHOLD, Identifier, ReferenceEncoder
    from plvm.images import load_image

    # every option checked before the model loads (the same checks run again inside the Python API)
    question = check_question(question)
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    threshold = check_threshold(threshold)
    s = open_store(store)
    known = set(s.names())
    missing = [n for n in [*referenced_names(question), *concept] if n.strip("<>") not in known]
    if missing:
        raise UnknownConceptError(unknown_name_message(missing[0].strip("<>"), s.names(), "stored"))
    loaded = load_image(image) if image is not None else None
    plvm = load_model(model)
    check_question(question, image_token=plvm.lvlm.image_token, special_tokens=special_token_texts(plvm.lvlm.tokenizer))
    s.bind(StoreIdentity.of(plvm))
    face = face_backend_option(faces) if (auto_identify and loaded is not None) or faces else None
    encoder = ReferenceEncoder(plvm, face=face)
    identifier = Identifier(s, encoder, face=face, threshold=DEFAULT_THRESHOLD if threshold is None else threshold)
    session = ChatSession(
        plvm, s, identifier, auto_identify=auto_identify, max_new_tokens=max_new_tokens, visual_prompt=visual_prompt
    )
    if loaded is not None:
        result = session.set_image(loaded)
        if result is not None and not as_json:
            typer.secho(format_identify(result), err=True, fg=typer.colors.BRIGHT_BLACK)
    turn = session.prepare(question, concept)
    if as_json:
        _echo_json(session.generate(turn).to_dict())
        return
    typer.secho(f"concepts: {format_active(turn.active)}", err=True, fg=typer.colors.BRIGHT_BLACK)

    def stream(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    session.generate(turn, on_text=stream)
    sys.stdout.write("\n")


@friendly
def identify(
    image: Path = typer.Option(..., "--image", "-i", help="the photo"),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="cosine similarity to count as present"),
    top_k: int = typer.Option(10, "--top-k"),
    box: List[str] = typer.Option([], "--box", help="also score this region: x0,y0,x1,y1 (repeatable)"),
    faces: Optional[bool] = typer.Option(None, "--faces/--no-faces", help=FACES_HELP),
    as_json: bool = typer.Option(False, "--json"),
    model: str = typer.Option("mini", "--model", help=MODEL_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Who is in this photo? Rank stored concepts by reference-encoder similarity."""
    from plvm.identify import DEFAULT_THRESHOLD, Identifier, ReferenceEncoder
    from plvm.images import load_image

    threshold = check_threshold(threshold)
    top_k = check_top_k(top_k)
    boxes = [parse_box(b) for b in box]
    loaded = load_image(image)
    boxes = check_boxes(boxes, loaded.image.size)  # before the model loads
    plvm = load_model(model)
    s = open_store(store, plvm)
    face = face_backend_option(faces)
    identifier = Identifier(
        s, ReferenceEncoder(plvm, face=face), face=face, threshold=DEFAULT_THRESHOLD if threshold is None else threshold
    )
    result = identifier.identify(loaded.image, regions=boxes, top_k=top_k)
    if as_json:
        _echo_json(result.to_dict())
        return
    if not result.matches:
        typer.echo(f"no concepts with features in {s.root} to compare with")
        return
    face_t = "" if result.face_threshold is None else f", face {result.face_threshold:.3f}"
    typer.echo(
        f"{'concept':<24} {'score':>7} {'confidence':>10}  {'present':<8} why / where   "
        f"(threshold image {result.threshold:.2f}{face_t})"
    )
    for m in result.matches:
        score = "-" if m.score is None else f"{m.score:.3f}"
        conf = "-" if m.confidence is None else f"{m.confidence:.0%}"
        where = "" if m.box is None else f" {m.source} {list(m.box)}"
        typer.echo(
            f"{'<' + m.name + '>':<24} {score:>7} {conf:>10}  {'yes' if m.present else 'no':<8} "
            f"{m.reason or m.source}{where}"
        )
    present = ", ".join(f"<{m.name}>" for m in result.present) or "nobody known"
    typer.echo(f"in this photo: {present}")


@friendly
def chat(
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="a photo for the first question"),
    auto_identify: bool = typer.Option(True, "--auto-identify/--no-auto-identify"),
    threshold: Optional[float] = typer.Option(None, "--threshold"),
    faces: Optional[bool] = typer.Option(None, "--faces/--no-faces", help=FACES_HELP),
    visual_prompt: bool = typer.Option(
        False, "--visual-prompt/--no-visual-prompt", help="tell the model where identified people are"
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    model: str = typer.Option("mini", "--model", help=MODEL_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Chat about photos; /add NAME IMAGE adds a concept mid-dialogue (type /help)."""
    from plvm.chat import ChatSession, format_identify, run_repl
    from plvm.identify import DEFAULT_THRESHOLD, Identifier, ReferenceEncoder
    from plvm.images import load_image

    threshold = check_threshold(threshold)
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    loaded = load_image(image) if image is not None else None
    plvm = load_model(model)
    s = open_store(store, plvm)
    face = face_backend_option(faces)
    identifier = Identifier(
        s, ReferenceEncoder(plvm, face=face), face=face, threshold=DEFAULT_THRESHOLD if threshold is None else threshold
    )
    session = ChatSession(
        plvm, s, identifier, auto_identify=auto_identify, max_new_tokens=max_new_tokens, visual_prompt=visual_prompt
    )
    banner = (
        f"plvm chat — model {model} (base {s.identity.base_model if s.identity else '?'}), "
        f"store {s.root} ({len(s)} concepts)"
    )
    if loaded is not None:
        result = session.set_image(loaded, label=str(image))
        banner += f"\nimage: {image}"
        if result is not None:
            banner += "\n" + format_identify(result)
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:  # pragma: no cover
            pass
    run_repl(session, read=input if interactive else _plain_read, banner=banner)


def _plain_read(prompt: str) -> str:
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


@friendly
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (non-loopback needs a token)"),
    port: int = typer.Option(8000, "--port"),
    token: Optional[str] = typer.Option(
        None, "--token", envvar="PLVM_TOKEN", help="bearer token required by the API [env: PLVM_TOKEN]"
    ),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="identify threshold (cosine)"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    max_request_mb: float = typer.Option(24.0, "--max-request-mb", help="largest request body (MiB)"),
    max_image_mb: float = typer.Option(20.0, "--max-image-mb", help="largest image file (MiB)"),
    max_megapixels: float = typer.Option(40.0, "--max-megapixels", help="largest image (megapixels)"),
    max_decoded_mp: float = typer.Option(
        40.0,
        "--max-decoded-megapixels",
        help="decoded image pixels all requests together may hold (megapixels); concurrent large uploads wait for room",
    ),
    allow_host: List[str] = typer.Option(
        [],
        "--allow-host",
        help="also answer to this Host name (e.g. behind a proxy); others are refused (DNS rebinding)",
    ),
    faces: Optional[bool] = typer.Option(None, "--faces/--no-faces", help=FACES_HELP),
    model: str = typer.Option("mini", "--model", help=MODEL_HELP),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
) -> None:
    """Serve the HTTP API and the web page (uvicorn)."""
    from plvm.identify import DEFAULT_THRESHOLD
    from plvm.images import ImageLimits
    from plvm.server import ServerLimits, check_bind, create_app
    from plvm.server.run import serve as run_server

    check_bind(host, token)  # before loading anything
    check_int(port, "port (--port)", 0, 65535)
    threshold = check_threshold(threshold)
    max_new_tokens = check_max_new_tokens(max_new_tokens)
    check_positive(max_request_mb, "--max-request-mb", 4096)
    check_positive(max_image_mb, "--max-image-mb", 4096)
    check_positive(max_megapixels, "--max-megapixels", 1000)
    check_positive(max_decoded_mp, "--max-decoded-megapixels", 10000)
    limits = ServerLimits(
        max_request_bytes=int(max_request_mb * 1024 * 1024),
        image=ImageLimits(max_bytes=int(max_image_mb * 1024 * 1024), max_pixels=int(max_megapixels * 1e6)),
        max_new_tokens=max_new_tokens,
        max_decoded_pixels=int(max_decoded_mp * 1e6),
    )
    plvm = load_model(model)
    s = open_store(store, plvm)
    app = create_app(
        plvm,
        s,
        token=token,
        limits=limits,
        model_name=model,
        face=face_backend_option(faces),
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        bind_host=host,
        allow_hosts=allow_host,
    )
    typer.echo(
        f"plvm serving model {model} with store {s.root} ({len(s)} concepts) on http://{host}:{port}/"
        + (" (bearer token required)" if token else ""),
        err=True,
    )
    run_server(app, host=host, port=port, token=token)


def register(app: typer.Typer) -> None:
    """Add ``concepts``, ``ask``, ``identify``, ``chat`` and ``serve`` to a typer app."""
    app.add_typer(concepts_app, name="concepts")
    app.command("ask")(ask)
    app.command("identify")(identify)
    app.command("chat")(chat)
    app.command("serve")(serve)
