"""Drawing one avatar (head + torso) from its identity attributes and its per-photo look.

The avatar is designed in *units* (see :mod:`.pen`): the head is centred at ``(0, 0)`` and is about
2 units wide; eyes sit at ``v = -0.05``, the chin at ``v ≈ 1`` and the shoulders at ``v ≈ 1.3``.
:func:`landmarks` gives the unit positions of the regions the tests probe (hair, eyes, glasses
bridge, cheeks, torso), so ground truth can be checked against pixels.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np
from PIL import ImageDraw

from .palette import CLOTHING, EYE, GLASSES_FRAME, HAIR, LIPSTICK, RGB, SKIN, mix, outline_of, shade
from .pen import Pen, ellipse_points

CLOTHING_TYPES: tuple[str, ...] = ("t-shirt", "hoodie", "suit", "dress", "sweater")
CLOTHING_COLORS: tuple[str, ...] = tuple(CLOTHING)
EXPRESSIONS: tuple[str, ...] = ("smiling", "serious", "surprised", "sad", "angry")

# face shape -> (half width, half height, superellipse exponent, chin taper)
_FACE: Mapping[str, tuple[float, float, float, float]] = MappingProxyType(
    {
        "round": (1.0, 1.0, 2.0, 0.0),
        "oval": (0.86, 1.12, 2.0, 0.14),
        "square": (0.96, 1.04, 4.5, 0.0),
        "long": (0.78, 1.24, 2.4, 0.06),
        "heart": (1.0, 1.08, 2.0, 0.5),
    }
)

EYE_U = 0.36  # |u| of the eye centres
EYE_V = -0.05  # v of the eye centres
SHOULDER_V = 1.3  # v of the top of the shoulders


@dataclass(frozen=True)
class Look:
    """Everything about one appearance of an identity that is *not* intrinsic.

    Attributes:
        clothing_type: One of :data:`CLOTHING_TYPES`.
        clothing_color: One of :data:`CLOTHING_COLORS`.
        expression: One of :data:`EXPRESSIONS`.
        glasses_worn: Whether the identity's glasses (if any) are worn in this photo.
        tilt: Head roll in degrees.
        yaw: Head turn in [-1, 1]; shifts the facial features sideways.
    """

    clothing_type: str = "t-shirt"
    clothing_color: str = "blue"
    expression: str = "serious"
    glasses_worn: bool = True
    tilt: float = 0.0
    yaw: float = 0.0


@dataclass(frozen=True)
class FaceGeometry:
    """Outline and key heights of a face shape, in units."""

    rx: float
    ry: float
    u: np.ndarray
    v: np.ndarray
    mouth_v: float
    nose_v: float


@functools.lru_cache(maxsize=32)
def face_geometry(shape: str, n: int = 44) -> FaceGeometry:
    """Outline (read-only arrays) and key heights of a face shape; cached per shape."""
    rx, ry, p, taper = _FACE[shape]
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / p
    u = rx * np.sign(c) * np.abs(c) ** e
    v = ry * np.sign(s) * np.abs(s) ** e
    lower = np.clip(s, 0, None)
    u = u * (1 - taper * lower**2)
    u.setflags(write=False)
    v.setflags(write=False)
    return FaceGeometry(rx=rx, ry=ry, u=u, v=v, mouth_v=0.30 + 0.25 * ry, nose_v=0.26 + 0.06 * (ry - 1))


def half_width(face: FaceGeometry, v: float) -> float:
    """Half width of the face outline at height ``v``."""
    right = face.u > 0
    uu, vv = face.u[right], face.v[right]
    order = np.argsort(vv)
    return float(np.interp(v, vv[order], uu[order]))


def head_top(attrs: Mapping[str, str]) -> float:
    """``v`` of the highest point of the avatar (hair included)."""
    ry = _FACE[attrs["face_shape"]][1]
    style = attrs["hair_style"]
    extra = {"bun": 0.68, "spiky": 0.42, "curly": 0.34, "bald": 0.0}.get(style, 0.12)
    return -(ry + extra)


def body_extent() -> float:
    """Half width of the torso in units."""
    return 1.7


def landmarks(attrs: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """Unit positions of probe points for a frontal, untilted avatar.

    ``hair``: inside the hair cap above the forehead (for every style but ``bald``, where it is the
    hair on the side of the head, just outside the face outline); ``eye_l``/``eye_r``: iris centres;
    ``bridge``: between the eyes where a glasses bridge is; ``cheek_l``/``cheek_r``: plain skin;
    ``torso``: chest, covered by the clothing colour.
    """
    face = face_geometry(attrs["face_shape"])
    hair = (-(face.rx + 0.07), -0.3) if attrs["hair_style"] == "bald" else (-0.45, -face.ry * 0.82)
    return {
        "hair": hair,
        "eye_l": (-EYE_U, EYE_V + 0.01),
        "eye_r": (EYE_U, EYE_V + 0.01),
        "bridge": (0.0, -0.09),
        "cheek_l": (-0.5, 0.45),
        "cheek_r": (0.5, 0.45),
        "torso": (-0.9, 2.05),
    }


# ==================================================================================== drawing
def draw_person(
    draw: ImageDraw.ImageDraw,
    attrs: Mapping[str, str],
    look: Look,
    cx: float,
    cy: float,
    s: float,
    bottom_v: float = 3.6,
) -> None:
    """Draw one avatar with head centre at canvas ``(cx, cy)`` and ``s`` pixels per unit.

    ``bottom_v`` is how far (in units) the torso extends down; callers pass enough to reach the
    bottom edge of the canvas.
    """
    body = Pen(draw, cx, cy, s)
    head = Pen(draw, cx, cy, s, angle=look.tilt, pivot=(0.0, 0.95))
    face = face_geometry(attrs["face_shape"])
    skin = SKIN[attrs["skin_tone"]]
    hair = HAIR[attrs["hair_color"]]
    yaw = float(look.yaw)

    def fx(u: float | np.ndarray) -> float | np.ndarray:
        """Horizontal position of a facial feature under head yaw."""
        return u * (1 - 0.1 * abs(yaw)) + 0.16 * yaw

    _hair_back(head, attrs, face, hair)
    # neck
    neck = shade(skin, 0.86)
    body.poly([-0.33, 0.33, 0.35, -0.35], [0.55, 0.55, 1.5, 1.5], neck)
    _torso(body, look, skin, neck, bottom_v)
    # ears
    ew = half_width(face, 0.05)
    for side in (-1, 1):
        head.ellipse(side * (ew + 0.02) - 0.05 * yaw, 0.06, 0.14, 0.22, shade(skin, 0.93), shade(skin, 0.7), 0.03, n=16)
    _hair_locks(head, attrs, face, hair)
    # face
    head.poly(face.u, face.v, skin, shade(skin, 0.72), 0.035)
    _age(head, attrs, face, skin, fx)
    _marks(head, attrs, skin, fx, face)
    fh = attrs["facial_hair"] if attrs["gender"] == "man" else "none"
    _facial_hair_under(head, fh, face, skin, hair, fx)
    _eyes(head, attrs, look, skin, fx)
    _nose(head, attrs["nose"], face, skin, fx)
    _mouth(head, attrs, look, face, skin, fx)
    _facial_hair_over(head, fh, face, hair, fx)
    if attrs["glasses"] != "none" and look.glasses_worn:
        _glasses(head, attrs["glasses"], face, fx)
    _brows(head, attrs, look, hair, fx)
    _hair_front(head, attrs, face, hair, skin)


# ------------------------------------------------------------------------------------ hair
def _cap(
    face: FaceGeometry, hairline: list[tuple[float, float]], side_v: float = -0.05, grow: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Polygon of a hair cap: the top of an enlarged head outline closed by ``hairline`` (right->left)."""
    rx, ry = face.rx + grow, face.ry + 0.06
    t = np.linspace(math.pi, 2 * math.pi, 19)
    au = rx * np.cos(t)
    av = -0.12 + (ry - 0.12) * np.sin(t)
    u = np.concatenate([[-rx], au, [rx], [p[0] for p in hairline]])
    v = np.concatenate([[side_v], av, [side_v], [p[1] for p in hairline]])
    return u, v


def _default_hairline(face: FaceGeometry, top: float = -0.5) -> list[tuple[float, float]]:
    rx = face.rx
    return [
        (rx * 0.86, -0.05),
        (rx * 0.8, -0.36),
        (0.35, top - 0.02),
        (0.0, top),
        (-0.35, top - 0.06),
        (-rx * 0.8, -0.36),
        (-rx * 0.86, -0.05),
    ]


def _hair_back(pen: Pen, attrs: Mapping[str, str], face: FaceGeometry, hair: RGB) -> None:
    style = attrs["hair_style"]
    ol = outline_of(hair)
    rx, ry = face.rx, face.ry
    if style == "bald":
        pen.ellipse(0, -0.15, rx + 0.2, 0.62, hair, ol, 0.03)
    elif style == "long":
        u = [-(rx + 0.28), -(rx + 0.2), rx + 0.2, rx + 0.28]
        pen.ellipse(0, -0.15, rx + 0.3, ry + 0.12, hair, ol, 0.03)
        pen.poly(u + [rx + 0.3, -(rx + 0.3)], [-0.2, -0.6, -0.6, -0.2, 1.1, 1.1], hair)
    elif style == "bob":
        pen.ellipse(0, -0.2, rx + 0.24, ry + 0.06, hair, ol, 0.03)
        pen.poly([-(rx + 0.24), rx + 0.24, rx + 0.2, -(rx + 0.2)], [-0.2, -0.2, 0.72, 0.72], hair)
    elif style == "curly":
        pen.ellipse(0, -0.3, rx + 0.34, ry + 0.12, hair, ol, 0.03)
        for a in np.linspace(0.15 * math.pi, 0.85 * math.pi, 7):
            pen.circle((rx + 0.3) * math.cos(a), -0.2 + 0.75 * math.sin(a) * 0.9, 0.22, hair, ol, 0.025)
    elif style == "ponytail":
        pen.poly(
            [0.45, 1.15, 1.5, 1.56, 1.34, 1.2, 1.0, 0.7],
            [-0.95, -0.95, -0.45, 0.45, 1.0, 0.35, -0.3, -0.6],
            hair,
            ol,
            0.03,
        )
        pen.circle(0.95, -0.82, 0.13, (210, 40, 120), (120, 20, 60), 0.03)
    elif style == "bun":
        pen.circle(0, -(ry + 0.3), 0.4, hair, ol, 0.035)
        pen.arc(0, -(ry + 0.3), 0.22, 0.2, 0.3, 4.5, ol, 0.035)


def _hair_locks(pen: Pen, attrs: Mapping[str, str], face: FaceGeometry, hair: RGB) -> None:
    """Long hair falling over the shoulders (drawn after the torso, before the face)."""
    if attrs["hair_style"] != "long":
        return
    ol = outline_of(hair)
    rx = face.rx
    for sd in (-1, 1):
        pen.poly(
            [sd * rx * 0.82, sd * (rx + 0.3), sd * (rx + 0.42), sd * (rx + 0.3), sd * (rx * 0.55)],
            [-0.3, -0.3, 1.0, 1.85, 1.7],
            hair,
            ol,
            0.03,
        )


def _hair_front(pen: Pen, attrs: Mapping[str, str], face: FaceGeometry, hair: RGB, skin: RGB) -> None:
    style = attrs["hair_style"]
    ol = outline_of(hair)
    rx, ry = face.rx, face.ry
    if style == "bald":  # hair only on the sides (drawn behind the head), a shiny scalp
        pen.ellipse(-0.3, -0.72 * ry, 0.26, 0.1, mix(skin, (255, 255, 255), 0.45), None, n=14)
        return
    if style == "spiky":
        rr_u, rr_v = rx + 0.1, ry - 0.06
        for a in np.linspace(math.pi + 0.45, 2 * math.pi - 0.45, 6):
            bu = [rr_u * math.cos(a - 0.22), 1.45 * rr_u * math.cos(a), rr_u * math.cos(a + 0.22)]
            bv = [
                -0.12 + rr_v * math.sin(a - 0.22),
                -0.12 + 1.4 * rr_v * math.sin(a),
                -0.12 + rr_v * math.sin(a + 0.22),
            ]
            pen.poly(bu, bv, hair, ol, 0.03)
    if style == "long":
        line = [
            (rx * 0.9, 0.1),
            (rx * 0.84, -0.36),
            (0.25, -0.62),
            (-0.25, -0.46),
            (-rx * 0.84, -0.3),
            (-rx * 0.9, 0.1),
        ]
        u, v = _cap(face, line, side_v=0.1)
    elif style == "bob":
        line = [(rx * 0.92, 0.62), (rx * 0.86, -0.38), (-rx * 0.86, -0.38), (-rx * 0.92, 0.62)]
        u, v = _cap(face, line, side_v=0.62, grow=0.22)
    elif style == "curly":
        u, v = _cap(face, _default_hairline(face, -0.48), grow=0.14)
    else:  # short, ponytail, bun, spiky
        top = -0.56 if style == "spiky" else -0.5
        u, v = _cap(face, _default_hairline(face, top), grow=0.08)
    pen.poly(u, v, hair, ol, 0.03)
    if style == "curly":
        for a in np.linspace(math.pi - 0.1, 2 * math.pi + 0.1, 11):
            pen.circle((rx + 0.14) * math.cos(a), -0.16 + (ry - 0.02) * math.sin(a), 0.2, hair, ol, 0.025)
        for a in np.linspace(math.pi + 0.6, 2 * math.pi - 0.6, 4):  # curls along the hairline
            pen.circle(0.7 * rx * math.cos(a), -0.2 + 0.36 * math.sin(a) - 0.05, 0.13, hair, ol, 0.02)
    elif style == "short":
        pen.line([-0.2, 0.05, 0.3], [-0.85 * ry, -0.7 * ry, -0.62 * ry], ol, 0.03)
    elif style == "bob":
        pen.line([-0.3, -0.3], [-0.38, -0.7], ol, 0.025, curve=False)
        pen.line([0.3, 0.3], [-0.38, -0.7], ol, 0.025, curve=False)


# ------------------------------------------------------------------------------------ torso
WAIST_V = 4.7  # v of the belt line for figures framed below the waist
TROUSERS: RGB = (48, 66, 110)


def _torso(pen: Pen, look: Look, skin: RGB, neck: RGB, bottom_v: float) -> None:
    """Clothed upper body (and, when the frame reaches below the waist, hands and trousers/skirt)."""
    c = CLOTHING[look.clothing_color]
    ol = outline_of(c)
    dark = shade(c, 0.72) if sum(c) > 150 else mix(c, (255, 255, 255), 0.25)
    skin_ol = shade(skin, 0.72)
    b = max(bottom_v, 2.4)
    long = b > WAIST_V + 0.3
    bb = WAIST_V + 0.05 if long else b
    ab = min(b, WAIST_V - 0.15)  # bottom of the arms
    kind = look.clothing_type
    body_u = [-0.42, -1.15, -1.52, -1.42, -1.38, 1.38, 1.42, 1.52, 1.15, 0.42]
    body_v = [1.28, 1.4, 1.66, 2.3, bb, bb, 2.3, 1.66, 1.4, 1.28]

    def arm(sd: int, v0: float, v1: float, col: RGB, line: RGB) -> None:
        pen.poly(
            [sd * 1.3, sd * 1.6, sd * 1.72, sd * 1.74, sd * 1.38, sd * 1.34],
            [max(v0, 1.62), max(v0, 1.68), max(v0, 2.3), v1, v1, max(v0, 2.3)],
            col,
            line,
            0.03,
        )

    if kind == "dress":
        pen.poly(body_u, body_v, skin, skin_ol, 0.03)
        top = [1.86, 1.74, 1.95, 1.74, 1.86]
        pen.poly([-1.3, -0.45, 0.0, 0.45, 1.3, 1.42, 1.38, -1.38, -1.42], top + [2.3, bb, bb, 2.3], c, ol, 0.035)
        for sd in (-1, 1):
            pen.line([sd * 0.82, sd * 0.95], [1.82, 1.36], c, 0.11, curve=False)
            arm(sd, 1.6, ab, skin, skin_ol)
        pen.line([-0.7, 0.0, 0.7], [2.45, 2.52, 2.45], dark, 0.05)  # waist band
        if long:
            pen.poly([-1.38, 1.38, 1.75, -1.75], [WAIST_V, WAIST_V, b, b], c, ol, 0.035)
    else:
        pen.poly(body_u, body_v, c, ol, 0.035)
        for sd in (-1, 1):
            if kind == "t-shirt":
                arm(sd, 2.3, ab, skin, skin_ol)
                arm(sd, 1.6, 2.32, c, ol)
                pen.line([sd * 1.34, sd * 1.72], [2.3, 2.3], dark, 0.06, curve=False)
            else:
                arm(sd, 1.6, ab, c, ol)
        if long:
            pen.poly([-1.38, 1.38, 1.44, -1.44], [WAIST_V, WAIST_V, b, b], TROUSERS, shade(TROUSERS, 0.6), 0.035)
            pen.poly(
                [-1.38, 1.38, 1.38, -1.38], [WAIST_V - 0.06, WAIST_V - 0.06, WAIST_V + 0.1, WAIST_V + 0.1], (40, 28, 20)
            )
            pen.line([0.0, 0.0], [WAIST_V + 0.6, b], shade(TROUSERS, 0.6), 0.04, curve=False)
    if long:
        for sd in (-1, 1):
            pen.ellipse(sd * 1.56, WAIST_V - 0.05, 0.2, 0.26, skin, skin_ol, 0.03, n=14)
    if kind == "t-shirt":
        u, v = ellipse_points(0, 1.28, 0.36, 0.24, 14, 0, math.pi)
        pen.poly(u, v, neck)
        pen.line(u, v, dark, 0.07)
    elif kind == "hoodie":
        pen.ellipse(0, 1.33, 0.66, 0.3, dark, ol, 0.03, n=20)
        pen.ellipse(0, 1.3, 0.36, 0.16, neck, None, n=16)
        for sd in (-1, 1):
            pen.line([sd * 0.16, sd * 0.2], [1.45, 2.2], (245, 245, 245), 0.05, curve=False)
            pen.circle(sd * 0.2, 2.22, 0.05, (245, 245, 245))
        pen.poly([-0.78, 0.78, 1.0, -1.0], [2.75, 2.75, 3.35, 3.35], dark, ol, 0.03)
    elif kind == "suit":
        pen.poly([-0.4, 0.4, 0.0], [1.28, 1.28, 2.55], (246, 246, 246), (170, 170, 170), 0.02)
        tie = (200, 30, 40) if look.clothing_color not in ("red", "pink", "orange") else (30, 40, 110)
        pen.poly([-0.08, 0.08, 0.05, -0.05], [1.32, 1.32, 1.46, 1.46], tie)
        pen.poly([-0.05, 0.05, 0.12, 0.0, -0.12], [1.46, 1.46, 2.2, 2.36, 2.2], tie)
        for sd in (-1, 1):
            pen.poly([sd * 0.4, sd * 0.62, sd * 0.32, sd * 0.02], [1.28, 1.45, 1.95, 2.55], dark, ol, 0.025)
        pen.circle(0.0, 2.75, 0.06, (20, 20, 20))
        pen.circle(0.0, 3.05, 0.06, (20, 20, 20))
    elif kind == "sweater":
        light = mix(c, (255, 255, 255), 0.5) if sum(c) < 600 else shade(c, 0.75)
        for v0 in (2.25, 2.62):
            pen.poly([-1.4, 1.4, 1.4, -1.4], [v0, v0, v0 + 0.16, v0 + 0.16], light)
        pen.ellipse(0, 1.3, 0.46, 0.24, dark, ol, 0.025, n=20)
        pen.ellipse(0, 1.27, 0.32, 0.14, neck, None, n=16)


# ------------------------------------------------------------------------------------ face parts
def _eyes(pen: Pen, attrs: Mapping[str, str], look: Look, skin: RGB, fx) -> None:
    iris = EYE[attrs["eye_color"]]
    ex = look.expression
    rv = 0.185 if ex == "surprised" else 0.14
    line = (40, 28, 28)
    for sd in (-1, 1):
        cu = fx(sd * EYE_U)
        pen.ellipse(cu, EYE_V, 0.2, rv, (252, 252, 252), line, 0.035, n=20)
        iu = cu + 0.03 * look.yaw
        pen.circle(iu, EYE_V + 0.01, 0.115, iris)
        pen.circle(iu, EYE_V + 0.01, 0.05, (12, 12, 14))
        pen.circle(iu + 0.035, EYE_V - 0.025, 0.026, (255, 255, 255))
        if ex in ("angry", "sad"):
            # an eyelid closing over the inner (angry) or outer (sad) top of the eye
            inner_low = 1 if ex == "angry" else -1
            u0, u1 = cu - sd * 0.24, cu + sd * 0.24  # inner, outer
            v_in = EYE_V - rv * (0.1 if inner_low > 0 else 1.3)
            v_out = EYE_V - rv * (1.3 if inner_low > 0 else 0.1)
            pen.poly([u0, u1, u1, u0], [v_in, v_out, EYE_V - 0.3, EYE_V - 0.3], skin)
            pen.line([u0, u1], [v_in, v_out], line, 0.035, curve=False)
        if attrs["gender"] == "woman":
            for a in (1.15, 1.3, 1.45):
                ang = math.pi * a if sd < 0 else math.pi * (3 - a)
                u0, v0 = cu + 0.2 * math.cos(ang), EYE_V + rv * math.sin(ang)
                pen.line([u0, u0 + 0.09 * math.cos(ang)], [v0, v0 + 0.09 * math.sin(ang)], line, 0.028, curve=False)


def _brows(pen: Pen, attrs: Mapping[str, str], look: Look, hair: RGB, fx) -> None:
    col = shade(hair, 0.72) if sum(hair) > 120 else hair
    kind = attrs["eyebrows"]
    width = {"thin": 0.04, "thick": 0.11, "arched": 0.065}[kind]
    arch = 0.1 if kind == "arched" else 0.03
    ex = look.expression
    base = -0.31 - (0.08 if ex == "surprised" else 0.0)
    tilt = {"angry": 0.08, "sad": -0.07}.get(ex, 0.0)  # >0 lowers the inner end
    x = np.linspace(-1, 1, 7)  # -1 inner, +1 outer
    for sd in (-1, 1):
        u = fx(sd * (EYE_U + 0.2 * x))
        v = base - arch * (1 - x**2) + tilt * (-x) * 0.5
        pen.line(u, v, col, width)


def _nose(pen: Pen, kind: str, face: FaceGeometry, skin: RGB, fx) -> None:
    ln = shade(skin, 0.68)
    light = shade(skin, 0.9)
    nb = face.nose_v
    if kind == "small":
        pen.line(fx(np.array([0.0, 0.07, 0.0])), [nb - 0.2, nb - 0.04, nb], ln, 0.04)
    elif kind == "large":
        pen.poly(fx(np.array([0.0, 0.15, 0.0, -0.15])), [0.0, nb + 0.08, nb + 0.14, nb + 0.08], light, ln, 0.035)
        pen.circle(fx(-0.07), nb + 0.08, 0.03, ln)
        pen.circle(fx(0.07), nb + 0.08, 0.03, ln)
    elif kind == "pointed":
        pen.poly(fx(np.array([0.0, 0.24, 0.02])), [0.0, nb + 0.06, nb + 0.08], light, ln, 0.035)
    elif kind == "round":
        pen.circle(fx(0.0), nb - 0.02, 0.13, light, ln, 0.035)
        pen.circle(fx(-0.06), nb + 0.04, 0.025, ln)
        pen.circle(fx(0.06), nb + 0.04, 0.025, ln)
    else:  # wide
        pen.line(fx(np.array([0.0, 0.02])), [0.02, nb - 0.08], ln, 0.03)
        pen.line(fx(np.linspace(-0.26, 0.26, 7)), nb + 0.05 * (1 - np.linspace(-1, 1, 7) ** 2), ln, 0.04)
        for sd in (-1, 1):
            pen.circle(fx(sd * 0.2), nb - 0.02, 0.075, light, ln, 0.035)


def _mouth(pen: Pen, attrs: Mapping[str, str], look: Look, face: FaceGeometry, skin: RGB, fx) -> None:
    kind = attrs["mouth"]
    w = {"small": 0.15, "wide": 0.37, "full": 0.26, "thin": 0.27}[kind]
    t_up, t_lo = {"small": (0.045, 0.055), "wide": (0.04, 0.05), "full": (0.075, 0.095), "thin": (0.018, 0.022)}[kind]
    lip = mix(skin, LIPSTICK, 0.75) if attrs["gender"] == "woman" else mix(skin, (165, 60, 60), 0.4)
    dark = (70, 22, 26)
    vm = face.mouth_v
    ex = look.expression
    if ex == "surprised":
        pen.ellipse(fx(0.0), vm + 0.03, max(0.09, w * 0.45), 0.13, dark, lip, max(0.03, t_up), n=18)
        return
    k = {"smiling": 0.11, "serious": 0.0, "sad": -0.08, "angry": -0.05}[ex]
    x = np.linspace(-1, 1, 13)
    mid = vm + k * (0.5 - x**2)
    env = np.sqrt(np.clip(1 - x**2, 0, 1))
    u = fx(w * x)
    if ex == "smiling":  # open smile with teeth
        pen.poly(
            np.concatenate([u, u[::-1]]),
            np.concatenate([mid - 0.01, (mid + 0.09 * env + 0.01)[::-1]]),
            (250, 250, 250),
            lip,
            max(0.03, t_lo),
        )
        pen.poly(np.concatenate([u, u[::-1]]), np.concatenate([mid - t_up * env - 0.01, (mid - 0.01)[::-1]]), lip)
        return
    pen.poly(np.concatenate([u, u[::-1]]), np.concatenate([mid - t_up * env, (mid + t_lo * env)[::-1]]), lip)
    pen.line(u, mid, dark, 0.028)


def _glasses(pen: Pen, kind: str, face: FaceGeometry, fx) -> None:
    col = GLASSES_FRAME
    w = 0.06
    for sd in (-1, 1):
        cu = fx(sd * EYE_U)
        if kind == "round":
            pen.ellipse(cu, EYE_V, 0.27, 0.25, None, col, w, n=24)
        else:
            pen.poly(
                [cu - 0.29, cu + 0.29, cu + 0.29, cu - 0.29],
                [EYE_V - 0.2, EYE_V - 0.2, EYE_V + 0.19, EYE_V + 0.19],
                None,
                col,
                w,
            )
        edge = cu + sd * (0.27 if kind == "round" else 0.29)
        pen.line([edge, sd * (half_width(face, -0.1) + 0.02)], [EYE_V - 0.05, EYE_V - 0.08], col, 0.05, curve=False)
    inner = 0.27 if kind == "round" else 0.29
    pen.line(fx(np.array([-EYE_U + inner, 0.0, EYE_U - inner])), [EYE_V - 0.04, EYE_V - 0.07, EYE_V - 0.04], col, w)


def _age(pen: Pen, attrs: Mapping[str, str], face: FaceGeometry, skin: RGB, fx) -> None:
    age = attrs["age"]
    vm = face.mouth_v
    if age == "young":
        for sd in (-1, 1):
            pen.ellipse(fx(sd * 0.52), 0.3, 0.15, 0.09, mix(skin, (240, 110, 120), 0.3), None, n=14)
        return
    ln = shade(skin, 0.66)
    w = 0.03 if age == "middle-aged" else 0.04
    for sd in (-1, 1):  # nasolabial folds
        pen.line(fx(np.array([sd * 0.2, sd * 0.33, sd * 0.36])), [face.nose_v - 0.04, vm - 0.08, vm + 0.06], ln, w)
    pen.line(fx(np.array([-0.25, 0.0, 0.25])), [-0.45, -0.48, -0.45], ln, w)  # forehead
    if age == "old":
        pen.line(fx(np.array([-0.22, 0.0, 0.22])), [-0.54, -0.57, -0.54], ln, w)
        for sd in (-1, 1):
            cu = fx(sd * EYE_U)
            pen.arc(cu, EYE_V + 0.08, 0.16, 0.1, 0.15 * math.pi, 0.85 * math.pi, ln, 0.03, n=8)  # eye bags
            for dv in (-0.06, 0.0, 0.06):  # crow's feet
                pen.line([cu + sd * 0.25, cu + sd * 0.35], [EYE_V + dv * 0.5, EYE_V + dv * 1.6], ln, 0.025, curve=False)
        pen.line(fx(np.array([-0.12, 0.0, 0.12])), [face.ry - 0.2, face.ry - 0.17, face.ry - 0.2], ln, w)


def _marks(pen: Pen, attrs: Mapping[str, str], skin: RGB, fx, face: FaceGeometry) -> None:
    mark = attrs["mark"]
    if mark == "freckles":
        col = mix(skin, (110, 50, 20), 0.6)
        for sd in (-1, 1):
            for du, dv in (
                (-0.11, -0.03),
                (0.0, 0.0),
                (0.11, -0.03),
                (-0.06, 0.07),
                (0.06, 0.08),
                (0.15, 0.05),
                (-0.15, 0.05),
            ):
                pen.circle(fx(sd * (0.47 + du)), 0.22 + dv, 0.03, col)
        pen.circle(fx(-0.04), 0.08, 0.025, col)
        pen.circle(fx(0.05), 0.1, 0.025, col)
    elif mark == "mole":
        pen.circle(fx(0.4), face.mouth_v - 0.14, 0.055, (58, 32, 22))
    elif mark == "scar":
        col = mix(skin, (150, 30, 45), 0.6)
        pen.line(fx(np.array([-0.66, -0.4])), [0.02, 0.42], col, 0.05, curve=False)
        for t in (0.25, 0.5, 0.75):
            u0, v0 = -0.66 + 0.26 * t, 0.02 + 0.4 * t
            pen.line(fx(np.array([u0 - 0.06, u0 + 0.06])), [v0 - 0.035, v0 + 0.035], col, 0.025, curve=False)
    elif mark == "birthmark":
        col = mix(skin, (130, 40, 110), 0.5)
        a = np.linspace(0, 2 * math.pi, 14, endpoint=False)
        r = 1 + 0.18 * np.sin(3 * a) + 0.1 * np.cos(5 * a)
        pen.poly(fx(0.52 + 0.15 * r * np.cos(a)), 0.24 + 0.11 * r * np.sin(a), col)


def _beard_region(face: FaceGeometry, fx, grow: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    lower = face.v > -0.02
    u, v = face.u[lower], face.v[lower]
    order = np.argsort(-u)  # right -> left along the jaw
    u, v = u[order] * (1 + grow), v[order] + grow * np.clip(v, 0, None) * 1.6
    rx = face.rx
    inner_u = np.array([-rx * 0.84, -0.52, -0.3, 0.0, 0.3, 0.52, rx * 0.84])
    inner_v = np.array([-0.02, 0.32, 0.38, 0.36, 0.38, 0.32, -0.02])
    return np.concatenate([u, inner_u]), np.concatenate([v, inner_v])


def _facial_hair_under(pen: Pen, kind: str, face: FaceGeometry, skin: RGB, hair: RGB, fx) -> None:
    if kind in ("none", "mustache"):
        return
    ol = outline_of(hair)
    vm = face.mouth_v
    if kind == "beard":
        u, v = _beard_region(face, fx)
        pen.poly(u, v, hair, ol, 0.03)
    elif kind == "stubble":
        u, v = _beard_region(face, fx, grow=0.0)
        pen.poly(u, v, mix(skin, hair if sum(hair) < 500 else (60, 60, 60), 0.38))
        dot = mix(skin, (40, 40, 40), 0.55)
        for du in np.linspace(-0.5, 0.5, 6):
            for dv in (0.55, 0.72, 0.88):
                if abs(du) < half_width(face, dv) * 0.85 and not (abs(du) < 0.3 and abs(dv - vm) < 0.1):
                    pen.circle(fx(du), dv, 0.018, dot)
    elif kind == "goatee":
        chin = face.ry
        pen.poly(
            fx(np.array([-0.2, 0.2, 0.17, 0.0, -0.17])),
            [vm + 0.07, vm + 0.07, chin + 0.02, chin + 0.08, chin + 0.02],
            hair,
            ol,
            0.03,
        )


def _facial_hair_over(pen: Pen, kind: str, face: FaceGeometry, hair: RGB, fx) -> None:
    if kind not in ("mustache", "beard", "goatee"):
        return
    ol = outline_of(hair)
    vm = face.mouth_v
    thick = 0.05 if kind == "goatee" else 0.09
    u = np.array([-0.34, -0.24, 0.0, 0.24, 0.34, 0.2, 0.0, -0.2])
    v = np.array(
        [vm + 0.02, vm - 0.06 - thick, vm - 0.1 - thick, vm - 0.06 - thick, vm + 0.02, vm - 0.05, vm - 0.07, vm - 0.05]
    )
    pen.poly(fx(u), v, hair, ol, 0.03)
