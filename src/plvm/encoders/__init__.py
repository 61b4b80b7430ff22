"""Encoders that turn a photo into identity features (faces: :mod:`plvm.encoders.face`).

The face backends (:mod:`.face_dlib`, :mod:`.face_insightface`) are imported here, which registers them with
:data:`plvm.encoders.face.BACKENDS` (``FaceEncoder.from_config`` looks them up there); their own heavy imports
(dlib, onnxruntime) happen only when an encoder is built.
"""

from . import face_dlib, face_insightface  # noqa: F401  (each registers its backend)
from .face import (
    Face,
    FaceBackendUnavailable,
    FaceBox,
    FaceConfig,
    FaceEncoder,
    NonCommercialLicenseError,
    NonCommercialWeightsWarning,
    similarity,
)

__all__ = [
    "Face",
    "FaceBackendUnavailable",
    "FaceBox",
    "FaceConfig",
    "FaceEncoder",
    "NonCommercialLicenseError",
    "NonCommercialWeightsWarning",
    "similarity",
]
