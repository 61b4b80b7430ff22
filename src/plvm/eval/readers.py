"""Readers for public personalization benchmarks, all into one :class:`EvalDataset`.

Three on-disk layouts are understood (format detection: :func:`detect_format`):

* **PLVM validation** (``format="plvm"``, the paper's ``validation_recognition`` folder)::

      ROOT/<id>/ref_img.<ext>            the concept's one reference photo
      ROOT/<id>/query_img*.<ext>         photos of the concept to recognise (positives)
      ROOT/query_ques.json               visual QA   ─┐ JSON lists of {"ref_img", "query_img", "question",
      ROOT/non_query_ques.json           text-only QA ─┘ "multiple_choice": {"A": …}, "correct_answer": "A"}

  The QA files may also sit inside ``<id>/``; an entry's concept is its folder, else the ``<id>`` component
  of its ``ref_img`` (or ``query_img``) path.

* **Yo'LLaVA** (``format="yollava"``)::

      ROOT/train/<id>/*.<ext>            training photos; the reference is ``ref_img.*`` if present, else
                                         the ``reference_index``-th photo in natural order (0.png, 1.png, …)
      ROOT/train/<id>/negative_example/  (optional) retrieved negatives, read with ``negative_examples=True``
      ROOT/test/<id>/*.<ext>             test photos (positives)
      ROOT/yollava-visual-qa.json        (optional) {"./yollava-data/test/bo/0.png": {"question", "options",
                                         "correct_answer"}, …}; PLVM-style QA files are read too

* **Multi-concept** (MC-LLaVA / MP-Bench style), next to either layout above::

      ROOT/multi/images/*.<ext>
      ROOT/multi/annotations.json        {"img.png": ["id_a", "id_b"], "outside.jpg": [], …}

  An empty list marks an *external* image (none of the concepts). Reference images come from the
  single-concept folders.

Robustness: extensions are matched case-insensitively (``.png .jpg .jpeg .webp .bmp .gif .tif .tiff``);
hidden files and OS litter (``.DS_Store``, ``._*``, ``Thumbs.db``) are ignored; every image is decoded once
at read time and an unreadable one is skipped with an :class:`UnreadableImageWarning` and recorded in
``EvalDataset.skipped`` (a concept whose reference is unreadable is dropped). Questions are normalised to
use ``<sks>`` for their concept; prompts substitute the concept's name at run time.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
LITTER = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
PLACEHOLDER = "<sks>"
LETTERS = "ABCDEFGHIJ"  # option letters a multiple-choice question may use; the scorer scores each of them
QA_FILES = {"query_ques.json": "visual", "non_query_ques.json": "text"}
YOLLAVA_QA_FILES = {"yollava-visual-qa.json": "visual", "yollava-text-qa.json": "text"}
_NAME_SANITIZE = re.compile(r"[^A-Za-z0-9_-]")
NAME_IN_TEXT = re.compile(r"<([A-Za-z0-9_-]{1,64})>")


class DatasetWarning(UserWarning):
    """Something in the dataset folder was ignored (see ``EvalDataset.notes`` / ``skipped``)."""


class UnreadableImageWarning(DatasetWarning):
    """An image file could not be decoded and was skipped."""


class DatasetFormatError(ValueError):
    """The folder does not look like any supported layout."""


# ============================================================================ records
@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class EvalConcept:
    """One personalized concept of an evaluation dataset (the store's record is :class:`plvm.store.ConceptRecord`).

    Attributes:
        id: The dataset's identifier (folder name).
        name: A valid concept name (``[A-Za-z0-9_-]{1,64}``) derived from ``id``; prompts write ``<name>``.
        reference: The one reference photo (what PLVM's Aligner, the text and the image prompt see).
        train_images: Photos a test-time-tuning baseline may learn from (always contains ``reference``).
        query_images: Test photos of the concept (recognition positives; other concepts' negatives).
        negative_images: Concept-specific negatives (Yo'LLaVA's retrieved ``negative_example``), optional.
    """

    id: str
    name: str
    reference: Path
    train_images: list[Path]
    query_images: list[Path]
    negative_images: list[Path] = field(default_factory=list)


@dataclass
class QAItem:
    """One multiple-choice question about one concept.

    ``question`` uses ``<sks>`` for the concept; ``options`` maps letters to option texts; ``answer`` is the
    correct letter; ``image`` is ``None`` for text-only QA.
    """

    concept: str
    question: str
    options: dict[str, str]
    answer: str
    image: Path | None
    source: str
    index: int


@dataclass
class MultiImage:
    """One image of the multi-concept split and the concepts it shows (empty: an external image)."""

    path: Path
    concepts: list[str]

    @property
    def split(self) -> str:
        return "external" if not self.concepts else ("single" if len(self.concepts) == 1 else "multi")


class ImageCache:
    """Decoded RGB images by path, least-recently-used first out (bounded; per dataset, not global).

    Tasks visit items image by image, so a small capacity suffices; full-resolution photos are kept as they
    are (the LVLM's processor resizes them).
    """

    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self._items: OrderedDict[Path, Image.Image] = OrderedDict()

    def get(self, path: Path) -> Image.Image:
        path = Path(path)
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        with Image.open(path) as img:
            image = img.convert("RGB")
        self._items[path] = image
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return image


@dataclass
class EvalDataset:
    """Everything the harness evaluates on, independent of the on-disk format.

    ``skipped`` lists unreadable files (and QA entries that could not be used, with ``path`` = the JSON
    file and the entry index); ``notes`` holds other warnings (e.g. folders without a reference).
    """

    name: str
    root: Path
    format: str
    concepts: dict[str, EvalConcept]
    text_qa: list[QAItem] = field(default_factory=list)
    visual_qa: list[QAItem] = field(default_factory=list)
    multi: list[MultiImage] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cache: ImageCache = field(default_factory=ImageCache, repr=False, compare=False)

    def image(self, path: Path | str) -> Image.Image:
        """The RGB image at ``path`` (decoded once, cached)."""
        return self.cache.get(Path(path))

    def name_of(self, concept_id: str) -> str:
        return self.concepts[concept_id].name

    @property
    def skipped_images(self) -> list[SkippedFile]:
        return [s for s in self.skipped if not s.reason.startswith("qa:") and not s.reason.startswith("multi:")]

    def subset(self, n: int, seed: int = 0) -> "EvalDataset":
        """The same dataset restricted to ``n`` concepts drawn by ``seed`` (all of them when ``n`` ≥ their
        number): their QA items, and multi-concept images with only those concepts listed (the others' people
        become unknown people; an image left with none is external). For methods too costly for every concept,
        e.g. Yo'LLaVA-style tuning."""
        import numpy as np

        if n < 1:
            raise ValueError(f"a concept subset needs n >= 1, got {n}")
        ids = sorted(self.concepts)
        if n < len(ids):
            chosen = np.random.default_rng([seed, 4093]).choice(len(ids), size=n, replace=False)
            ids = sorted(ids[int(i)] for i in chosen)
        keep = set(ids)
        return EvalDataset(
            name=self.name,
            root=self.root,
            format=self.format,
            concepts={cid: self.concepts[cid] for cid in ids},
            text_qa=[q for q in self.text_qa if q.concept in keep],
            visual_qa=[q for q in self.visual_qa if q.concept in keep],
            multi=[MultiImage(m.path, [c for c in m.concepts if c in keep]) for m in self.multi],
            skipped=list(self.skipped),
            notes=[*self.notes, f"{len(ids)} of {len(self.concepts)} concepts (seeded subset, seed {seed})"]
            if len(ids) < len(self.concepts)
            else list(self.notes),
            cache=self.cache,
        )

    def summary(self) -> dict[str, Any]:
        splits: dict[str, int] = {}
        for m in self.multi:
            splits[m.split] = splits.get(m.split, 0) + 1
        return {
            "name": self.name,
            "root": str(self.root),
            "format": self.format,
            "concepts": len(self.concepts),
            "reference_images": len(self.concepts),
            "query_images": sum(len(c.query_images) for c in self.concepts.values()),
            "train_images": sum(len(c.train_images) for c in self.concepts.values()),
            "text_qa": len(self.text_qa),
            "visual_qa": len(self.visual_qa),
            "multi_images": splits,
            "skipped_images": len(self.skipped_images),
            "skipped_entries": len(self.skipped) - len(self.skipped_images),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "notes": list(self.notes),
        }


# ============================================================================ helpers
def natural_key(path: Path) -> list[Any]:
    """Sort key putting ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def is_litter(path: Path) -> bool:
    name = path.name
    return name.lower() in LITTER or name.startswith(".") or name.startswith("._")


def is_image_file(path: Path) -> bool:
    return path.is_file() and not is_litter(path) and path.suffix.lower() in IMAGE_SUFFIXES


def image_error(path: Path) -> str | None:
    """``None`` if ``path`` decodes as an image, else the reason it does not."""
    try:
        with Image.open(path) as img:
            img.load()
    except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, …)
        return f"{type(exc).__name__}: {exc}"
    return None


def sanitize_name(raw: str, taken: Iterable[str] = ()) -> str:
    """A valid, unused concept name for dataset id ``raw`` (``"Mr. T"`` → ``"Mr__T"``)."""
    name = _NAME_SANITIZE.sub("_", raw.strip())[:60] or "concept"
    if name.lower() == "image":
        name = "image_"
    taken_set = set(taken)
    base, i = name, 2
    while name in taken_set:
        name = f"{base}_{i}"
        i += 1
    return name


class _Reader:
    """Shared state of one read: the skipped list, notes and readable-image checks."""

    def __init__(self, root: Path):
        self.root = root
        self.skipped: list[SkippedFile] = []
        self.notes: list[str] = []
        self._checked: dict[Path, bool] = {}

    def note(self, message: str) -> None:
        self.notes.append(message)
        warnings.warn(message, DatasetWarning, stacklevel=3)

    def readable(self, path: Path) -> bool:
        path = Path(path)
        if path not in self._checked:
            reason = image_error(path)
            self._checked[path] = reason is None
            if reason is not None:
                self.skipped.append(SkippedFile(str(path), reason))
                warnings.warn(f"skipping unreadable image {path}: {reason}", UnreadableImageWarning, stacklevel=3)
        return self._checked[path]

    def images_in(self, folder: Path) -> list[Path]:
        """Readable image files directly in ``folder``, in natural order."""
        files = sorted((p for p in folder.iterdir() if is_image_file(p)), key=natural_key)
        return [p for p in files if self.readable(p)]

    def skip_entry(self, source: Path, index: int, reason: str) -> None:
        self.skipped.append(SkippedFile(f"{source}#{index}", reason))

    def resolve(self, rel: str | None, *bases: Path) -> Path | None:
        """Find the file a JSON entry refers to: as given, under each base, or by trailing path components."""
        if not rel:
            return None
        rel_path = Path(str(rel).replace("\\", "/"))
        if rel_path.is_absolute() and rel_path.is_file():
            return rel_path
        parts = [p for p in rel_path.parts if p not in (".", "/")]
        for base in (*bases, self.root, self.root.parent):
            for i in range(len(parts)):
                candidate = base.joinpath(*parts[i:])
                if candidate.is_file():
                    return candidate
        return None


def canonical_question(text: str, aliases: Sequence[str]) -> str:
    """Write the concept as ``<sks>`` whatever the file used (``<sks>``, ``<id>``, ``<name>``)."""
    out = text.strip()
    for alias in dict.fromkeys(a for a in aliases if a):
        out = out.replace(f"<{alias}>", PLACEHOLDER)
    return re.sub(r"<sks>", PLACEHOLDER, out, flags=re.IGNORECASE)


def normalise_options(raw: Any) -> dict[str, str] | None:
    """``{"A": "x", "B": "y"}`` from a dict (letter → text) or a list of texts."""
    if isinstance(raw, dict):
        out = {str(k).strip().strip("().").upper(): str(v).strip() for k, v in raw.items()}
        return out if out and all(len(k) == 1 and k in LETTERS for k in out) else None
    if isinstance(raw, (list, tuple)) and raw:
        return {LETTERS[i]: str(v).strip() for i, v in enumerate(raw[: len(LETTERS)])}
    return None


def normalise_answer(raw: Any, options: dict[str, str]) -> str | None:
    """The correct letter from ``"A"``, ``"(A)"``, ``"A. Brown"`` or the option text ``"Brown"``."""
    if raw is None:
        return None
    text = str(raw).strip()
    m = re.match(r"^\(?([A-Za-z])(?:[\).:]|\s|$)", text)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    for letter, option in options.items():
        if text.lower() == option.lower():
            return letter
    return None


# ============================================================================ format detection
def detect_format(root: str | Path) -> str:
    """``"yollava"`` (``train/`` and ``test/``), ``"plvm"`` (``<id>/ref_img.*``), else :class:`DatasetFormatError`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root} is not a directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        return "yollava"
    for child in root.iterdir():
        if child.is_dir() and any(p.stem == "ref_img" and p.suffix.lower() in IMAGE_SUFFIXES for p in child.iterdir()):
            return "plvm"
    raise DatasetFormatError(
        f"{root} is neither a PLVM validation folder (<id>/ref_img.*, <id>/query_img*.*) nor a Yo'LLaVA "
        "folder (train/<id>/, test/<id>/)"
    )


def read_dataset(root: str | Path, format: str = "auto", **kwargs: Any) -> EvalDataset:
    """Read ``root`` in the given (or detected) format; ``multi/`` is read in both formats."""
    root = Path(root)
    fmt = detect_format(root) if format == "auto" else format
    if fmt == "plvm":
        return read_plvm(root, **kwargs)
    if fmt == "yollava":
        return read_yollava(root, **kwargs)
    raise ValueError(f"unknown dataset format {format!r} (auto | plvm | yollava)")


# ============================================================================ PLVM
def read_plvm(root: str | Path, name: str | None = None) -> EvalDataset:
    """Read a PLVM-validation-style folder (see the module docstring)."""
    root = Path(root)
    reader = _Reader(root)
    concepts: dict[str, EvalConcept] = {}
    for folder in sorted((p for p in root.iterdir() if p.is_dir() and not is_litter(p)), key=natural_key):
        if folder.name == "multi":
            continue
        files = sorted((p for p in folder.iterdir() if is_image_file(p)), key=natural_key)
        refs = [p for p in files if p.stem.lower() == "ref_img"]
        if not refs:
            reader.note(f"{folder} has no ref_img.<ext>; not a concept folder, ignored")
            continue
        ref = refs[0]
        if not reader.readable(ref):
            reader.note(f"concept {folder.name!r} dropped: its reference {ref.name} is unreadable")
            continue
        queries = [p for p in files if p.stem.lower().startswith("query_img")]
        if not queries:
            queries = [p for p in files if p not in refs]
        queries = [p for p in queries if reader.readable(p)]
        concepts[folder.name] = EvalConcept(
            id=folder.name,
            name=sanitize_name(folder.name, (c.name for c in concepts.values())),
            reference=ref,
            train_images=[ref],
            query_images=queries,
        )
    dataset = EvalDataset(name or root.name, root, "plvm", concepts)
    _read_qa_files(reader, dataset, [root] + [root / cid for cid in concepts], QA_FILES)
    _read_multi(reader, dataset)
    dataset.skipped, dataset.notes = reader.skipped, reader.notes
    return dataset


# ============================================================================ Yo'LLaVA
def read_yollava(
    root: str | Path, name: str | None = None, reference_index: int = 0, negative_examples: bool = False
) -> EvalDataset:
    """Read a Yo'LLaVA-style folder (``train/<id>/``, ``test/<id>/``; see the module docstring)."""
    root = Path(root)
    reader = _Reader(root)
    concepts: dict[str, EvalConcept] = {}
    train_root, test_root = root / "train", root / "test"
    for folder in sorted((p for p in train_root.iterdir() if p.is_dir() and not is_litter(p)), key=natural_key):
        train = reader.images_in(folder)
        refs = [p for p in train if p.stem.lower() == "ref_img"]
        if refs:
            ref = refs[0]
        elif train:
            ref = train[min(reference_index, len(train) - 1)]
        else:
            reader.note(f"concept {folder.name!r} dropped: no readable training image in {folder}")
            continue
        test_dir = test_root / folder.name
        queries = reader.images_in(test_dir) if test_dir.is_dir() else []
        if not queries:
            reader.note(f"concept {folder.name!r} has no test images (it can only serve as a negative)")
        negatives: list[Path] = []
        neg_dir = folder / "negative_example"
        if negative_examples and neg_dir.is_dir():
            negatives = reader.images_in(neg_dir)
        concepts[folder.name] = EvalConcept(
            id=folder.name,
            name=sanitize_name(folder.name, (c.name for c in concepts.values())),
            reference=ref,
            train_images=train,
            query_images=queries,
            negative_images=negatives,
        )
    if test_root.is_dir():
        for folder in test_root.iterdir():
            if folder.is_dir() and not is_litter(folder) and folder.name not in concepts:
                reader.note(f"test/{folder.name} has no train/{folder.name} (no reference); ignored")
    dataset = EvalDataset(name or root.name, root, "yollava", concepts)
    _read_qa_files(reader, dataset, [root, root.parent], {**YOLLAVA_QA_FILES, **QA_FILES})
    _read_multi(reader, dataset)
    dataset.skipped, dataset.notes = reader.skipped, reader.notes
    return dataset


# ============================================================================ QA files
def _concept_of(rel: Any, concepts: dict[str, EvalConcept]) -> str | None:
    if not rel:
        return None
    for part in reversed(Path(str(rel).replace("\\", "/")).parts[:-1]):
        if part in concepts:
            return part
    return None


def _entries(data: Any) -> list[dict[str, Any]]:
    """A QA file's entries: a list of objects, or Yo'LLaVA's {image path: object | [objects]} mapping."""
    if isinstance(data, list):
        return [d for d in data if isinstance(d, dict)]
    if isinstance(data, dict):
        out = []
        for key, value in data.items():
            for entry in value if isinstance(value, list) else [value]:
                if isinstance(entry, dict):
                    out.append({"query_img": key, **entry})
        return out
    return []


def _read_qa_files(reader: _Reader, dataset: EvalDataset, folders: Sequence[Path], files: dict[str, str]) -> None:
    seen: set[Path] = set()
    for folder in folders:
        for filename, kind in files.items():
            path = folder / filename
            if not path.is_file() or path.resolve() in seen:
                continue
            seen.add(path.resolve())
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                reader.note(f"{path} is not readable JSON ({exc}); ignored")
                continue
            owner = folder.name if folder.name in dataset.concepts else None
            target = dataset.visual_qa if kind == "visual" else dataset.text_qa
            for index, entry in enumerate(_entries(data)):
                item = _qa_item(reader, dataset, path, index, entry, owner, kind)
                if item is not None:
                    target.append(item)


def _qa_item(
    reader: _Reader,
    dataset: EvalDataset,
    source: Path,
    index: int,
    entry: dict[str, Any],
    owner: str | None,
    kind: str,
) -> QAItem | None:
    concepts = dataset.concepts
    concept = owner or _concept_of(entry.get("ref_img"), concepts) or _concept_of(entry.get("query_img"), concepts)
    if concept is None:
        for key in ("concept", "concept_id", "id", "name"):
            if str(entry.get(key, "")) in concepts:
                concept = str(entry[key])
                break
    if concept is None:
        reader.skip_entry(source, index, "qa: cannot tell which concept the entry is about")
        return None
    question = entry.get("question")
    options = normalise_options(entry.get("multiple_choice", entry.get("options")))
    if not question or options is None or len(options) < 2:
        reader.skip_entry(source, index, "qa: missing question or multiple_choice")
        return None
    answer = normalise_answer(entry.get("correct_answer", entry.get("answer")), options)
    if answer is None:
        reader.skip_entry(source, index, f"qa: correct_answer {entry.get('correct_answer')!r} is not an option")
        return None
    image = None
    if kind == "visual":
        image = reader.resolve(entry.get("query_img"), source.parent, dataset.root / concept)
        if image is None:
            reader.skip_entry(source, index, f"qa: query image {entry.get('query_img')!r} not found")
            return None
        if not reader.readable(image):
            reader.skip_entry(source, index, f"qa: query image {image} is unreadable")
            return None
    record = concepts[concept]
    text = canonical_question(str(question), [record.id, record.name])
    foreign = [n for n in NAME_IN_TEXT.findall(text) if n.lower() not in ("sks", "image")]
    if foreign:
        reader.skip_entry(source, index, f"qa: question names other concepts {foreign}")
        return None
    return QAItem(
        concept=concept,
        question=text,
        options=options,
        answer=answer,
        image=image,
        source=source.name,
        index=index,
    )


# ============================================================================ multi-concept
def _read_multi(reader: _Reader, dataset: EvalDataset) -> None:
    multi_root = dataset.root / "multi"
    index = multi_root / "annotations.json"
    if not multi_root.is_dir():
        return
    if not index.is_file():
        reader.note(f"{multi_root} has no annotations.json; multi-concept split not read")
        return
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reader.note(f"{index} is not readable JSON ({exc}); multi-concept split not read")
        return
    if isinstance(data, list):  # [{"image": …, "concepts": […]}, …]
        data = {str(d.get("image", d.get("file", ""))): d.get("concepts", []) for d in data if isinstance(d, dict)}
    unknown: set[str] = set()
    listed: set[Path] = set()
    for i, (key, ids) in enumerate(data.items()):
        if isinstance(ids, dict):  # {"concepts": [...], ...}
            ids = ids.get("concepts", [])
        ids = [ids] if isinstance(ids, str) else list(ids or [])
        path = reader.resolve(key, multi_root / "images", multi_root)
        if path is None:
            reader.skip_entry(index, i, f"multi: image {key!r} not found")
            continue
        listed.add(path.resolve())
        if not is_image_file(path):
            reader.skip_entry(index, i, f"multi: {key!r} is not an image file")
            continue
        if not reader.readable(path):
            continue
        known = [str(c) for c in ids if str(c) in dataset.concepts]
        unknown.update(str(c) for c in ids if str(c) not in dataset.concepts)
        if ids and not known:
            reader.skip_entry(index, i, f"multi: none of {ids} has a reference image")
            continue
        dataset.multi.append(MultiImage(path, list(dict.fromkeys(known))))
    if unknown:
        reader.note(f"multi/annotations.json names concepts without a reference folder: {sorted(unknown)}")
    images_dir = multi_root / "images"
    if images_dir.is_dir():
        extra = [p for p in images_dir.iterdir() if is_image_file(p) and p.resolve() not in listed]
        if extra:
            reader.note(f"{len(extra)} image(s) in {images_dir} are not in annotations.json; ignored")


__all__ = [
    "DatasetFormatError",
    "DatasetWarning",
    "EvalConcept",
    "EvalDataset",
    "ImageCache",
    "LETTERS",
    "MultiImage",
    "PLACEHOLDER",
    "QAItem",
    "SkippedFile",
    "UnreadableImageWarning",
    "detect_format",
    "read_dataset",
    "read_plvm",
    "read_yollava",
    "sanitize_name",
]
