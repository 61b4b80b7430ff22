"""Do PLVM-mini's 16 context tokens carry the attributes the text-only questions ask about?

For each identity's reference portrait, one feature vector is read in one of two ways — the committed mini
Aligner's context (``[16, d]``, what ``<bo> is <t1>…<t16>.`` hands the LM) or the base's own image tokens over the
portrait's head box pooled to 4 × 4 (what that context is anchored to) — averaged over the 16 tokens, and a
multinomial logistic regression (L2, LBFGS; ``attribute_probe.fit_and_score``) is fitted per attribute on the
training identities and tested on the held-out ones. Prints the held-out accuracy beside the majority rate.

    python experiments/scripts/context_attribute_probe.py
"""

from __future__ import annotations

import numpy as np
import torch
from attribute_probe import fit_and_score

from plvm.models.llava_mini.anchor import portrait_head_box
from plvm.pipeline import PLVM
from plvm.synth.avatarworld import AvatarWorld
from plvm.synth.avatarworld.attributes import ATTRIBUTES
from plvm.training.head_anchor import base_head_targets


@torch.no_grad()
def features(plvm: PLVM, world: AvatarWorld, split: str) -> tuple[dict[str, np.ndarray], list]:
    people = world.split(split)
    portraits = [world.render_reference(p) for p in people]
    model, processor = plvm.lvlm.model, plvm.lvlm.processor
    samples = [(im, portrait_head_box(p, im.width)) for im, p in zip(portraits, people)]
    pooled = base_head_targets(model, processor.image_processor, samples, 16)
    context = torch.cat(
        [
            torch.stack([c.context for c in plvm.make_concepts([f"p{j}" for j in range(len(chunk))], chunk)])
            for chunk in (portraits[i : i + 32] for i in range(0, len(portraits), 32))
        ]
    )
    return {"head tokens": pooled.mean(1).numpy(), "Aligner context": context.mean(1).numpy()}, people


def main() -> None:
    torch.set_num_threads(2)
    plvm = PLVM.from_preset("mini")
    world = AvatarWorld(seed=0, num_identities=400)
    x_train, train_people = features(plvm, world, "train")
    x_test, test_people = features(plvm, world, "test")
    print(f"{len(train_people)} training / {len(test_people)} held-out identities")
    for kind in x_train:
        mean, std = x_train[kind].mean(0), x_train[kind].std(0) + 1e-6
        train = torch.tensor((x_train[kind] - mean) / std, dtype=torch.float32)
        test = torch.tensor((x_test[kind] - mean) / std, dtype=torch.float32)
        row = []
        for attribute in ATTRIBUTES:
            acc, majority = fit_and_score(
                train,
                [p.attributes[attribute] for p in train_people],
                test,
                [p.attributes[attribute] for p in test_people],
            )
            row.append(f"{attribute} {acc:.2f} ({majority:.2f})")
        print(f"{kind}: " + ", ".join(row))


if __name__ == "__main__":
    main()
