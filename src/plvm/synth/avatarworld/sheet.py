"""Contact sheet: references, scenes with labelled identities, and a look-alike per row."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .attributes import attribute_distance
from .world import AvatarWorld

_TARGET = (255, 214, 0)
_OTHER = (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _labelled_scene(image: Image.Image, graph: dict, target: str, font) -> Image.Image:
    img = image.copy()
    d = ImageDraw.Draw(img)
    for p in graph["people"]:
        col = _TARGET if p["identity"] == target else _OTHER
        x0, y0, x1, y1 = p["face_bbox"]
        d.rectangle((x0, y0, x1, y1), outline=(0, 0, 0), width=3)
        d.rectangle((x0, y0, x1, y1), outline=col, width=1)
        tx, ty = x0, max(0, y0 - 12)
        tw = d.textlength(p["identity"], font=font)
        d.rectangle((tx, ty, tx + tw + 2, ty + 11), fill=(0, 0, 0))
        d.text((tx + 1, ty - 1), p["identity"], fill=col, font=font)
    return img


def contact_sheet(
    world: AvatarWorld,
    n_identities: int = 6,
    scenes_per_identity: int = 3,
    seed: int = 0,
    size: int | None = None,
    split: str = "test",
) -> Image.Image:
    """A grid: per row, an identity's reference, ``scenes_per_identity`` photos containing it (yellow box;
    other people in white, all labelled by id) and the reference of its closest look-alike."""
    size = size or world.size
    rng = np.random.default_rng([world.seed, int(seed), 515])
    pool = world.split(split)
    # prefer identities that have a close relative, so the sheet shows hard negatives
    with_rel = [i for i in pool if world.hard_negatives(i, pool, 2, 1, rng)]
    rest = [i for i in pool if i not in with_rel]
    picks = (with_rel[: (n_identities + 1) // 2] + rest)[:n_identities]
    small, big = _font(11), _font(13)
    label_h = 58
    cols = scenes_per_identity + 2
    pad = 6
    W = cols * (size + pad) + pad
    H = 30 + len(picks) * (size + label_h + pad) + pad
    sheet = Image.new("RGB", (W, H), (250, 250, 250))
    d = ImageDraw.Draw(sheet)
    d.text(
        (pad, 8),
        f"AvatarWorld (seed {world.seed}, split '{split}'): reference | photos with the identity "
        f"(yellow) among others (white) | closest look-alike",
        fill=(0, 0, 0),
        font=big,
    )
    for r, ident in enumerate(picks):
        y = 30 + r * (size + label_h + pad)
        tiles: list[tuple[Image.Image, str]] = [
            (world.render_reference(ident, size=size), f"{ident.id} (reference): {ident.describe()}")
        ]
        for _ in range(scenes_per_identity):
            scene = world.sample_scene(rng, split, include=[ident], size=size)
            g = scene.graph
            me = next(p for p in g["people"] if p["identity"] == ident.id)
            npl = f"{g['n_people']} people" if g["n_people"] > 1 else "1 person"
            txt = (
                f"{npl}; {ident.id}: {me['position']}, {me['clothing_color']} "
                f"{me['clothing_type']}, {me['expression']}; {g['background']['kind']}"
            )
            tiles.append((_labelled_scene(scene.image, g, ident.id, small), txt))
        alike = world.nearest(ident, pool, 1)[0]
        dist = attribute_distance(ident, alike)
        diff = [k for k in ident.attributes if ident.attributes[k] != alike.attributes[k]]
        tiles.append(
            (
                world.render_reference(alike, size=size),
                f"look-alike {alike.id}, distance {dist}: " + ", ".join(f"{k}={alike.attributes[k]}" for k in diff),
            )
        )
        for c, (img, text) in enumerate(tiles):
            x = pad + c * (size + pad)
            sheet.paste(img, (x, y))
            wrapped = textwrap.wrap(text, width=max(20, size // 6))[:4]
            for li, line in enumerate(wrapped):
                d.text((x, y + size + 2 + li * 13), line, fill=(20, 20, 20), font=small)
    return sheet
