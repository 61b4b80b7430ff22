"""Encoders that turn a photo into identity features (faces: :mod:`plvm.encoders.face`)."""

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
