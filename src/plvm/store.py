"""The local concept store: concepts made once from one reference photo, kept for later conversations.

Layout of a store directory::

    index.sqlite                 names, metadata, feature vectors (SQLite, WAL journal)
    concepts/<id>.safetensors    one ConceptEmbedding each; <id> is a random 32-hex id, never the name
    images/<sha256>.<ext>        the original reference images, by content hash (shared when identical)
    .write.lock                  advisory lock serialising writers across processes

Guarantees:

* **Concurrent writers lose nothing.** Every mutation runs under an exclusive ``flock`` on
  ``.write.lock`` *and* inside one SQLite transaction (``BEGIN IMMEDIATE``).
* **A crash loses nothing acknowledged, by construction.** New files are written to a temporary name and
  ``os.replace``-d into place *before* the transaction that points at them commits; files that a commit
  orphans (a removed or replaced concept's file, an image nobody uses any more) are unlinked only *after*
  the COMMIT. Nothing is ever unlinked inside a transaction, so ``kill -9`` at any point leaves at worst an
  orphan file, never a dangling row; orphans (and stale temporary files) are swept when a store is opened.
* **Corruption is reported, never papered over.** An index that SQLite cannot read, or a concept file
  that does not parse, raises :class:`StoreError` naming the file and how to recover; the store never
  replaces or deletes a file it cannot read.
* **No path traversal.** File names come from random hex ids and SHA-256 digests checked against a
  pattern, never from concept names or imported headers; names are validated by
  :func:`plvm.concept.normalize_name` (letters, digits, ``-``, ``_``).
* **One base model per store.** The store records the base model id and hidden size of the first model
  that used it (:class:`StoreIdentity`) and refuses another with :class:`StoreMismatchError`.
* **Names are unique ignoring case** (``<Bo>`` and ``<bo>`` would be too easy to confuse); adding an
  existing name fails with :class:`ConceptExistsError` unless ``replace=True``.

The store knows nothing about models: :meth:`ConceptStore.add_from_image` takes any
:class:`ConceptEncoderLike` (see :class:`plvm.identify.ReferenceEncoder`).

Feature vectors (e.g. the reference encoder's CLS feature, or a face embedding) are stored per concept
and *kind*; :meth:`ConceptStore.feature_matrix` returns all vectors of a kind as one L2-normalised matrix,
cached in memory and invalidated by a generation counter bumped on every write (by any process), so
identifying against 10⁴ concepts is one matrix product.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from .concept import (
    ConceptEmbedding,
    ConceptError,
    IncompatibleConceptError,
    lookup_name,
    normalize_name,
    read_concept_file,
)
from .conversation import UnknownConceptError
from .images import DEFAULT_LIMITS, EXTENSIONS, ImageLimits, ImageSource, LoadedImage, decode_image, load_image

SCHEMA_VERSION = "1"
EXPORT_FORMAT = "plvm.concept-export"
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_KIND_RE = re.compile(r"^[A-Za-z0-9_.:/+-]{1,128}$")
_IMAGE_EXTS = frozenset(EXTENSIONS.values())
MAX_IMPORT_BYTES = 64 * 1024 * 1024
#: Most context tokens ``k`` a concept may have (the paper uses 16; the Aligner's ``num_queries``).
MAX_CONTEXT_TOKENS = 256
#: Longest feature vector (face embeddings are 128-512, reference-encoder CLS features up to a few thousand).
MAX_FEATURE_DIM = 16_384
#: Largest JSON metadata kept with one concept (bytes).
MAX_METADATA_BYTES = 64 * 1024
_REF_KIND_RE = re.compile(r"^ref:.*:(\d+):(\d+)$")


def default_store_path() -> Path:
    """``$PLVM_STORE`` if set, else ``$XDG_DATA_HOME/plvm`` (``~/.local/share/plvm``)."""
    env = os.environ.get("PLVM_STORE")
    if env:
        return Path(env).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "plvm"


# ---------------------------------------------------------------------- errors
class StoreError(Exception):
    """A concept-store operation failed; ``str(err)`` is a one-line message for the user."""


class StoreMismatchError(StoreError, IncompatibleConceptError):
    """The store was made for another base model (or hidden size)."""


class ConceptExistsError(StoreError, ConceptError):
    """A concept with this name (ignoring case) is already stored."""


class ConceptNotFoundError(StoreError, UnknownConceptError):
    """No stored concept has this name."""


class CorruptStoreError(StoreError):
    """A store file (the index or a concept file) cannot be read; the message names it and how to recover."""


class StoreFullError(StoreError):
    """The disk (or a file-size limit) ran out while writing; nothing was stored."""


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _disk_error(exc: BaseException, root: Path) -> StoreFullError | None:
    """A one-line :class:`StoreError` for "disk full"-like failures (``None`` for anything else)."""
    text = str(exc).lower()
    if (isinstance(exc, OSError) and exc.errno in _NO_SPACE) or any(
        t in text for t in ("disk is full", "file too large", "no space left", "quota exceeded")
    ):
        return StoreFullError(
            f"no space left for the concept store {root} ({' '.join(str(exc).split())[:120]}); "
            "nothing was stored: free some space and try again"
        )
    return None


def _sqlite_error(root: Path, exc: sqlite3.Error) -> StoreError:
    """A one-line :class:`StoreError` for an SQLite failure: disk full, an operational failure (locked,
    read-only, I/O error: nothing was changed), or a damaged index (:func:`_corrupt_index`)."""
    disk = _disk_error(exc, root)
    if disk is not None:
        return disk
    if isinstance(exc, sqlite3.OperationalError):
        text = " ".join(str(exc).split())[:120]
        if "disk i/o" in text.lower():
            return StoreFullError(
                f"the concept store index {root / 'index.sqlite'} could not be written ({text}: "
                "disk full or failing?); nothing was stored: free some space and try again"
            )
        return StoreError(
            f"the concept store index {root / 'index.sqlite'} cannot be used now ({text}); nothing was changed"
        )
    return _corrupt_index(root, exc)


def _corrupt_index(root: Path, exc: BaseException) -> CorruptStoreError:
    index = root / "index.sqlite"
    return CorruptStoreError(
        f"the concept store index {index} is unreadable ({' '.join(str(exc).split())[:120]}); it was left as it "
        f"is. Recover: restore it from a backup, or move it aside (mv {index} {index}.broken) and re-add the "
        f"concepts from their reference photos in {root / 'images'}"
    )


# ---------------------------------------------------------------------- records
@dataclass(frozen=True)
class StoreIdentity:
    """The base model a store serves: concepts are only usable with the model they were made for."""

    base_model: str
    hidden_size: int

    @classmethod
    def of(cls, plvm: Any) -> "StoreIdentity":
        """The identity of a :class:`plvm.pipeline.PLVM` (its LVLM's base model id and hidden size)."""
        return cls(plvm.lvlm.base_model_id, int(plvm.lvlm.hidden_size))

    def describe(self) -> str:
        return f"{self.base_model!r} (hidden size {self.hidden_size})"


@dataclass
class EncodedConcept:
    """What an encoder makes of one reference image: the concept and its feature vectors by kind."""

    concept: ConceptEmbedding
    features: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. {"face": {"faces_found": 0, ...}}


class ConceptEncoderLike(Protocol):
    """Anything that turns ``(name, RGB image)`` into an :class:`EncodedConcept` (one forward pass)."""

    def encode(self, name: str, image: Image.Image) -> EncodedConcept: ...


@dataclass(frozen=True)
class ConceptRecord:
    """The stored facts about one concept (everything but its tensors)."""

    name: str
    id: str
    base_model: str
    hidden_size: int
    num_context_tokens: int
    image_sha256: str | None
    image_ext: str | None
    image_width: int | None
    image_height: int | None
    created_at: float
    updated_at: float
    feature_kinds: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return f"<{self.name}>"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["feature_kinds"] = list(self.feature_kinds)
        d["metadata"] = dict(self.metadata)
        d["token"] = self.token
        return d


@dataclass(frozen=True)
class FeatureMatrix:
    """All stored vectors of one feature kind: ``matrix`` ``[N, d]`` (rows L2-normalised), ``names[i]``."""

    kind: str
    names: tuple[str, ...]
    matrix: np.ndarray
    generation: int

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def normalized(cls, kind: str, names: Sequence[str], matrix: np.ndarray, generation: int = 0) -> "FeatureMatrix":
        """From raw vectors ``[N, d]`` (float32 copy, each row scaled to unit L2 norm)."""
        matrix = np.array(matrix, dtype=np.float32, copy=True)
        if len(matrix):
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
        return cls(kind, tuple(names), matrix, generation)


@dataclass
class NewConcept:
    """One concept to add with :meth:`ConceptStore.add_many`."""

    concept: ConceptEmbedding
    image: LoadedImage | None = None
    features: Mapping[str, np.ndarray] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _known_list(names: Sequence[str], limit: int = 20) -> str:
    if not names:
        return "none (add one with `plvm concepts add NAME IMAGE`)"
    shown = ", ".join(f"<{n}>" for n in names[:limit])
    return shown + (f" … ({len(names)} in all)" if len(names) > limit else "")


def _as_vector(value: Any, kind: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    vec = np.asarray(value, dtype=np.float32).reshape(-1)
    if vec.size == 0 or not np.isfinite(vec).all():
        raise ConceptError(f"feature {kind!r} is empty or has non-finite values")
    return vec


def _check_feature_dim(kind: str, vec: np.ndarray) -> None:
    """Refuse vectors longer than :data:`MAX_FEATURE_DIM`, and reference-encoder vectors (kind
    ``ref:<encoder>:<d_enc>:<image size>``) whose length is not the ``d_enc`` their kind names."""
    if vec.size > MAX_FEATURE_DIM:
        raise ConceptError(f"feature {kind!r} has {vec.size} values; at most {MAX_FEATURE_DIM} are allowed")
    m = _REF_KIND_RE.match(kind)
    if m and vec.size != int(m.group(1)):
        raise ConceptError(f"feature {kind!r} has {vec.size} values; its encoder gives {m.group(1)}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _FileLock:
    """An exclusive advisory lock on a file (``fcntl.flock``), re-entrant within one store object."""

    def __init__(self, path: Path):
        self.path = path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    import fcntl

                    fcntl.flock(self._fd, fcntl.LOCK_EX)
                except ImportError:  # pragma: no cover - non-POSIX: SQLite's own locking still applies
                    pass
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing releases the flock
                    self._fd = None


_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _checked_import(
    path: Path, header: dict[str, str], tensors: dict[str, torch.Tensor]
) -> tuple[dict[str, str], dict[str, torch.Tensor], dict[str, str], dict[str, Any], dict[str, Any]]:
    """Check an imported concept file before anything of it reaches the store: float tensors of the right
    shapes, a sane ``k``, feature tensors that exist and are float vectors, JSON metadata objects of a
    bounded size whose known keys have the right types. Returns ``header, tensors, features, concept
    metadata, record metadata``; raises :class:`ConceptError` naming the file and what is allowed."""
    label = path.name

    def bad(what: str) -> ConceptError:
        return ConceptError(f"{label}: {what}; not imported")

    for key in ("e_word", "e_weight", "context"):
        t = tensors[key]
        if t.dtype not in _FLOAT_DTYPES:
            raise bad(f"tensor {key} is {str(t.dtype).replace('torch.', '')}; concept tensors are floating point")
    if tensors["e_word"].ndim != 1 or tensors["e_word"].numel() > MAX_FEATURE_DIM:
        raise bad(f"e_word has shape {tuple(tensors['e_word'].shape)}; it is one vector of the model's hidden size")
    k = tensors["context"].shape[0] if tensors["context"].ndim == 2 else -1
    if not 1 <= k <= MAX_CONTEXT_TOKENS:
        raise bad(
            f"context has shape {tuple(tensors['context'].shape)}; it is [k, hidden size] with k from 1 to "
            f"{MAX_CONTEXT_TOKENS}"
        )
    if header.get("num_context_tokens") not in (None, str(k)):
        raise bad(f"header num_context_tokens {header.get('num_context_tokens')!r} disagrees with the tensors (k={k})")
    if header.get("hidden_size") not in (None, str(tensors["e_word"].shape[0])):
        raise bad(f"header hidden_size {header.get('hidden_size')!r} disagrees with the tensors")
    parsed = {}
    for key, default in (("metadata", "{}"), ("features", "{}"), ("record_metadata", "{}")):
        raw = header.get(key, default)
        if len(raw) > MAX_METADATA_BYTES:
            raise bad(f"header {key} is {len(raw)} bytes; at most {MAX_METADATA_BYTES} are allowed")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise bad(f"header {key} is not valid JSON") from None
        if not isinstance(value, dict):
            raise bad(f"header {key} is a JSON {type(value).__name__}; a JSON object is expected")
        parsed[key] = value
    features: dict[str, str] = {}
    for kind, tensor_name in parsed["features"].items():
        if (
            not isinstance(tensor_name, str)
            or tensor_name not in tensors
            or tensor_name in ("e_word", "e_weight", "context", "reference_image")
        ):
            raise bad(f"feature {kind!r} names tensor {tensor_name!r}, which is not a feature tensor in the file")
        t = tensors[tensor_name]
        if t.dtype not in _FLOAT_DTYPES or t.ndim != 1 or not 1 <= t.numel() <= MAX_FEATURE_DIM:
            raise bad(
                f"feature {kind!r} is a {str(t.dtype).replace('torch.', '')} tensor of shape {tuple(t.shape)}; "
                f"a float vector of 1 to {MAX_FEATURE_DIM} values is expected"
            )
        features[str(kind)] = tensor_name
    if "reference_image" in tensors:
        t = tensors["reference_image"]
        if t.dtype != torch.uint8 or t.ndim != 1:
            raise bad(
                f"reference_image is a {str(t.dtype).replace('torch.', '')} tensor of shape {tuple(t.shape)}; "
                "the encoded image bytes (uint8, 1-D) are expected"
            )
    if "base_revision" in parsed["metadata"] and not isinstance(parsed["metadata"]["base_revision"], str):
        raise bad("metadata base_revision must be a string")
    record = parsed["record_metadata"]
    face = record.get("face")
    if face is not None:
        ok = (
            isinstance(face, dict)
            and isinstance(face.get("backend", ""), str)
            and (isinstance(face.get("faces_found", 0), int) and not isinstance(face.get("faces_found", 0), bool))
        )
        box = face.get("box") if isinstance(face, dict) else None
        if ok and box is not None:
            ok = (
                isinstance(box, list)
                and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box)
            )
        score = face.get("score") if isinstance(face, dict) else None
        if ok and score is not None:
            ok = isinstance(score, (int, float)) and not isinstance(score, bool) and bool(np.isfinite(score))
        if not ok:
            raise bad(
                "record metadata 'face' is malformed (an object with backend, faces_found, box [x0, y0, x1, y1], "
                "score is expected)"
            )
    return header, tensors, features, parsed["metadata"], record


# ---------------------------------------------------------------------- the store
class ConceptStore:
    """A directory of concepts with a SQLite index. See the module docstring for the guarantees.

    Args:
        root: The store directory (created if missing).
        identity: The model that will use the store. A new store records it; an existing store made for
            another model raises :class:`StoreMismatchError`. ``None`` opens the store for management
            only (list, show, rename, remove, export); the first :meth:`add` then binds it.
    """

    def __init__(self, root: str | os.PathLike, identity: StoreIdentity | None = None):
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"concept store {self.root} is a file, not a directory: pass a directory with "
                "--store DIR (or $PLVM_STORE); it is created if missing"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in ("concepts", "images"):
                path = self.root / sub
                if path.exists() and not path.is_dir():
                    raise StoreError(
                        f"{path} should be a directory of the concept store {self.root}, but is a file: move it away"
                    )
                path.mkdir(exist_ok=True)
        except (FileExistsError, NotADirectoryError, PermissionError) as exc:
            raise StoreError(f"cannot use {self.root} as a concept store: {exc.strerror or exc}") from None
        self._lock = _FileLock(self.root / ".write.lock")
        self._db_lock = threading.RLock()
        index = self.root / "index.sqlite"
        if index.exists() and not index.is_file():
            raise CorruptStoreError(f"the concept store index {index} is not a file: move it away")
        self._db = sqlite3.connect(str(index), timeout=60.0, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._matrix_cache: dict[str, FeatureMatrix] = {}
        try:
            with self._lock.hold(), self._db_lock:
                self._db.execute("PRAGMA busy_timeout = 60000")
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA foreign_keys = ON")
                self._create_schema()
                self._check_schema()
                self.sweep_orphans()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise _sqlite_error(self.root, exc) from None
        except BaseException:
            self._db.close()
            raise
        self.identity: StoreIdentity | None = None
        if identity is not None:
            self.bind(identity)
        else:
            self.identity = self.recorded_identity()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._db_lock:
            self._db.close()

    def __enter__(self) -> "ConceptStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ConceptStore({str(self.root)!r}, identity={self.identity})"

    def _create_schema(self) -> None:
        self._db.executescript(
            """
            BEGIN IMMEDIATE;
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS concepts (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE COLLATE NOCASE,
                base_model TEXT NOT NULL,
                hidden_size INTEGER NOT NULL,
                num_context_tokens INTEGER NOT NULL,
                image_sha256 TEXT,
                image_ext TEXT,
                image_width INTEGER,
                image_height INTEGER,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                metadata TEXT NOT NULL DEFAULT '{}'
            );
            CREATE TABLE IF NOT EXISTS features (
                concept_id TEXT NOT NULL REFERENCES concepts(id) ON DELETE CASCADE,
                kind TEXT NOT NULL,
                dim INTEGER NOT NULL,
                vector BLOB NOT NULL,
                PRIMARY KEY (concept_id, kind)
            );
            CREATE INDEX IF NOT EXISTS features_kind ON features(kind);
            INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1');
            INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '0');
            COMMIT;
            """
        )
        version = self._meta("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"store {self.root} has schema version {version}; this plvm reads {SCHEMA_VERSION}")

    def _check_schema(self) -> None:
        """A quick structural check (``PRAGMA quick_check``): a damaged index is reported, not used."""
        rows = self._db.execute("PRAGMA quick_check").fetchall()
        result = rows[0][0] if rows else "no result"
        if result != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")

    def sweep_orphans(self) -> list[Path]:
        """Delete files no index row points at (left by a crash between writing and committing, or between
        committing and unlinking) and stale temporary files; returns what was removed.

        Runs under the write lock, so it never races with a writer whose files are not committed yet.
        """
        removed: list[Path] = []
        with self._lock.hold(), self._db_lock:
            ids = {r[0] for r in self._db.execute("SELECT id FROM concepts")}
            images = {
                f"{r[0]}.{r[1]}"
                for r in self._db.execute(
                    "SELECT DISTINCT image_sha256, image_ext FROM concepts WHERE image_sha256 IS NOT NULL"
                )
            }
            for sub, keep in (
                ("concepts", lambda n: n.endswith(".safetensors") and n[:-12] in ids),
                ("images", lambda n: n in images),
            ):
                with os.scandir(self.root / sub) as entries:
                    for entry in entries:
                        if not entry.is_file(follow_symlinks=False) or keep(entry.name):
                            continue
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed.append(Path(entry.path))
        return removed

    @contextlib.contextmanager
    def _write(
        self,
        obsolete: list[tuple[str, str | None, str | None]] | None = None,
        created: list[Path] | None = None,
    ) -> Iterator[sqlite3.Connection]:
        """Exclusive write section: file lock + one IMMEDIATE transaction that bumps the generation.

        ``obsolete`` collects ``(id, image sha, ext)`` of rows the transaction deletes; their files are
        unlinked only after the COMMIT (still under the lock), so a crash never leaves a row without its file.
        ``created`` collects files the transaction wrote; they are unlinked if it rolls back.
        """
        with self._lock.hold(), self._db_lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute(
                        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'"
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    for path in created or ():
                        with contextlib.suppress(OSError):
                            path.unlink()
                    raise
                finally:
                    self._matrix_cache.clear()
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.IntegrityError):
                    raise StoreError(f"the concept store {self.root} refused the change: {exc}") from None
                raise _sqlite_error(self.root, exc) from None
            except (StoreError, ConceptError):
                raise
            except Exception as exc:  # e.g. OSError(ENOSPC) or safetensors' I/O error while writing a file
                disk = _disk_error(exc, self.root)
                if disk is None:
                    raise
                raise disk from None
            if obsolete:
                self._remove_files(obsolete)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._db_lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise _sqlite_error(self.root, exc) from None

    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    @property
    def generation(self) -> int:
        """A counter bumped by every write from any process (used to invalidate caches)."""
        return int(self._meta("generation") or 0)

    # ------------------------------------------------------------------ identity
    def recorded_identity(self) -> StoreIdentity | None:
        base, hidden = self._meta("base_model"), self._meta("hidden_size")
        return StoreIdentity(base, int(hidden)) if base is not None and hidden is not None else None

    def bind(self, identity: StoreIdentity) -> None:
        """Record ``identity`` in a new store, or check an existing store was made for it."""
        with self._write() as db:
            recorded = self.recorded_identity()
            if recorded is None:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('base_model', ?)", (identity.base_model,))
                db.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('hidden_size', ?)", (str(identity.hidden_size),)
                )
                recorded = identity
        if recorded != identity:
            raise StoreMismatchError(
                f"concept store {self.root} was made for base model {recorded.describe()}, "
                f"not {identity.describe()}: use another store (--store DIR or $PLVM_STORE) "
                "or re-create the concepts from their reference images with this model"
            )
        self.identity = identity

    def _check_concept(self, concept: ConceptEmbedding) -> None:
        if self.identity is None:
            self.bind(StoreIdentity(concept.base_model, concept.hidden_size))
        assert self.identity is not None
        try:
            concept.check_compatible(self.identity.base_model, self.identity.hidden_size)
        except IncompatibleConceptError as exc:
            raise StoreMismatchError(f"{exc} (store {self.root} serves {self.identity.describe()})") from None

    # ------------------------------------------------------------------ paths (never from names)
    def _concept_path(self, concept_id: str) -> Path:
        if not _ID_RE.match(concept_id):
            raise StoreError(f"corrupt store index: bad concept id {concept_id!r}")
        return self.root / "concepts" / f"{concept_id}.safetensors"

    def _image_path(self, sha: str, ext: str) -> Path:
        if not _SHA_RE.match(sha) or ext not in _IMAGE_EXTS:
            raise StoreError(f"corrupt store index: bad image reference {sha!r}.{ext!r}")
        return self.root / "images" / f"{sha}.{ext}"

    # ------------------------------------------------------------------ reading
    def _row(self, name: str) -> sqlite3.Row:
        bare = lookup_name(name)  # lenient: a concept stored under a name now reserved can still be removed
        rows = self._query("SELECT * FROM concepts WHERE name = ? COLLATE BINARY", (bare,))
        if not rows:
            raise ConceptNotFoundError(f"unknown concept <{bare}>; stored concepts: {_known_list(self.names())}")
        return rows[0]

    def _record(self, row: sqlite3.Row) -> ConceptRecord:
        kinds = tuple(
            r["kind"] for r in self._query("SELECT kind FROM features WHERE concept_id = ? ORDER BY kind", (row["id"],))
        )
        return ConceptRecord(
            name=row["name"],
            id=row["id"],
            base_model=row["base_model"],
            hidden_size=row["hidden_size"],
            num_context_tokens=row["num_context_tokens"],
            image_sha256=row["image_sha256"],
            image_ext=row["image_ext"],
            image_width=row["image_width"],
            image_height=row["image_height"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            feature_kinds=kinds,
            metadata=json.loads(row["metadata"] or "{}"),
        )

    def names(self) -> list[str]:
        """All stored names, sorted case-insensitively."""
        return [r["name"] for r in self._query("SELECT name FROM concepts ORDER BY name COLLATE NOCASE")]

    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM concepts")[0]["n"])

    def __contains__(self, name: object) -> bool:
        try:
            self._row(str(name))
        except (ConceptError, StoreError):
            return False
        return True

    def list(self) -> list[ConceptRecord]:
        rows = self._query("SELECT * FROM concepts ORDER BY name COLLATE NOCASE")
        return [self._record(r) for r in rows]

    def get(self, name: str) -> ConceptRecord:
        """The record of ``name`` (``bo`` or ``<bo>``); :class:`ConceptNotFoundError` lists the known ones."""
        return self._record(self._row(name))

    def load(self, name: str) -> ConceptEmbedding:
        """The concept's embeddings, checked against the store's base model."""
        row = self._row(name)
        path = self._concept_path(row["id"])
        if not path.exists():
            raise StoreError(f"concept <{row['name']}> is in the index but its file {path.name} is missing")
        identity = self.identity or StoreIdentity(row["base_model"], row["hidden_size"])
        try:
            concept = ConceptEmbedding.load(path, base_model=identity.base_model, hidden_size=identity.hidden_size)
        except IncompatibleConceptError as exc:
            raise StoreMismatchError(str(exc)) from None
        except ConceptError as exc:
            photo = (
                f" (its reference photo: {self._image_path(row['image_sha256'], row['image_ext'])})"
                if row["image_sha256"]
                else ""
            )
            raise CorruptStoreError(
                f"the file of concept <{row['name']}>, {path}, is unreadable ({' '.join(str(exc).split())[:120]}); "
                f"it was left as it is. Recover: plvm concepts add {row['name']} PHOTO --replace{photo}"
            ) from None
        return concept if concept.name == row["name"] else concept.renamed(row["name"])

    def load_many(self, names: Iterable[str]) -> list[ConceptEmbedding]:
        return [self.load(n) for n in names]

    def image_file(self, name: str) -> Path:
        """Path of the original reference image of ``name``."""
        row = self._row(name)
        if not row["image_sha256"]:
            raise StoreError(f"concept <{row['name']}> has no stored reference image")
        path = self._image_path(row["image_sha256"], row["image_ext"])
        if not path.exists():
            raise StoreError(f"reference image of <{row['name']}> is missing from the store")
        return path

    def features(self, name: str) -> dict[str, np.ndarray]:
        row = self._row(name)
        return {
            r["kind"]: np.frombuffer(r["vector"], dtype=np.float32).copy()
            for r in self._query("SELECT kind, vector FROM features WHERE concept_id = ?", (row["id"],))
        }

    def feature_kinds(self) -> dict[str, int]:
        """Stored feature kinds and how many concepts have each."""
        rows = self._query("SELECT kind, COUNT(*) AS n FROM features GROUP BY kind ORDER BY kind")
        return {r["kind"]: int(r["n"]) for r in rows}

    def feature_matrix(self, kind: str) -> FeatureMatrix:
        """All vectors of ``kind`` as one L2-normalised ``[N, d]`` float32 matrix (cached until a write)."""
        generation = self.generation
        cached = self._matrix_cache.get(kind)
        if cached is not None and cached.generation == generation:
            return cached
        rows = self._query(
            "SELECT c.name AS name, f.dim AS dim, f.vector AS vector FROM features f "
            "JOIN concepts c ON c.id = f.concept_id WHERE f.kind = ? ORDER BY c.name COLLATE NOCASE",
            (kind,),
        )
        dims = {r["dim"] for r in rows}
        if len(dims) > 1:
            raise StoreError(f"feature {kind!r} has mixed dimensions {sorted(dims)} in {self.root}")
        dim = dims.pop() if dims else 0
        matrix = np.frombuffer(b"".join(r["vector"] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        result = FeatureMatrix.normalized(kind, [r["name"] for r in rows], matrix, generation)
        self._matrix_cache[kind] = result
        return result

    # ------------------------------------------------------------------ writing
    def check_available(self, name: str, replace: bool = False) -> str:
        """Validate ``name`` and check it is free (or ``replace``); returns the bare name.

        Called before the (slow) encoder pass so users get collisions at once; :meth:`add` checks again
        inside its transaction.
        """
        bare = normalize_name(name)
        if not replace:
            rows = self._query("SELECT name FROM concepts WHERE name = ?", (bare,))
            if rows:
                raise ConceptExistsError(self._exists_message(bare, rows[0]["name"]))
        return bare

    @staticmethod
    def _exists_message(new: str, old: str) -> str:
        same = "" if new == old else f" (names are unique ignoring case: <{old}> is stored)"
        return f"concept <{new}> already exists{same}; use --replace (replace=true) to overwrite it"

    def add(
        self,
        concept: ConceptEmbedding,
        image: LoadedImage | None = None,
        features: Mapping[str, Any] | None = None,
        replace: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> ConceptRecord:
        """Store one concept (its embeddings, original image and feature vectors) atomically."""
        item = NewConcept(concept, image, dict(features or {}), dict(metadata or {}))
        return self.add_many([item], replace=replace)[0]

    def add_many(self, items: Sequence[NewConcept], replace: bool = False) -> list[ConceptRecord]:
        """Store several concepts in one transaction (all or none).

        Order of work (crash safety): write the new concept files and images, commit the index, then unlink
        the files the commit orphaned (replaced concepts, images no longer used).
        """
        if not items:
            return []
        prepared = []
        seen: set[str] = set()
        for item in items:
            self._check_concept(item.concept)
            if item.concept.name.lower() in seen:
                raise ConceptExistsError(f"concept <{item.concept.name}> is given twice")
            seen.add(item.concept.name.lower())
            k = item.concept.num_context_tokens
            if not 1 <= k <= MAX_CONTEXT_TOKENS:
                raise ConceptError(
                    f"concept <{item.concept.name}> has {k} context tokens; 1 to {MAX_CONTEXT_TOKENS} are allowed"
                )
            vectors = {}
            for kind, value in item.features.items():
                if not isinstance(kind, str) or not _KIND_RE.match(kind):
                    raise ConceptError(f"invalid feature kind {kind!r}: 1-128 of letters, digits and _.:/+-")
                vectors[kind] = _as_vector(value, kind)
                _check_feature_dim(kind, vectors[kind])
            meta = dict(item.concept.metadata)
            meta.update(item.metadata)
            meta_json = json.dumps(meta, sort_keys=True, default=str)
            if len(meta_json) > MAX_METADATA_BYTES:
                raise ConceptError(
                    f"metadata of <{item.concept.name}> is {len(meta_json)} bytes; "
                    f"at most {MAX_METADATA_BYTES} are kept"
                )
            prepared.append((item, vectors, meta_json))
        created: list[Path] = []
        obsolete: list[tuple[str, str | None, str | None]] = []  # (id, sha, ext) of replaced rows
        now = time.time()
        with self._write(obsolete, created) as db:
            for item, vectors, meta_json in prepared:
                c = item.concept
                old = db.execute(
                    "SELECT id, name, image_sha256, image_ext, created_at FROM concepts WHERE name = ?", (c.name,)
                ).fetchone()
                if old is not None and not replace:
                    raise ConceptExistsError(self._exists_message(c.name, old["name"]))
                for kind, v in vectors.items():
                    dims = [
                        r[0]
                        for r in db.execute(
                            "SELECT DISTINCT f.dim FROM features f JOIN concepts c ON c.id = f.concept_id "
                            "WHERE f.kind = ? AND c.name != ?",
                            (kind, c.name),
                        )
                    ]
                    if dims and v.size not in dims:
                        raise ConceptError(
                            f"feature {kind!r} of <{c.name}> has {v.size} values; the stored concepts' have "
                            f"{dims[0]} (made by another encoder?)"
                        )
                concept_id = secrets.token_hex(16)
                path = self._concept_path(concept_id)
                created.append(path)
                c.save(path)
                sha = ext = None
                width = height = None
                if item.image is not None:
                    sha, ext = item.image.sha256, item.image.ext
                    width, height = item.image.image.size
                    img_path = self._image_path(sha, ext)
                    if not img_path.exists():
                        created.append(img_path)
                        _atomic_write_bytes(img_path, item.image.data)
                if old is not None:
                    db.execute("DELETE FROM concepts WHERE id = ?", (old["id"],))
                    obsolete.append((old["id"], old["image_sha256"], old["image_ext"]))
                db.execute(
                    "INSERT INTO concepts(id, name, base_model, hidden_size, num_context_tokens, image_sha256, "
                    "image_ext, image_width, image_height, created_at, updated_at, metadata) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        concept_id,
                        c.name,
                        c.base_model,
                        c.hidden_size,
                        c.num_context_tokens,
                        sha,
                        ext,
                        width,
                        height,
                        old["created_at"] if old is not None else now,
                        now,
                        meta_json,
                    ),
                )
                db.executemany(
                    "INSERT INTO features(concept_id, kind, dim, vector) VALUES (?, ?, ?, ?)",
                    [(concept_id, kind, int(v.size), v.tobytes()) for kind, v in vectors.items()],
                )
        return [self.get(item.concept.name) for item, _, _ in prepared]

    def add_from_image(
        self,
        name: str,
        source: ImageSource | LoadedImage,
        encoder: ConceptEncoderLike,
        replace: bool = False,
        limits: ImageLimits = DEFAULT_LIMITS,
        metadata: Mapping[str, Any] | None = None,
    ) -> ConceptRecord:
        """Validate the name, load the image safely, encode it once and store the result."""
        bare = self.check_available(name, replace)
        loaded = source if isinstance(source, LoadedImage) else load_image(source, limits)
        encoded = encoder.encode(bare, loaded.image)
        meta = {"image_sha256": loaded.sha256, "image_format": loaded.format, "image_mode": loaded.original_mode}
        meta.update(getattr(encoded, "metadata", None) or {})
        meta.update(metadata or {})
        return self.add(encoded.concept, loaded, encoded.features, replace=replace, metadata=meta)

    def rename(self, old: str, new: str, replace: bool = False) -> ConceptRecord:
        """Rename a concept (its files are named by id, so only the index changes; a concept replaced by the
        new name loses its files only after the commit)."""
        new_bare = normalize_name(new)
        obsolete: list[tuple[str, str | None, str | None]] = []
        with self._write(obsolete) as db:
            row = self._row(old)
            clash = db.execute(
                "SELECT id, name, image_sha256, image_ext FROM concepts WHERE name = ? AND id != ?",
                (new_bare, row["id"]),
            ).fetchone()
            if clash is not None:
                if not replace:
                    raise ConceptExistsError(self._exists_message(new_bare, clash["name"]))
                db.execute("DELETE FROM concepts WHERE id = ?", (clash["id"],))
                obsolete.append((clash["id"], clash["image_sha256"], clash["image_ext"]))
            db.execute("UPDATE concepts SET name = ?, updated_at = ? WHERE id = ?", (new_bare, time.time(), row["id"]))
        return self.get(new_bare)

    def remove(self, name: str) -> ConceptRecord:
        """Delete a concept; its file (and its reference image if no other concept uses it) is unlinked after
        the commit."""
        obsolete: list[tuple[str, str | None, str | None]] = []
        with self._write(obsolete) as db:
            record = self._record(self._row(name))
            db.execute("DELETE FROM concepts WHERE id = ?", (record.id,))
            obsolete.append((record.id, record.image_sha256, record.image_ext))
        return record

    def _remove_files(self, obsolete: Sequence[tuple[str, str | None, str | None]]) -> None:
        """Unlink the files of rows a *committed* transaction deleted (write lock held). Never raises: a file
        that cannot be removed now is an orphan the next open sweeps."""
        for concept_id, sha, ext in obsolete:
            with contextlib.suppress(OSError, StoreError):
                self._concept_path(concept_id).unlink()
            if sha:
                with contextlib.suppress(OSError, StoreError, sqlite3.Error):
                    still_used = self._db.execute(
                        "SELECT 1 FROM concepts WHERE image_sha256 = ? LIMIT 1", (sha,)
                    ).fetchone()
                    if still_used is None:
                        self._image_path(sha, ext or "").unlink()

    # ------------------------------------------------------------------ export / import
    def export(self, name: str, path: str | os.PathLike, include_image: bool = True) -> Path:
        """Write one self-contained ``.safetensors`` file: embeddings, feature vectors, reference image.

        The file is also a valid concept file for :meth:`ConceptEmbedding.load` (extra tensors and header
        keys are ignored there). No pickle anywhere.
        """
        record = self.get(name)
        concept = self.load(record.name)
        tensors = concept.to_tensors()
        header = concept.header()
        feature_names: dict[str, str] = {}
        for i, (kind, vec) in enumerate(sorted(self.features(record.name).items())):
            feature_names[kind] = f"feature_{i}"
            tensors[f"feature_{i}"] = torch.from_numpy(vec.copy())
        header.update(
            export_format=EXPORT_FORMAT,
            features=json.dumps(feature_names, sort_keys=True),
            record_metadata=json.dumps(dict(record.metadata), sort_keys=True, default=str),
        )
        if include_image and record.image_sha256:
            data = self.image_file(record.name).read_bytes()
            tensors["reference_image"] = torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()
            header.update(image_sha256=record.image_sha256, image_ext=record.image_ext or "")
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=header)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return out

    def import_file(
        self,
        path: str | os.PathLike,
        name: str | None = None,
        replace: bool = False,
        limits: ImageLimits = DEFAULT_LIMITS,
    ) -> ConceptRecord:
        """Add a concept from an exported file (or a plain concept ``.safetensors``), optionally renamed.

        The header's name is validated like any name and never used as a path; the embedded image is
        checked against its hash and decoded with the usual limits; the base model must match the store.
        """
        path = Path(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise StoreError(f"no such file: {path}") from None
        if not path.is_file():
            raise StoreError(f"{path} is not a file: give an exported .safetensors concept file")
        if size > MAX_IMPORT_BYTES:
            raise StoreError(f"{path} is {size} bytes; concept files are at most {MAX_IMPORT_BYTES}")
        header, tensors = read_concept_file(path)
        header, tensors, feature_names, concept_meta, record_meta = _checked_import(path, header, tensors)
        try:
            concept = ConceptEmbedding(
                name=name if name is not None else header.get("name", ""),
                e_word=tensors["e_word"].float(),
                e_weight=tensors["e_weight"].float(),
                context=tensors["context"].float(),
                base_model=header.get("base_model", ""),
                metadata=concept_meta,
            )
        except ConceptError as exc:
            raise ConceptError(f"{path.name}: {exc}") from None
        self.check_available(concept.name, replace)
        features = {kind: tensors[tensor_name].float().numpy() for kind, tensor_name in feature_names.items()}
        image = None
        if "reference_image" in tensors:
            data = tensors["reference_image"].numpy().tobytes()
            image = decode_image(data, limits, label=f"reference image in {path.name}")
            if header.get("image_sha256") and header["image_sha256"] != image.sha256:
                raise ConceptError(f"{path}: the embedded reference image does not match its recorded hash")
        meta = dict(record_meta)
        meta["imported_from"] = path.name
        return self.add(concept, image, features, replace=replace, metadata=meta)


__all__ = [
    "ConceptEncoderLike",
    "CorruptStoreError",
    "StoreFullError",
    "ConceptExistsError",
    "ConceptNotFoundError",
    "ConceptRecord",
    "ConceptStore",
    "EncodedConcept",
    "FeatureMatrix",
    "NewConcept",
    "StoreError",
    "StoreIdentity",
    "StoreMismatchError",
    "default_store_path",
]
