"""Identity shaping — LLaVA-mini v2's stage 0: make each person's head tokens say who the person is.

Measured with ``plvm diag identity-probe`` (:mod:`plvm.diag.identity_probe`) on the v1 base: the head-region
image tokens of held-out people separate them only through a *fitted* linear map (LDA adapter AUC 0.94,
zero-shot cosine AUC 0.55), and 1,750 stage-1 steps never taught the LM that map. Shaping makes identity the
tokens' own geometry, so that plain dot products — what attention computes — compare people:

* the projector reads DINOv2 blocks ``[8, last]`` (HF LLaVA's multi-layer features, concatenated; block 8
  carries more identity and hair colour than the last block) and starts as the v1 map (block-8 columns zero,
  :func:`widen_projector`), so the LM first sees exactly the tokens it was trained on;
* it is trained on cached tower features of training identities (a portrait and scenes each, ground-truth
  head boxes only here) with

  ``L = ‖P(x) − P₀(x_last)‖² / ‖P₀‖²``  — stay readable by the LM trained on the v1 tokens ``P₀``
  ``+ λ · SupCon_τ(pool_head(P(x)))``   — a person's head tokens close across portrait and scenes, others apart
  ``+ μ · Σ_a CE(W_a · pool_head(P(x)), a)`` — visible attributes (hair colour and style, age, gender, skin,
  facial hair, glasses *worn in this image*) stay linearly readable; the contrastive term alone would make
  the code invariant to glasses taken off.

``pool_head`` is the coverage-weighted mean of the tokens over a person's head box
(:func:`plvm.diag.identity_probe.region_weights`); the attribute heads ``W_a`` are discarded afterwards.
The result is still LLaVA's plain ``Linear → GELU → Linear`` projector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from plvm.calibration import channel_statistics, fold_statistics, unfold_statistics
from plvm.diag.identity_probe import RegionItems, region_weights, render_regions
from plvm.models.llava_mini.assembly import parse_feature_layer, widens
from plvm.synth.avatarworld.attributes import ATTRIBUTES

#: Attributes whose linear read-out shaping keeps (``glasses`` = worn in this image).
SHAPED_ATTRIBUTES: tuple[str, ...] = (
    "hair_color",
    "hair_style",
    "age",
    "gender",
    "skin_tone",
    "facial_hair",
    "glasses",
)


@dataclass(frozen=True)
class IdentityShapingConfig:
    """Stage-0 identity shaping (:func:`shape_projector`)."""

    steps: int = 600
    identities: int = 320  # training identities rendered (a portrait + ``scenes_per_id`` scenes each)
    scenes_per_id: int = 4
    ids_per_batch: int = 24  # each with its portrait and 2 scene appearances
    lr: float = 3e-4
    identity_weight: float = 0.3  # λ
    attribute_weight: float = 0.1  # μ
    temperature: float = 0.1  # τ
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.identities < 2 or self.scenes_per_id < 2 or self.ids_per_batch < 2:
            raise ValueError(
                "identity shaping needs steps >= 1, identities >= 2, scenes_per_id >= 2, ids_per_batch >= 2"
            )
        if not (self.identity_weight >= 0 and self.attribute_weight >= 0 and self.temperature > 0):
            raise ValueError("identity/attribute weights must be >= 0 and the temperature > 0")

    def metadata(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TowerFeatures:
    """Cached projector inputs: ``features`` ``[N_images, P, d_in]`` (float16) and, per person region,
    ``weights`` ``[R, P]``, ``image_of`` ``[R]``, ``identity`` (ids), ``is_reference`` and ``labels``
    (attribute → ``[R]`` class indices, see :data:`SHAPED_ATTRIBUTES`)."""

    features: torch.Tensor
    weights: torch.Tensor
    image_of: torch.Tensor
    identity: list[str]
    is_reference: list[bool]
    labels: dict[str, torch.Tensor]


def attribute_labels(items: RegionItems, attributes: Sequence[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Class indices of :data:`SHAPED_ATTRIBUTES` per region (``glasses``: 1 if worn in that image)."""
    out: dict[str, torch.Tensor] = {}
    for name in SHAPED_ATTRIBUTES:
        if name == "glasses":
            out[name] = torch.tensor([int(w) for w in items.glasses_worn])
        else:
            values = list(ATTRIBUTES[name])
            out[name] = torch.tensor([values.index(a[name]) for a in attributes])
    return out


@torch.no_grad()
def collect_tower_features(
    model: Any,
    image_processor: Any,
    world: Any,
    config: IdentityShapingConfig,
    batch_size: int = 16,
    log: Callable[[str], None] = print,
) -> TowerFeatures:
    """Render ``config.identities`` training identities and cache the tower features the projector reads."""
    from plvm.models.llava_mini.assembly import vision_features

    pool = world.split("train")
    if config.identities > len(pool):
        raise ValueError(f"the world has {len(pool)} training identities, asked for {config.identities}")
    rng = np.random.default_rng([config.seed, 17])
    chosen = pool[: config.identities]
    items = render_regions(world, chosen, config.scenes_per_id, rng, pool=pool)
    feats = []
    for start in range(0, len(items.images), batch_size):
        pixels = image_processor(items.images[start : start + batch_size], return_tensors="pt")["pixel_values"]
        feats.append(vision_features(model, pixels).half())
        if start // batch_size % 20 == 0:
            log(f"identity shaping: tower features {start + len(pixels)}/{len(items.images)} images")
    features = torch.cat(feats)
    grid = int(round(features.shape[1] ** 0.5))
    weights = torch.stack([region_weights(b, *items.images[j].size, grid) for b, j in zip(items.box, items.image_of)])
    by_id = {p.id: p.attributes for p in chosen}
    labels = attribute_labels(items, [by_id[i] for i in items.identity])
    return TowerFeatures(features, weights, torch.tensor(items.image_of), items.identity, items.is_reference, labels)


def widen_projector(
    state: dict[str, torch.Tensor], d_vision: int, old_layer: int, new_layers: Sequence[int], n_states: int = 13
) -> dict[str, torch.Tensor]:
    """A projector trained on tower layer ``old_layer`` as one reading ``new_layers`` (concatenated), same map:
    ``linear_1``'s columns for the other layers are zero. ``state`` keys without the projector prefix;
    ``n_states``: the tower's hidden states (layers + embeddings), so that ``-1`` and ``12`` are one layer."""
    if not widens(old_layer, list(new_layers), n_states):
        raise ValueError(f"layer {old_layer} is not among {list(new_layers)}")
    layers = [int(x) % n_states for x in new_layers]
    old_layer = old_layer % n_states
    w = state["linear_1.weight"]
    if w.shape[1] != d_vision:
        raise ValueError(f"linear_1 reads {w.shape[1]} features, not one layer of {d_vision}")
    wide = torch.zeros(w.shape[0], d_vision * len(layers), dtype=w.dtype)
    k = layers.index(old_layer)
    wide[:, k * d_vision : (k + 1) * d_vision] = w
    return {**state, "linear_1.weight": wide}


def load_widened_projector(model: Any, path: Any) -> dict[str, str]:
    """Load a one-layer projector file into ``model``, whose projector reads several layers including that one
    (:func:`widen_projector`). Returns the file's metadata."""
    from plvm.models.llava_mini.assembly import read_projector

    tensors, metadata = read_projector(path)
    layers = model.config.vision_feature_layer
    layers = layers if isinstance(layers, list) else [layers]
    old = parse_feature_layer(metadata.get("vision_feature_layer", "-1"))
    if not widens(old, layers, model.config.vision_config.num_hidden_layers + 1):
        raise ValueError(f"{path} reads layer(s) {old}; only a one-layer projector on one of {layers} is widened")
    vision = model.config.vision_config
    wide = widen_projector(tensors, vision.hidden_size, old, layers, vision.num_hidden_layers + 1)
    projector = model.model.multi_modal_projector
    ref = projector.linear_1.weight
    projector.load_state_dict({n: t.to(device=ref.device, dtype=ref.dtype) for n, t in wide.items()})
    return metadata


def supervised_contrastive(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) on mean-centred, L2-normalised ``z`` ``[n, d]``: for each anchor, the mean
    −log-softmax of its same-label others among all others. Every label must occur at least twice."""
    zc = nn.functional.normalize(z - z.mean(0), dim=-1)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = (zc @ zc.T / temperature).masked_fill(eye, float("-inf"))
    log_p = logits.log_softmax(dim=1).masked_fill(eye, 0.0)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    if not bool(positive.any(dim=1).all()):
        raise ValueError("every anchor needs a positive (each label at least twice)")
    return (-(log_p * positive).sum(1) / positive.sum(1)).mean()


def shape_projector(
    model: Any,
    cache: TowerFeatures,
    config: IdentityShapingConfig,
    log: Callable[[str], None] = print,
    log_every: int = 100,
) -> dict[str, Any]:
    """Train ``model``'s projector in place by the loss of the module docstring; returns the final losses.

    The distillation target is the projector's map at the start (the widened v1 map), computed once."""
    projector = model.model.multi_modal_projector
    dtype = projector.linear_1.weight.dtype
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    x = cache.features
    with torch.no_grad():
        target = torch.cat([projector(x[i : i + 64].to(dtype)).half() for i in range(0, len(x), 64)])
        # train on standardised inputs (the widened layers' raw features share a large common component),
        # with linear_1 re-expressed to compute the same map on them; folded back at the end
        mu, sd = channel_statistics(x.reshape(-1, x.shape[-1]))
        unfold_statistics(projector.linear_1, mu, sd)
    target_energy = float(target.float().pow(2).sum(-1).mean())
    heads = nn.ModuleDict({a: nn.Linear(target.shape[-1], int(cache.labels[a].max()) + 1) for a in SHAPED_ATTRIBUTES})
    names = sorted(set(cache.identity))
    regions: dict[str, list[int]] = {}
    for r, ident in enumerate(cache.identity):
        regions.setdefault(ident, []).append(r)
    refs = {i: [r for r in rs if cache.is_reference[r]] for i, rs in regions.items()}
    scenes = {i: [r for r in rs if not cache.is_reference[r]] for i, rs in regions.items()}
    params = list(projector.parameters()) + list(heads.parameters())
    projector.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    stats: dict[str, float] = {}
    for step in range(1, config.steps + 1):
        pick = torch.randperm(len(names), generator=gen)[: config.ids_per_batch].tolist()
        rows, ident = [], []
        for k in pick:
            own = scenes[names[k]]
            two = [own[int(j)] for j in torch.randperm(len(own), generator=gen)[:2]]
            rows += refs[names[k]][:1] + two
            ident += [k] * (1 + len(two))
        rows_t = torch.tensor(rows)
        images = cache.image_of[rows_t]
        tokens = projector(((x[images].float() - mu) / sd).to(dtype)).float()  # [n, P, d_text]
        pooled = torch.einsum("np,npd->nd", cache.weights[rows_t], tokens)
        distill = (tokens - target[images].float()).pow(2).sum(-1).mean() / target_energy
        contrast = supervised_contrastive(pooled, torch.tensor(ident), config.temperature)
        attr = sum(nn.functional.cross_entropy(heads[a](pooled), cache.labels[a][rows_t]) for a in SHAPED_ATTRIBUTES)
        loss = distill + config.identity_weight * contrast + config.attribute_weight * attr / len(SHAPED_ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        stats = {
            "step": step,
            "distill": distill.item(),
            "contrast": contrast.item(),
            "attributes": attr.item() / len(SHAPED_ATTRIBUTES),
        }
        if step % log_every == 0 or step == config.steps:
            log("identity shaping: " + ", ".join(f"{k} {v:.4g}" for k, v in stats.items()))
    projector.requires_grad_(False)
    fold_statistics(projector.linear_1, mu, sd)  # the projector reads raw tower features again
    return stats
