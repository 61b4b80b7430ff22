"""``create_app``: the FastAPI application of plvm (API under ``/api``, web page at ``/``).

Endpoints (all under ``/api`` need ``Authorization: Bearer <token>`` when the app has a token):

=======  ====================================  ====================================================
GET      /api/info                             model, base model, concept count, limits
GET      /api/concepts                         list stored concepts
POST     /api/concepts                         multipart ``name``, ``image``, ``replace`` → 201
GET      /api/concepts/{name}                  one concept (404 lists the known ones)
GET      /api/concepts/{name}/image            its original reference image
PATCH    /api/concepts/{name}                  JSON ``{"name": new, "replace": false}`` → rename
DELETE   /api/concepts/{name}                  remove → 204
GET      /api/concepts/{name}/export           self-contained ``.safetensors``
POST     /api/concepts/import                  multipart ``file``, ``name``, ``replace`` → 201
POST     /api/identify                         multipart ``image``, ``threshold``, ``top_k``, ``boxes``
POST     /api/ask                              multipart ``question``, ``image``, ``concepts``, ``stream``
POST     /api/chats                            new chat session → ``{"session_id"}``
GET      /api/chats/{id}                       history and active concepts
POST     /api/chats/{id}/messages              multipart ``text``, ``image``, ``concepts``, ``stream``
POST     /api/chats/{id}/concepts              JSON ``{"name"}``: use a stored concept
DELETE   /api/chats/{id}                       end a session
=======  ====================================  ====================================================

Errors are JSON ``{"detail": "one line"}``: 400 (foreign ``Host``: DNS rebinding), 401 (token), 403
(cross-origin write without the token: CSRF), 404 (unknown concept/session), 409 (name taken, other base
model), 413 (body, file or pixels too large), 415 (not an image), 422 (corrupt image, bad name, empty
question, bad field — the same message as the CLI's, from :mod:`plvm.validation`), 503 (busy decoding
other large images), 507 (disk full). See :mod:`plvm.server.guard` for the Host/Origin rules and the
decoded-pixel budget. ``stream=true`` answers as NDJSON lines: ``{"event": "start", ...}``,
``{"event": "text", "text": ...}``…, then ``{"event": "done", ...}`` or ``{"event": "error", "detail"}``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..chat import ChatSession, PreparedTurn
from ..concept import ConceptError, IncompatibleConceptError, lookup_name
from ..conversation import UnknownConceptError
from ..identify import DEFAULT_THRESHOLD, FaceBackend, Identifier, ReferenceEncoder
from ..images import (
    MIME_TYPES,
    CorruptImageError,
    ImageError,
    ImageTooLargeError,
    LoadedImage,
    UnsupportedImageError,
    decode_image,
    probe_size,
)
from ..store import (
    ConceptExistsError,
    ConceptNotFoundError,
    ConceptStore,
    CorruptStoreError,
    StoreError,
    StoreFullError,
    StoreIdentity,
    StoreMismatchError,
)
from ..validation import InvalidInputError, check_boxes, check_threshold, check_top_k
from .guard import BudgetExceededError, PixelBudget, RequestGuardMiddleware, allowed_host_names
from .limits import ServerLimits
from .middleware import BodySizeLimitMiddleware
from .schemas import (
    ActivateIn,
    AnswerOut,
    ConceptOut,
    ErrorOut,
    IdentifyOut,
    InfoOut,
    RenameIn,
    SessionOut,
)
from .security import TokenAuth

STATIC_DIR = Path(__file__).parent / "static"

ERROR_STATUS: list[tuple[type[BaseException], int]] = [
    (ImageTooLargeError, 413),
    (UnsupportedImageError, 415),
    (CorruptImageError, 422),
    (ImageError, 422),
    (ConceptNotFoundError, 404),
    (ConceptExistsError, 409),
    (StoreMismatchError, 409),
    (UnknownConceptError, 404),
    (IncompatibleConceptError, 409),
    (ConceptError, 422),
    (InvalidInputError, 422),
    (BudgetExceededError, 503),
    (StoreFullError, 507),
    (CorruptStoreError, 500),
    (StoreError, 500),
]

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in [
        (401, "missing or wrong bearer token"),
        (404, "unknown concept or session"),
        (409, "name taken or concept of another base model"),
        (413, "too large"),
        (415, "not an image"),
        (422, "invalid input"),
        (400, "foreign Host header"),
        (403, "cross-origin write without the token"),
    ]
}


def status_for(exc: BaseException) -> int:
    for cls, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return code
    return 500


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


@dataclass
class _Session:
    chat: ChatSession
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionRegistry:
    """Chat sessions of one app (bounded, least recently used dropped first)."""

    def __init__(self, factory: Callable[[], ChatSession], max_sessions: int):
        self.factory = factory
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(self) -> str:
        sid = secrets.token_urlsafe(12)
        with self._lock:
            self._sessions[sid] = _Session(self.factory())
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return sid

    def get(self, sid: str) -> _Session:
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown chat session {sid[:40]!r} (expired?)")
            self._sessions.move_to_end(sid)
            return session

    def delete(self, sid: str) -> None:
        with self._lock:
            if self._sessions.pop(sid, None) is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown chat session {sid[:40]!r}")


def create_app(
    plvm: Any,
    store: ConceptStore,
    token: str | None = None,
    limits: ServerLimits = ServerLimits(),
    *,
    threshold: float = DEFAULT_THRESHOLD,
    face: FaceBackend | None = None,
    model_name: str | None = None,
    bind_host: str = "127.0.0.1",
    allow_hosts: Iterable[str] = (),
) -> FastAPI:
    """Build the app for one model and one store (no global state: everything hangs off this app).

    ``bind_host`` (the address it will listen on) and ``allow_hosts`` are the ``Host`` names it answers to
    besides loopback names (:func:`plvm.server.guard.allowed_host_names`).

    Raises :class:`plvm.store.StoreMismatchError` if ``store`` was made for another base model.
    """
    identity = StoreIdentity.of(plvm)
    store.bind(identity)
    encoder = ReferenceEncoder(plvm, face=face)
    identifier = Identifier(store, encoder, face=face, threshold=threshold)
    model_lock = threading.Lock()

    def new_session(auto_identify: bool = True, visual_prompt: bool = False) -> ChatSession:
        return ChatSession(
            plvm,
            store,
            identifier,
            encoder,
            auto_identify=auto_identify,
            max_new_tokens=limits.max_new_tokens,
            max_question_chars=limits.max_question_chars,
            limits=limits.image,
            model_lock=model_lock,
            visual_prompt=visual_prompt,
        )

    sessions = SessionRegistry(new_session, limits.max_sessions)
    auth = TokenAuth(token)

    app = FastAPI(
        title="plvm",
        version=__version__,
        description="Tuning-free personalization of a vision-language model: concepts from one photo, "
        "then ask about them by name (<bo>).",
        docs_url=None,  # Swagger UI would load its assets from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=limits.max_request_bytes)
    # outermost: a foreign Host or a cross-origin write is refused before its body is read
    app.add_middleware(RequestGuardMiddleware, allowed_hosts=allowed_host_names(bind_host, allow_hosts), token=token)
    pixels = PixelBudget(limits.max_decoded_pixels)

    async def user_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=status_for(exc))

    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form"))
            parts.append(f"{where or 'request'}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    for cls, _ in ERROR_STATUS:
        app.add_exception_handler(cls, user_error)
    app.add_exception_handler(RequestValidationError, invalid_request)

    api = APIRouter(prefix="/api", dependencies=[Depends(auth)], responses=ERROR_RESPONSES)

    # ------------------------------------------------------------------ helpers
    def read_image(upload: UploadFile, label: str, held: contextlib.ExitStack) -> LoadedImage:
        """Read and decode an upload; its decoded pixels are reserved in the app's budget until ``held``
        closes (the end of the request), so concurrent large uploads are decoded one after another."""
        data = upload.file.read(limits.image.max_bytes + 1)
        name = Path(upload.filename or label).name[:80] or label
        if len(data) > limits.image.max_bytes:
            raise ImageTooLargeError(f"{name} is larger than the limit of {limits.image.max_bytes} bytes")
        size = probe_size(data)  # header only; None: let decode_image say what is wrong
        if size is not None and size[0] * size[1] <= limits.image.max_pixels:
            held.enter_context(pixels.hold(size[0] * size[1]))
        return decode_image(data, limits.image, label=name)

    def parse_names(raw: Optional[str]) -> list[str]:
        if not raw:
            return []
        return [lookup_name(n) for n in raw.replace(",", " ").split()]

    def answer_response(
        session: ChatSession,
        turn: PreparedTurn,
        stream: bool,
        sid: str | None,
        session_lock: threading.Lock | None = None,
        held: contextlib.ExitStack | None = None,
    ) -> Any:
        def done() -> None:
            if session_lock is not None:
                session_lock.release()
            if held is not None:
                held.close()

        if not stream:
            try:
                reply = session.generate(turn)
            finally:
                done()
            out = reply.to_dict()
            out["session_id"] = sid
            return out

        chunks: "queue.Queue[tuple[str, Any]]" = queue.Queue()

        def work() -> None:
            try:
                chunks.put(("done", session.generate(turn, on_text=lambda t: chunks.put(("text", t)))))
            except Exception as exc:  # reported in-band: the 200 header is already sent
                chunks.put(("error", exc))
            finally:
                done()

        # started now, not on first read: the session lock is released even if the client never reads
        threading.Thread(target=work, name="plvm-generate", daemon=True).start()

        def events() -> Iterator[bytes]:
            start = {
                "event": "start",
                "session_id": sid,
                "active_concepts": [a.to_dict() for a in turn.active],
                "new_concepts": turn.new_concepts,
                "identify": turn.identify.to_dict() if turn.identify is not None else None,
            }
            yield (json.dumps(start) + "\n").encode()
            while True:
                kind, payload = chunks.get()
                if kind == "text":
                    yield (json.dumps({"event": "text", "text": payload}) + "\n").encode()
                elif kind == "done":
                    done = payload.to_dict()
                    done.update(event="done", session_id=sid)
                    yield (json.dumps(done) + "\n").encode()
                    return
                else:
                    yield (json.dumps({"event": "error", "detail": _one_line(payload)}) + "\n").encode()
                    return

        return StreamingResponse(events(), media_type="application/x-ndjson")

    # ------------------------------------------------------------------ info
    @api.get("/info", response_model=InfoOut, summary="Model, store and limits")
    def info() -> dict[str, Any]:
        return {
            "version": __version__,
            "model": model_name or getattr(plvm, "preset", "custom"),
            "base_model": identity.base_model,
            "hidden_size": identity.hidden_size,
            "concepts": len(store),
            "auth_required": bool(token),
            "limits": {
                "max_request_bytes": limits.max_request_bytes,
                "max_image_bytes": limits.image.max_bytes,
                "max_image_pixels": limits.image.max_pixels,
                "max_question_chars": limits.max_question_chars,
                "identify_threshold": identifier.threshold,
            },
        }

    # ------------------------------------------------------------------ concepts
    @api.get("/concepts", response_model=list[ConceptOut], summary="List stored concepts")
    def list_concepts() -> list[ConceptOut]:
        return [ConceptOut.of(r) for r in store.list()]

    @api.post("/concepts", response_model=ConceptOut, status_code=201, summary="Create a concept from one photo")
    def add_concept(
        name: str = Form(..., description="letters, digits, '-' or '_'; '<' '>' optional"),
        image: UploadFile = File(..., description="the reference photo"),
        replace: bool = Form(False, description="overwrite an existing concept of this name"),
    ) -> ConceptOut:
        bare = store.check_available(name, replace)
        with contextlib.ExitStack() as held:
            loaded = read_image(image, "reference image", held)
            with model_lock:
                record = store.add_from_image(bare, loaded, encoder, replace=replace, limits=limits.image)
        return ConceptOut.of(record)

    @api.post("/concepts/import", response_model=ConceptOut, status_code=201, summary="Import an exported concept")
    def import_concept(
        file: UploadFile = File(..., description="a .safetensors file from the export endpoint"),
        name: Optional[str] = Form(None, description="store under another name"),
        replace: bool = Form(False),
    ) -> ConceptOut:
        data = file.file.read(limits.max_import_bytes + 1)
        if len(data) > limits.max_import_bytes:
            raise ImageTooLargeError(f"concept file is larger than {limits.max_import_bytes} bytes")
        with tempfile.TemporaryDirectory(prefix="plvm-import-") as tmp:
            path = Path(tmp) / "upload.safetensors"
            path.write_bytes(data)
            record = store.import_file(path, name=name or None, replace=replace, limits=limits.image)
        return ConceptOut.of(record)

    @api.get("/concepts/{name}", response_model=ConceptOut, summary="One concept")
    def get_concept(name: str) -> ConceptOut:
        return ConceptOut.of(store.get(name))

    @api.get(
        "/concepts/{name}/image",
        summary="The concept's original reference image",
        response_class=Response,
        responses={200: {"content": {"image/*": {}}}},
    )
    def concept_image(name: str) -> Response:
        path = store.image_file(name)
        return FileResponse(
            path,
            media_type=MIME_TYPES.get(path.suffix.lstrip("."), "application/octet-stream"),
            headers={"X-Content-Type-Options": "nosniff"},
        )

    @api.patch("/concepts/{name}", response_model=ConceptOut, summary="Rename a concept")
    def rename_concept(name: str, body: RenameIn) -> ConceptOut:
        return ConceptOut.of(store.rename(name, body.name, replace=body.replace))

    @api.delete("/concepts/{name}", status_code=204, response_class=Response, summary="Remove a concept")
    def remove_concept(name: str) -> Response:
        store.remove(name)
        return Response(status_code=204)

    @api.get(
        "/concepts/{name}/export",
        response_class=Response,
        summary="Export as one .safetensors file",
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def export_concept(name: str) -> Response:
        record = store.get(name)
        with tempfile.TemporaryDirectory(prefix="plvm-export-") as tmp:
            data = store.export(record.name, Path(tmp) / "concept.safetensors").read_bytes()
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{record.name}.concept.safetensors"'},
        )

    # ------------------------------------------------------------------ identify
    @api.post("/identify", response_model=IdentifyOut, summary="Rank stored concepts on a photo")
    def identify(
        image: UploadFile = File(...),
        threshold: Optional[float] = Form(None, description="cosine similarity from -1 to 1"),
        top_k: int = Form(10, description="1 to 10000"),
        boxes: Optional[str] = Form(None, description="JSON list of [x0, y0, x1, y1] regions inside the image"),
    ) -> dict[str, Any]:
        threshold = check_threshold(threshold)
        top_k = check_top_k(top_k)
        regions: list[Any] = []
        if boxes:
            try:
                regions = json.loads(boxes)
            except (json.JSONDecodeError, RecursionError):
                regions = None  # type: ignore[assignment]
            if not isinstance(regions, list):
                raise InvalidInputError("boxes must be a JSON list of [x0, y0, x1, y1] lists")
            regions = check_boxes(regions, max_boxes=limits.max_boxes)
        with contextlib.ExitStack() as held:
            loaded = read_image(image, "photo", held)
            with model_lock:
                result = identifier.identify(loaded.image, regions=regions, threshold=threshold, top_k=top_k)
        return result.to_dict()

    # ------------------------------------------------------------------ ask / chat
    @api.post(
        "/ask",
        response_model=AnswerOut,
        summary="One question about a photo (stateless)",
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    def ask(
        question: str = Form(..., description="e.g. 'Is <bo> in this photo?'"),
        image: Optional[UploadFile] = File(None),
        concepts: Optional[str] = Form(None, description="extra stored concepts to use (comma separated)"),
        auto_identify: bool = Form(True, description="also use concepts identified in the photo"),
        visual_prompt: bool = Form(
            False, description="tell the model where identified people are ('<bo> is the person on the left.')"
        ),
        stream: bool = Form(False, description="answer as NDJSON events while generating"),
    ) -> Any:
        session = new_session(auto_identify=auto_identify, visual_prompt=visual_prompt)
        held = contextlib.ExitStack()
        try:
            if image is not None and (image.filename or image.size):
                session.set_image(read_image(image, "photo", held))
            turn = session.prepare(question, parse_names(concepts))
        except BaseException:
            held.close()
            raise
        return answer_response(session, turn, stream, None, held=held)

    @api.post("/chats", status_code=201, summary="Start a chat session")
    def create_chat() -> dict[str, str]:
        return {"session_id": sessions.create()}

    def session_out(sid: str, chat: ChatSession) -> dict[str, Any]:
        return {
            "session_id": sid,
            "active_concepts": [a.to_dict() for a in chat.active_concepts],
            "turns": chat.history(),
        }

    @api.get("/chats/{sid}", response_model=SessionOut, summary="History and active concepts")
    def get_chat(sid: str) -> dict[str, Any]:
        return session_out(sid, sessions.get(sid).chat)

    @api.delete("/chats/{sid}", status_code=204, response_class=Response, summary="End a chat session")
    def delete_chat(sid: str) -> Response:
        sessions.delete(sid)
        return Response(status_code=204)

    @api.post("/chats/{sid}/concepts", response_model=SessionOut, summary="Use a stored concept in this chat")
    def activate(sid: str, body: ActivateIn) -> dict[str, Any]:
        entry = sessions.get(sid)
        with entry.lock:
            entry.chat.use_concept(body.name)
        return session_out(sid, entry.chat)

    @api.post(
        "/chats/{sid}/messages",
        response_model=AnswerOut,
        summary="Send a message (and maybe a photo)",
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    def chat_message(
        sid: str,
        text: str = Form(...),
        image: Optional[UploadFile] = File(None),
        concepts: Optional[str] = Form(None),
        stream: bool = Form(False),
    ) -> Any:
        entry = sessions.get(sid)
        held = contextlib.ExitStack()
        try:
            loaded = read_image(image, "photo", held) if image is not None and (image.filename or image.size) else None
        except BaseException:
            held.close()
            raise
        entry.lock.acquire()  # released when the answer is complete (after streaming, if any)
        try:
            if loaded is not None:
                entry.chat.set_image(loaded)
            turn = entry.chat.prepare(text, parse_names(concepts))
        except BaseException:
            entry.lock.release()
            held.close()
            raise
        return answer_response(entry.chat, turn, stream, sid, session_lock=entry.lock, held=held)

    app.include_router(api)

    # ------------------------------------------------------------------ web page
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.state.plvm = plvm
    app.state.store = store
    app.state.identifier = identifier
    app.state.sessions = sessions
    app.state.pixel_budget = pixels
    return app


__all__ = ["create_app", "status_for"]
