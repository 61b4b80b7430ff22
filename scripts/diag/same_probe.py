"""Can the frozen DINOv2-S tell two AvatarWorld people apart at all? (No LM involved.)

The same-person pairs stage 1 trains on (``iter_generic_samples``, hard-negative distance 2): a reference
portrait vs. a second portrait or a scene. Each image is encoded by LLaVA-mini's vision tower at its input
size (168 px) and by DINOv2 on the *face crop* of every person in a scene (the ground-truth face box,
enlarged 1.8x, at 168 px). Scores: cosine of the CLS tokens (no training; scene = best person), and a
logistic regression on ``[|a-b|, a*b]`` of the standardised CLS tokens fitted on training-identity pairs.
The same logistic regression on the mean of the 144 image tokens the LM actually receives (the committed
projector's output) tells whether the projector keeps what DINOv2 knows about identity.
Reported: ROC AUC on test-identity pairs, by second-image kind.

Run: ``.venv/bin/python scripts/diag/same_probe.py [n_train] [n_test]`` (defaults 600 / 300; ~3 min).
"""
import sys

import numpy as np
import torch

from plvm.eval.metrics import roc_auc
from plvm.models.base import find_mini_projector
from plvm.models.mini import build_llava_mini
from plvm.synth.avatarworld import AvatarWorld

torch.set_num_threads(2)
n_train, n_test = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (600, 300)
model, proc = build_llava_mini(projector=find_mini_projector(), lora=False)
tower = model.model.vision_tower
world = AvatarWorld(seed=0)


@torch.no_grad()
def projected(images):
    """Mean of the image tokens the LM receives ``[N, d_llm]``."""
    pv = proc.image_processor(images, return_tensors="pt")["pixel_values"]
    feats = model.model.get_image_features(
        pixel_values=pv, vision_feature_layer=model.config.vision_feature_layer,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy).pooler_output
    return torch.stack([f.reshape(-1, f.shape[-1]).mean(0) for f in feats])


@torch.no_grad()
def cls(images):
    pv = proc.image_processor(images, return_tensors="pt")["pixel_values"]
    return tower(pv).last_hidden_state[:, 0]


def face_crops(image, graph):
    crops = []
    for p in graph["people"]:
        x0, y0, x1, y1 = p["face_bbox"]
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.9 * max(x1 - x0, y1 - y0)
        crops.append(image.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half))))
    return crops


def pairs(split, n, seed):
    rng = np.random.default_rng(seed)
    stream = world.iter_generic_samples(rng, split=split, weights=(0.0, 0.0, 1.0))
    out = []
    for _ in range(n):
        s = next(stream)
        ref, img = s.images
        graph = s.graphs[1]
        a = cls([ref])[0]
        whole = cls([img])[0]
        faces = whole[None] if graph is None else cls(face_crops(img, graph))
        out.append((a, whole, faces, s.answer == "Yes", "portrait" if graph is None else "scene",
                    projected([ref, img])))
    return out


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a[None], b.reshape(-1, a.shape[-1]), dim=-1)


train, test = pairs("train", n_train, 1), pairs("test", n_test, 2)


def features(rows, which):
    X = []
    for a, whole, faces, _, _, proj in rows:
        if which == "projected":
            a, b = proj
        else:
            b = whole if which == "whole" else faces[int(cos(a, faces).argmax())]
        X.append(torch.cat([(a - b).abs(), a * b]))
    return torch.stack(X)


def fit_predict(which):
    Xtr, Xte = features(train, which), features(test, which)
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    y = torch.tensor([float(r[3]) for r in train])
    w = torch.zeros(Xtr.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(Xtr @ w + b, y) + 1e-2 * w.pow(2).sum()
        loss.backward()
        opt.step()
    return (Xte @ w + b).detach().tolist()


scores = {
    "cosine, whole image": [float(cos(a, whole)) for a, whole, *_ in test],
    "cosine, best face crop": [float(cos(a, faces).max()) for a, _, faces, *_ in test],
    "logistic, whole image": fit_predict("whole"),
    "logistic, best face crop": fit_predict("face"),
    "logistic, mean projected image tokens": fit_predict("projected"),
}
for name, s in scores.items():
    line = [name]
    for kind in ("portrait", "scene", None):
        rows = [(x, r[3]) for x, r in zip(s, test) if kind is None or r[4] == kind]
        auc = roc_auc([x for x, t in rows if t], [x for x, t in rows if not t])
        line.append(f"{kind or 'all'} AUC {auc:.3f} (n={len(rows)})")
    print(" | ".join(line))
