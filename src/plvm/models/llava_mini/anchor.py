"""Stage 0 of LLaVA-mini: a word-anchored projector init (an addition to LLaVA's two-stage recipe).

LLaVA's stage 1 teaches a projector to speak the LM's language from 558 K captioned images. On 2 CPU cores
a few thousand dialogues fit in a session, and two stage-1 runs from a random projector stayed at chance
(model card of LLaVA-mini). AvatarWorld knows *where* everything is, so the projector can first be taught,
without running the LM at all, to map each image patch near the LM's own word embeddings of what is there:

* a patch inside a person's box → the words of that person: position (``left`` / ``middle`` / ``right``),
  clothing colour and type, expression, hair colour, gender, age (and ``glasses`` when worn);
* any other patch → the scene's words: the number of people, ``indoors`` / ``outdoors``, the objects.

With ``regions="parts"`` a person's patches are split: the head (face box, extended up over the hair) →
hair colour, ``hair``, gender, age, expression (and ``glasses``); the rest of the person → position, clothing
colour and type. Each region then holds one colour word, bound to the right part of the person.

The target of a patch is the normalised mean of those words' input embeddings (first token of
``" " + word``) and the loss is ``1 - cos(projector(feature), target)``. Only the projector runs, on cached
DINOv2 features, so thousands of images train in minutes. Afterwards the image tokens read to the frozen LM
like a bag of the right words at the right places — a starting point for stage 1 to ground from. (Measured:
this does not make the frozen 135M LM answer by itself — it copies a colour from a plain-text caption only
7 times in 12 — so stage 1 still has to teach it to read; see the LLaVA-mini model card.)

The word targets and the cosine fit (:class:`~plvm.training.word_anchor.WordTargets`,
:func:`~plvm.training.word_anchor.fit_cosine`) live in :mod:`plvm.training.word_anchor`; the Aligner's head
anchoring (:mod:`plvm.training.head_anchor`) uses the same fit.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from plvm.models.llava_mini.assembly import vision_features
from plvm.synth.avatarworld.scene import portrait_face_bbox
from plvm.training.word_anchor import WordTargets, fit_cosine

_NUMBER_WORD = ("zero", "one", "two", "three", "four", "five")


def person_words(p: Mapping[str, Any]) -> list[str]:
    """The words a patch of person ``p`` (a scene-graph person) is anchored to."""
    a = p["attributes"]
    words = [
        p["position"],
        p["clothing_color"],
        p["clothing_type"],
        p["expression"],
        a["hair_color"],
        a["gender"],
        a["age"],
    ]
    if p.get("glasses_worn"):
        words.append("glasses")
    return words


def head_words(p: Mapping[str, Any]) -> list[str]:
    """The words of a head patch of person ``p`` (``regions="parts"``)."""
    a = p["attributes"]
    words = [a["hair_color"], "hair", a["gender"], a["age"], p["expression"]]
    if p.get("glasses_worn"):
        words.append("glasses")
    return words


def body_words(p: Mapping[str, Any]) -> list[str]:
    """The words of a non-head patch of person ``p`` (``regions="parts"``)."""
    return [p["position"], p["clothing_color"], p["clothing_type"]]


def head_box(p: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """The face box extended over the hair: 60 % of its height upwards, 15 % of its width on each side."""
    x0, y0, x1, y1 = p["face_bbox"]
    w, h = x1 - x0, y1 - y0
    return x0 - 0.15 * w, y0 - 0.6 * h, x1 + 0.15 * w, y1


def portrait_head_box(identity: Any, width: int) -> tuple[float, float, float, float]:
    """:func:`head_box` of ``identity``'s AvatarWorld reference portrait, ``width`` px wide."""
    return head_box({"face_bbox": portrait_face_bbox(identity, width)})


REGIONS = ("person", "parts")


def scene_words(graph: Mapping[str, Any]) -> list[str]:
    """The words a patch outside every person is anchored to."""
    kind = graph["background"]["kind"]
    words = [_NUMBER_WORD[min(len(graph["people"]), 5)], "people"]
    words.append("indoors" if kind == "indoor" else "outdoors" if kind == "outdoor" else "background")
    words += sorted({o["name"] for o in graph.get("objects", [])})
    return words


def patch_words(graph: Mapping[str, Any], grid: int, regions: str = "person") -> list[list[str]]:
    """Words of each of the ``grid × grid`` patches (row-major, the LM's image-token order).

    A patch belongs to the front-most person (lowest ``depth_rank``) whose box contains its centre. The
    image is square (scenes are rendered square, so LLaVA's pad-to-square changes nothing). ``regions``:
    ``"person"`` → every patch of a person gets :func:`person_words`; ``"parts"`` → :func:`head_words` inside
    the person's :func:`head_box`, :func:`body_words` elsewhere.
    """
    if regions not in REGIONS:
        raise ValueError(f"regions must be one of {REGIONS}, got {regions!r}")
    width, height = graph["size"]
    people = sorted(graph["people"], key=lambda p: p.get("depth_rank", 0))
    background = scene_words(graph)
    out = []
    for r in range(grid):
        for c in range(grid):
            x, y = (c + 0.5) * width / grid, (r + 0.5) * height / grid
            owner = next(
                (p for p in people if p["bbox"][0] <= x < p["bbox"][2] and p["bbox"][1] <= y < p["bbox"][3]), None
            )
            if owner is None:
                out.append(background)
            elif regions == "person":
                out.append(person_words(owner))
            else:
                hx0, hy0, hx1, hy1 = head_box(owner)
                out.append(head_words(owner) if hx0 <= x < hx1 and hy0 <= y < hy1 else body_words(owner))
    return out


def train_anchor(
    model: Any,
    tokenizer: Any,
    image_processor: Any,
    sample_scene: Callable[[np.random.Generator], Any],
    n_images: int = 1500,
    steps: int = 400,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
    regions: str = "person",
) -> dict[str, Any]:
    """Anchor ``model``'s projector (in place) to word embeddings on ``n_images`` scenes.

    Args:
        model: a ``LlavaForConditionalGeneration`` (only ``multi_modal_projector`` changes).
        sample_scene: ``rng → scene`` with ``.image`` (square PIL) and ``.graph`` (AvatarWorld scene graph).
        regions: how a person's patches are worded (:func:`patch_words`).

    Returns:
        Held-out (last 10 % of the images) anchor loss and mean cosine before and after, and the seconds taken.
    """
    t0 = time.time()
    rng = np.random.default_rng([seed, 424242])
    scenes = [sample_scene(rng) for _ in range(n_images)]
    features = torch.cat(
        [
            vision_features(
                model, image_processor([s.image for s in scenes[i : i + 32]], return_tensors="pt")["pixel_values"]
            ).to(torch.bfloat16)
            for i in tqdm(range(0, n_images, 32), desc="anchor: DINOv2 features", mininterval=5)
        ]
    )  # [N, P, d_vision]
    grid = int(math.isqrt(features.shape[1]))
    words = WordTargets(tokenizer, model.get_input_embeddings().weight)
    targets = torch.stack([torch.stack([words(w) for w in patch_words(s.graph, grid, regions)]) for s in scenes])
    projector = model.model.multi_modal_projector
    before, after, factor = fit_cosine(
        projector,
        projector.linear_2,
        features,
        targets,
        steps,
        batch_size,
        lr,
        rng,
        words.embeddings.norm(dim=-1).mean(),
        "anchor: projector",
    )
    stats = {
        "val_loss_before": before,
        "val_loss_after": after,
        "val_cos_after": 1.0 - after,
        "output_scale": factor,
        "n_images": n_images,
        "steps": steps,
        "regions": regions,
        "seconds": time.time() - t0,
    }
    log(f"anchor: held-out 1-cos {before:.3f} -> {after:.3f} ({stats['seconds']:.0f} s)")
    return stats
