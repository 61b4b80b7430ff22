"""The ``ConceptEmbedding`` record: what the Aligner makes of one reference image.

A concept is three tensors plus metadata:

* ``e_word``   ``[d_llm]``    — input embedding of the name token ``<name>``;
* ``e_weight`` ``[d_llm]``    — its extra LM-head row (an extra output logit);
* ``context``  ``[k, d_llm]`` — the context tokens ``<t1>…<tk>`` of ``<name> is <t1>…<tk>.``

It is saved as one ``.safetensors`` file whose header metadata holds the JSON fields (name, base model,
hidden size, k, format version), so a concept made for one base model is refused by another.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT_VERSION = "1"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ConceptError(ValueError):
    """A concept name, file or embedding is invalid."""


#: ``metadata`` key of the base revision a concept was made on
#: (see :func:`plvm.models.llava_mini.assembly.base_revision`).
BASE_REVISION_KEY = "base_revision"


class IncompatibleConceptError(ConceptError):
    """A concept was made for another base model or hidden size."""


#: ``<t1>``, ``<t2>``, … stand for a concept's context tokens in the paper's prompt (``<bo> is <t1>…<tk>.``).
CONTEXT_TOKEN_NAME = re.compile(r"^t[0-9]+$", re.IGNORECASE)
#: Names whose ``<name>`` is the image placeholder or a special token of common tokenizers (Llama/Mistral
#: ``<s>``, ``<unk>``, BERT-style ``<mask>``/``<cls>``/``<sep>``, ``<pad>``, ``<eos>``/``<bos>``, reasoning
#: models' ``<think>``); the model's own tokenizer is checked too (:func:`plvm.validation.check_name_for_tokenizer`).
RESERVED_NAMES = frozenset(
    {"image", "video", "audio", "s", "unk", "pad", "eos", "bos", "mask", "cls", "sep", "think", "endoftext"}
)
NAME_RULE = (
    "1-64 letters, digits, '-' or '_' with at least one letter or digit, not 'image', 't1', 't2', … "
    "(context-token markers) or a tokenizer's special token (e.g. <bo> or my-dog_2)"
)


def _bare(raw: str) -> str:
    if not isinstance(raw, str):
        raise ConceptError(f"concept name must be a string, got {type(raw).__name__}")
    name = raw.strip(" ")  # spaces around a name are forgiven; a newline or tab is refused below
    if name.startswith("<") and name.endswith(">"):
        name = name[1:-1]
    return name


def lookup_name(raw: str) -> str:
    """The bare name of an *existing* concept (``bo`` or ``<bo>``): the syntax check of
    :func:`normalize_name` without the reserved-name rules, so a concept stored before a name became
    reserved can still be shown, renamed and removed."""
    name = _bare(raw)
    if not NAME_PATTERN.fullmatch(name):
        raise ConceptError(f"invalid concept name {raw!r}: use {NAME_RULE}")
    return name


def normalize_name(raw: str) -> str:
    """Validate a concept name, accepting ``bo`` or ``<bo>``; returns the bare name ``bo``.

    Names are 1–64 characters of letters, digits, ``-`` and ``_``, with at least one letter or digit;
    ``image``, the context-token markers ``t1``, ``t2``, … and :data:`RESERVED_NAMES` are refused (they
    would collide with the prompt's own syntax). Surrounding spaces are dropped; any other whitespace
    (a trailing newline or tab) is refused, never silently removed.
    """
    name = _bare(raw)
    if not NAME_PATTERN.fullmatch(name):
        if name.strip() != name or any(ch.isspace() for ch in name):
            raise ConceptError(
                f"invalid concept name {raw!r}: it contains whitespace (a newline or tab?); use {NAME_RULE}"
            )
        raise ConceptError(f"invalid concept name {raw!r}: use {NAME_RULE}")
    if not any(ch.isalnum() for ch in name):
        raise ConceptError(f"invalid concept name {raw!r}: it needs a letter or digit; use {NAME_RULE}")
    if name.lower() == "image":
        raise ConceptError("'image' is reserved for the image placeholder <image>")
    if CONTEXT_TOKEN_NAME.match(name):
        raise ConceptError(
            f"invalid concept name {raw!r}: <{name}> is how context tokens are written "
            f"(<bo> is <t1>…<tk>.); use {NAME_RULE}"
        )
    if name.lower() in RESERVED_NAMES:
        raise ConceptError(
            f"invalid concept name {raw!r}: <{name}> is a special token of common tokenizers; use {NAME_RULE}"
        )
    return name


def read_concept_file(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Header and tensors of a concept ``.safetensors`` file, after checking its format.

    Raises :class:`ConceptError` for unreadable files, foreign files, other format versions and missing
    tensors (``FileNotFoundError`` passes through). Extra tensors (e.g. a store's export) are returned too.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ConceptError(f"{path} is not a readable concept file: {' '.join(str(exc).split())[:200]}") from None
    if header.get("format") != "plvm.concept":
        raise ConceptError(f"{path} is not a plvm concept file (missing format header)")
    if header.get("format_version") != FORMAT_VERSION:
        raise ConceptError(f"{path}: unsupported concept format version {header.get('format_version')!r}")
    missing = {"e_word", "e_weight", "context"} - set(tensors)
    if missing:
        raise ConceptError(f"{path}: missing tensors {sorted(missing)}")
    return header, tensors


@dataclass
class ConceptEmbedding:
    """One personalized concept for one base model.

    Attributes:
        name: Bare name (``bo`` for ``<bo>``).
        e_word: ``[d_llm]`` input embedding of the name token.
        e_weight: ``[d_llm]`` LM-head row of the name token.
        context: ``[k, d_llm]`` context embeddings.
        base_model: Identifier of the base LVLM the embeddings belong to.
        metadata: Free-form JSON-serialisable extras (e.g. source image hash, face embedding info).
    """

    name: str
    e_word: torch.Tensor
    e_weight: torch.Tensor
    context: torch.Tensor
    base_model: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = normalize_name(self.name)
        d = self.e_word.shape[-1]
        if self.e_word.shape != (d,) or self.e_weight.shape != (d,):
            raise ConceptError(
                f"e_word / e_weight must be [d_llm]; got {tuple(self.e_word.shape)} / {tuple(self.e_weight.shape)}"
            )
        if self.context.ndim != 2 or self.context.shape[1] != d:
            raise ConceptError(f"context must be [k, {d}]; got {tuple(self.context.shape)}")
        for label, t in (("e_word", self.e_word), ("e_weight", self.e_weight), ("context", self.context)):
            if not torch.isfinite(t).all():
                raise ConceptError(f"concept {self.name!r}: {label} has non-finite values")

    @property
    def hidden_size(self) -> int:
        return int(self.e_word.shape[0])

    @property
    def num_context_tokens(self) -> int:
        return int(self.context.shape[0])

    @property
    def token(self) -> str:
        """The name as it appears in text: ``<bo>``."""
        return f"<{self.name}>"

    def renamed(self, new_name: str) -> "ConceptEmbedding":
        return ConceptEmbedding(
            new_name, self.e_word, self.e_weight, self.context, self.base_model, dict(self.metadata)
        )

    @property
    def base_revision(self) -> str | None:
        """The trained-weights revision of the base this concept was made on (``metadata``), if recorded."""
        return self.metadata.get(BASE_REVISION_KEY)

    def check_compatible(self, base_model: str, hidden_size: int, base_revision: str | None = None) -> None:
        """Raise :class:`IncompatibleConceptError` unless made for ``base_model`` with ``hidden_size`` (and,
        when both the concept and the caller name one, the same ``base_revision``)."""
        if self.hidden_size != hidden_size:
            raise IncompatibleConceptError(
                f"concept <{self.name}> has hidden size {self.hidden_size} (made for {self.base_model}); "
                f"this model's hidden size is {hidden_size}"
            )
        if self.base_model != base_model:
            raise IncompatibleConceptError(
                f"concept <{self.name}> was made for base model {self.base_model!r}, not {base_model!r}; "
                "re-create it from its reference image with this model's Aligner"
            )
        if base_revision is not None and self.base_revision is not None and self.base_revision != base_revision:
            raise IncompatibleConceptError(
                f"concept <{self.name}> was made on {self.base_model} revision {self.base_revision}, this model is "
                f"revision {base_revision} (other trained weights); re-create it from its reference image"
            )

    # ------------------------------------------------------------------ I/O
    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "e_word": self.e_word.detach().float().cpu().contiguous(),
            "e_weight": self.e_weight.detach().float().cpu().contiguous(),
            "context": self.context.detach().float().cpu().contiguous(),
        }

    def header(self) -> dict[str, str]:
        return {
            "format": "plvm.concept",
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "base_model": self.base_model,
            "hidden_size": str(self.hidden_size),
            "num_context_tokens": str(self.num_context_tokens),
            "metadata": json.dumps(self.metadata, sort_keys=True),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (``.safetensors``) atomically: a crash never leaves a half-written file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(self.to_tensors(), tmp, metadata=self.header())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        base_model: str | None = None,
        hidden_size: int | None = None,
    ) -> "ConceptEmbedding":
        """Read a concept file; with ``base_model``/``hidden_size`` given, refuse other models' concepts."""
        path = Path(path)
        header, tensors = read_concept_file(path)
        try:
            metadata = json.loads(header.get("metadata", "{}"))
        except json.JSONDecodeError:
            raise ConceptError(f"{path}: corrupt metadata header (not JSON)") from None
        concept = cls(
            name=header.get("name", ""),
            e_word=tensors["e_word"],
            e_weight=tensors["e_weight"],
            context=tensors["context"],
            base_model=header.get("base_model", ""),
            metadata=metadata if isinstance(metadata, dict) else {},
        )
        if str(concept.hidden_size) != header.get("hidden_size"):
            raise ConceptError(f"{path}: header hidden_size disagrees with the tensors")
        if base_model is not None or hidden_size is not None:
            concept.check_compatible(
                base_model if base_model is not None else concept.base_model,
                hidden_size if hidden_size is not None else concept.hidden_size,
            )
        return concept
