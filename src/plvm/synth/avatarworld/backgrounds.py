"""Scene backgrounds: indoor rooms, outdoor views, gradients, noise textures and plain studio walls.

:func:`draw_background` fills a canvas and returns a JSON-serialisable description of what it drew
(``kind``, ``style``, colour names) that goes into the scene graph and the captions.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw

from .palette import RGB, mix, shade

BACKGROUND_KINDS: tuple[str, ...] = ("indoor", "outdoor", "gradient", "noise", "studio")
INDOOR_STYLES: tuple[str, ...] = ("plain wall", "striped wallpaper", "brick wall", "tiled wall")
OUTDOOR_STYLES: tuple[str, ...] = ("park", "beach", "city", "snow")

WALL_COLORS: Mapping[str, RGB] = MappingProxyType(
    {
        "beige": (232, 218, 190),
        "light blue": (196, 216, 236),
        "light green": (204, 228, 196),
        "lavender": (220, 206, 236),
        "peach": (246, 212, 188),
        "light grey": (214, 214, 216),
    }
)
SOFT_COLORS: Mapping[str, RGB] = MappingProxyType(
    {
        **dict(WALL_COLORS),
        "teal": (70, 160, 160),
        "navy": (40, 56, 110),
        "orange": (240, 150, 70),
        "pink": (236, 150, 186),
        "yellow": (240, 220, 110),
        "purple": (140, 100, 190),
    }
)


#: Backgrounds are computed at a quarter of the canvas size and enlarged with this filter (nearest is
#: cheap; after the final 2x box filter each low-resolution texel covers 2x2 output pixels).
_UPSAMPLE = Image.NEAREST


def _pick(rng: np.random.Generator, names) -> str:
    names = list(names)
    return names[int(rng.integers(len(names)))]


def _vertical_gradient(h: int, w: int, top: RGB, bottom: RGB) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    a = np.asarray(top, np.float32)[None, None, :]
    b = np.asarray(bottom, np.float32)[None, None, :]
    return np.broadcast_to(a + (b - a) * t, (h, w, 3))


def draw_background(canvas: Image.Image, rng: np.random.Generator, kind: str | None = None) -> dict[str, Any]:
    """Paint a random background onto ``canvas`` (RGB, any size) and return its description."""
    W, H = canvas.size
    kind = kind or _pick(rng, BACKGROUND_KINDS)
    h, w = max(8, H // 4), max(8, W // 4)  # numpy work happens at quarter resolution, then upsampled
    info: dict[str, Any] = {"kind": kind}
    floor_y = None
    if kind == "indoor":
        style = _pick(rng, INDOOR_STYLES)
        cname = _pick(rng, WALL_COLORS)
        wall = WALL_COLORS[cname]
        arr = np.empty((h, w, 3), np.float32)
        arr[:] = wall
        yy, xx = np.mgrid[0:h, 0:w]
        if style == "striped wallpaper":
            period = int(rng.integers(6, 12))
            arr[(xx // period) % 2 == 0] = shade(wall, 0.9)
        elif style == "brick wall":
            bh = max(3, h // 14)
            bw = bh * 2
            row = yy // bh
            mortar = (yy % bh == 0) | (((xx + (row % 2) * (bw // 2)) % bw) == 0)
            arr[:] = shade(mix(wall, (180, 80, 60), 0.55), 1.0)
            arr[mortar] = mix(wall, (255, 255, 255), 0.4)
        elif style == "tiled wall":
            t = max(4, h // 9)
            arr[(yy % t == 0) | (xx % t == 0)] = shade(wall, 0.82)
        floor_frac = float(rng.uniform(0.74, 0.84))
        fy = int(h * floor_frac)
        wood = mix((150, 100, 60), (200, 160, 110), float(rng.uniform()))
        arr[fy:] = wood
        arr[fy:][(xx[fy:] % max(4, w // 7)) == 0] = shade(wood, 0.8)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8)).resize((W, H), _UPSAMPLE)
        canvas.paste(img)
        d = ImageDraw.Draw(canvas)
        floor_y = int(H * floor_frac)
        d.line([(0, floor_y), (W, floor_y)], fill=shade(wood, 0.6), width=max(1, W // 220))
        info.update(style=style, color=cname)
        extra = _pick(rng, ("window", "none", "none")) if rng.random() < 0.6 else "none"
        if extra == "window":
            x0 = int(rng.uniform(0.05, 0.7) * W)
            ww, wh = int(W * 0.22), int(H * 0.26)
            y0 = int(H * 0.08)
            d.rectangle(
                (x0, y0, x0 + ww, y0 + wh), fill=(180, 220, 250), outline=(250, 250, 250), width=max(2, W // 90)
            )
            d.line([(x0 + ww // 2, y0), (x0 + ww // 2, y0 + wh)], fill=(250, 250, 250), width=max(2, W // 120))
            d.line([(x0, y0 + wh // 2), (x0 + ww, y0 + wh // 2)], fill=(250, 250, 250), width=max(2, W // 120))
            info["window"] = True
    elif kind == "outdoor":
        style = _pick(rng, OUTDOOR_STYLES)
        sky = (
            _vertical_gradient(h, w, (90, 150, 230), (200, 226, 250))
            if style != "snow"
            else _vertical_gradient(h, w, (170, 190, 210), (226, 232, 240))
        )
        arr = np.array(sky)
        horizon = float(rng.uniform(0.55, 0.7))
        hy = int(h * horizon)
        ground = {"park": (90, 168, 70), "beach": (236, 214, 160), "city": (150, 150, 150), "snow": (246, 248, 252)}[
            style
        ]
        noise = rng.normal(0, 8, (h - hy, w, 1)).astype(np.float32)
        arr[hy:] = np.asarray(ground, np.float32) + noise
        if style == "beach":
            sea_y = hy - max(2, h // 10)
            arr[sea_y:hy] = (40, 120, 190)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8)).resize((W, H), _UPSAMPLE)
        canvas.paste(img)
        d = ImageDraw.Draw(canvas)
        gy = int(H * horizon)
        if style == "city":
            x = 0
            while x < W:
                bw = int(rng.uniform(0.08, 0.16) * W)
                bh = int(rng.uniform(0.15, 0.4) * H)
                col = mix((120, 130, 150), (200, 190, 180), float(rng.uniform()))
                d.rectangle((x, gy - bh, x + bw, gy), fill=col, outline=shade(col, 0.7))
                for wy in range(gy - bh + W // 40, gy - W // 40, max(4, W // 25)):
                    d.line([(x + bw // 5, wy), (x + bw - bw // 5, wy)], fill=(240, 230, 160), width=max(1, W // 150))
                x += bw + int(rng.uniform(0.0, 0.03) * W)
        elif style in ("park", "snow"):
            for _ in range(int(rng.integers(1, 4))):
                tx = int(rng.uniform(0.05, 0.95) * W)
                r = int(rng.uniform(0.06, 0.1) * W)
                d.rectangle((tx - r // 5, gy - r, tx + r // 5, gy + r // 3), fill=(110, 70, 40))
                leaf = (60, 130, 60) if style == "park" else (230, 236, 244)
                d.ellipse((tx - r, gy - 2.6 * r, tx + r, gy - 0.6 * r), fill=leaf, outline=shade(leaf, 0.75))
        if rng.random() < 0.5:
            sx, sy, r = rng.uniform(0.1, 0.9) * W, rng.uniform(0.06, 0.18) * H, 0.06 * W
            d.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(255, 224, 90))
        for _ in range(int(rng.integers(0, 3))):
            cx, cy, r = rng.uniform(0, 1) * W, rng.uniform(0.05, 0.3) * H, rng.uniform(0.04, 0.07) * W
            for dx in (-1.0, 0.0, 1.0):
                d.ellipse((cx + dx * r - r, cy - r * 0.7, cx + dx * r + r, cy + r * 0.7), fill=(250, 250, 252))
        floor_y = gy
        info.update(style=style)
    elif kind == "gradient":
        a, b = _pick(rng, SOFT_COLORS), _pick(rng, SOFT_COLORS)
        while b == a:
            b = _pick(rng, SOFT_COLORS)
        arr = _vertical_gradient(h, w, SOFT_COLORS[a], SOFT_COLORS[b])
        if rng.random() < 0.5:  # diagonal
            t = (np.linspace(0, 1, h)[:, None] + np.linspace(0, 1, w)[None, :]) / 2
            ca, cb = np.asarray(SOFT_COLORS[a], np.float32), np.asarray(SOFT_COLORS[b], np.float32)
            arr = ca + (cb - ca) * t[..., None].astype(np.float32)
        canvas.paste(Image.fromarray(np.asarray(arr).clip(0, 255).astype(np.uint8)).resize((W, H), _UPSAMPLE))
        info.update(style="gradient", colors=[a, b])
    elif kind == "noise":
        a, b = _pick(rng, SOFT_COLORS), _pick(rng, WALL_COLORS)
        low = rng.uniform(0, 1, (6, 6, 1)).astype(np.float32)
        low_img = Image.fromarray((low[..., 0] * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        t = np.asarray(low_img, np.float32)[..., None] / 255.0
        ca, cb = np.asarray(SOFT_COLORS[a], np.float32), np.asarray(WALL_COLORS[b], np.float32)
        arr = ca + (cb - ca) * t + rng.normal(0, 10, (h, w, 1)).astype(np.float32)
        canvas.paste(Image.fromarray(arr.clip(0, 255).astype(np.uint8)).resize((W, H), _UPSAMPLE))
        info.update(style="noise", colors=[a, b])
    else:  # studio
        cname = _pick(rng, WALL_COLORS)
        c = np.asarray(WALL_COLORS[cname], np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.45) ** 2).astype(np.float32)
        arr = c[None, None, :] * (1.0 - 0.35 * r2[..., None])
        canvas.paste(Image.fromarray(arr.clip(0, 255).astype(np.uint8)).resize((W, H), _UPSAMPLE))
        info.update(style="plain", color=cname)
    info["floor_y"] = None if floor_y is None else float(floor_y) / H
    return info


def background_phrase(info: Mapping[str, Any]) -> str:
    """Caption fragment for a background description, e.g. ``"indoors, in front of a brick wall"``."""
    kind, style = info.get("kind"), info.get("style")
    if kind == "indoor":
        return f"indoors, in front of a {info.get('color', '')} {style}".replace("  ", " ")
    if kind == "outdoor":
        return {
            "park": "outdoors in a park",
            "beach": "outdoors on a beach",
            "city": "outdoors in a city",
            "snow": "outdoors in the snow",
        }.get(style, "outdoors")
    if kind == "gradient":
        a, b = info.get("colors", ["", ""])
        return f"in front of a {a} to {b} gradient background"
    if kind == "noise":
        return "in front of a blotchy abstract background"
    return f"in front of a plain {info.get('color', '')} background".replace("  ", " ")
