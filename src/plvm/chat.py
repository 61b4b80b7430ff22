"""Personalized chat over the concept store: the session engine and the ``plvm chat`` REPL.

:class:`ChatSession` is the UI-free engine shared by the REPL, ``plvm ask`` and the HTTP API. It keeps one
:class:`~plvm.conversation.Conversation` (so the dialogue keeps its history) and decides which concepts
are *active*:

* ``named``      — written as ``<name>`` in a question and loaded from the store on the fly;
* ``added``      — created mid-dialogue from a reference image (``/add``), stored and activated;
* ``requested``  — activated explicitly (``/use``, the API's ``concepts`` field);
* ``identified`` — found in a new photo by :class:`~plvm.identify.Identifier` (so "who is in this
  photo?" and captions can use concepts the user did not name).

A concept activated mid-dialogue is introduced at the start of the next user turn (§3.1's prompt), so
earlier turns stay as they were. An unknown ``<name>`` raises :class:`~plvm.conversation.UnknownConceptError`
listing the active and stored concepts; an empty question raises :class:`EmptyQuestionError`.

:func:`run_repl` is the line-based REPL (``/add``, ``/use``, ``/image``, ``/identify``, ``/concepts``,
``/history``, ``/help``, ``/quit``) with streamed answers.
"""

from __future__ import annotations

import shlex
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from PIL import Image

from .concept import ConceptError, normalize_name
from .conversation import Conversation, UnknownConceptError, referenced_names
from .identify import Identifier, IdentifyResult
from .identify import visual_prompt as make_visual_prompt
from .images import DEFAULT_LIMITS, ImageError, ImageLimits, ImageSource, LoadedImage, load_image
from .store import ConceptRecord, ConceptStore, StoreError
from .validation import (
    EmptyQuestionError,
    InvalidInputError,
    QuestionTooLongError,
    check_max_new_tokens,
    check_question,
    special_token_texts,
    unknown_name_message,
)

MAX_AUTO_CONCEPTS = 3


@dataclass(frozen=True)
class ActiveConcept:
    """A concept active in a conversation and why (``named`` | ``added`` | ``requested`` | ``identified``)."""

    name: str
    source: str
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "token": f"<{self.name}>",
            "source": self.source,
            "score": None if self.score is None else round(self.score, 4),
        }


@dataclass
class PreparedTurn:
    """A validated user turn, ready for generation (see :meth:`ChatSession.prepare`)."""

    question: str
    active: list[ActiveConcept]
    new_concepts: list[str]
    identify: IdentifyResult | None
    had_image: bool
    _snapshot: Conversation = field(repr=False, default=None)  # type: ignore[assignment]
    _active_snapshot: dict[str, ActiveConcept] = field(repr=False, default_factory=dict)


@dataclass
class Reply:
    """The assistant's answer and the concepts that were active for it."""

    text: str
    active: list[ActiveConcept]
    new_concepts: list[str]
    identify: IdentifyResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "active_concepts": [a.to_dict() for a in self.active],
            "new_concepts": list(self.new_concepts),
            "identify": self.identify.to_dict() if self.identify is not None else None,
        }


class ChatSession:
    """A personalized multi-turn dialogue backed by a concept store.

    Args:
        plvm: The :class:`plvm.pipeline.PLVM` (its LVLM answers).
        store: The concept store (bound to the PLVM's base model).
        identifier: Optional; when given and ``auto_identify`` is on, each new photo is identified and the
            concepts found (at most ``max_auto`` of them) become active.
        visual_prompt: Prefix the question with a set-of-mark style description of where identified
            concepts are ("<bo> is the person on the left.", :func:`plvm.identify.visual_prompt`).
        encoder: The :class:`plvm.identify.ReferenceEncoder` used by :meth:`add_concept` (defaults to the
            identifier's).
        max_new_tokens: Answer length limit.
        limits: Image limits for files loaded by path.
        model_lock: A lock held while the model runs (share one between sessions of one model).
    """

    def __init__(
        self,
        plvm: Any,
        store: ConceptStore,
        identifier: Identifier | None = None,
        encoder: Any = None,
        auto_identify: bool = True,
        max_auto: int = MAX_AUTO_CONCEPTS,
        max_new_tokens: int = 64,
        max_question_chars: int = 4000,
        limits: ImageLimits = DEFAULT_LIMITS,
        model_lock: threading.Lock | None = None,
        visual_prompt: bool = False,
    ):
        self.plvm = plvm
        self.store = store
        self.identifier = identifier
        self.encoder = encoder if encoder is not None else (identifier.encoder if identifier is not None else None)
        self.auto_identify = auto_identify
        self.max_auto = max_auto
        self.max_new_tokens = check_max_new_tokens(max_new_tokens)
        self.max_question_chars = max_question_chars
        self.limits = limits
        self.model_lock = model_lock or threading.Lock()
        self.visual_prompt = visual_prompt
        self.conversation = Conversation()
        self.active: dict[str, ActiveConcept] = {}
        self.pending_images: list[Image.Image] = []
        self.pending_identify: IdentifyResult | None = None
        self.image_label: str | None = None
        self._special_tokens: list[str] | None = None

    # ------------------------------------------------------------------ concepts
    @property
    def active_concepts(self) -> list[ActiveConcept]:
        return list(self.active.values())

    def _activate(self, name: str, source: str, score: float | None = None, replace: bool = False) -> None:
        concept = self.store.load(name)
        self.conversation.add_concept(concept, replace=replace or concept.name in self.active)
        self.active[concept.name] = ActiveConcept(concept.name, source, score)

    def use_concept(self, name: str) -> ActiveConcept:
        """Activate a stored concept (introduced at the next user turn)."""
        bare = normalize_name(name)
        if bare not in self.active:
            self._activate(self.store.get(bare).name, "requested")
        return self.active[self.store.get(bare).name]

    def add_concept(self, name: str, source: ImageSource | LoadedImage, replace: bool = False) -> ConceptRecord:
        """Create a concept from a reference image (stored once), and activate it in this conversation."""
        if self.encoder is None:
            raise StoreError("this session has no reference encoder to make concepts with")
        with self.model_lock:
            record = self.store.add_from_image(name, source, self.encoder, replace=replace, limits=self.limits)
        self._activate(record.name, "added", replace=True)
        return record

    # ------------------------------------------------------------------ images
    def set_image(
        self, source: ImageSource | LoadedImage | Image.Image, label: str | None = None
    ) -> IdentifyResult | None:
        """Attach a photo to the next question; identify it when enabled (found concepts become active)."""
        if isinstance(source, Image.Image):
            image = source.convert("RGB")
        else:
            loaded = source if isinstance(source, LoadedImage) else load_image(source, self.limits)
            image = loaded.image
        self.pending_images = [image]
        self.image_label = label or (str(source) if isinstance(source, (str, Path)) else "image")
        self.pending_identify = None
        if self.auto_identify and self.identifier is not None and len(self.store):
            with self.model_lock:
                self.pending_identify = self.identifier.identify(image)
        return self.pending_identify

    def identify(self, image: Image.Image | None = None) -> IdentifyResult:
        """Identify concepts in ``image`` (default: the current photo)."""
        if self.identifier is None:
            raise StoreError("identification is not available in this session")
        image = image if image is not None else (self.pending_images[-1] if self.pending_images else self.last_image)
        if image is None:
            raise ImageError("no photo yet: attach one first (/image PATH)")
        with self.model_lock:
            return self.identifier.identify(image)

    @property
    def last_image(self) -> Image.Image | None:
        images = self.conversation.images
        return images[-1] if images else None

    # ------------------------------------------------------------------ turns
    def known_names(self) -> list[str]:
        return list(dict.fromkeys([*self.active, *self.store.names()]))

    def prepare(self, question: str, concepts: Sequence[str] = ()) -> PreparedTurn:
        """Validate a question and add it as a user turn (undone by :meth:`rollback` if generation fails).

        Raises:
            EmptyQuestionError: blank question.
            QuestionTooLongError: longer than ``max_question_chars``.
            InvalidInputError: an image placeholder, a context-token marker character or a special token
                of the model written in the question (:func:`plvm.validation.check_question`).
            UnknownConceptError: a ``<name>`` that is neither active nor stored (lists the known ones).
        """
        lvlm = getattr(self.plvm, "lvlm", None)
        if self._special_tokens is None:
            self._special_tokens = special_token_texts(getattr(lvlm, "tokenizer", None))
        text = check_question(
            question or "",
            self.max_question_chars,
            image_token=getattr(lvlm, "image_token", None) or "<image>",
            special_tokens=self._special_tokens,
        )
        snapshot, active_snapshot = self.conversation.copy(), dict(self.active)
        new: list[str] = []
        try:
            wanted = [normalize_name(c) for c in concepts]
            named = [n for n in referenced_names(text) if n not in self.active]
            stored = set(self.store.names())
            unknown = [n for n in [*wanted, *named] if n not in self.active and n not in stored]
            if unknown:
                raise UnknownConceptError(unknown_name_message(unknown[0], self.known_names()))
            for n in wanted:
                if n not in self.active:
                    self._activate(n, "requested")
                    new.append(n)
            for n in dict.fromkeys(named):
                if n not in self.active:
                    self._activate(n, "named")
                    new.append(n)
            identify = self.pending_identify
            if identify is not None:
                for match in identify.present[: self.max_auto]:
                    if match.name not in self.active and match.name in stored:
                        self._activate(match.name, "identified", match.score)
                        new.append(match.name)
            had_image = bool(self.pending_images)
            hint = ""
            if self.visual_prompt and identify is not None and self.pending_images:
                hint = make_visual_prompt(identify, self.pending_images[-1].width, names=list(self.active))
            self.conversation.user(f"{hint}\n{text}" if hint else text, image=self.pending_images or None)
        except BaseException:
            self.conversation, self.active = snapshot, active_snapshot
            raise
        self.pending_images, self.pending_identify = [], None
        return PreparedTurn(text, self.active_concepts, new, identify, had_image, snapshot, active_snapshot)

    def rollback(self, turn: PreparedTurn) -> None:
        """Undo a prepared turn (generation failed or was abandoned)."""
        self.conversation, self.active = turn._snapshot, turn._active_snapshot

    def generate(self, turn: PreparedTurn, on_text: Callable[[str], None] | None = None) -> Reply:
        """Run the model on a prepared turn, streaming text to ``on_text``; the answer joins the history."""
        try:
            with self.model_lock:
                result = self.plvm.lvlm.generate(self.conversation, max_new_tokens=self.max_new_tokens, on_text=on_text)
        except BaseException:
            self.rollback(turn)
            raise
        self.conversation.assistant(result.text)
        return Reply(result.text, turn.active, turn.new_concepts, turn.identify)

    def ask(self, question: str, on_text: Callable[[str], None] | None = None, concepts: Sequence[str] = ()) -> Reply:
        """:meth:`prepare` + :meth:`generate`."""
        return self.generate(self.prepare(question, concepts), on_text)

    def history(self) -> list[dict[str, Any]]:
        """The turns so far: role, text, number of images, concepts introduced."""
        return [
            {"role": t.role, "text": t.text, "images": len(t.images), "introduces": list(t.introduces)}
            for t in self.conversation.turns
        ]


# ---------------------------------------------------------------------- REPL
HELP = """commands:
  /add NAME IMAGE [--replace]   make a concept from a reference photo (stored) and use it here
  /use NAME                     use a stored concept in this conversation
  /image PATH                   attach a new photo to the next question (identifies who is in it)
  /identify                     rank stored concepts on the current photo
  /concepts                     active and stored concepts
  /history                      the conversation so far
  /help                         this help
  /quit                         leave (also Ctrl-D)
anything else is a question; write concepts as <name>, e.g. Is <bo> in this photo?"""

USER_ERRORS = (ImageError, ConceptError, StoreError, EmptyQuestionError, QuestionTooLongError, ValueError, OSError)


def format_identify(result: IdentifyResult, limit: int = 5) -> str:
    if not result.matches:
        return "no stored concepts to compare with"
    parts = []
    for m in result.matches[:limit]:
        where = "" if m.box is None else f" @{m.source}{list(m.box)}"
        if m.score is None:  # a person concept and no face in the photo (or no usable face backend)
            parts.append(f"<{m.name}> — ({m.reason})")
            continue
        conf = "" if m.confidence is None else f" ({m.confidence:.0%})"
        parts.append(f"<{m.name}> {m.score:.3f}{conf}{' ✓' if m.present else ''}{where}")
    return f"identify (threshold {result.threshold:g}): " + ", ".join(parts)


def format_active(active: Iterable[ActiveConcept]) -> str:
    items = [f"<{a.name}> ({a.source}{'' if a.score is None else f' {a.score:.2f}'})" for a in active]
    return ", ".join(items) or "none"


def run_repl(
    session: ChatSession,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    banner: str | None = None,
) -> int:
    """A line-oriented chat loop; returns the number of answered questions."""

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    if banner:
        say(banner)
    say("type /help for commands, /quit to leave")
    answered = 0
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            say()
            break
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                if _command(session, line, say) == "quit":
                    break
                continue
            turn = session.prepare(line)
            if turn.new_concepts:
                say("using " + format_active(a for a in turn.active if a.name in turn.new_concepts))
            out.write("plvm> ")
            out.flush()

            def stream(chunk: str) -> None:
                out.write(chunk)
                out.flush()

            session.generate(turn, on_text=stream)
            say()
            answered += 1
        except USER_ERRORS as exc:
            say(f"error: {' '.join(str(exc).split())}")
    return answered


def _command(session: ChatSession, line: str, say: Callable[[str], None]) -> str | None:
    try:
        parts = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot parse command: {exc}") from None
    cmd, args = parts[0].lower(), parts[1:]
    if cmd in ("/quit", "/exit", "/q"):
        return "quit"
    if cmd == "/help":
        say(HELP)
    elif cmd == "/add":
        replace = "--replace" in args
        args = [a for a in args if a != "--replace"]
        if len(args) != 2:
            raise ValueError("usage: /add NAME IMAGE [--replace]")
        record = session.add_concept(args[0], args[1], replace=replace)
        say(f"added <{record.name}> from {args[1]}; it will be introduced with your next question")
    elif cmd == "/use":
        if len(args) != 1:
            raise ValueError("usage: /use NAME")
        active = session.use_concept(args[0])
        say(f"using <{active.name}>")
    elif cmd == "/image":
        if len(args) != 1:
            raise ValueError("usage: /image PATH")
        result = session.set_image(args[0], label=args[0])
        say(f"image: {args[0]} (attached to your next question)")
        if result is not None:
            say(format_identify(result))
    elif cmd == "/identify":
        say(format_identify(session.identify()))
    elif cmd == "/concepts":
        say("active: " + format_active(session.active_concepts))
        names = session.store.names()
        say(f"stored ({len(names)}): " + (", ".join(f"<{n}>" for n in names) or "none"))
    elif cmd == "/history":
        for t in session.history():
            extra = f" [+{t['images']} image]" if t["images"] else ""
            say(f"{t['role']}: {t['text']}{extra}")
    else:
        raise ValueError(f"unknown command {cmd}; type /help")
    return None


__all__ = [
    "ActiveConcept",
    "ChatSession",
    "EmptyQuestionError",
    "InvalidInputError",
    "PreparedTurn",
    "QuestionTooLongError",
    "Reply",
    "format_active",
    "format_identify",
    "run_repl",
]
