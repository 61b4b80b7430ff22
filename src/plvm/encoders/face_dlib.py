"""dlib backend: HOG or MMOD-CNN detector + 5-point shape predictor + ResNet (128-d).

Model files come from the ``face-recognition-models`` sdist (``face_recognition_models/models/``); the
package is never imported (its ``__init__`` needs ``pkg_resources``). The Python bindings come from
``dlib-bin`` (a prebuilt wheel of dlib; ``dlib`` from source works as well).

Files used, all released into the public domain by their author (Davis King, dlib-models; the
package's LICENSE is CC0): ``mmod_human_face_detector.dat`` (only with ``dlib_detector="cnn"``),
``shape_predictor_5_face_landmarks.dat`` and ``dlib_face_recognition_resnet_model_v1.dat``. The
68-point predictor in the same package is trained on iBUG 300-W, whose licence excludes commercial
use; it is **never loaded** here.

Chips are 150×150 aligned to dlib's 5-point template with padding 0.25 — what
``dlib.get_face_chip(img, shape, 150, 0.25)`` produces and the ResNet was trained on — computed with
the shared numpy/PIL warp. The network sees RGB uint8 (it normalises internally).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .face import (
    FaceBackendUnavailable,
    FaceCalibration,
    FaceConfig,
    FaceEncoder,
    backend_model_dir,
    dlib_template,
    register_backend,
)

DETECTOR_CNN_FILE = "mmod_human_face_detector.dat"
PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNIZER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL_HINT = 'pip install "dlib-bin==20.0.1.post1" "face-recognition-models==0.3.0"'


def _dlib():
    try:
        import dlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FaceBackendUnavailable(f"the dlib backend needs the dlib bindings: {INSTALL_HINT}") from exc
    return dlib


@functools.lru_cache(maxsize=1)
def load_hog_detector():
    """dlib's frontal HOG face detector (built in, no file)."""
    return _dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=4)
def load_cnn_detector(path: str):
    """dlib's MMOD CNN face detector from ``path``."""
    return _dlib().cnn_face_detection_model_v1(path)


@functools.lru_cache(maxsize=4)
def load_shape_predictor(path: str):
    """A dlib shape predictor from ``path``."""
    return _dlib().shape_predictor(path)


@functools.lru_cache(maxsize=4)
def load_recognizer(path: str):
    """dlib's face-recognition ResNet from ``path``."""
    return _dlib().face_recognition_model_v1(path)


def model_dir(config: FaceConfig) -> Path:
    """Where the .dat files are: ``config.model_dir`` or the installed face-recognition-models package."""
    return backend_model_dir(config, "face_recognition_models", "models", "dlib", INSTALL_HINT)


@register_backend("dlib")
class DlibFaceEncoder(FaceEncoder):
    """dlib HOG/CNN + 5-point predictor + ResNet. 128-d embeddings, 150×150 chips. Public-domain weights."""

    name = "dlib-resnet_v1"
    embedding_dim = 128
    crop_size = 150
    template = dlib_template(150, 0.25)
    template.setflags(write=False)
    #: Subject's left = image right for a frontal face.
    landmark_names = ("left_eye_outer", "left_eye_inner", "right_eye_outer", "right_eye_inner", "nose_base")
    #: Chosen on people disjoint from the regression set (docs/FACE.md, ``python -m plvm.bench.face_real
    #: calibrate``): 112 genuine pairs 0.930–1.000, 2,463 impostor pairs 0.734–0.948 (18 above 0.93, all
    #: ~45 px team faces). dlib's own rule, Euclidean 0.6 on raw descriptors, is cosine ≈ 0.905.
    calibration = FaceCalibration(
        threshold=0.93,
        slope=98.3,
        genuine=112,
        impostor=2463,
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
    default_det_threshold = 0.0
    #: HOG's window is 80 px and ``dlib_upsample=1`` doubles the canvas, so a 960 canvas finds faces down to
    #: ~40/960 of the photo's longer side (raw HOG on the 1237 px team photo's ~45 px faces: 16/16; at 640: 2/16).
    default_det_size = 960
    license = "dlib models: public domain / CC0 (the 68-point iBUG predictor is never loaded)"
    pad_canvas = False

    def __init__(self, config: FaceConfig):
        super().__init__(config)
        dlib = _dlib()
        d = model_dir(config)
        need = [PREDICTOR_FILE, RECOGNIZER_FILE] + ([DETECTOR_CNN_FILE] if config.dlib_detector == "cnn" else [])
        missing = [f for f in need if not (d / f).is_file()]
        if missing:
            raise FaceBackendUnavailable(f"missing {', '.join(missing)} in {d}: {INSTALL_HINT}")
        self._rectangle = dlib.rectangle
        self._det = (
            load_cnn_detector(str(d / DETECTOR_CNN_FILE)) if config.dlib_detector == "cnn" else load_hog_detector()
        )
        self._sp = load_shape_predictor(str(d / PREDICTOR_FILE))
        self._rec = load_recognizer(str(d / RECOGNIZER_FILE))

    def _detect_canvases(self, canvases):
        thr = self.det_threshold
        up = self.config.dlib_upsample
        results = []
        if self.config.dlib_detector == "cnn":
            for c in canvases:  # sizes differ per scale: one call each
                dets = self._det(c, up)
                rects = [(d.rect, d.confidence) for d in dets if d.confidence >= thr]
                results.append(self._pack(rects))
            return results
        for c in canvases:
            rects, scores, _ = self._det.run(c, up, thr)
            results.append(self._pack(list(zip(rects, scores))))
        return results

    @staticmethod
    def _pack(rects):
        if not rects:
            return np.zeros((0, 4)), np.zeros(0), None
        # dlib rectangles are inclusive: right = left + width - 1
        boxes = np.array([[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r, _ in rects], dtype=np.float64)
        return boxes, np.array([s for _, s in rects], dtype=np.float64), None

    def _refine_landmarks(self, image, boxes, landmarks):
        """5 points from the shape predictor, run on the full-resolution image inside each merged box."""
        out = np.zeros((len(boxes), 5, 2), dtype=np.float64)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            rect = self._rectangle(int(round(x0)), int(round(y0)), int(round(x1)) - 1, int(round(y1)) - 1)
            shape = self._sp(image, rect)
            out[i] = [(p.x, p.y) for p in shape.parts()]
        return out

    def _embed_chips(self, chips):
        vecs = self._rec.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return np.array([np.asarray(v, dtype=np.float32) for v in vecs], dtype=np.float32).reshape(len(chips), -1)


__all__ = ["DlibFaceEncoder", "model_dir"]
