"""Fixtures shared by several test modules."""

from __future__ import annotations

import warnings

import pytest

from plvm.encoders.face import FaceBackendUnavailable, FaceConfig, FaceEncoder, NonCommercialWeightsWarning


@pytest.fixture(scope="module", params=["dlib", "insightface"])
def enc(request) -> FaceEncoder:
    """Each real face backend (dlib, insightface) that is installed; the test is skipped for a missing one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonCommercialWeightsWarning)
            return FaceEncoder.from_config(FaceConfig(backend=request.param, allow_noncommercial=True))
    except FaceBackendUnavailable as exc:
        pytest.skip(f"{request.param} backend unavailable: {exc}")
