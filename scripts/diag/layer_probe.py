"""Which DINOv2-S layer of LLaVA-mini's vision tower carries a person's identity attributes? (No LM involved.)

For every person in 168-px training- and test-identity scenes, the patch features inside the person's head box
(:func:`plvm.training.anchor.head_box`, the patch nearest the head centre if none) are averaged at every
hidden state of the tower (0 = patch embeddings, 12 = last block, before the final LayerNorm — LLaVA-mini's
``vision_feature_layer = -1`` is layer 12). A logistic regression per attribute and layer is fitted on the
training scenes and scored on the test scenes; ``maj`` is the majority-class rate of the test labels.
DINOv2 is trained with colour jitter, so its last layers are expected to lose some of the colour that tells
AvatarWorld people apart.

Run: ``.venv/bin/python scripts/diag/layer_probe.py [n_train_scenes] [n_test_scenes]`` (400 / 200: about 1 min).
"""
import sys
import time

import numpy as np
import torch

from plvm.models.base import find_mini_projector
from plvm.models.mini import build_llava_mini
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.anchor import head_box

from _headprobe import head_patches, linear_probe  # scripts/diag/_headprobe.py

torch.set_num_threads(2)
t0 = time.time()
n_train, n_test = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (400, 200)
model, proc = build_llava_mini(projector=find_mini_projector(), lora=False)
world = AvatarWorld(seed=0)
ATTRS = ("hair_color", "age", "gender", "skin_tone", "eye_color", "hair_style")


@torch.no_grad()
def rows(split, n, seed):
    """``[(features [13, 384], attributes)]`` for every person in ``n`` scenes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = world.sample_scene(rng, split)
        pixels = proc.image_processor([scene.image], return_tensors="pt")["pixel_values"]
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        size = scene.graph["size"][0]
        for p in scene.graph["people"]:
            idx = [i + 1 for i in head_patches(head_box(p), size)]  # +1: CLS first
            out.append((torch.stack([h[0, idx].mean(0) for h in hidden]), dict(p["attributes"])))
    return out


train, test = rows("train", n_train, 1), rows("test", n_test, 2)
print("heads", len(train), len(test), f"{time.time() - t0:.0f} s", flush=True)


def probe(layer, attr):
    return linear_probe(torch.stack([r[0][layer] for r in train]), [r[1][attr] for r in train],
                        torch.stack([r[0][layer] for r in test]), [r[1][attr] for r in test])


for attr in ATTRS:
    res = [probe(layer, attr) for layer in range(13)]
    print(f"{attr:10s} maj {res[0][1]:.2f} | " + " ".join(f"{l}:{a:.2f}" for l, (a, _) in enumerate(res)), flush=True)
print(f"time {time.time() - t0:.0f} s")
