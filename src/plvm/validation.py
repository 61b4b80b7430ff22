"""One validation layer for what users hand to plvm, shared by the CLI, the HTTP API and the Python API.

Every check raises :class:`InvalidInputError` (a :class:`ValueError`) whose ``str`` is one line saying what
is allowed and what was given. The Python API calls these checks at its entry points
(:class:`plvm.chat.ChatSession`, :meth:`plvm.identify.Identifier.identify`, :meth:`plvm.pipeline.PLVM.ask`),
so the CLI (exit status 2, ``error: …``) and the HTTP API (422 ``{"detail": …}``) get the same message; the
CLI also calls them before loading a model, so a typo fails at once.

Concept *names* are checked by :func:`plvm.concept.normalize_name` (syntax and reserved names) and, with a
model at hand, by :func:`check_name_for_tokenizer` (names whose ``<name>`` the tokenizer treats specially).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Iterable, Sequence

from .concept import CONTEXT_TOKEN_NAME, ConceptError

#: Longest answer anyone may ask for (tokens).
MAX_NEW_TOKENS = 2048
#: Most matches identify may return.
MAX_TOP_K = 10_000
#: Default image placeholder of the chat templates plvm runs (the model's own is checked when known).
IMAGE_PLACEHOLDER = "<image>"
#: Private-use characters :mod:`plvm.conversation` uses to mark a concept's context tokens in a prompt.
RESERVED_CHARACTERS = {"\ue000": "U+E000", "\ue001": "U+E001"}

Box = tuple[float, float, float, float]


class InvalidInputError(ValueError):
    """An input is out of range or malformed; ``str(err)`` is one line saying what is allowed."""


class EmptyQuestionError(InvalidInputError):
    """The question is empty (or only whitespace)."""


class QuestionTooLongError(InvalidInputError):
    """The question exceeds the configured maximum length."""


def _given(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------- numbers
def check_int(value: Any, name: str, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]`` (bools, floats with a fraction and non-numbers are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
            isinstance(value, float) and (not math.isfinite(value) or value != int(value))):
        raise InvalidInputError(f"{name} must be a whole number from {lo} to {hi}; got {_given(value)}")
    if not lo <= int(value) <= hi:
        raise InvalidInputError(f"{name} must be a whole number from {lo} to {hi}; got {int(value)}")
    return int(value)


def check_float(value: Any, name: str, lo: float, hi: float) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (NaN and ±inf refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InvalidInputError(f"{name} must be a finite number from {lo:g} to {hi:g}; got {_given(value)}")
    if not lo <= float(value) <= hi:
        raise InvalidInputError(f"{name} must be a finite number from {lo:g} to {hi:g}; got {float(value):g}")
    return float(value)


def check_finite(value: Any, name: str) -> float:
    """Any finite number (NaN and ±inf refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InvalidInputError(f"{name} must be a finite number; got {_given(value)}")
    return float(value)


def check_max_new_tokens(value: Any, limit: int = MAX_NEW_TOKENS) -> int:
    return check_int(value, "max_new_tokens (--max-new-tokens)", 1, limit)


def check_threshold(value: Any, name: str = "threshold (--threshold)") -> float | None:
    """A cosine-similarity threshold in ``[-1, 1]``; ``None`` (the default threshold) passes."""
    return None if value is None else check_float(value, f"{name}, a cosine similarity,", -1.0, 1.0)


def check_top_k(value: Any) -> int | None:
    """How many matches to return, 1 to :data:`MAX_TOP_K`; ``None`` (all) passes."""
    return None if value is None else check_int(value, "top_k (--top-k)", 1, MAX_TOP_K)


def check_positive(value: Any, name: str, hi: float = 1e9) -> float:
    """A finite number above 0 (and at most ``hi``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) or not (
            0 < float(value) <= hi):
        raise InvalidInputError(f"{name} must be a finite number above 0 and at most {hi:g}; got {_given(value)}")
    return float(value)


# ---------------------------------------------------------------------- boxes
BOX_RULE = "x0,y0,x1,y1 in pixels with 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height, at least 2 pixels each way"


def parse_box(text: str) -> Box:
    """``"x0,y0,x1,y1"`` (the CLI's ``--box``) → four finite numbers (range checked by :func:`check_box`)."""
    parts = str(text).replace(" ", "").split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise InvalidInputError(f"a box is {BOX_RULE}; got {_given(text)}")
    return check_box(values)


def check_box(box: Any, size: tuple[int, int] | None = None) -> Box:
    """A region ``(x0, y0, x1, y1)``: four finite numbers, ``x0 < x1`` and ``y0 < y1`` (at least 2 px each
    way), inside the image when ``size = (width, height)`` is given."""
    if isinstance(box, (str, bytes)) or not isinstance(box, Sequence) or len(box) != 4 or any(
            isinstance(v, bool) or not isinstance(v, numbers.Real) for v in box):
        raise InvalidInputError(f"a box is {BOX_RULE}; got {_given(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise InvalidInputError(f"box {_given(list(box))} has a non-finite coordinate; a box is {BOX_RULE}")
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise InvalidInputError(f"box {[x0, y0, x1, y1]} is empty, inverted or under 2 pixels; a box is {BOX_RULE}")
    if size is not None:
        w, h = size
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise InvalidInputError(f"box {[x0, y0, x1, y1]} is not inside the {w}x{h} image; a box is {BOX_RULE}")
    return (x0, y0, x1, y1)


def check_boxes(boxes: Iterable[Any] | None, size: tuple[int, int] | None = None,
                max_boxes: int | None = None) -> list[Box]:
    boxes = list(boxes or [])
    if max_boxes is not None and len(boxes) > max_boxes:
        raise InvalidInputError(f"at most {max_boxes} boxes per request; got {len(boxes)}")
    return [check_box(b, size) for b in boxes]


# ---------------------------------------------------------------------- questions
def check_question(text: Any, max_chars: int | None = None, image_token: str = IMAGE_PLACEHOLDER,
                   special_tokens: Iterable[str] = ()) -> str:
    """A question as plvm will send it: not empty, at most ``max_chars``, no image placeholder (the photo is
    attached separately, so a placeholder in the text never has an image of its own), none of plvm's
    context-token marker characters, and none of the tokenizer's ``special_tokens`` written out."""
    if not isinstance(text, str):
        raise InvalidInputError(f"the question must be text; got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise EmptyQuestionError("empty question: type a question, e.g. 'Is <bo> in this photo?'")
    if max_chars is not None and len(stripped) > max_chars:
        raise QuestionTooLongError(f"question is {len(stripped)} characters; the limit is {max_chars}")
    for token in dict.fromkeys([image_token, IMAGE_PLACEHOLDER]):
        if token and token in stripped:
            raise InvalidInputError(
                f"the question contains the image placeholder {token}: attach the photo instead (--image, the "
                "'image' field) and ask about it in words; the placeholder is added for you")
    for ch, code in RESERVED_CHARACTERS.items():
        if ch in stripped:
            raise InvalidInputError(f"the question contains the character {code}, which plvm reserves for "
                                    "context-token markers; remove it")
    if "\x00" in stripped:
        raise InvalidInputError("the question contains a NUL character; remove it")
    for token in special_tokens:
        if token and token in stripped:
            raise InvalidInputError(f"the question contains the model's special token {token}; remove it "
                                    "(concepts are written <name>)")
    return stripped


def unknown_name_message(name: str, known: Sequence[str], label: str = "known") -> str:
    """The one-line error for ``<name>`` that is not a known concept (a context-token marker gets a hint)."""
    listing = ", ".join(f"<{n}>" for n in known) or "none"
    if CONTEXT_TOKEN_NAME.match(name):
        return (f"<{name}> is how a concept's context tokens are written (<bo> is <t1>…<tk>.), not a concept; "
                f"ask about a concept by its name; {label} concepts: {listing}")
    return f"unknown concept <{name}>; {label} concepts: {listing}"


# ---------------------------------------------------------------------- tokenizer
def special_token_texts(tokenizer: Any) -> list[str]:
    """The texts the tokenizer turns into special/added tokens (``<|im_end|>``, ``<s>``, ``<image>``, …)."""
    texts: set[str] = set()
    for attr in ("all_special_tokens", "additional_special_tokens"):
        with contextlib.suppress(Exception):
            texts.update(str(t) for t in (getattr(tokenizer, attr, None) or []))
    with contextlib.suppress(Exception):
        texts.update(str(t) for t in (tokenizer.get_added_vocab() or {}))
    return sorted(t for t in texts if t and not t.isspace())


def check_name_for_tokenizer(name: str, tokenizer: Any) -> str:
    """Refuse a concept name whose ``<name>`` the model's tokenizer treats as a special token."""
    taken = {t.lower() for t in special_token_texts(tokenizer)}
    if f"<{name}>".lower() in taken:
        raise ConceptError(f"invalid concept name {name!r}: <{name}> is a special token of this model's tokenizer; "
                           "choose another name")
    return name


__all__ = [
    "BOX_RULE",
    "EmptyQuestionError",
    "IMAGE_PLACEHOLDER",
    "InvalidInputError",
    "MAX_NEW_TOKENS",
    "MAX_TOP_K",
    "QuestionTooLongError",
    "check_box",
    "check_boxes",
    "check_finite",
    "check_float",
    "check_int",
    "check_max_new_tokens",
    "check_name_for_tokenizer",
    "check_positive",
    "check_question",
    "check_threshold",
    "check_top_k",
    "parse_box",
    "special_token_texts",
    "unknown_name_message",
]
