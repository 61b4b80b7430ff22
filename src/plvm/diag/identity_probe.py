"""Identity probe: can a base LVLM's image tokens tell held-out people apart?

PLVM adds no visual ability — the Aligner only tells a frozen LVLM *which* person to look for — so the base's
image tokens must already carry who is in a photo. This probe measures that in minutes, before any long
stage-1 run (issue "LLaVA-mini v2"):

* **gallery**: ``gallery_ids`` held-out (test-split) AvatarWorld identities, one canonical reference portrait each;
* **queries**: each gallery identity in ``scenes_per_id`` scenes of 1–3 people (the others are strangers);
* a person's **region feature** is the mean of the image tokens over the patches of their head box
  (face + hair, ground-truth boxes; coverage-weighted), for the portrait and for every scene appearance;
* each scene appearance ranks the gallery's references by cosine similarity: **top-1** and the same/different
  **AUC** over all (appearance, reference) pairs.

Two readings per feature: **zero-shot** (raw cosine) and **adapter** — a Fisher LDA map fitted in closed form
on ``fit_ids`` *training* identities (portraits + scene appearances), i.e. what a linear read-out (an attention
head's query/key map) could separate. Both are reported for the projector's input (the vision-tower features it
reads) and for its output (the image tokens the LM sees).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..eval.metrics import roc_auc
from ..models.llava_mini.anchor import head_box, portrait_head_box
from ..synth.avatarworld import AvatarWorld


@dataclass(frozen=True)
class ProbeConfig:
    """What the probe renders. Gallery identities come from the test split, adapter identities from train."""

    world_seed: int = 0
    num_identities: int = 400
    gallery_ids: int = 40
    scenes_per_id: int = 4
    fit_ids: int = 100
    fit_scenes_per_id: int = 3
    seed: int = 0
    lda_dim: int = 64

    def __post_init__(self) -> None:
        for name in ("gallery_ids", "scenes_per_id", "fit_ids", "fit_scenes_per_id", "lda_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gallery_ids < 2:
            raise ValueError("gallery_ids must be >= 2 (a ranking needs a wrong reference)")


@dataclass
class RegionItems:
    """Rendered person regions: ``images[image_of[i]]`` holds person ``i`` (``identity[i]``) in ``box[i]`` (px);
    ``glasses_worn[i]``: glasses visible on them in that image (empty when not recorded)."""

    images: list[Image.Image]
    image_of: list[int]
    box: list[tuple[float, float, float, float]]
    identity: list[str]
    is_reference: list[bool]
    glasses_worn: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.identity)


def render_regions(
    world: AvatarWorld, identities: Sequence[Any], scenes_per_id: int, rng: np.random.Generator, pool: Sequence[Any]
) -> RegionItems:
    """Each identity's canonical portrait and ``scenes_per_id`` scenes with 0–2 strangers from ``pool``.

    Only the identity's own appearance in a scene is a query (strangers may not be in the gallery)."""
    items = RegionItems([], [], [], [], [], [])
    for ident in identities:
        portrait = world.render_reference(ident)
        items.images.append(portrait)
        items.image_of.append(len(items.images) - 1)
        items.box.append(portrait_head_box(ident, portrait.width))
        items.identity.append(ident.id)
        items.is_reference.append(True)
        items.glasses_worn.append(ident.attributes["glasses"] != "none")  # portraits always show them
        for _ in range(scenes_per_id):
            scene = world.sample_scene(rng, include=[ident], n_people=int(rng.integers(1, 4)), pool=pool)
            items.images.append(scene.image)
            person = next(p for p in scene.graph["people"] if p["identity"] == ident.id)
            items.image_of.append(len(items.images) - 1)
            items.box.append(head_box(person))
            items.identity.append(ident.id)
            items.is_reference.append(False)
            items.glasses_worn.append(bool(person["glasses_worn"]))
    return items


def region_weights(box: Sequence[float], width: int, height: int, grid: int) -> torch.Tensor:
    """Coverage of each patch cell by ``box`` (px of a ``width``×``height`` image), normalised to sum to 1.

    The LLaVA-mini processor pads the image to a square (centred) and resizes it to ``grid`` × 14 px, so the
    patch grid covers the padded square. Returns ``[grid * grid]`` (row-major, CLS excluded); a box that covers
    no cell (outside the image) raises ``ValueError``.
    """
    side = max(width, height)
    ox, oy = (side - width) / 2, (side - height) / 2
    x0, y0, x1, y1 = box
    edges = torch.arange(grid + 1, dtype=torch.float64) * side / grid
    lo, hi = edges[:-1], edges[1:]
    cover_x = (torch.minimum(hi, torch.tensor(x1 + ox)) - torch.maximum(lo, torch.tensor(x0 + ox))).clamp(min=0)
    cover_y = (torch.minimum(hi, torch.tensor(y1 + oy)) - torch.maximum(lo, torch.tensor(y0 + oy))).clamp(min=0)
    w = (cover_y[:, None] * cover_x[None, :]).reshape(-1)
    if w.sum() <= 0:
        raise ValueError(f"box {tuple(box)} covers no patch of a {width}x{height} image")
    return (w / w.sum()).float()


@torch.no_grad()
def region_features(
    model: Any, image_processor: Any, items: RegionItems, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-region means of the projector's input and output for every item.

    Returns ``(tower [N, d_vision × n_layers], tokens [N, d_text])`` (float32): the coverage-weighted mean over
    the head box's patches of the vision-tower features the projector reads, and of the image tokens it makes.
    """
    from ..models.llava_mini.assembly import project_features, vision_features

    per_image: dict[int, list[int]] = {}
    for i, j in enumerate(items.image_of):
        per_image.setdefault(j, []).append(i)
    order = sorted(per_image)
    tower = [None] * len(items)
    tokens = [None] * len(items)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        pixels = image_processor([items.images[j] for j in chunk], return_tensors="pt")["pixel_values"]
        feats = vision_features(model, pixels)  # [B, P, d_in]
        projected = project_features(model, feats)  # [B, P, d_text]
        grid = int(round(feats.shape[1] ** 0.5))
        for b, j in enumerate(chunk):
            width, height = items.images[j].size
            for i in per_image[j]:
                w = region_weights(items.box[i], width, height, grid)
                tower[i] = w @ feats[b].float()
                tokens[i] = w @ projected[b]
    return torch.stack(tower), torch.stack(tokens)


def fit_lda(features: torch.Tensor, labels: Sequence[str], dim: int, shrinkage: float = 0.1) -> torch.Tensor:
    """Fisher LDA: ``[D, dim]`` map maximising between- over (shrunk) within-identity scatter, each axis
    weighted by ``λ / (1 + λ)`` of its Fisher ratio ``λ``.

    ``features`` ``[N, D]`` are standardised per dimension first (so the map does not depend on each channel's
    scale), then the within-class scatter is shrunk toward ``shrinkage × mean variance × I`` so the map is
    defined when ``D`` exceeds the samples. ``dim`` is capped at (number of identities − 1) and ``D``. The returned map
    applies to the raw (mean-centred) features: the standardisation is folded into it.
    """
    scale = features.double().std(0).clamp_min(1e-8)
    x = features.double() / scale
    names = sorted(set(labels))
    index = torch.tensor([names.index(n) for n in labels])
    means = torch.stack([x[index == k].mean(0) for k in range(len(names))])
    centred = x - means[index]
    within = centred.T @ centred / len(x)
    within = (1 - shrinkage) * within + shrinkage * within.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype)
    between_c = means - x.mean(0)
    between = between_c.T @ between_c / len(names)
    chol = torch.linalg.cholesky(within)
    inv = torch.linalg.solve_triangular(chol, torch.eye(x.shape[1], dtype=x.dtype), upper=False)
    values, vectors = torch.linalg.eigh(inv @ between @ inv.T)
    k = min(dim, len(names) - 1, x.shape[1])
    # each discriminant weighted by its between/(between + within) share, so weak ones add little noise
    weight = values[-k:].clamp_min(0) / (1 + values[-k:].clamp_min(0))
    return ((inv.T @ vectors[:, -k:]) * weight / scale[:, None]).float()


def reid_scores(
    queries: torch.Tensor, query_ids: Sequence[str], refs: torch.Tensor, ref_ids: Sequence[str]
) -> dict[str, float]:
    """Rank references by cosine for each query: ``{"top1", "auc", "n_queries", "n_refs"}``.

    ``queries`` ``[Q, D]``, ``refs`` ``[R, D]``; every query's identity must be among ``ref_ids``."""
    missing = set(query_ids) - set(ref_ids)
    if missing:
        raise ValueError(f"queries of identities without a reference: {sorted(missing)[:3]}")
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    r = torch.nn.functional.normalize(refs.float(), dim=-1)
    sim = q @ r.T  # [Q, R]
    same = torch.tensor([[a == b for b in ref_ids] for a in query_ids])
    top1 = float(same[torch.arange(len(q)), sim.argmax(dim=1)].float().mean())
    auc = roc_auc(sim[same].tolist(), sim[~same].tolist())
    return {"top1": top1, "auc": float(auc), "n_queries": len(q), "n_refs": len(r)}


def probe_readings(
    gallery: RegionItems, gallery_feats: torch.Tensor, fit: RegionItems, fit_feats: torch.Tensor, lda_dim: int
) -> dict[str, dict[str, float]]:
    """Zero-shot and LDA-adapter re-identification of ``gallery``'s scene appearances against its portraits."""
    ref = [i for i in range(len(gallery)) if gallery.is_reference[i]]
    qry = [i for i in range(len(gallery)) if not gallery.is_reference[i]]
    ids = gallery.identity
    mean = fit_feats.mean(0)
    out = {
        "zero_shot": reid_scores(
            gallery_feats[qry] - mean, [ids[i] for i in qry], gallery_feats[ref] - mean, [ids[i] for i in ref]
        )
    }
    lda = fit_lda(fit_feats, fit.identity, lda_dim)
    mapped = (gallery_feats - mean) @ lda
    out["adapter"] = reid_scores(mapped[qry], [ids[i] for i in qry], mapped[ref], [ids[i] for i in ref])
    return out


def probe_sets(config: ProbeConfig) -> tuple[RegionItems, RegionItems]:
    """The rendered gallery (held-out identities) and adapter-fit (training identities) sets of ``config``."""
    world = AvatarWorld(seed=config.world_seed, num_identities=config.num_identities)
    test, train = world.split("test"), world.split("train")
    if config.gallery_ids > len(test) or config.fit_ids > len(train):
        raise ValueError(
            f"the world has {len(test)} test and {len(train)} train identities; asked for "
            f"{config.gallery_ids} and {config.fit_ids}"
        )
    rng = np.random.default_rng([config.seed, 0])
    gallery = render_regions(world, test[: config.gallery_ids], config.scenes_per_id, rng, pool=test)
    fit = render_regions(world, train[: config.fit_ids], config.fit_scenes_per_id, rng, pool=train)
    return gallery, fit


def run_identity_probe(model: Any, image_processor: Any, config: ProbeConfig = ProbeConfig()) -> dict[str, Any]:
    """Render the probe sets, read the base's head-region features and score re-identification.

    Returns ``{"config", "tower": {"zero_shot", "adapter"}, "tokens": {...}}`` where each reading is
    :func:`reid_scores`' dict (held-out identities only).
    """
    gallery, fit = probe_sets(config)
    g_tower, g_tokens = region_features(model, image_processor, gallery)
    f_tower, f_tokens = region_features(model, image_processor, fit)
    return {
        "config": asdict(config),
        "tower": probe_readings(gallery, g_tower, fit, f_tower, config.lda_dim),
        "tokens": probe_readings(gallery, g_tokens, fit, f_tokens, config.lda_dim),
    }
