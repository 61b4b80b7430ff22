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
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..calibration import rescale_output
from ..models.mini import vision_features

_NUMBER_WORD = ("zero", "one", "two", "three", "four", "five")


def person_words(p: Mapping[str, Any]) -> list[str]:
    """The words a patch of person ``p`` (a scene-graph person) is anchored to."""
    a = p["attributes"]
    words = [p["position"], p["clothing_color"], p["clothing_type"], p["expression"], a["hair_color"],
             a["gender"], a["age"]]
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
            owner = next((p for p in people if p["bbox"][0] <= x < p["bbox"][2] and p["bbox"][1] <= y < p["bbox"][3]),
                         None)
            if owner is None:
                out.append(background)
            elif regions == "person":
                out.append(person_words(owner))
            else:
                hx0, hy0, hx1, hy1 = head_box(owner)
                out.append(head_words(owner) if hx0 <= x < hx1 and hy0 <= y < hy1 else body_words(owner))
    return out


class WordTargets:
    """Normalised mean input embedding of a word list (cached per list)."""

    def __init__(self, tokenizer: Any, embeddings: torch.Tensor):
        self.tokenizer = tokenizer
        self.embeddings = embeddings.detach().float()
        self._cache: dict[tuple[str, ...], torch.Tensor] = {}

    def word(self, word: str) -> torch.Tensor:
        ids = self.tokenizer.encode(" " + word, add_special_tokens=False)
        return self.embeddings[ids[0]]

    def __call__(self, words: Sequence[str]) -> torch.Tensor:
        key = tuple(words)
        if key not in self._cache:
            self._cache[key] = F.normalize(torch.stack([self.word(w) for w in words]).mean(0), dim=0)
        return self._cache[key]


def anchor_loss(projected: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` averaged over patches. ``projected``, ``targets``: ``[N, P, d]``."""
    return (1.0 - F.cosine_similarity(projected.float(), targets, dim=-1)).mean()


def _fit_cosine(module: torch.nn.Module, last: torch.nn.Linear, inputs: torch.Tensor, targets: torch.Tensor,
                steps: int, batch_size: int, lr: float, rng: np.random.Generator, target_norm: torch.Tensor,
                desc: str) -> tuple[float, float, float]:
    """Train ``module`` (alone, AdamW) so that ``module(inputs)`` ``[N, P, d]`` points along ``targets``; the
    last 10 % of the rows are held out. The cosine loss leaves the length free, so afterwards ``last`` is
    rescaled to give held-out outputs the mean norm ``target_norm``. Restores ``requires_grad``.

    Returns ``(held-out loss before, after, output scale)``.
    """
    n_val = max(1, len(inputs) // 10)
    train_idx = np.arange(len(inputs) - n_val)
    val = slice(len(inputs) - n_val, len(inputs))
    dtype = next(module.parameters()).dtype

    def val_loss() -> float:
        with torch.no_grad():
            return float(anchor_loss(module(inputs[val].to(dtype)), targets[val]))

    before = val_loss()
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(True)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    for _ in tqdm(range(steps), desc=desc, mininterval=5):
        idx = rng.choice(train_idx, size=min(batch_size, len(train_idx)), replace=False)
        loss = anchor_loss(module(inputs[idx].to(dtype)), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p, flag in zip(module.parameters(), flags):
        p.requires_grad_(flag)
    after = val_loss()
    with torch.no_grad():
        factor = rescale_output(last, module(inputs[val].to(dtype)), target_norm)
    return before, after, factor


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
    features = torch.cat([
        vision_features(model,
                        image_processor([s.image for s in scenes[i:i + 32]], return_tensors="pt")["pixel_values"])
        .to(torch.bfloat16)
        for i in tqdm(range(0, n_images, 32), desc="anchor: DINOv2 features", mininterval=5)
    ])  # [N, P, d_vision]
    grid = int(math.isqrt(features.shape[1]))
    words = WordTargets(tokenizer, model.get_input_embeddings().weight)
    targets = torch.stack([torch.stack([words(w) for w in patch_words(s.graph, grid, regions)]) for s in scenes])
    projector = model.model.multi_modal_projector
    before, after, factor = _fit_cosine(projector, projector.linear_2, features, targets, steps, batch_size, lr, rng,
                                        words.embeddings.norm(dim=-1).mean(), "anchor: projector")
    stats = {"val_loss_before": before, "val_loss_after": after, "val_cos_after": 1.0 - after,
             "output_scale": factor, "n_images": n_images, "steps": steps, "regions": regions,
             "seconds": time.time() - t0}
    log(f"anchor: held-out 1-cos {before:.3f} -> {after:.3f} ({stats['seconds']:.0f} s)")
    return stats


# ------------------------------------------------------------------------------------------ the Aligner
def attribute_words(name: str, value: str) -> list[str]:
    """Words for one identity attribute, e.g. ``("hair_color", "red") → ["red", "hair"]``,
    ``("glasses", "none") → ["no", "glasses"]``."""
    noun = {"face_shape": "face", "skin_tone": "skin", "hair_color": "hair", "hair_style": "hair",
            "eye_color": "eyes", "eyebrows": "eyebrows", "nose": "nose", "mouth": "mouth",
            "facial_hair": "beard", "glasses": "glasses", "mark": "marks"}.get(name)
    if value == "none":
        return ["no", noun or name]
    if name in ("facial_hair", "mark"):
        return [value]
    return [value] + ([noun] if noun else [])


def context_word_lists(attributes: Mapping[str, str], k: int) -> list[list[str]]:
    """Words of each of the ``k`` context tokens: token ``j`` ↔ the ``j``-th identity attribute (in
    AvatarWorld's canonical order); tokens beyond the attributes ↔ all of them."""
    per_attribute = [attribute_words(n, v) for n, v in attributes.items()]
    everything = [w for words in per_attribute for w in words]
    return [per_attribute[j] if j < len(per_attribute) else everything for j in range(k)]


def train_aligner_anchor(
    aligner: Any,
    tokenizer: Any,
    embeddings: torch.Tensor,
    reference_pixels: Callable[[list[Any]], torch.Tensor],
    samples: Sequence[tuple[Any, Mapping[str, str]]],
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Anchor the Aligner's context tokens to words describing the identity (in place; resampler only).

    The same idea as the projector's stage 0, for PLVM's ``<sks> is <t1>…<tk>.``: context token ``j`` is
    regressed (``1 - cos``) onto the embedding of the ``j``-th attribute's words, so a fresh Aligner already
    "says" ``<sks> is <young> <man> <round face> …`` to the frozen LM. Not in the paper: an initialisation
    before Eq. 2 training, which then moves all three heads freely.

    Args:
        reference_pixels: images → ``[B, 3, S, S]`` for the Aligner's encoder.
        samples: ``(reference image, identity attributes)`` pairs.

    Returns:
        Held-out (last 10 %) loss before/after, the output scale applied, seconds.
    """
    t0 = time.time()
    k = aligner.config.num_queries
    words = WordTargets(tokenizer, embeddings)
    z = []
    for i in tqdm(range(0, len(samples), 32), desc="anchor: reference features", mininterval=5):
        z.append(aligner.encode_reference(reference_pixels([s[0] for s in samples[i:i + 32]])).to(torch.bfloat16))
    z_ref = torch.cat(z)
    targets = torch.stack([torch.stack([words(w) for w in context_word_lists(a, k)]) for _, a in samples])
    before, after, factor = _fit_cosine(aligner.resampler, aligner.resampler.proj_out, z_ref[:, 1:], targets, steps,
                                        batch_size, lr, np.random.default_rng([seed, 4242]),
                                        words.embeddings.norm(dim=-1).mean(), "anchor: resampler")
    stats = {"val_loss_before": before, "val_loss_after": after, "output_scale": factor,
             "n_references": len(samples), "steps": steps, "seconds": time.time() - t0}
    log(f"anchor (Aligner context): held-out 1-cos {before:.3f} -> {after:.3f} ({stats['seconds']:.0f} s)")
    return stats
