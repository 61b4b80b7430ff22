"""Are hair colour, age and glasses (worn) linearly readable from what a LLaVA-mini base sees of a person's head?

For each person of AvatarWorld scenes (300 of training identities to fit, 100 of held-out identities to test),
one feature vector of their head (ground-truth head box) is read in one of three ways, and a multinomial logistic
regression (L2, LBFGS) is fitted per attribute; the held-out accuracy is printed beside the majority rate.

    python experiments/scripts/attribute_probe.py --projector P            # the base's image tokens, pooled
    python experiments/scripts/attribute_probe.py --projector P --raw 8    # DINOv2 block 8 of the same forward
    python experiments/scripts/attribute_probe.py --projector P --crop 112 # the head cropped, encoded alone

``--projector`` names the base (its tower is the same in every LLaVA-mini); used in
experiments/llava-mini-v2-identity.md §9.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from plvm.diag.identity_probe import region_weights
from plvm.models.llava_mini.anchor import head_box
from plvm.models.llava_mini.assembly import build_llava_mini, image_tokens, mini_image_processor
from plvm.synth.avatarworld import AvatarWorld

ATTRIBUTES = ("hair_color", "age", "glasses")


def features(model, processor, image, people, raw: int | None, crop: int) -> list[np.ndarray]:
    """One vector per person: pooled projector tokens over the head box, pooled tower block ``raw`` (no projector),
    or (``crop`` px) the head crop's block-8 CLS + mean patch and block-12 CLS."""
    if crop:
        out = []
        for p in people:
            head = image.crop(tuple(int(round(v)) for v in head_box(p))).resize((crop, crop))
            pixels = mini_image_processor(crop)([head], return_tensors="pt")["pixel_values"]
            hs = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
            out.append(torch.cat([hs[8][0, 0], hs[8][0, 1:].mean(0), hs[12][0, 0]]).numpy())
        return out
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    if raw is None:
        f = image_tokens(model, pixels)[0]
    else:
        f = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[raw][:, 1:]
    f = f.reshape(-1, f.shape[-1])
    grid = round(f.shape[0] ** 0.5)
    weights = [region_weights(head_box(p), *image.size, grid) for p in people]
    return [((w[:, None] * f).sum(0) / w.sum()).numpy() for w in weights]


@torch.no_grad()
def collect(model, processor, world, split: str, scenes: int, seed: int, raw: int | None, crop: int):
    rng = np.random.default_rng(seed)
    rows, labels = [], {a: [] for a in ATTRIBUTES}
    for _ in range(scenes):
        scene = world.sample_scene(rng, split)
        people = scene.graph["people"]
        rows += features(model, processor, scene.image, people, raw, crop)
        for p in people:
            labels["hair_color"].append(p["attributes"]["hair_color"])
            labels["age"].append(p["attributes"]["age"])
            labels["glasses"].append(bool(p["glasses_worn"]))
    return np.stack(rows), labels


def fit_and_score(train: torch.Tensor, y_train: list, test: torch.Tensor, y_test: list) -> tuple[float, float]:
    classes = sorted(set(y_train) | set(y_test), key=str)
    a = torch.tensor([classes.index(v) for v in y_train])
    b = torch.tensor([classes.index(v) for v in y_test])
    w = torch.zeros(train.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(train @ w + bias, a) + 1e-2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    accuracy = float(((test @ w + bias).argmax(1) == b).float().mean())
    majority = max(float((b == c).float().mean()) for c in range(len(classes)))
    return accuracy, majority


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projector", required=True)
    parser.add_argument("--raw", type=int, default=None, help="read tower block RAW instead of the image tokens")
    parser.add_argument("--crop", type=int, default=0, help="encode each head crop alone at CROP px")
    parser.add_argument("--train-scenes", type=int, default=300)
    parser.add_argument("--test-scenes", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, processor = build_llava_mini(args.projector)
    world = AvatarWorld(seed=0, num_identities=400)
    x_train, y_train = collect(model, processor, world, "train", args.train_scenes, 1, args.raw, args.crop)
    x_test, y_test = collect(model, processor, world, "test", args.test_scenes, 2, args.raw, args.crop)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    train = torch.tensor((x_train - mean) / std, dtype=torch.float32)
    test = torch.tensor((x_test - mean) / std, dtype=torch.float32)
    for attribute in ATTRIBUTES:
        accuracy, majority = fit_and_score(train, y_train[attribute], test, y_test[attribute])
        print(f"{attribute}: held-out accuracy {accuracy:.3f} (majority {majority:.3f}, n {len(y_test[attribute])})")


if __name__ == "__main__":
    main()
