"""A tiny synthetic dataset in the PLVM-validation layout (+ ``multi/``), for smoke tests of the harness.

A concept is a coloured square; photos show it at a random place on a light background. Everything the
readers understand is exercised: ``ref_img.png``, ``query_img*.{jpg,png}`` (mixed extensions),
``query_ques.json`` / ``non_query_ques.json`` (multiple choice), ``multi/images`` + ``annotations.json``
with single, multi and external images. Not a benchmark — numbers on it mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 50, 180),
    "orange": (240, 140, 20),
}


def _photo(colours: list[tuple[int, int, int]], rng: np.random.Generator, size: int) -> tuple[Image.Image, list[str]]:
    img = np.full((size, size, 3), 245, np.uint8)
    side = max(4, size // 3)
    places = []
    for i, colour in enumerate(colours):
        slot_w = size // max(len(colours), 1)
        x = int(i * slot_w + rng.integers(0, max(1, slot_w - side)))
        y = int(rng.integers(0, size - side))
        img[y : y + side, x : x + side] = colour
        places.append("left" if x + side / 2 < size / 2 else "right")
    return Image.fromarray(img), places


def write_toy_dataset(
    root: str | Path, n_concepts: int = 3, queries_per_concept: int = 2, size: int = 28, seed: int = 0
) -> Path:
    """Write the toy dataset to ``root`` (created) and return it. Concept ids: ``toy_red``, ``toy_green``, …"""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(COLOURS)[:n_concepts]
    ids = [f"toy_{n}" for n in names]
    text_qa, visual_qa = [], []
    for cid, colour in zip(ids, names):
        folder = root / cid
        folder.mkdir(exist_ok=True)
        _photo([COLOURS[colour]], rng, size)[0].save(folder / "ref_img.png")
        for q in range(queries_per_concept):
            image, places = _photo([COLOURS[colour]], rng, size)
            name = f"query_img{q + 1}." + ("jpg" if q % 2 == 0 else "png")
            if name.endswith("jpg"):
                image.save(folder / name, quality=95)
            else:
                image.save(folder / name)
            visual_qa.append(
                {
                    "ref_img": f"{cid}/ref_img.png",
                    "query_img": f"{cid}/{name}",
                    "question": "Where is <sks> in this photo?",
                    "multiple_choice": {"A": "On the left", "B": "On the right"},
                    "correct_answer": "A" if places[0] == "left" else "B",
                }
            )
        others = [n for n in names if n != colour][:2]
        options = [colour] + others
        order = rng.permutation(len(options)).tolist()
        letters = "ABCD"
        mc = {letters[i]: options[j].capitalize() for i, j in enumerate(order)}
        text_qa.append(
            {
                "ref_img": f"{cid}/ref_img.png",
                "query_img": None,
                "question": "What color is <sks>?",
                "multiple_choice": mc,
                "correct_answer": letters[order.index(0)],
            }
        )
    (root / "query_ques.json").write_text(json.dumps(visual_qa, indent=1))
    (root / "non_query_ques.json").write_text(json.dumps(text_qa, indent=1))
    multi = root / "multi" / "images"
    multi.mkdir(parents=True, exist_ok=True)
    annotations: dict[str, list[str]] = {}
    if n_concepts >= 2:
        _photo([COLOURS[names[0]], COLOURS[names[1]]], rng, size)[0].save(multi / "pair_0.png")
        annotations["pair_0.png"] = [ids[0], ids[1]]
    _photo([COLOURS[names[-1]]], rng, size)[0].save(multi / "single_0.jpg", quality=95)
    annotations["single_0.jpg"] = [ids[-1]]
    _photo([(120, 120, 120)], rng, size)[0].save(multi / "external_0.png")
    annotations["external_0.png"] = []
    (root / "multi" / "annotations.json").write_text(json.dumps(annotations, indent=1))
    return root


__all__ = ["COLOURS", "write_toy_dataset"]
