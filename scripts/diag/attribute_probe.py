"""Do the image tokens LLaVA-mini's LM receives carry a person's identity attributes? (No LM involved.)

For every person in held-out-style scenes, the tokens of the patches inside the person's head box
(:func:`plvm.training.anchor.head_box`; the patch nearest the head centre if no patch centre falls inside)
are averaged, once from the frozen DINOv2-S features the projector reads (LLaVA's feature layer, before
DINOv2's final LayerNorm: :func:`plvm.models.mini.vision_features`) and once after the committed projector
(what the LM reads). A multinomial logistic regression per attribute (hair colour, age, gender, glasses worn, skin
tone) is fitted on training-identity scenes and scored on test-identity scenes; the majority-class rate
of the test labels is the floor. Reference portraits (one large centred head) are probed the same way.
If the probe reads an attribute the LM does not, the LM is the bottleneck; if the probe does not read it
either, the image tokens are (resolution, encoder, projector).

Run: ``.venv/bin/python scripts/diag/attribute_probe.py [n_train_scenes] [n_test_scenes]`` (defaults 500 / 250; 96 s).
"""
import sys

import numpy as np
import torch

from plvm.models.base import find_mini_projector
from plvm.models.mini import build_llava_mini, vision_features
from plvm.synth.avatarworld import AvatarWorld
from plvm.synth.avatarworld.person import face_geometry
from plvm.synth.avatarworld.scene import portrait_to_pixel
from plvm.training.anchor import head_box

from _headprobe import head_patches, linear_probe  # scripts/diag/_headprobe.py

torch.set_num_threads(2)
n_train, n_test = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (500, 250)
model, proc = build_llava_mini(projector=find_mini_projector(), lora=False)
world = AvatarWorld(seed=0)
ATTRS = ("hair_color", "age", "gender", "glasses", "skin_tone")


@torch.no_grad()
def tokens(images):
    """``([N, 144, 384] tower patch features the projector reads, [N, 144, 576] projected tokens)``."""
    hidden = vision_features(model, proc.image_processor(images, return_tensors="pt")["pixel_values"])
    return hidden, model.model.multi_modal_projector(hidden)


def labels(attributes, glasses):
    return {"hair_color": attributes["hair_color"], "age": attributes["age"], "gender": attributes["gender"],
            "glasses": str(bool(glasses)), "skin_tone": attributes["skin_tone"]}


def scene_rows(split, n, seed):
    rng = np.random.default_rng(seed)
    rows, sizes = [], []
    for _ in range(n):
        scene = world.sample_scene(rng, split)
        hidden, projected = tokens([scene.image])
        size = scene.graph["size"][0]
        for p in scene.graph["people"]:
            idx = head_patches(head_box(p), size)
            sizes.append(len(idx))
            rows.append((hidden[0, idx].mean(0), projected[0, idx].mean(0), labels(p["attributes"], p["glasses_worn"])))
    return rows, sizes


def portrait_rows(split, n, seed):
    rng = np.random.default_rng(seed)
    pool = [i for i in world.identities if i.split == split]
    size = world.size
    rows, sizes = [], []
    for _ in range(n):
        ident = pool[int(rng.integers(len(pool)))]
        face = face_geometry(ident.attributes["face_shape"])  # the scene's face box, in portrait units
        (x0, y0), (x1, y1) = (portrait_to_pixel(-(face.rx + 0.15), -(face.ry + 0.1), size),
                              portrait_to_pixel(face.rx + 0.15, face.ry + 0.05, size))
        idx = head_patches(head_box({"face_bbox": (x0, y0, x1, y1)}), size)
        sizes.append(len(idx))
        hidden, projected = tokens([world.render_reference(ident, rng_or_seed=rng)])
        rows.append((hidden[0, idx].mean(0), projected[0, idx].mean(0),
                     labels(ident.attributes, ident.attributes["glasses"] != "none")))
    return rows, sizes


def probe(train, test, which, attr):
    return linear_probe(torch.stack([r[which] for r in train]), [r[2][attr] for r in train],
                        torch.stack([r[which] for r in test]), [r[2][attr] for r in test])


for kind, make in (("scenes", scene_rows), ("portraits", portrait_rows)):
    train, sizes = make("train", n_train, 1)
    test, _ = make("test", n_test, 2)
    print(f"{kind}: {len(train)} train / {len(test)} test heads; head patches per person: "
          f"median {int(np.median(sizes))}, min {min(sizes)}, max {max(sizes)}")
    for attr in ATTRS:
        tower_acc, majority = probe(train, test, 0, attr)
        proj_acc, _ = probe(train, test, 1, attr)
        print(f"  {attr:10s} DINOv2 head tokens {tower_acc:.3f} | projected {proj_acc:.3f} | majority {majority:.3f}")
