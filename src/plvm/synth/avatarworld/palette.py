"""Colours of AvatarWorld: one RGB value per named attribute / clothing / object colour.

Colours are chosen far apart so that a small vision encoder can tell them apart at 224 px; the tests
look for these exact colours in the rendered regions.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

RGB = tuple[int, int, int]

SKIN: Mapping[str, RGB] = MappingProxyType(
    {
        "pale": (252, 226, 210),
        "fair": (240, 196, 160),
        "medium": (214, 160, 112),
        "olive": (184, 140, 84),
        "brown": (142, 94, 60),
        "dark": (88, 56, 36),
    }
)

HAIR: Mapping[str, RGB] = MappingProxyType(
    {
        "black": (28, 26, 30),
        "brown": (112, 64, 28),
        "blonde": (238, 204, 100),
        "red": (204, 72, 28),
        "grey": (146, 146, 150),
        "white": (244, 244, 238),
    }
)

EYE: Mapping[str, RGB] = MappingProxyType(
    {
        "brown": (110, 62, 22),
        "blue": (36, 116, 236),
        "green": (30, 168, 64),
        "grey": (140, 148, 160),
    }
)

CLOTHING: Mapping[str, RGB] = MappingProxyType(
    {
        "red": (214, 36, 40),
        "blue": (36, 78, 206),
        "green": (36, 150, 60),
        "yellow": (246, 206, 36),
        "purple": (128, 56, 172),
        "orange": (246, 128, 26),
        "black": (34, 34, 38),
        "white": (244, 244, 244),
        "pink": (244, 132, 178),
    }
)

#: Frame colour of glasses (dark, so that "dark pixels around the eyes" means glasses).
GLASSES_FRAME: RGB = (22, 22, 28)
LIPSTICK: RGB = (200, 40, 70)

#: Named colours for objects and backgrounds (a subset of the clothing names plus a few more).
OBJECT: Mapping[str, RGB] = MappingProxyType(
    {
        **dict(CLOTHING),
        "brown": (130, 80, 40),
        "grey": (150, 150, 150),
        "teal": (30, 150, 150),
    }
)

REFERENCE_BACKGROUNDS: tuple[RGB, ...] = (
    (236, 236, 236),
    (222, 230, 240),
    (240, 232, 220),
    (226, 238, 226),
    (236, 226, 236),
)


def shade(c: RGB, f: float) -> RGB:
    """Multiply a colour by ``f`` (``f < 1`` darkens), clipped to [0, 255]."""
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """Linear blend ``(1 - t) * a + t * b``."""
    return (int(a[0] + (b[0] - a[0]) * t), int(a[1] + (b[1] - a[1]) * t), int(a[2] + (b[2] - a[2]) * t))


def outline_of(c: RGB) -> RGB:
    """A visible outline colour for a fill colour: darker for light fills, lighter for very dark ones."""
    lum = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
    return mix(c, (255, 255, 255), 0.35) if lum < 50 else shade(c, 0.55)
