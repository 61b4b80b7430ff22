"""Does the LLaVA-mini LM carry a portrait's attributes to where it answers?

Linear probes (``_headprobe.linear_probe``) on the LM's hidden states for portraits asked "What color is this
person's hair?": (a) the mean of the image-token states and (b) the state at the last prompt position (where
the answer's first token is predicted), at several LM layers. Fitted on training-identity portraits, scored
on test-identity portraits. If (a) holds an attribute and (b) does not, the LM does not move it from the
image tokens to the answer; if neither, the image tokens do not carry it.

Run: ``.venv/bin/python scripts/diag/lm_probe.py [N_TRAIN N_TEST] [--base CKPT_OR_PROJECTOR]``
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from plvm.conversation import Conversation
from plvm.injection import ConceptTensors, PersonalizedLVLM
from plvm.synth.avatarworld import AvatarWorld

from _base import load_mini_lvlm

from _headprobe import linear_probe

ATTRS = ("hair_color", "glasses", "gender", "age", "skin_tone", "hair_style", "eye_color")
LAYERS = (0, 1, 2, 4, 8, 12, 16, 20, 24, 30)


def label(identity, attr: str) -> str:
    if attr == "glasses":
        return "no" if identity.attributes["glasses"] == "none" else "yes"
    return identity.attributes[attr]


def features(lvlm: PersonalizedLVLM, world: AvatarWorld, split: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    people = world.split(split)
    image_id = lvlm.model.config.image_token_id
    img_rows, last_rows, labels = [], [], {a: [] for a in ATTRS}
    for _ in range(n):
        who = people[int(rng.integers(len(people)))]
        conv = Conversation()
        conv.user("What color is this person's hair?", image=[world.render_reference(who, 168, rng)])
        batch, _ = lvlm.prepare([conv])
        none = ConceptTensors.stack([[]], lvlm.hidden_size)
        with torch.no_grad():
            out = lvlm.model.model(inputs_embeds=lvlm.embed(batch, none), attention_mask=batch.attention_mask,
                                   output_hidden_states=True, **batch.vision)
        is_img = batch.ids[0] == image_id
        hs = out.hidden_states
        img_rows.append(torch.stack([hs[k][0, is_img].mean(0) for k in LAYERS]))
        last_rows.append(torch.stack([hs[k][0, batch.lengths[0] - 1] for k in LAYERS]))
        for a in ATTRS:
            labels[a].append(label(who, a))
    return torch.stack(img_rows), torch.stack(last_rows), labels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n_train", type=int, nargs="?", default=400)
    ap.add_argument("n_test", type=int, nargs="?", default=200)
    ap.add_argument("--base", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    lvlm = load_mini_lvlm(args.base)
    world = AvatarWorld(seed=0)
    tr = features(lvlm, world, "train", args.n_train, 1)
    te = features(lvlm, world, "test", args.n_test, 2)
    print("probe accuracy (majority) on test-identity portraits; rows: LM layer; columns: image-token mean | "
          "last prompt position")
    for a in ATTRS:
        print(f"\n{a}")
        for i, k in enumerate(LAYERS):
            acc_img, maj = linear_probe(tr[0][:, i], tr[2][a], te[0][:, i], te[2][a])
            acc_last, _ = linear_probe(tr[1][:, i], tr[2][a], te[1][:, i], te[2][a])
            print(f"  layer {k:2d}: image mean {acc_img:.3f} | last position {acc_last:.3f}   (majority {maj:.3f})")


if __name__ == "__main__":
    main()
