"""Composing a photo: background, distractor objects, 1–4 avatars, occluders, and the scene graph.

Everything is drawn on a canvas ``supersample`` times larger than the output and reduced with a
box filter at the end (cheap anti-aliasing). The scene graph is plain JSON (ints, floats, strings,
lists, dicts) in output-pixel coordinates; its schema is documented in ``docs/AVATARWORLD.md``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .attributes import Identity
from .backgrounds import draw_background
from .objects import FIXED_COLOR, OBJECT_COLORS, OBJECT_HEIGHT, OBJECT_NAMES, OBJECT_PLACE, draw_object, object_box
from .palette import REFERENCE_BACKGROUNDS
from .person import CLOTHING_COLORS, CLOTHING_TYPES, EXPRESSIONS, Look, draw_person, face_geometry, head_top

GRAPH_VERSION = 1
#: Reference portraits: pixels per avatar unit (as a fraction of the side) and the head centre height.
PORTRAIT_SCALE = 0.205
PORTRAIT_CENTER_Y = 0.43

Rect = tuple[float, float, float, float]


@dataclass
class Scene:
    """A rendered photo and its ground truth.

    Attributes:
        image: The RGB image.
        graph: JSON-serialisable scene graph (``people`` sorted left to right, ``background``, ``objects``).
    """

    image: Image.Image
    graph: dict[str, Any]

    @property
    def identity_ids(self) -> list[str]:
        """Ids of the people in the photo, left to right."""
        return [p["identity"] for p in self.graph["people"]]


@dataclass(frozen=True)
class SceneOptions:
    """Knobs of the scene sampler (probabilities are per scene unless stated).

    Attributes:
        supersample: Drawing resolution factor (2 = draw at twice the size, then box-filter down).
        occlusion_prob: Probability of a foreground object partially hiding one person.
        glasses_off_prob: Per person: probability that someone who owns glasses is not wearing them.
        max_objects: Maximum number of background distractor objects.
        tilt_deg: Maximum head roll.
        yaw: Maximum head turn (in [0, 1]).
    """

    supersample: int = 2
    occlusion_prob: float = 0.15
    glasses_off_prob: float = 0.05
    max_objects: int = 3
    tilt_deg: float = 9.0
    yaw: float = 0.6


@dataclass
class _Placed:
    identity: Identity
    look: Look
    cx: float
    cy: float
    s: float
    head: Rect = (0, 0, 0, 0)
    torso: Rect = (0, 0, 0, 0)
    full: Rect = (0, 0, 0, 0)
    extra: dict[str, Any] = field(default_factory=dict)


# Head half-width (unit scale, px) as a fraction of the image width, by number of people.
_SCALE: Mapping[int, tuple[float, float]] = MappingProxyType(
    {1: (0.12, 0.17), 2: (0.095, 0.125), 3: (0.078, 0.098), 4: (0.064, 0.078)}
)


_OCCLUDER_HEIGHT: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"plant": (0.3, 0.5), "box": (0.16, 0.28), "chair": (0.3, 0.42)}
)


def _rects(p: _Placed, H: float) -> None:
    face = face_geometry(p.identity.attributes["face_shape"])
    top = min(head_top(p.identity.attributes), -(face.ry + 0.1))
    p.head = (
        p.cx - (face.rx + 0.15) * p.s,
        p.cy - (face.ry + 0.1) * p.s,
        p.cx + (face.rx + 0.15) * p.s,
        p.cy + (face.ry + 0.05) * p.s,
    )
    p.torso = (p.cx - 1.66 * p.s, p.cy + 1.28 * p.s, p.cx + 1.66 * p.s, H)
    p.full = (p.cx - 1.7 * p.s, p.cy + top * p.s, p.cx + 1.7 * p.s, H)


@functools.lru_cache(maxsize=8)
def _grid(n: int, ellipse: bool) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.linspace(0.5 / n, 1 - 0.5 / n, n), np.linspace(0.5 / n, 1 - 0.5 / n, n))
    gx, gy = gx.ravel(), gy.ravel()
    if ellipse:
        keep = (gx - 0.5) ** 2 + (gy - 0.5) ** 2 <= 0.25
        gx, gy = gx[keep], gy[keep]
    gx.setflags(write=False)
    gy.setflags(write=False)
    return gx, gy


def _visible_fraction(rect: Rect, occluders: Sequence[Rect], ellipse: bool = False, n: int = 9) -> float:
    """Approximate fraction of ``rect`` (or its inscribed ellipse) not covered by ``occluders``."""
    if not occluders:
        return 1.0
    x0, y0, x1, y1 = rect
    gx, gy = _grid(n, ellipse)
    px, py = x0 + gx * (x1 - x0), y0 + gy * (y1 - y0)
    occ = np.asarray(occluders, dtype=np.float64)
    covered = (
        (px[None, :] >= occ[:, 0:1])
        & (px[None, :] <= occ[:, 2:3])
        & (py[None, :] >= occ[:, 1:2])
        & (py[None, :] <= occ[:, 3:4])
    ).any(axis=0)
    return float(1.0 - covered.mean())


def _sample_look(identity: Identity, rng: np.random.Generator, opts: SceneOptions) -> Look:
    glasses_worn = True
    if identity.attributes["glasses"] != "none" and rng.random() < opts.glasses_off_prob:
        glasses_worn = False
    return Look(
        clothing_type=CLOTHING_TYPES[int(rng.integers(len(CLOTHING_TYPES)))],
        clothing_color=CLOTHING_COLORS[int(rng.integers(len(CLOTHING_COLORS)))],
        expression=EXPRESSIONS[int(rng.integers(len(EXPRESSIONS)))],
        glasses_worn=glasses_worn,
        tilt=float(rng.uniform(-opts.tilt_deg, opts.tilt_deg)),
        yaw=float(rng.uniform(-opts.yaw, opts.yaw)),
    )


def _layout(
    people: Sequence[Identity], looks: Sequence[Look], rng: np.random.Generator, W: float, H: float
) -> list[_Placed]:
    n = len(people)
    lo, hi = _SCALE[min(max(n, 1), 4)]
    best: list[_Placed] | None = None
    best_vis = -1.0
    for _attempt in range(25):
        slots = rng.permutation(n)
        placed: list[_Placed] = []
        for i, ident in enumerate(people):
            if n == 1:
                xf = rng.uniform(0.22, 0.78)
            else:
                xf = (slots[i] + 0.5) / n + rng.uniform(-0.22, 0.22) / n
            yf = rng.uniform(0.3, 0.6)
            s = W * rng.uniform(lo, hi) * (0.85 + 0.3 * (yf - 0.3) / 0.3)
            face = face_geometry(ident.attributes["face_shape"])
            top = -head_top(ident.attributes)
            cy = max(yf * H, top * s + 0.02 * H)
            margin = (face.rx + 0.25) * s
            cx = float(np.clip(xf * W, margin, W - margin))
            p = _Placed(ident, looks[i], cx, float(cy), float(s))
            _rects(p, H)
            placed.append(p)
        order = sorted(range(n), key=lambda k: (placed[k].s, k))
        worst = 1.0
        for rank, k in enumerate(order):
            later = [r for j in order[rank + 1 :] for r in (placed[j].head, placed[j].torso)]
            worst = min(worst, _visible_fraction(placed[k].head, later, ellipse=True))
        ordered = [placed[k] for k in order]
        if worst >= 0.8:
            return ordered
        if worst > best_vis:
            best, best_vis = ordered, worst
    assert best is not None
    return best


def position_words(cx: float, cy: float, W: float, H: float) -> tuple[str, str]:
    """Horizontal (left/middle/right, by thirds) and vertical (top/bottom, by halves) position words."""
    horiz = "left" if cx < W / 3 else ("right" if cx > 2 * W / 3 else "middle")
    vert = "top" if cy < H / 2 else "bottom"
    return horiz, vert


def _round_box(r: Rect, f: float, W: float, H: float) -> list[int]:
    x0, y0, x1, y1 = r
    return [
        int(round(max(0.0, x0) / f)),
        int(round(max(0.0, y0) / f)),
        int(round(min(W, x1) / f)),
        int(round(min(H, y1) / f)),
    ]


def render_people(
    people: Sequence[Identity],
    rng: np.random.Generator,
    size: int,
    opts: SceneOptions = SceneOptions(),
    background: str | None = None,
) -> Scene:
    """Render a photo of ``people`` (1–4) in a random setting drawn from ``rng``."""
    if not 1 <= len(people) <= 4:
        raise ValueError("a scene holds 1 to 4 people")
    if len({p.id for p in people}) != len(people):
        raise ValueError("a person can appear only once per scene")
    f = int(opts.supersample)
    W = H = int(size) * f
    canvas = Image.new("RGB", (W, H))
    bg = draw_background(canvas, rng, background)
    draw = ImageDraw.Draw(canvas)
    looks = [_sample_look(p, rng, opts) for p in people]
    placed = _layout(people, looks, rng, W, H)
    person_rects = [r for p in placed for r in (p.head, p.torso)]

    # background objects, kept mostly visible
    objects: list[dict[str, Any]] = []
    allowed = [
        o
        for o in OBJECT_NAMES
        if not (OBJECT_PLACE[o] == "wall" and bg["kind"] != "indoor") and not (o == "lamp" and bg["kind"] == "outdoor")
    ]
    n_obj = int(rng.integers(0, opts.max_objects + 1))
    floor_y = bg.get("floor_y")
    for _ in range(n_obj):
        name = allowed[int(rng.integers(len(allowed)))]
        color = FIXED_COLOR.get(name, OBJECT_COLORS[int(rng.integers(len(OBJECT_COLORS)))])
        h = H * rng.uniform(*OBJECT_HEIGHT[name])
        for _try in range(8):
            x = W * rng.uniform(0.06, 0.94)
            place = OBJECT_PLACE[name]
            if place == "floor":
                yb = H * (rng.uniform(floor_y, min(1.0, floor_y + 0.12)) if floor_y else rng.uniform(0.85, 1.0))
            elif place == "wall":
                yb = H * rng.uniform(0.22, 0.45)
            else:
                yb = H * rng.uniform(0.3, 0.55)
            box = object_box(name, x, yb, h)
            others = person_rects + [tuple(o["_rect"]) for o in objects]
            if _visible_fraction(box, others) >= 0.6:
                rect = draw_object(draw, name, x, yb, h, color)
                objects.append({"name": name, "color": color, "_rect": rect, "occludes": None})
                break

    # people, far (small) to near (large)
    for p in placed:
        bottom_v = (H - p.cy) / p.s + 0.3
        draw_person(draw, p.identity.attributes, p.look, p.cx, p.cy, p.s, bottom_v=bottom_v)

    # an occasional foreground occluder
    fg_rects: list[Rect] = []
    if rng.random() < opts.occlusion_prob:
        rank = int(rng.integers(len(placed)))
        tgt = placed[rank]
        nearer = [r for q in placed[rank + 1 :] for r in (q.head, q.torso)]
        name = ("plant", "box", "chair", "lamp")[int(rng.integers(4))]
        color = FIXED_COLOR.get(name, OBJECT_COLORS[int(rng.integers(len(OBJECT_COLORS)))])
        for _try in range(6):  # keep at least 60% of the face visible
            if name == "lamp":  # tall and thin: its shade may hide a side of the face
                h = H - (tgt.cy + tgt.s * rng.uniform(-0.7, 0.6))
            else:
                h = H * rng.uniform(*_OCCLUDER_HEIGHT[name])
            side = 1 if rng.random() < 0.5 else -1
            x = tgt.cx + side * tgt.s * rng.uniform(0.5, 1.4)
            box = object_box(name, x, float(H), float(h))
            if _visible_fraction(tgt.head, nearer + [box], ellipse=True) >= 0.6:
                rect = draw_object(draw, name, x, float(H), float(h), color)
                fg_rects.append(rect)
                objects.append({"name": name, "color": color, "_rect": rect, "occludes": tgt.identity.id})
                break

    image = canvas.reduce(f) if f > 1 else canvas
    out_w, out_h = image.size

    people_graph = []
    for rank, p in enumerate(placed):
        later = [r for q in placed[rank + 1 :] for r in (q.head, q.torso)] + fg_rects
        face_vis = _visible_fraction(p.head, later, ellipse=True)
        body_vis = _visible_fraction(p.torso, later)
        horiz, vert = position_words(p.cx, p.cy, W, H)
        people_graph.append(
            {
                "identity": p.identity.id,
                "bbox": _round_box(p.full, f, W, H),
                "face_bbox": _round_box(p.head, f, W, H),
                "center": [round(p.cx / f, 1), round(p.cy / f, 1)],
                "position": horiz,
                "vertical": vert,
                "clothing_color": p.look.clothing_color,
                "clothing_type": p.look.clothing_type,
                "expression": p.look.expression,
                "glasses_worn": bool(p.look.glasses_worn and p.identity.attributes["glasses"] != "none"),
                "tilt": round(p.look.tilt, 2),
                "yaw": round(p.look.yaw, 3),
                "head_width": round(2 * p.s / f, 1),
                "depth_rank": rank,
                "face_visible": round(face_vis, 3),
                "body_visible": round(body_vis, 3),
                "occluded": bool(face_vis < 0.98 or body_vis < 0.8),
                "attributes": dict(p.identity.attributes),
            }
        )
    people_graph.sort(key=lambda d: (d["center"][0], d["identity"]))
    obj_graph = [
        {
            "name": o["name"],
            "color": o["color"],
            "bbox": _round_box(o["_rect"], f, W, H),
            "foreground": o["occludes"] is not None,
            "occludes": o["occludes"],
        }
        for o in objects
    ]
    graph = {
        "version": GRAPH_VERSION,
        "size": [out_w, out_h],
        "n_people": len(people_graph),
        "people": people_graph,
        "background": {k: v for k, v in bg.items() if k != "floor_y"},
        "objects": obj_graph,
    }
    return Scene(image=image, graph=graph)


def render_portrait(
    identity: Identity, size: int, rng: np.random.Generator, supersample: int = 2, look: Look | None = None
) -> Image.Image:
    """A clean, centred, frontal head-and-shoulders image on a plain background (the reference photo)."""
    f = int(supersample)
    W = H = int(size) * f
    bg = REFERENCE_BACKGROUNDS[int(rng.integers(len(REFERENCE_BACKGROUNDS)))]
    if look is None:
        look = Look(
            clothing_type=CLOTHING_TYPES[int(rng.integers(len(CLOTHING_TYPES)))],
            clothing_color=CLOTHING_COLORS[int(rng.integers(len(CLOTHING_COLORS)))],
            expression=("serious", "smiling")[int(rng.integers(2))],
            glasses_worn=True,
        )
    canvas = Image.new("RGB", (W, H), bg)
    draw = ImageDraw.Draw(canvas)
    s = PORTRAIT_SCALE * W
    cy = PORTRAIT_CENTER_Y * H
    draw_person(draw, identity.attributes, look, W / 2, cy, s, bottom_v=(H - cy) / s + 0.3)
    return canvas.reduce(f) if f > 1 else canvas


def portrait_face_bbox(identity: Identity, size: int) -> tuple[float, float, float, float]:
    """The face box (output px, as a scene graph's ``face_bbox``) of ``identity``'s reference portrait of side
    ``size``: the same formula as a scene person's head rectangle, at the portrait's centre and scale."""
    face = face_geometry(identity.attributes["face_shape"])
    s, cx, cy = PORTRAIT_SCALE * size, size / 2, PORTRAIT_CENTER_Y * size
    return (cx - (face.rx + 0.15) * s, cy - (face.ry + 0.1) * s, cx + (face.rx + 0.15) * s, cy + (face.ry + 0.05) * s)


def portrait_to_pixel(u: float, v: float, size: int) -> tuple[float, float]:
    """Output-pixel position of avatar unit point ``(u, v)`` in a reference portrait of side ``size``."""
    return size / 2 + u * PORTRAIT_SCALE * size, PORTRAIT_CENTER_Y * size + v * PORTRAIT_SCALE * size
