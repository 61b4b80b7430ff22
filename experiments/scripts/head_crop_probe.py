"""Would native-resolution head crops give LLaVA-mini's LM a better view of each person than the 168-px scene?

A design for the next base: every head in the query (found by a learned head finder; ground-truth boxes here) cropped
square from the 224-px photo at ``S`` px and encoded alone, ``(S/14)²`` tokens per head through the same tower and
projector. This probe compares, on ``plvm diag identity-probe``'s sets (40 held-out identities × 4 scenes against
their portraits; LDA adapter fitted on 100 training identities):

* re-identification (top-1 / AUC, zero-shot cosine and adapter) of the mean image token over the head, and
* linear probes (``attribute_probe.fit_and_score``) of hair colour and glasses worn, gallery people as the test set,

for the v2 base's scene head tokens (what it reads today) and for head crops at 56 and 112 px.

    python experiments/scripts/head_crop_probe.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from attribute_probe import fit_and_score

from plvm.diag.identity_probe import ProbeConfig, RegionItems, probe_readings, probe_sets, region_features
from plvm.models.llava_mini.assembly import build_llava_mini, image_tokens, mini_image_processor
from plvm.synth.avatarworld import AvatarWorld

V2 = str(Path(__file__).resolve().parents[2] / "models/llava-mini-v2/projector.safetensors")


def square(box, scale: float = 1.0):
    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, scale * max(x1 - x0, y1 - y0) / 2
    return tuple(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))


@torch.no_grad()
def crop_features(model, items: RegionItems, size: int) -> torch.Tensor:
    """``[N, d_llm]``: mean image token of each item's head crop at ``size`` px."""
    processor = mini_image_processor(size)
    crops = [items.images[j].crop(square(b)).resize((size, size)) for j, b in zip(items.image_of, items.box)]
    out = []
    for i in range(0, len(crops), 32):
        pixels = processor(crops[i : i + 32], return_tensors="pt")["pixel_values"]
        out.append(image_tokens(model, pixels).mean(1))
    return torch.cat(out)


def attributes(world: AvatarWorld, items: RegionItems) -> dict[str, list]:
    return {
        "hair colour": [world.identity(i).attributes["hair_color"] for i in items.identity],
        "glasses worn": list(items.glasses_worn),
    }


def main() -> None:
    torch.set_num_threads(2)
    model, processor = build_llava_mini(V2)
    config = ProbeConfig()
    world = AvatarWorld(seed=config.world_seed, num_identities=config.num_identities)
    gallery, fit = probe_sets(config)
    readings = {
        "scene head tokens (v2, 168 px)": (
            region_features(model, processor.image_processor, gallery)[1],
            region_features(model, processor.image_processor, fit)[1],
        )
    }
    for size in (56, 112):
        readings[f"head crop {size} px, {(size // 14) ** 2} tokens"] = (
            crop_features(model, gallery, size),
            crop_features(model, fit, size),
        )
    y_fit, y_gallery = attributes(world, fit), attributes(world, gallery)
    for name, (g, f) in readings.items():
        r = probe_readings(gallery, g, fit, f, config.lda_dim)
        mean, std = f.mean(0), f.std(0) + 1e-6
        attrs = {a: fit_and_score((f - mean) / std, y_fit[a], (g - mean) / std, y_gallery[a]) for a in y_fit}
        print(
            f"{name}: zero-shot top-1 {r['zero_shot']['top1']:.2f} AUC {r['zero_shot']['auc']:.3f}; adapter top-1 "
            f"{r['adapter']['top1']:.2f} AUC {r['adapter']['auc']:.3f}; "
            + "; ".join(f"{a} {acc:.2f} (majority {maj:.2f})" for a, (acc, maj) in attrs.items())
        )


if __name__ == "__main__":
    main()
