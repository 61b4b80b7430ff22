"""Identification in the harness (face-aware identify, issue "person identity on real photos").

Two methods, measured on the same items as every other row:

=====================  ==========================================================================
method (key)           what decides / what the LVLM sees
=====================  ==========================================================================
``identify``           no LVLM: "is ``c`` in the photo?" = the product's :class:`~plvm.identify.Identifier`
                       finds ``c`` — a detected face whose embedding matches ``c``'s reference face
                       (cosine ≥ the backend's calibrated threshold), or, for concepts whose reference
                       has no face, the reference-encoder CLS similarity ≥ ``threshold``. Recognition only.
``plvm-idp``           PLVM, plus a training-free, set-of-mark style *visual prompt in words* built from
                       the same identification: ``"<bo> is the person on the left."`` before the question
                       (:func:`plvm.identify.visual_prompt`); nothing is added when ``<bo>`` is not found.
=====================  ==========================================================================

Both build one :class:`IdentifyIndex` over the evaluated concepts (reference CLS feature + main face
embedding) and cache the identification of each query photo, so a photo is detected/embedded once.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ...conversation import Conversation
from ...identify import DEFAULT_THRESHOLD, Identifier, IdentifyResult, Match, ReferenceEncoder, visual_prompt
from ...store import FeatureMatrix
from ..readers import EvalDataset
from .base import Binding, Method
from .embedding import PLVMMethod


class FeatureTable:
    """In-memory :class:`~plvm.identify.FeatureSource`: vectors by kind and concept id."""

    def __init__(self) -> None:
        self._vectors: dict[str, dict[str, np.ndarray]] = {}
        self._cache: dict[str, FeatureMatrix] = {}

    def feature_kinds(self) -> dict[str, int]:
        """Stored kinds and how many concepts have each (as :meth:`plvm.store.ConceptStore.feature_kinds`)."""
        return {kind: len(rows) for kind, rows in self._vectors.items() if rows}

    def put(self, name: str, features: dict[str, np.ndarray]) -> None:
        for kind, vector in features.items():
            self._vectors.setdefault(kind, {})[name] = np.asarray(vector, np.float32).reshape(-1)
            self._cache.pop(kind, None)

    def feature_matrix(self, kind: str) -> FeatureMatrix:
        if kind not in self._cache:
            rows = self._vectors.get(kind, {})
            names = sorted(rows)
            matrix = np.stack([rows[n] for n in names]) if names else np.zeros((0, 0), np.float32)
            self._cache[kind] = FeatureMatrix.normalized(kind, names, matrix)
        return self._cache[kind]


class IdentifyIndex:
    """The evaluated concepts' reference features and a per-photo cache of identifications.

    Args:
        plvm: the PLVM whose frozen reference encoder gives the image features.
        face: a face backend (``plvm.encoders.face.FaceEncoder``) or ``None`` (image features only).
        threshold: image-feature cosine threshold; ``face_threshold``: ``None`` → the backend's own.
    """

    def __init__(
        self, plvm: Any, face: Any = None, threshold: float = DEFAULT_THRESHOLD, face_threshold: float | None = None
    ):
        self.encoder = ReferenceEncoder(plvm, face=face)
        self.table = FeatureTable()
        self.identifier = Identifier(
            self.table, self.encoder, face=face, threshold=threshold, face_threshold=face_threshold
        )
        self.references: dict[str, dict[str, Any]] = {}
        self._results: dict[str, IdentifyResult] = {}

    def add(self, dataset: EvalDataset, concept_id: str) -> None:
        if concept_id in self.references:
            return
        image = dataset.image(dataset.concepts[concept_id].reference)
        features, metadata = self.encoder.face_features(image)
        features[self.encoder.kind] = self.encoder.features([image])[0]
        self.table.put(concept_id, features)
        self.references[concept_id] = metadata.get("face", {})

    def identify(self, image: Image.Image) -> IdentifyResult:
        key = hashlib.blake2b(image.tobytes() + repr(image.size).encode(), digest_size=16).hexdigest()
        if key not in self._results:
            self._results[key] = self.identifier.identify(image, top_k=None)
        return self._results[key]

    def match(self, image: Image.Image, concept_id: str) -> Match | None:
        return next((m for m in self.identify(image).matches if m.name == concept_id), None)

    def reason_counts(self) -> dict[str, int]:
        """How often each :data:`plvm.identify.REASONS` entry decided a (photo, concept) answer so far."""
        counts: dict[str, int] = {}
        for result in self._results.values():
            for m in result.matches:
                counts[str(m.reason)] = counts.get(str(m.reason), 0) + 1
        return dict(sorted(counts.items()))

    def describe(self) -> dict[str, Any]:
        refs = list(self.references.values())
        return {
            "face_backend": getattr(self.identifier.face, "name", None),
            "threshold": self.identifier.threshold,
            "face_threshold": self.identifier.face_threshold if self.identifier.face is not None else None,
            "references_with_face": sum(1 for r in refs if r.get("box")),
            "references": len(refs),
            "photos_identified": len(self._results),
            "photos_without_face": sum(1 for r in self._results.values() if r.faces_found == 0),
            "reasons": self.reason_counts(),
        }


class IdentifyRecognition(Method):
    """Recognition by identification alone (no LVLM, no prompt tokens)."""

    key = "identify"
    label = "Identify (face / feature threshold, no LVLM)"
    tasks = ("recog",)

    def __init__(self, lvlm: Any, index: IdentifyIndex):
        super().__init__(lvlm)
        self.index = index

    def prepare_concept(self, dataset: EvalDataset, concept_id: str) -> None:
        self.index.add(dataset, concept_id)

    def recognize(self, concept_id: str, image: Image.Image) -> tuple[bool, float, str]:
        """``(present, score, source)`` for concept ``concept_id`` on ``image``; a person concept on a photo
        without a detected face is ``(False, -inf, "face")`` (never decided by image features; the reasons
        are counted in :meth:`IdentifyIndex.describe`)."""
        match = self.index.match(image, concept_id)
        if match is None:
            return False, float("-inf"), "none"
        score = float("-inf") if match.score is None else float(match.score)  # no face found: ranks last
        return bool(match.present), score, match.source

    def conversation(self, text: str, bindings: Sequence[Binding], images: Sequence[Image.Image] = ()) -> Conversation:
        raise NotImplementedError("the identify method answers recognition without the LVLM")

    def concept_tokens(self, concept_id: str) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "identify": self.index.describe()}


class PLVMIdentifyPrompt(PLVMMethod):
    """PLVM with the identify visual prompt before each question about a photo."""

    key = "plvm-idp"
    label = "PLVM + identify prompt"

    def __init__(self, plvm: Any, index: IdentifyIndex):
        super().__init__(plvm)
        self.index = index
        self.hints_given = 0
        self.questions = 0

    def prepare_concept(self, dataset: EvalDataset, concept_id: str) -> None:
        super().prepare_concept(dataset, concept_id)
        self.index.add(dataset, concept_id)

    def hint(self, bindings: Sequence[Binding], image: Image.Image) -> str:
        result = self.index.identify(image)
        by_id = {m.name: m for m in result.matches}
        renamed = [
            Match(b.name, m.score, m.source, m.box, m.present, m.reason, m.confidence)
            for b in bindings
            if (m := by_id.get(b.concept)) is not None
        ]
        return visual_prompt(IdentifyResult(renamed, result.threshold), image.width)

    def conversation(self, text: str, bindings: Sequence[Binding], images: Sequence[Image.Image] = ()) -> Conversation:
        hint = self.hint(bindings, images[0]) if images else ""
        self.questions += bool(images)
        self.hints_given += bool(hint)
        return super().conversation(f"{hint}\n{text}" if hint else text, bindings, images)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "identify": self.index.describe(),
            "questions_with_photo": self.questions,
            "questions_with_hint": self.hints_given,
        }


__all__ = ["FeatureTable", "IdentifyIndex", "IdentifyRecognition", "PLVMIdentifyPrompt"]
