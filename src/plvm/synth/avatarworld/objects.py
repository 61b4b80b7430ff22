"""Distractor objects (plant, lamp, ball, clock, balloon, chair, box, picture) drawn in pixel space.

Each object is anchored at its bottom centre ``(x, y_bottom)`` with a height ``h`` in pixels;
:func:`draw_object` returns its bounding box so the scene graph can record it.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Mapping

from PIL import ImageDraw

from .palette import OBJECT, RGB, mix, outline_of, shade

OBJECT_NAMES: tuple[str, ...] = ("plant", "lamp", "ball", "clock", "balloon", "chair", "box", "picture")
#: Where an object sits: on the floor, on the wall, or in the air.
OBJECT_PLACE: Mapping[str, str] = MappingProxyType(
    {
        "plant": "floor",
        "lamp": "floor",
        "ball": "floor",
        "chair": "floor",
        "box": "floor",
        "clock": "wall",
        "picture": "wall",
        "balloon": "air",
    }
)
#: Height range of each object as a fraction of the image height.
OBJECT_HEIGHT: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "plant": (0.24, 0.38),
        "lamp": (0.42, 0.6),
        "ball": (0.08, 0.14),
        "chair": (0.28, 0.38),
        "box": (0.14, 0.22),
        "clock": (0.12, 0.17),
        "picture": (0.16, 0.24),
        "balloon": (0.2, 0.3),
    }
)
OBJECT_COLORS: tuple[str, ...] = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "teal", "white")
#: Objects whose colour is fixed (the drawn colour name is always this one).
FIXED_COLOR: Mapping[str, str] = MappingProxyType({"box": "brown"})

#: Half width of each object as a fraction of its height.
OBJECT_HALF_WIDTH: Mapping[str, float] = MappingProxyType(
    {
        "plant": 0.45,
        "lamp": 0.22,
        "ball": 0.5,
        "clock": 0.5,
        "balloon": 0.34,
        "chair": 0.3,
        "box": 0.65,
        "picture": 0.65,
    }
)

Box = tuple[float, float, float, float]


def object_box(name: str, x: float, yb: float, h: float) -> Box:
    """Bounding box that :func:`draw_object` will cover for these arguments."""
    w = OBJECT_HALF_WIDTH[name] * h
    return (x - w, yb - h, x + w, yb)


def draw_object(draw: ImageDraw.ImageDraw, name: str, x: float, yb: float, h: float, color: str) -> Box:
    """Draw object ``name`` with bottom centre ``(x, yb)`` and height ``h`` px; return its bbox."""
    c: RGB = OBJECT[FIXED_COLOR.get(name, color)]
    ol = outline_of(c)
    lw = max(1, int(round(h * 0.025)))
    if name == "plant":
        ph, tw, bw = 0.36 * h, 0.26 * h, 0.19 * h
        draw.polygon([(x - tw, yb - ph), (x + tw, yb - ph), (x + bw, yb), (x - bw, yb)], fill=c, outline=ol, width=lw)
        draw.rectangle((x - tw * 1.08, yb - ph, x + tw * 1.08, yb - ph * 0.85), fill=shade(c, 0.85))
        leaf, leaf_ol = (58, 150, 64), (30, 90, 36)
        for ang, ln in ((-60, 0.55), (-25, 0.62), (0, 0.66), (25, 0.62), (60, 0.55), (-42, 0.45), (42, 0.45)):
            a = math.radians(ang)
            lx, ly = x + math.sin(a) * ln * h * 0.55, yb - ph - math.cos(a) * ln * h * 0.8
            rw = 0.1 * h
            draw.ellipse((lx - rw, ly - rw * 1.8, lx + rw, ly + rw * 1.8), fill=leaf, outline=leaf_ol, width=lw)
        return object_box(name, x, yb, h)
    if name == "lamp":
        draw.ellipse((x - 0.16 * h, yb - 0.05 * h, x + 0.16 * h, yb + 0.01 * h), fill=(60, 60, 60))
        draw.line([(x, yb - 0.03 * h), (x, yb - 0.72 * h)], fill=(70, 70, 70), width=max(1, int(0.035 * h)))
        draw.polygon(
            [
                (x - 0.11 * h, yb - h),
                (x + 0.11 * h, yb - h),
                (x + 0.22 * h, yb - 0.7 * h),
                (x - 0.22 * h, yb - 0.7 * h),
            ],
            fill=c,
            outline=ol,
            width=lw,
        )
        return object_box(name, x, yb, h)
    if name == "ball":
        r = h / 2
        draw.ellipse((x - r, yb - h, x + r, yb), fill=c, outline=ol, width=lw)
        draw.arc((x - r * 0.6, yb - h, x + r * 1.4, yb), 110, 250, fill=(250, 250, 250), width=max(1, int(h * 0.08)))
        return object_box(name, x, yb, h)
    if name == "clock":
        r = h / 2
        draw.ellipse((x - r, yb - h, x + r, yb), fill=(250, 250, 246), outline=c, width=max(2, int(h * 0.1)))
        cy = yb - r
        draw.line([(x, cy), (x, cy - r * 0.6)], fill=(20, 20, 20), width=max(1, int(h * 0.05)))
        draw.line([(x, cy), (x + r * 0.45, cy + r * 0.1)], fill=(20, 20, 20), width=max(1, int(h * 0.05)))
        return object_box(name, x, yb, h)
    if name == "balloon":
        rw, rh = 0.34 * h, 0.4 * h
        cy = yb - h + rh
        draw.line([(x, cy + rh), (x - 0.05 * h, yb)], fill=(90, 90, 90), width=max(1, lw // 2))
        draw.polygon([(x, cy + rh * 0.95), (x - 0.05 * h, cy + rh * 1.12), (x + 0.05 * h, cy + rh * 1.12)], fill=c)
        draw.ellipse((x - rw, cy - rh, x + rw, cy + rh), fill=c, outline=ol, width=lw)
        draw.ellipse((x - rw * 0.5, cy - rh * 0.6, x - rw * 0.15, cy - rh * 0.2), fill=mix(c, (255, 255, 255), 0.6))
        return object_box(name, x, yb, h)
    if name == "chair":
        w = 0.5 * h
        leg = max(1, int(0.05 * h))
        draw.rectangle((x - w * 0.5, yb - h, x + w * 0.5, yb - 0.5 * h), fill=c, outline=ol, width=lw)
        draw.rectangle(
            (x - w * 0.6, yb - 0.52 * h, x + w * 0.6, yb - 0.42 * h), fill=shade(c, 0.85), outline=ol, width=lw
        )
        for dx in (-0.5, 0.5):
            draw.line([(x + dx * w, yb - 0.42 * h), (x + dx * w, yb)], fill=shade(c, 0.6), width=leg)
        return object_box(name, x, yb, h)
    if name == "box":
        w = 0.65 * h
        draw.rectangle((x - w, yb - h, x + w, yb), fill=c, outline=shade(c, 0.6), width=lw)
        draw.rectangle((x - 0.12 * w, yb - h, x + 0.12 * w, yb - 0.35 * h), fill=(220, 200, 150))
        return object_box(name, x, yb, h)
    if name == "picture":
        w = 0.65 * h
        draw.rectangle((x - w, yb - h, x + w, yb), fill=(200, 230, 250), outline=c, width=max(2, int(h * 0.09)))
        draw.polygon(
            [(x - w * 0.8, yb - h * 0.12), (x - w * 0.2, yb - h * 0.6), (x + w * 0.3, yb - h * 0.12)],
            fill=(80, 150, 80),
        )
        draw.ellipse((x + w * 0.3, yb - h * 0.78, x + w * 0.55, yb - h * 0.55), fill=(250, 210, 80))
        return object_box(name, x, yb, h)
    raise ValueError(f"unknown object {name!r}")
