"""Who is in this photo? Rank stored concepts by reference-encoder similarity to a query image.

Each stored concept carries the feature vector of its reference image under the Aligner's frozen encoder
(DINOv2's CLS token, the same ``z_ref[:, 0]`` the Aligner's ``f_word``/``f_weight`` read). A query image —
and, when given, regions of it — is encoded the same way, and the cosine similarity with *every* stored
concept is **one matrix product** ``Q [R, d] @ M.T [d, N]`` against the store's cached, L2-normalised
feature matrix (:meth:`plvm.store.ConceptStore.feature_matrix`).

Regions come from explicit boxes and/or an optional face backend: any object with
``detect_and_embed(image) -> list[Face]`` where a ``Face`` has ``box`` ``(x0, y0, x1, y1)``, ``score`` and
``embedding`` (the interface of ``plvm.encoders.face.FaceEncoder``). With a face backend:

* detected face boxes are added as regions for the reference-encoder similarity, and
* face embeddings are matched against concepts whose reference image had a face (their face embedding is
  stored at add time under the kind ``face:<backend name>``), with their own threshold. Such a *person*
  concept is decided by its face alone, always: by its best face match when the query shows faces, and
  as a negative with reason ``"no face found"`` when it shows none — never by whole-image (or region)
  features, which say "same" for photos that merely look alike. Only concepts whose reference has no
  face (a dog, a mug) use the image-feature path.

Scores are cosine similarities in ``[-1, 1]`` (``None`` when there was nothing to compare: no face in the
query); a concept is *present* when its best score reaches the threshold of the source that produced it.
Every match says why (:data:`REASONS`), and face matches carry the backend's calibrated confidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from .concept import ConceptEmbedding
from .encoders.face import face_confidence
from .store import EncodedConcept, FeatureMatrix
from .validation import check_boxes, check_finite, check_threshold, check_top_k

Box = tuple[float, float, float, float]

DEFAULT_THRESHOLD = 0.6
DEFAULT_FACE_THRESHOLD = 0.4

#: Why a match is (not) present. Person concepts: ``face match`` / ``no matching face`` (faces seen, none
#: reaches the threshold) / ``no face found`` (the query shows no face) / ``no face backend`` (identify runs
#: without one) / ``face from another backend`` (the reference face was embedded by a different backend).
#: Other concepts: ``image match`` / ``no image match`` (whole photo or a given/face region).
REASONS = (
    "face match",
    "no matching face",
    "no face found",
    "no face backend",
    "face from another backend",
    "image match",
    "no image match",
)


class FaceLike(Protocol):
    box: Sequence[float]
    score: float
    embedding: Any


class FeatureSource(Protocol):
    """Where :class:`Identifier` reads stored vectors: a :class:`~plvm.store.ConceptStore` or an in-memory table.

    ``feature_kinds() -> {kind: count}`` is optional; with it, concepts whose face was stored by another
    backend are still recognised as person concepts (and never matched by image features).
    """

    def feature_matrix(self, kind: str) -> FeatureMatrix: ...


class FaceBackend(Protocol):
    """What :class:`Identifier` needs from a face detector/embedder (e.g. ``plvm.encoders.face.FaceEncoder``)."""

    def detect_and_embed(self, image: Image.Image) -> Sequence[FaceLike]: ...


def face_kind(backend: Any) -> str:
    """Feature kind under which a backend's face embeddings are stored: ``face:<name>``."""
    name = getattr(backend, "name", None) or type(backend).__name__
    return f"face:{name}"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def clamp_box(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Round and clip ``(x0, y0, x1, y1)`` to the image; ``None`` if nothing is left."""
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {tuple(box)}")
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    bx = (max(0, int(round(x0))), max(0, int(round(y0))), min(w, int(round(x1))), min(h, int(round(y1))))
    return bx if bx[2] - bx[0] >= 2 and bx[3] - bx[1] >= 2 else None


# ---------------------------------------------------------------------- encoding
#: Images above this many pixels are box-reduced by an integer factor before the encoder's processor (which
#: would otherwise convert the whole photo to arrays); the encoder sees 224 px, so nothing it uses is lost.
WORKING_PIXELS = 16_000_000


def _working_size(image: Image.Image) -> Image.Image:
    pixels = image.width * image.height
    if pixels <= WORKING_PIXELS:
        return image
    factor = int(np.ceil(np.sqrt(pixels / WORKING_PIXELS)))
    return image.reduce(factor) if min(image.size) // factor >= 1 else image


class ReferenceEncoder:
    """The Aligner's frozen encoder as a feature extractor, and the one-pass concept maker of the store.

    Args:
        plvm: A :class:`plvm.pipeline.PLVM`.
        face: Optional face backend; if given, a concept's reference image also yields a face embedding.
    """

    def __init__(self, plvm: Any, face: FaceBackend | None = None):
        self.plvm = plvm
        self.face = face
        cfg = plvm.aligner.config
        self.kind = f"ref:{cfg.encoder}:{cfg.d_enc}:{cfg.image_size}"

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        images = [_working_size(im if im.mode == "RGB" else im.convert("RGB")) for im in images]
        out = self.plvm.reference_processor(images=images, return_tensors="pt")
        return out["pixel_values"]

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
        """CLS features ``[N, d_enc]`` (float32, not normalised) of ``images``."""
        chunks = []
        for i in range(0, len(images), batch_size):
            z_ref = self.plvm.aligner.encode_reference(self._pixels(images[i : i + batch_size]))
            chunks.append(z_ref[:, 0].float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, self.plvm.aligner.config.d_enc), np.float32)

    @torch.no_grad()
    def encode(self, name: str, image: Image.Image) -> EncodedConcept:
        """One encoder pass → the concept's embeddings and its feature vector(s)."""
        z_ref = self.plvm.aligner.encode_reference(self._pixels([image]))
        concept: ConceptEmbedding = self.plvm.stamp(self.plvm.aligner.make_concepts([name], z_ref=z_ref))[0]
        features, metadata = self.face_features(image)
        features[self.kind] = z_ref[0, 0].float().cpu().numpy()
        return EncodedConcept(concept, features, metadata)

    def face_features(self, image: Image.Image) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The main face's embedding (``{face:<backend>: [d]}``, empty if none) and what was found.

        Metadata ``{"face": {"backend", "faces_found", "box", "score"}}`` — ``faces_found = 0`` records
        that the reference shows no face (the concept still works through the image features); ``{}``
        without a face backend.
        """
        if self.face is None:
            return {}, {}
        faces = list(self.face.detect_and_embed(image))
        main = main_face(faces, image.size)
        record: dict[str, Any] = {"backend": face_kind(self.face), "faces_found": len(faces)}
        features: dict[str, np.ndarray] = {}
        if main is not None:
            features[face_kind(self.face)] = np.asarray(main.embedding, dtype=np.float32).reshape(-1)
            record.update(box=[round(float(v), 1) for v in main.box], score=round(float(main.score), 4))
        return features, {"face": record}


def main_face(faces: Sequence[FaceLike], size: tuple[int, int]) -> FaceLike | None:
    """The reference photo's subject (:func:`plvm.encoders.face.pick_main_face`: the largest face, discounted
    by its distance from the centre, among faces scoring ≥ half the best); ``None`` without faces."""
    from .encoders.face import pick_main_face

    return pick_main_face(faces, *size) if faces else None


def horizontal_place(box: Sequence[float], width: int) -> str:
    """``"on the left"`` / ``"in the middle"`` / ``"on the right"`` of a box's centre in thirds of ``width``."""
    cx = (float(box[0]) + float(box[2])) / 2 / max(1, width)
    return "on the left" if cx < 1 / 3 else ("on the right" if cx > 2 / 3 else "in the middle")


def visual_prompt(result: IdentifyResult, width: int, names: Iterable[str] | None = None) -> str:
    """A training-free, set-of-mark style prompt in words from an identification (MC-LLaVA spirit).

    For every present match (restricted to ``names`` if given): ``"<bo> is the person on the left."`` when
    the match has a box (a face or region), else ``"<bo> appears in this photo."``; ``""`` if nobody matched.
    """
    wanted = None if names is None else {n.strip("<>") for n in names}
    parts = []
    for m in result.present:
        if wanted is not None and m.name not in wanted:
            continue
        if m.box is not None:
            parts.append(f"<{m.name}> is the person {horizontal_place(m.box, width)}.")
        else:
            parts.append(f"<{m.name}> appears in this photo.")
    return " ".join(parts)


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class Match:
    """One stored concept's best score on the query.

    Attributes:
        name: Concept name (bare).
        score: Cosine similarity of the best-matching query region; ``None`` when nothing was compared
            (a person concept and a query without a detected face).
        source: ``"image"`` (whole photo), ``"region"`` (a given box), or ``"face"`` (face embedding).
        box: The region that matched best, or ``None`` for the whole image.
        present: ``score`` reached the threshold for ``source``.
        reason: Why, one of :data:`REASONS` (``None`` for matches built by hand).
        confidence: For face matches, the backend's calibrated probability of "same person"
            (``FaceEncoder.confidence``); ``None`` otherwise.
    """

    name: str
    score: float | None
    source: str
    box: tuple[int, int, int, int] | None
    present: bool
    reason: str | None = None
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "token": f"<{self.name}>",
            "score": None if self.score is None else round(self.score, 4),
            "source": self.source,
            "box": list(self.box) if self.box else None,
            "present": self.present,
            "reason": self.reason,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
        }


@dataclass
class IdentifyResult:
    """Ranked matches (best first) and the thresholds used."""

    matches: list[Match]
    threshold: float
    face_threshold: float | None = None
    regions: list[tuple[int, int, int, int]] = field(default_factory=list)
    num_concepts: int = 0
    faces_found: int | None = None

    @property
    def present(self) -> list[Match]:
        return [m for m in self.matches if m.present]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "face_threshold": self.face_threshold,
            "num_concepts": self.num_concepts,
            "regions": [list(r) for r in self.regions],
            "faces_found": self.faces_found,
            "matches": [m.to_dict() for m in self.matches],
            "present": [m.name for m in self.present],
        }


# ---------------------------------------------------------------------- identification
class Identifier:
    """Ranks a store's concepts against query images.

    Args:
        store: The concept store (its feature matrix is cached and invalidated on writes), or any
            :class:`FeatureSource` (e.g. the evaluation harness's in-memory table).
        encoder: The :class:`ReferenceEncoder` whose features the store holds.
        face: Optional face backend (used for extra regions and face-embedding matches).
        threshold: Cosine similarity from which a concept counts as present (reference features).
        face_threshold: The same for face embeddings; ``None`` takes the face backend's own calibrated
            ``threshold`` (dlib 0.93, insightface 0.40 — docs/FACE.md), else ``DEFAULT_FACE_THRESHOLD``.
    """

    def __init__(
        self,
        store: FeatureSource,
        encoder: ReferenceEncoder,
        face: FaceBackend | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        face_threshold: float | None = None,
    ):
        self.store = store
        self.encoder = encoder
        self.face = face if face is not None else getattr(encoder, "face", None)
        # a programmatic setting may sit above 1 (nothing passes); requests are held to [-1, 1] (identify())
        self.threshold = check_finite(threshold, "threshold")
        if face_threshold is None:
            face_threshold = float(getattr(self.face, "threshold", DEFAULT_FACE_THRESHOLD))
        self.face_threshold = face_threshold

    def identify(
        self,
        image: Image.Image,
        regions: Iterable[Sequence[float]] | None = None,
        threshold: float | None = None,
        top_k: int | None = 10,
        whole_image: bool = True,
    ) -> IdentifyResult:
        """Score every stored concept on ``image`` (and its ``regions``); best ``top_k`` first.

        ``threshold``, ``top_k`` and ``regions`` are checked by :mod:`plvm.validation` (a region must lie
        inside the image); :class:`~plvm.validation.InvalidInputError` says what is allowed.
        """
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        top_k = check_top_k(top_k)
        image = image if image.mode == "RGB" else image.convert("RGB")
        boxes = [b for b in (clamp_box(r, image.size) for r in check_boxes(regions, image.size)) if b is not None]
        faces: list[FaceLike] = []
        if self.face is not None:
            faces = list(self.face.detect_and_embed(image))
            boxes += [b for b in (clamp_box(f.box, image.size) for f in faces) if b is not None]
        boxes = list(dict.fromkeys(boxes))
        crops = ([image] if whole_image else []) + [image.crop(b) for b in boxes]
        crop_boxes: list[tuple[int, int, int, int] | None] = ([None] if whole_image else []) + boxes
        persons = self.person_concepts()
        best: dict[str, Match] = {}
        ref = self.store.feature_matrix(self.encoder.kind)
        image_concepts = [n not in persons for n in ref.names] if persons else None
        # image features only for concepts without a face (skip the encoder when there are none)
        if len(ref) and crops and (image_concepts is None or any(image_concepts)):
            query = _unit(self.encoder.features(crops))  # [R, d]
            if query.shape[1] != ref.matrix.shape[1]:
                raise ValueError(
                    f"stored features have width {ref.matrix.shape[1]}, the encoder gives {query.shape[1]}"
                )
            scores = query @ ref.matrix.T  # [R, N] — the one matrix product over all stored concepts
            rows = scores.argmax(axis=0)
            top = scores[rows, np.arange(scores.shape[1])]
            if image_concepts is not None:
                top = np.where(image_concepts, top, -np.inf)
            keep = np.flatnonzero(np.isfinite(top))
            if top_k is not None and len(keep) > top_k:  # only the best k need Match objects
                keep = keep[np.argpartition(-top[keep], max(0, int(top_k)))[: max(0, int(top_k))]]
            for j in keep:
                name, box, score = ref.names[int(j)], crop_boxes[int(rows[j])], float(top[j])
                best[name] = Match(
                    name,
                    score,
                    "image" if box is None else "region",
                    box,
                    score >= threshold,
                    "image match" if score >= threshold else "no image match",
                )
        face_threshold = self.face_threshold if self.face is not None else None
        best.update(self._face_matches(persons, faces, image.size, top_k))
        matches = sorted(best.values(), key=lambda m: (not m.present, m.score is None, -(m.score or 0.0)))
        if top_k is not None:
            matches = matches[: max(0, int(top_k))]
        return IdentifyResult(
            matches,
            threshold,
            face_threshold,
            boxes,
            max(len(ref), len(persons)),
            None if self.face is None else len(faces),
        )

    def person_concepts(self) -> dict[str, str]:
        """``name → face kind`` of every stored concept whose reference has a face (any backend)."""
        kinds = [face_kind(self.face)] if self.face is not None else []
        listed = getattr(self.store, "feature_kinds", None)
        if callable(listed):
            kinds += sorted(k for k in listed() if k.startswith("face:") and k not in kinds)
        persons: dict[str, str] = {}
        for kind in kinds:
            for name in self.store.feature_matrix(kind).names:
                persons.setdefault(name, kind)
        return persons

    def _face_matches(
        self, persons: dict[str, str], faces: Sequence[FaceLike], size: tuple[int, int], top_k: int | None
    ) -> dict[str, Match]:
        """The answer for every person concept, decided by faces only (see :data:`REASONS`)."""
        out: dict[str, Match] = {}
        if not persons:
            return out
        limit = None if top_k is None else max(0, int(top_k))

        def absent(names: Iterable[str], reason: str) -> None:
            for n in names:
                if limit is not None and len(out) >= limit:
                    return
                out[n] = Match(n, None, "face", None, False, reason)

        if self.face is None:
            absent(sorted(persons), "no face backend")
            return out
        kind = face_kind(self.face)
        fm = self.store.feature_matrix(kind)
        embeddings = [np.asarray(f.embedding, dtype=np.float32).reshape(-1) for f in faces]
        slope = getattr(getattr(self.face, "calibration", None), "slope", None)
        if len(fm) and embeddings:
            fscores = _unit(np.stack(embeddings)) @ fm.matrix.T  # [F, N_face]
            rows = fscores.argmax(axis=0)
            top = fscores[rows, np.arange(len(fm.names))]
            keep = np.arange(len(top))
            if limit is not None and len(top) > limit:
                keep = np.argpartition(-top, limit)[:limit]
            for j in keep:
                name, score = fm.names[int(j)], float(top[j])
                present = score >= self.face_threshold
                out[name] = Match(
                    name,
                    score,
                    "face",
                    clamp_box(faces[int(rows[j])].box, size),
                    present,
                    "face match" if present else "no matching face",
                    None if slope is None else face_confidence(score, self.face_threshold, slope),
                )
        elif len(fm):
            absent(fm.names, "no face found")
        absent(sorted(n for n, k in persons.items() if k != kind), "face from another backend")
        return out


__all__ = [
    "Box",
    "DEFAULT_FACE_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "REASONS",
    "FaceBackend",
    "IdentifyResult",
    "Identifier",
    "Match",
    "ReferenceEncoder",
    "clamp_box",
    "face_confidence",
    "face_kind",
    "horizontal_place",
    "main_face",
    "visual_prompt",
]
