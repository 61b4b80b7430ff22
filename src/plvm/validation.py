"""One validation layer for what users hand to plvm, shared by the CLI, the HTTP API and the Python API.

Every check raises :class:`InvalidInputError` (a :class:`ValueError`) whose ``str`` is one line saying what
is allowed and what was given. The Python API calls these checks at its entry points
(:class:`plvm.chat.ChatSession`, :meth:`plvm.identify.Identifier.identify`, :meth:`plvm.pipeline.PLVM.ask`),
so the CLI (exit status 2, ``error: …``) and the HTTP API (422 ``{"detail": …}``) get the same message; the
CLI also calls them before loading a model, so a typo fails at once.

Concept *names* are checked by :func:`plvm.concept.normalize_name` (syntax and reserved names) and, with a
model at hand, by :func:`check_name_for_tokenizer` (names whose ``<name>`` the tokenizer treats specially).

Weight files and training checkpoints (``--aligner-weights``, ``--projector``, ``plvm export``, the LoRA a
projector names) are read by :func:`read_weights` / :func:`read_checkpoint` here, which every loader uses
(:func:`plvm.models.llava_mini.assembly.read_projector`, :func:`plvm.models.llava_mini.lora.read_lora`,
:func:`plvm.pipeline.read_aligner_weights`, :func:`plvm.models.llava_mini.assembly.export_stage1`): a missing, empty,
truncated, oversized-header or pickle file, a corrupt ``state.json``, integer or non-finite tensors and
missing or mis-shaped tensors (:func:`shape_problems`) raise :class:`WeightFileError` — one line with the path
and what was expected.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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


class WeightFileError(InvalidInputError):
    """A weights file or training checkpoint cannot be used; ``str(err)`` is one line with the path and what
    was expected (unreadable, not safetensors, truncated, non-finite, missing or mis-shaped tensors, …)."""


class MissingWeightFileError(WeightFileError, FileNotFoundError):
    """A weights file, checkpoint directory or a checkpoint's ``state.json`` does not exist."""


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
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or (isinstance(value, float) and (not math.isfinite(value) or value != int(value)))
    ):
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
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or not (0 < float(value) <= hi)
    ):
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
    if (
        isinstance(box, (str, bytes))
        or not isinstance(box, Sequence)
        or len(box) != 4
        or any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in box)
    ):
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


def check_boxes(
    boxes: Iterable[Any] | None, size: tuple[int, int] | None = None, max_boxes: int | None = None
) -> list[Box]:
    boxes = list(boxes or [])
    if max_boxes is not None and len(boxes) > max_boxes:
        raise InvalidInputError(f"at most {max_boxes} boxes per request; got {len(boxes)}")
    return [check_box(b, size) for b in boxes]


# ---------------------------------------------------------------------- questions
def check_question(
    text: Any, max_chars: int | None = None, image_token: str = IMAGE_PLACEHOLDER, special_tokens: Iterable[str] = ()
) -> str:
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
                "'image' field) and ask about it in words; the placeholder is added for you"
            )
    for ch, code in RESERVED_CHARACTERS.items():
        if ch in stripped:
            raise InvalidInputError(
                f"the question contains the character {code}, which plvm reserves for context-token markers; remove it"
            )
    if "\x00" in stripped:
        raise InvalidInputError("the question contains a NUL character; remove it")
    for token in special_tokens:
        if token and token in stripped:
            raise InvalidInputError(
                f"the question contains the model's special token {token}; remove it (concepts are written <name>)"
            )
    return stripped


def unknown_name_message(name: str, known: Sequence[str], label: str = "known") -> str:
    """The one-line error for ``<name>`` that is not a known concept (a context-token marker gets a hint)."""
    listing = ", ".join(f"<{n}>" for n in known) or "none"
    if CONTEXT_TOKEN_NAME.match(name):
        return (
            f"<{name}> is how a concept's context tokens are written (<bo> is <t1>…<tk>.), not a concept; "
            f"ask about a concept by its name; {label} concepts: {listing}"
        )
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
        raise ConceptError(
            f"invalid concept name {name!r}: <{name}> is a special token of this model's tokenizer; choose another name"
        )
    return name


# ---------------------------------------------------------------------- weight files and checkpoints
#: safetensors' own limit on the JSON header (``safetensors`` refuses larger ones).
SAFETENSORS_MAX_HEADER = 100_000_000
CHECKPOINT_RULE = "a training checkpoint directory (checkpoint-NNNNNN/ with state.json and trainable.safetensors)"


def _one_line_text(text: Any, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sniff_safetensors(path: Path, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The parsed header of a safetensors file ``(tensor entries, metadata)``, or a :class:`WeightFileError`
    saying what is wrong with the file (checked before ``safetensors`` sees it, so every message is ours)."""
    expected = f"expected {what}"
    if not path.exists():
        raise MissingWeightFileError(f"{path}: no such file; {expected}")
    if path.is_dir():
        raise WeightFileError(f"{path} is a directory; {expected}")
    if not path.is_file():
        raise WeightFileError(f"{path} is not a regular file; {expected}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if size == 0:
                raise WeightFileError(f"{path} is empty (0 bytes); {expected}")
            if head.startswith(b"PK\x03\x04") or (
                head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
            ):
                raise WeightFileError(
                    f"{path} is a pickle (torch.save) file, not safetensors: plvm never unpickles weights (a pickle "
                    f"can run code); convert it with safetensors.torch.save_file; {expected}"
                )
            if size < 8:
                raise WeightFileError(
                    f"{path} is truncated ({size} bytes; a safetensors file starts with an "
                    f"8-byte header length); {expected}"
                )
            n = int.from_bytes(head, "little")
            if n > SAFETENSORS_MAX_HEADER:
                raise WeightFileError(
                    f"{path} is not a safetensors file or is corrupt: its header length field says "
                    f"{n} bytes, over safetensors' {SAFETENSORS_MAX_HEADER}-byte limit; {expected}"
                )
            if 8 + n > size:
                raise WeightFileError(
                    f"{path} is truncated: its header claims {n} bytes, only {size - 8} follow; {expected}"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise WeightFileError(f"{path} cannot be read ({exc.strerror or exc}); {expected}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise WeightFileError(
            f"{path} is not a safetensors file or is corrupt: its header is not JSON; {expected}"
        ) from None
    if not isinstance(header, dict):
        raise WeightFileError(
            f"{path} is not a safetensors file or is corrupt: its header is not a JSON object; {expected}"
        )
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightFileError(f"{path} has malformed safetensors metadata (not a map of strings); {expected}")
    end = 0
    for key, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not isinstance(entry.get("shape"), list)
        ):
            raise WeightFileError(f"{path} is corrupt: tensor {key!r} has a malformed header entry; {expected}")
        end = max(end, offsets[1])
    if 8 + n + end > size:
        raise WeightFileError(
            f"{path} is truncated: its tensors need {8 + n + end} bytes, the file has {size}; {expected}"
        )
    return header, metadata


def read_weights_metadata(path: str | Path, what: str) -> dict[str, str]:
    """The metadata of a safetensors weights file (header only; the file checked as :func:`read_weights`
    does, without its tensors)."""
    return _sniff_safetensors(Path(path), what)[1]


def read_weights(path: str | Path, what: str, check_values: bool = True) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors and metadata of a safetensors weights file, refused with a one-line :class:`WeightFileError`
    (path + ``what`` was expected) when it is missing, a directory, empty, truncated, has an oversized or
    malformed header, is a pickle, holds no tensors, or (``check_values``) holds a non-floating-point or a
    non-finite (NaN/±inf) tensor."""
    from safetensors import safe_open

    path = Path(path)
    _, metadata = _sniff_safetensors(path, what)
    tensors: dict[str, Any] = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except Exception as exc:  # safetensors' SafetensorError and friends: the file is not what it claims
        raise WeightFileError(
            f"{path} is not a readable safetensors file ({_one_line_text(exc)}); expected {what}"
        ) from None
    if not tensors:
        raise WeightFileError(f"{path} holds no tensors; expected {what}")
    if check_values:
        check_tensor_values(path, tensors, what)
    return tensors, metadata


def check_tensor_values(path: str | Path, tensors: Mapping[str, Any], what: str) -> None:
    """Every tensor floating point and finite (a NaN weight gives NaN answers, not an error)."""
    import torch

    for key, tensor in tensors.items():
        if not torch.is_floating_point(tensor):
            raise WeightFileError(
                f"tensor {key} of {path} is {str(tensor.dtype).replace('torch.', '')}; "
                f"expected floating-point weights ({what})"
            )
        if tensor.numel() == 0 or math.isfinite(float(tensor.sum(dtype=torch.float64))):
            continue  # one pass, no copy: a NaN or ±inf anywhere makes the float64 sum non-finite
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise WeightFileError(
                f"tensor {key} of {path} has {bad} non-finite value{'s' if bad > 1 else ''} "
                f"(NaN or ±inf) of {tensor.numel()}; expected finite weights ({what})"
            )


def shape_problems(
    got: Mapping[str, Sequence[int]], expected: Mapping[str, Sequence[int]], optional: Iterable[str] = ()
) -> list[str]:
    """``missing NAME SHAPE`` / ``unexpected NAME SHAPE`` / ``NAME: file has X, model needs Y`` for every tensor
    of ``got`` (name → shape) that does not fit ``expected``; names in ``optional`` may be missing."""
    got = {k: tuple(v) for k, v in got.items()}
    expected = {k: tuple(v) for k, v in expected.items()}
    optional = set(optional)
    problems = [f"missing {n} {s}" for n, s in expected.items() if n not in got and n not in optional]
    problems += [f"unexpected {n} {s}" for n, s in got.items() if n not in expected]
    problems += [f"{n}: file has {got[n]}, model needs {s}" for n, s in expected.items() if n in got and got[n] != s]
    return problems


def join_problems(problems: Sequence[str], at_most: int = 6) -> str:
    text = "; ".join(problems[:at_most])
    return text + (f"; and {len(problems) - at_most} more" if len(problems) > at_most else "")


def read_checkpoint_state(checkpoint: str | Path) -> dict[str, Any]:
    """``state.json`` of a training checkpoint directory (:func:`plvm.training.loop.save_checkpoint`), checked:
    an object with a whole-number ``step``, a ``task`` object and (if present) a ``loop`` object."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise MissingWeightFileError(f"{checkpoint}: no such checkpoint directory; expected {CHECKPOINT_RULE}")
    if not checkpoint.is_dir():
        raise WeightFileError(f"{checkpoint} is a file, not a checkpoint directory; expected {CHECKPOINT_RULE}")
    path = checkpoint / "state.json"
    if not path.is_file():
        raise MissingWeightFileError(
            f"{path} is missing: {checkpoint} is not a complete training checkpoint; expected {CHECKPOINT_RULE}"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WeightFileError(f"{path} cannot be read ({exc.strerror or exc}); expected {CHECKPOINT_RULE}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightFileError(
            f"{path} is corrupt (not JSON: {_one_line_text(exc, 80)}); expected the state.json "
            "plvm train writes (use an intact checkpoint, e.g. an earlier checkpoint-NNNNNN)"
        ) from None
    problems = []
    if not isinstance(state, dict):
        problems.append("it is not a JSON object")
    else:
        if isinstance(state.get("step"), bool) or not isinstance(state.get("step"), int) or state["step"] < 0:
            problems.append("no whole-number 'step'")
        if not isinstance(state.get("task"), dict):
            problems.append("no 'task' object")
        if not isinstance(state.get("loop", {}), dict):
            problems.append("'loop' is not an object")
    if problems:
        raise WeightFileError(
            f"{path} is not a training checkpoint's state ({', '.join(problems)}); expected "
            "the state.json plvm train writes (step, task, loop)"
        )
    return state


def read_checkpoint(
    checkpoint: str | Path, what: str = "the checkpoint's trained weights"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, tensors)`` of a training checkpoint directory: :func:`read_checkpoint_state` and
    :func:`read_weights` of its ``trainable.safetensors``."""
    state = read_checkpoint_state(checkpoint)
    tensors, _ = read_weights(Path(checkpoint) / "trainable.safetensors", what)
    return state, tensors


__all__ = [
    "BOX_RULE",
    "CHECKPOINT_RULE",
    "MissingWeightFileError",
    "WeightFileError",
    "check_tensor_values",
    "join_problems",
    "read_checkpoint",
    "read_checkpoint_state",
    "read_weights",
    "read_weights_metadata",
    "shape_problems",
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
