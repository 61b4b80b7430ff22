"""A tiny drawing helper: shapes given in *avatar units*, mapped to canvas pixels.

An avatar is designed in a local frame where the head is about 2 units wide, centred at ``(0, 0)``
with ``v`` pointing down. A :class:`Pen` maps that frame onto the canvas with a scale ``s`` (pixels
per unit), an offset and an optional rotation about a pivot (used for the head tilt). Every shape is
drawn as a polygon or polyline so that rotations are exact.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from .palette import RGB


@functools.lru_cache(maxsize=256)
def _unit_arc(n: int, a0: float, a1: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    closed = abs((a1 - a0) - 2 * math.pi) < 1e-9
    t = np.linspace(a0, a1, n, endpoint=not closed)
    return tuple(np.cos(t).tolist()), tuple(np.sin(t).tolist())


def ellipse_points(
    cu: float, cv: float, ru: float, rv: float, n: int = 28, a0: float = 0.0, a1: float = 2 * math.pi
) -> tuple[list[float], list[float]]:
    """``n`` points on an ellipse arc from angle ``a0`` to ``a1`` (radians, ``v`` down)."""
    cos, sin = _unit_arc(int(n), float(a0), float(a1))
    return [cu + ru * c for c in cos], [cv + rv * s for s in sin]


def _seq(x) -> list[float] | None:
    """A list of floats for a sequence / array, ``None`` for a scalar."""
    if isinstance(x, np.ndarray):
        return x.tolist() if x.ndim else None
    if isinstance(x, (list, tuple)):
        return [float(e) for e in x]
    return None


@dataclass
class Pen:
    """Maps avatar units to canvas pixels and draws with PIL.

    Args:
        draw: The ``ImageDraw`` of the canvas.
        cx, cy: Canvas position (px) of the unit-frame origin (the head centre).
        s: Pixels per unit.
        angle: Rotation in degrees (clockwise on screen) about ``pivot``.
        pivot: Rotation centre in units.
    """

    draw: ImageDraw.ImageDraw
    cx: float
    cy: float
    s: float
    angle: float = 0.0
    pivot: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        a = math.radians(self.angle)
        self._c, self._s = math.cos(a), math.sin(a)

    # ------------------------------------------------------------------ transforms
    def xy(self, u, v) -> list[tuple[float, float]]:
        """Canvas points for unit coordinates (scalars, sequences or arrays; scalars broadcast)."""
        us, vs = _seq(u), _seq(v)
        if us is None and vs is None:
            us, vs = [float(u)], [float(v)]
        elif us is None:
            us = [float(u)] * len(vs)
        elif vs is None:
            vs = [float(v)] * len(us)
        cx, cy, s = self.cx, self.cy, self.s
        if self._s == 0.0:
            return [(cx + s * a, cy + s * b) for a, b in zip(us, vs)]
        c, sn = self._c, self._s
        pu, pv = self.pivot
        return [
            (cx + s * (pu + c * (a - pu) - sn * (b - pv)), cy + s * (pv + sn * (a - pu) + c * (b - pv)))
            for a, b in zip(us, vs)
        ]

    def px(self, w: float) -> int:
        """A line width in units -> integer pixels (at least 1)."""
        return max(1, int(round(w * self.s)))

    # ------------------------------------------------------------------ shapes
    def poly(self, u, v, fill: RGB | None, outline: RGB | None = None, width: float = 0.0) -> None:
        pts = self.xy(u, v)
        if outline is not None and width > 0:
            self.draw.polygon(pts, fill=fill, outline=outline, width=self.px(width))
        else:
            self.draw.polygon(pts, fill=fill)

    def ellipse(
        self,
        cu: float,
        cv: float,
        ru: float,
        rv: float,
        fill: RGB | None,
        outline: RGB | None = None,
        width: float = 0.0,
        n: int = 28,
    ) -> None:
        u, v = ellipse_points(cu, cv, ru, rv, n)
        self.poly(u, v, fill, outline, width)

    def circle(
        self, cu: float, cv: float, r: float, fill: RGB | None, outline: RGB | None = None, width: float = 0.0
    ) -> None:
        """A circle (rotation-invariant, so drawn with ``ImageDraw.ellipse``)."""
        ((x, y),) = self.xy(cu, cv)
        rr = max(0.5, r * self.s)
        box = (x - rr, y - rr, x + rr, y + rr)
        if outline is not None and width > 0:
            self.draw.ellipse(box, fill=fill, outline=outline, width=self.px(width))
        else:
            self.draw.ellipse(box, fill=fill)

    def line(self, u, v, fill: RGB, width: float, curve: bool = True) -> None:
        pts = self.xy(u, v)
        self.draw.line(pts, fill=fill, width=self.px(width), joint="curve" if curve and len(pts) > 2 else None)

    def arc(
        self, cu: float, cv: float, ru: float, rv: float, a0: float, a1: float, fill: RGB, width: float, n: int = 12
    ) -> None:
        u, v = ellipse_points(cu, cv, ru, rv, n, a0, a1)
        self.line(u, v, fill, width)
