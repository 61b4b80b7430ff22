"""Real photos: detection recall, a regression set for identify, and the threshold calibration (issue 28).

``python -m plvm.bench.face_real {recall,regression,calibrate} [--backends dlib,insightface] [--json F]``

Everything runs on the real photos that installable packages ship (:mod:`plvm.bench.face_photos`) and on
label-preserving edits of them (:func:`variants`: scale, crop, off-centre, rotation, JPEG, grey, ...).
The people are split in two disjoint groups:

* :data:`EVAL_IDENTITIES` — the **regression set**: one reference portrait per person (the concept), and
  as queries the other real photos of that person plus the edits of every photo. Each query is asked
  against its own person (a positive question) and every other person (negatives); faceless photos are
  asked against everyone. Scored through :class:`plvm.identify.Identifier` with an image-feature encoder
  that calls *every* photo identical, so an answer decided by whole-image features would show up as a
  false positive.
* :data:`CALIBRATION_IDENTITIES` — where ``default_threshold`` and the confidence slope are chosen
  (:func:`calibrate`): Yao Ming (portrait vs team photo), the 2008 team, three Spurs players and six
  actors, with the same edits.

No timing is asserted anywhere; the ms columns are measurements for docs/FACE.md.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ..encoders.face import FaceBackendUnavailable, FaceEncoder, similarity
from .face_photos import RealPhoto, real_photos

Box = tuple[float, float, float, float]

#: Regression-set people: reference photo key, and the other real photos of them used as queries.
EVAL_IDENTITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Barack Obama": ("obama", ("obama2", "obama3", "obama_partial")),
    "Joe Biden": ("biden", ()),
    "Grace Hopper": ("grace_hopper", ()),
    "Eileen Collins": ("astronaut", ()),
    "Tom Hanks": ("tom_hanks", ()),
}
#: Faceless photos asked about every regression-set person (the answer must be "no face found").
FACELESS = ("brick", "grass", "coffee", "chelsea")
#: Photos of the calibration people (disjoint from :data:`EVAL_IDENTITIES`).
CALIBRATION_PHOTOS = ("yaoming", "players", "spurs", "t1")
CALIBRATION_IDENTITIES = (
    "Yao Ming",
    "China national team 2008 (16 faces)",
    "Tim Duncan",
    "Manu Ginobili",
    "Tony Parker",
    "six actors (t1.jpg)",
)
#: Calibration faces at least this large (shorter box side, px) in a photo as shipped serve as references.
REFERENCE_MIN_FACE = 60.0
#: Reference portraits for the recall table (one face each) and group photos with small faces.
PORTRAITS = ("obama", "obama2", "obama3", "biden", "grace_hopper", "astronaut", "tom_hanks", "yaoming")
GROUPS = ("players", "spurs", "t1")


# ------------------------------------------------------------------------------------------ edits
@dataclass(frozen=True)
class Variant:
    """An edit of a real photo and where its ground-truth faces went.

    Attributes:
        name: ``"<photo>/<edit>"``.
        image: The edited RGB image.
        boxes: Ground-truth face boxes in the edited image (same order as the photo's ``faces``).
    """

    name: str
    image: Image.Image
    boxes: tuple[Box, ...]


def _affine_boxes(boxes: Iterable[Box], scale: float, dx: float, dy: float) -> tuple[Box, ...]:
    return tuple((x0 * scale + dx, y0 * scale + dy, x1 * scale + dx, y1 * scale + dy) for x0, y0, x1, y1 in boxes)


def _rotate_boxes(boxes: Iterable[Box], angle: float, size: tuple[int, int], new: tuple[int, int]) -> tuple[Box, ...]:
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    cx, cy, ncx, ncy = (size[0] - 1) / 2, (size[1] - 1) / 2, (new[0] - 1) / 2, (new[1] - 1) / 2
    out = []
    for x0, y0, x1, y1 in boxes:
        mx, my = (x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy
        px, py = c * mx + s * my + ncx, -s * mx + c * my + ncy  # PIL: counter-clockwise on screen
        hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
        out.append((px - hw, py - hh, px + hw, py + hh))
    return tuple(out)


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return im.convert("RGB")


#: The edits of :func:`variants`, in order.
EDITS = (
    "original",
    "half",
    "quarter",
    "double",
    "tight",
    "offcentre",
    "small",
    "rot15",
    "rot-30",
    "jpeg10",
    "grey",
    "flip",
    "dark",
)


def variants(photo: RealPhoto, edits: Sequence[str] = EDITS, face: int = 0) -> list[Variant]:
    """Label-preserving edits of ``photo`` (the ones that made real photos miss in issue 28).

    ``half`` / ``quarter`` / ``double``: resized ×0.5 / ×0.25 / ×2; ``tight``: cropped to 1.1× the face box
    (the face fills the frame, as in many reference portraits); ``offcentre``: the photo in the bottom-
    right corner of a grey canvas 2.5× its size; ``small``: resized so face ``face`` is 48 px high, on a
    1280×960 grey canvas at 70 % / 25 %; ``rot15`` / ``rot-30``: rotated (canvas expanded); ``jpeg10``:
    JPEG quality 10; ``grey``: greyscale; ``flip``: mirrored; ``dark``: brightness ×0.4.
    """
    img = photo.load()
    w, h = img.size
    boxes = tuple(photo.faces)
    out: list[Variant] = []
    grey_bg = (128, 128, 128)
    for edit in edits:
        if edit == "original":
            out.append(Variant(f"{photo.key}/{edit}", img, boxes))
        elif edit in ("half", "quarter", "double"):
            f = {"half": 0.5, "quarter": 0.25, "double": 2.0}[edit]
            nw, nh = max(1, round(w * f)), max(1, round(h * f))
            out.append(
                Variant(
                    f"{photo.key}/{edit}",
                    img.resize((nw, nh), Image.Resampling.LANCZOS),
                    _affine_boxes(boxes, nw / w, 0, 0),
                )
            )
        elif edit == "tight" and boxes:
            x0, y0, x1, y1 = boxes[face]
            cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, 1.1 * max(x1 - x0, y1 - y0)
            crop = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
            out.append(
                Variant(f"{photo.key}/{edit}", img.crop(crop), _affine_boxes([boxes[face]], 1.0, -crop[0], -crop[1]))
            )
        elif edit == "offcentre":
            canvas = Image.new("RGB", (int(w * 2.5), int(h * 2.5)), grey_bg)
            dx, dy = canvas.width - w, canvas.height - h
            canvas.paste(img, (dx, dy))
            out.append(Variant(f"{photo.key}/{edit}", canvas, _affine_boxes(boxes, 1.0, dx, dy)))
        elif edit == "small" and boxes:
            x0, y0, x1, y1 = boxes[face]
            f = 48.0 / (y1 - y0)
            nw, nh = max(1, round(w * f)), max(1, round(h * f))
            small = img.resize((nw, nh), Image.Resampling.LANCZOS)
            canvas = Image.new("RGB", (1280, 960), grey_bg)
            fx, fy = (x0 + x1) / 2 * f, (y0 + y1) / 2 * f  # the face centre goes to (70 %, 25 %)
            dx, dy = int(0.7 * 1280 - fx), int(0.25 * 960 - fy)
            canvas.paste(small, (dx, dy))
            out.append(Variant(f"{photo.key}/{edit}", canvas, _affine_boxes(boxes, nw / w, dx, dy)))
        elif edit.startswith("rot"):
            angle = float(edit[3:])
            rot = img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=grey_bg)
            out.append(Variant(f"{photo.key}/{edit}", rot, _rotate_boxes(boxes, angle, img.size, rot.size)))
        elif edit.startswith("jpeg"):
            out.append(Variant(f"{photo.key}/{edit}", _jpeg(img, int(edit[4:])), boxes))
        elif edit == "grey":
            out.append(Variant(f"{photo.key}/{edit}", ImageOps.grayscale(img).convert("RGB"), boxes))
        elif edit == "flip":
            out.append(
                Variant(
                    f"{photo.key}/{edit}",
                    ImageOps.mirror(img),
                    tuple((w - x1, y0, w - x0, y1) for x0, y0, x1, y1 in boxes),
                )
            )
        elif edit == "dark":
            out.append(Variant(f"{photo.key}/{edit}", ImageEnhance.Brightness(img).enhance(0.4), boxes))
    return out


# ------------------------------------------------------------------------------------------ recall
def box_found(gt: Box, detections: Sequence[Any]) -> bool:
    """Whether a detection covers the ground-truth face ``gt``: its box contains ``gt``'s centre and its
    size is within 0.4–2.5× of ``gt``'s (detectors draw boxes of different tightness)."""
    cx, cy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
    g = math.sqrt(max(1e-9, (gt[2] - gt[0]) * (gt[3] - gt[1])))
    for d in detections:
        x0, y0, x1, y1 = d.box
        s = math.sqrt(max(1e-9, (x1 - x0) * (y1 - y0)))
        if x0 <= cx <= x1 and y0 <= cy <= y1 and 0.4 <= s / g <= 2.5:
            return True
    return False


def detection_recall(encoder: FaceEncoder, items: Sequence[Variant]) -> dict[str, Any]:
    """Faces found / ground-truth faces and ms per photo (``encoder.detect``) over ``items``.

    Returns:
        ``{"found", "faces", "recall", "photos", "ms_median", "ms_mean", "missed": [names]}``.
    """
    found = total = 0
    times, missed = [], []
    for v in items:
        t = time.perf_counter()
        dets = encoder.detect(v.image)
        times.append((time.perf_counter() - t) * 1e3)
        hits = [box_found(b, dets) for b in v.boxes]
        found += sum(hits)
        total += len(hits)
        missed += [f"{v.name}#{i}" for i, ok in enumerate(hits) if not ok]
    return {
        "found": found,
        "faces": total,
        "recall": round(found / total, 4) if total else None,
        "photos": len(items),
        "ms_median": round(float(np.median(times)), 1) if times else None,
        "ms_mean": round(float(np.mean(times)), 1) if times else None,
        "missed": missed,
    }


def recall_sets(photos: dict[str, RealPhoto] | None = None) -> dict[str, list[Variant]]:
    """The two recall sets: ``portraits`` (each portrait as shipped, cropped tight so the face fills the
    frame, doubled, and off-centre) and ``small faces`` (the group photos, and each portrait with its face
    48 px high on a 1280×960 canvas)."""
    photos = real_photos() if photos is None else photos
    portraits, small = [], []
    for key in PORTRAITS:
        if key in photos:
            portraits += variants(photos[key], ("original", "tight", "double", "offcentre"))
            small += variants(photos[key], ("small",))
    for key in GROUPS:
        if key in photos:
            small += variants(photos[key], ("original",))
    return {"portraits": portraits, "small faces": small}


# ------------------------------------------------------------------------------------------ regression
class SameForEveryPhoto:
    """An image-feature "encoder" that gives every photo the same vector (cosine 1 to every reference).

    Used as the :class:`~plvm.identify.Identifier`'s reference encoder in the regression set: a person
    concept's answer decided by whole-image features would be "present" for every question.
    """

    kind = "ref:same-for-every-photo"
    face = None

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.ones((len(images), 4), dtype=np.float32)


@dataclass
class RegressionSet:
    """References (concept → photo) and queries (variant, the person in it or ``None``)."""

    references: dict[str, Image.Image]
    queries: list[tuple[Variant, str | None]]


def regression_set(
    photos: dict[str, RealPhoto] | None = None, edits: Sequence[str] = EDITS, other_edits: Sequence[str] | None = None
) -> RegressionSet:
    """:data:`EVAL_IDENTITIES`' reference portraits, and as queries every edit of every photo of them (the
    reference photo's edits but not the photo itself; the other photos of the person as shipped too, and
    with ``other_edits`` — default ``edits``) plus the faceless photos."""
    photos = real_photos() if photos is None else photos
    refs: dict[str, Image.Image] = {}
    queries: list[tuple[Variant, str | None]] = []
    for person, (ref_key, others) in EVAL_IDENTITIES.items():
        if ref_key not in photos:
            continue
        refs[person] = photos[ref_key].load()
        for key in (ref_key, *others):
            if key in photos:
                wanted = (
                    [e for e in edits if e != "original"]
                    if key == ref_key
                    else ("original", *[e for e in (edits if other_edits is None else other_edits) if e != "original"])
                )
                queries += [(v, person) for v in variants(photos[key], wanted)]
    for key in FACELESS:
        if key in photos:
            queries.append((Variant(f"{key}/original", photos[key].load(), ()), None))
    return RegressionSet(refs, queries)


def score_regression(encoder: FaceEncoder, rs: RegressionSet, threshold: float | None = None) -> dict[str, Any]:
    """Ask every query about every regression-set person through :class:`plvm.identify.Identifier`.

    Returns:
        ``{"pos_acc", "neg_acc", "mean_acc", "questions", "positives", "negatives", "errors": [...],
        "reasons": {reason: count}, "ms_per_query", "threshold"}`` — ``errors`` lists each wrong answer
        (query, concept, score, reason).
    """
    from ..eval.methods.identification import FeatureTable
    from ..identify import Identifier, face_kind, main_face

    table = FeatureTable()
    image_encoder = SameForEveryPhoto()
    for person, img in rs.references.items():
        faces = encoder.detect_and_embed(img)
        main = main_face(faces, img.size)
        features = {image_encoder.kind: image_encoder.features([img])[0]}
        if main is not None:
            features[face_kind(encoder)] = np.asarray(main.embedding, np.float32)
        table.put(person, features)
    identifier = Identifier(table, image_encoder, face=encoder, threshold=0.5, face_threshold=threshold)
    tp = fn = tn = fp = 0
    errors, reasons, times = [], {}, []
    for variant, person in rs.queries:
        t = time.perf_counter()
        result = identifier.identify(variant.image, top_k=None)
        times.append((time.perf_counter() - t) * 1e3)
        by_name = {m.name: m for m in result.matches}
        for concept in rs.references:
            m = by_name.get(concept)
            present = bool(m is not None and m.present)
            reason = None if m is None else m.reason
            reasons[reason] = reasons.get(reason, 0) + 1
            if concept == person:
                tp += present
                fn += not present
            else:
                tn += not present
                fp += present
            if present != (concept == person):
                errors.append(
                    {
                        "query": variant.name,
                        "concept": concept,
                        "truth": concept == person,
                        "score": None if m is None or m.score is None else round(m.score, 3),
                        "source": None if m is None else m.source,
                        "reason": reason,
                    }
                )
    pos = tp / max(1, tp + fn)
    neg = tn / max(1, tn + fp)
    return {
        "backend": encoder.name,
        "threshold": identifier.face_threshold,
        "pos_acc": round(pos, 4),
        "neg_acc": round(neg, 4),
        "mean_acc": round((pos + neg) / 2, 4),
        "questions": tp + fn + tn + fp,
        "positives": tp + fn,
        "negatives": tn + fp,
        "queries": len(rs.queries),
        "references": len(rs.references),
        "errors": errors,
        "reasons": reasons,
        "ms_per_query": round(float(np.median(times)), 1) if times else None,
    }


# ------------------------------------------------------------------------------------------ calibration
def calibration_pairs(
    encoder: FaceEncoder, photos: dict[str, RealPhoto] | None = None, edits: Sequence[str] = EDITS
) -> dict[str, list[float]]:
    """Same-person and different-person cosines among the calibration people (:data:`CALIBRATION_PHOTOS`).

    Every ground-truth face of every edit of every calibration photo is embedded (the detection matched to
    the ground-truth box). *Reference* faces, as a concept's would be, are the faces of the photos as
    shipped that are at least :data:`REFERENCE_MIN_FACE` px (a portrait, the actors, the Spurs — not the
    ~45 px team faces, which are queries only). Genuine: Yao Ming's portrait vs Yao Ming (#13) in the team
    photo, and each reference face vs the same face in the edits; impostors: each reference face vs every
    other reference face and every query face of another person.
    """
    photos = real_photos() if photos is None else photos
    refs: list[tuple[str, np.ndarray]] = []
    queries: list[tuple[str, np.ndarray]] = []
    for key in CALIBRATION_PHOTOS:
        if key not in photos:
            continue
        for v in variants(photos[key], edits):
            faces = encoder.detect_and_embed(v.image)
            for i, gt in enumerate(v.boxes):
                hit = [f for f in faces if box_found(gt, [f])]
                if not hit:
                    continue
                person = "Yao Ming" if (key == "yaoming" or (key == "players" and i == 4)) else f"{key}#{i}"
                best = max(hit, key=lambda f: f.score)
                if v.name.endswith("/original") and min(best.width, best.height) >= REFERENCE_MIN_FACE:
                    refs.append((person, best.embedding))
                else:
                    queries.append((person, best.embedding))
    genuine, impostor = [], []
    for i, (pa, ea) in enumerate(refs):
        for j, (pb, eb) in enumerate(refs):
            if j > i:
                (genuine if pa == pb else impostor).append(float(similarity(ea, eb)))
        for pb, eb in queries:
            (genuine if pa == pb else impostor).append(float(similarity(ea, eb)))
    return {"genuine": genuine, "impostor": impostor}


def choose_threshold(genuine: Sequence[float], impostor: Sequence[float]) -> tuple[float, float]:
    """The cosine threshold maximising balanced accuracy (midpoint of the widest gap among the best), and
    the class-balanced maximum-likelihood slope of ``sigmoid(slope * (cos - threshold))`` (Platt's
    smoothed targets ``1 - 1/(n+ + 2)`` and ``1/(n- + 2)``, so separable pairs give a finite slope).

    Returns:
        ``(threshold, slope)``.
    """
    g, im = np.sort(np.asarray(genuine, np.float64)), np.sort(np.asarray(impostor, np.float64))
    cands = np.unique(np.concatenate([g, im]))
    mids = np.concatenate([[cands[0] - 1e-3], (cands[:-1] + cands[1:]) / 2, [cands[-1] + 1e-3]])
    tpr = 1.0 - np.searchsorted(g, mids, side="left") / len(g)
    tnr = np.searchsorted(im, mids, side="left") / len(im)
    bal = (tpr + tnr) / 2
    best = np.flatnonzero(bal >= bal.max() - 1e-12)
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)  # consecutive maximisers form gaps
    widest = max(runs, key=lambda r: mids[r[-1]] - mids[r[0]])
    threshold = float((mids[widest[0]] + mids[widest[-1]]) / 2)
    x = np.concatenate([g, im]) - threshold
    # Platt's smoothed targets: with separable pairs the unsmoothed slope would grow without bound
    y = np.concatenate([np.full(len(g), 1.0 - 1.0 / (len(g) + 2)), np.full(len(im), 1.0 / (len(im) + 2))])
    wts = np.concatenate([np.full(len(g), 0.5 / len(g)), np.full(len(im), 0.5 / len(im))])
    slope = 10.0
    for _ in range(100):  # Newton on the weighted log-likelihood of one parameter
        p = 1.0 / (1.0 + np.exp(-np.clip(slope * x, -60, 60)))
        grad = float((wts * (y - p) * x).sum())
        hess = float((wts * p * (1 - p) * x * x).sum())
        if hess <= 1e-12:
            break
        step = grad / hess
        slope = float(np.clip(slope + step, 1.0, 1e4))
        if abs(step) < 1e-6:
            break
    return round(threshold, 3), round(slope, 1)


def calibrate(encoder: FaceEncoder, photos: dict[str, RealPhoto] | None = None) -> dict[str, Any]:
    """:func:`calibration_pairs` → :func:`choose_threshold`, with the distributions and error counts."""
    pairs = calibration_pairs(encoder, photos)
    g, im = pairs["genuine"], pairs["impostor"]
    if not g or not im:
        return {"backend": encoder.name, "unavailable": "no calibration pairs (photos missing?)"}
    threshold, slope = choose_threshold(g, im)

    def stats(xs):
        a = np.asarray(xs)
        return {
            "n": int(a.size),
            "min": round(float(a.min()), 3),
            "p05": round(float(np.percentile(a, 5)), 3),
            "median": round(float(np.median(a)), 3),
            "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3),
        }

    return {
        "backend": encoder.name,
        "threshold": threshold,
        "slope": slope,
        "genuine": stats(g),
        "impostor": stats(im),
        "genuine_rejected": int(sum(x < threshold for x in g)),
        "impostor_accepted": int(sum(x >= threshold for x in im)),
        "identities": list(CALIBRATION_IDENTITIES),
    }


# ------------------------------------------------------------------------------------------ CLI
def _encoders(backends: Sequence[str], **overrides: Any) -> Iterable[tuple[str, FaceEncoder | str]]:
    from .face import make_encoder

    for b in backends:
        try:
            yield b, make_encoder(b, **overrides)
        except FaceBackendUnavailable as exc:
            yield b, str(exc)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m plvm.bench.face_real", description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("recall", "regression", "calibrate", "all"))
    ap.add_argument("--backends", default="dlib,insightface")
    ap.add_argument("--no-retry", action="store_true", help="FaceConfig(det_retry=False): the first pass only")
    ap.add_argument("--det-size", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.no_retry:
        overrides["det_retry"] = False
    if args.det_size:
        overrides["det_size"] = args.det_size
    out: dict[str, Any] = {}
    photos = real_photos()
    for b, enc in _encoders([x for x in args.backends.split(",") if x], **overrides):
        if isinstance(enc, str):
            print(f"{b}: unavailable — {enc}")
            out[b] = {"unavailable": enc}
            continue
        res: dict[str, Any] = {
            "det_size": enc.det_size,
            "det_scales": list(enc.config.det_scales),
            "det_retry": enc.config.det_retry,
        }
        enc.detect(photos[next(iter(photos))].load())  # warm-up
        if args.what in ("recall", "all"):
            res["recall"] = {name: detection_recall(enc, items) for name, items in recall_sets(photos).items()}
            for name, r in res["recall"].items():
                print(
                    f"{b} recall {name}: {r['found']}/{r['faces']} = {r['recall']}  ({r['photos']} photos, "
                    f"{r['ms_median']} ms median, {r['ms_mean']} mean)  missed {r['missed']}"
                )
        if args.what in ("calibrate", "all"):
            res["calibration"] = cal = calibrate(enc, photos)
            print(f"{b} calibration: {json.dumps(cal)}")
        if args.what in ("regression", "all"):
            res["regression"] = reg = score_regression(enc, regression_set(photos))
            print(
                f"{b} regression (threshold {reg['threshold']}): pos {reg['pos_acc']} neg {reg['neg_acc']} "
                f"mean {reg['mean_acc']} over {reg['questions']} questions ({reg['queries']} queries × "
                f"{reg['references']} people), {reg['ms_per_query']} ms/query; reasons {reg['reasons']}"
            )
            for e in reg["errors"]:
                print(f"   wrong: {e}")
        out[b] = res
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()


__all__ = [
    "CALIBRATION_IDENTITIES",
    "CALIBRATION_PHOTOS",
    "EDITS",
    "EVAL_IDENTITIES",
    "FACELESS",
    "GROUPS",
    "PORTRAITS",
    "RegressionSet",
    "SameForEveryPhoto",
    "Variant",
    "box_found",
    "calibrate",
    "calibration_pairs",
    "choose_threshold",
    "detection_recall",
    "recall_sets",
    "regression_set",
    "score_regression",
    "variants",
]
