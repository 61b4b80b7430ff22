"""Can a concept's output row (PLVM's ``e_weight``) recognise a person from the frozen LM's last hidden state?

PLVM gives each concept an extra LM-head row ``e_weight``: the logit of ``<sks>`` at a position is
``h · e_weight``, with ``h`` the frozen LM's last hidden state there and ``e_weight`` an MLP of the reference's
DINOv2 CLS token. So the best the output row can do is a bilinear score ``h_query^T W f_ref``. This probe fits
such a score (rank 64, logistic loss) on training identities and scores test identities:

- ``h``: the LM's last hidden state after a photo and "Who is in this image?" (committed LLaVA-mini);
- ``f``: DINOv2-S CLS of the identity's reference portrait (the Aligner's input);
- every query photo against every identity of its split (positive: the identity is in the photo).

For comparison the same fit uses the query photo's DINOv2 CLS instead of ``h`` (what the encoder alone gives).

Run: ``.venv/bin/python scripts/diag/readout_probe.py [N_TRAIN_QUERIES N_TEST_QUERIES]``
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from plvm.conversation import Conversation
from plvm.injection import ConceptTensors
from plvm.eval.metrics import roc_auc
from plvm.synth.avatarworld import AvatarWorld

from _base import load_mini_lvlm


def auc(pos, neg) -> float:
    return roc_auc(np.asarray(pos).tolist(), np.asarray(neg).tolist())


def main() -> None:
    n_train = int(sys.argv[1]) if len(sys.argv) > 1 else 800
    n_test = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    torch.set_num_threads(2)
    lvlm = load_mini_lvlm()
    model, proc = lvlm.model, lvlm.processor
    world = AvatarWorld(seed=0)
    tower = model.model.vision_tower

    def cls(image) -> torch.Tensor:
        px = proc.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return tower(pixel_values=px).last_hidden_state[0, 0]

    def queries(split: str, n: int, seed: int):
        rng = np.random.default_rng(seed)
        people = world.split(split)
        H, C, who, kind = [], [], [], []
        for i in range(n):
            if i % 2 == 0:
                p = people[int(rng.integers(len(people)))]
                image, ids = world.render_reference(p, 168, rng), [p.id]
            else:
                scene = world.sample_scene(rng, split)
                image, ids = scene.image, scene.identity_ids
            conv = Conversation()
            conv.user("Who is in this image?", image=[image])
            batch, _ = lvlm.prepare([conv])
            with torch.no_grad():
                h, _ = lvlm.hidden_states(batch, ConceptTensors.stack([[]], lvlm.hidden_size))
            H.append(h[0, batch.lengths[0] - 1])
            C.append(cls(image))
            who.append(set(ids))
            kind.append("portrait" if i % 2 == 0 else "scene")
        return torch.stack(H), torch.stack(C), who, kind

    def refs(split: str):
        people = world.split(split)
        return torch.stack([cls(world.render_reference(p)) for p in people]), [p.id for p in people]

    tr_q, te_q = queries("train", n_train, 1), queries("test", n_test, 2)
    tr_r, te_r = refs("train"), refs("test")

    def labels(q, r):
        return torch.tensor([[float(i in w) for i in r[1]] for w in q[2]])

    Ytr, Yte = labels(tr_q, tr_r), labels(te_q, te_r)
    for name, col in (("LM last hidden state h", 0), ("query DINOv2 CLS", 1)):
        X, Xt = tr_q[col].float(), te_q[col].float()
        mu, sd = X.mean(0), X.std(0) + 1e-6
        R, Rt = tr_r[0].float(), te_r[0].float()
        rmu, rsd = R.mean(0), R.std(0) + 1e-6
        X, Xt, R, Rt = (X - mu) / sd, (Xt - mu) / sd, (R - rmu) / rsd, (Rt - rmu) / rsd
        torch.manual_seed(0)
        A = torch.nn.Linear(X.shape[1], 64)
        B = torch.nn.Sequential(torch.nn.Linear(R.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
        bias = torch.nn.Parameter(torch.zeros(()))
        opt = torch.optim.Adam([*A.parameters(), *B.parameters(), bias], lr=3e-3, weight_decay=1e-4)
        pos_w = (Ytr.numel() - Ytr.sum()) / Ytr.sum()
        for _ in range(600):
            opt.zero_grad()
            S = A(X) @ B(R).T + bias
            loss = torch.nn.functional.binary_cross_entropy_with_logits(S, Ytr, pos_weight=pos_w)
            loss.backward()
            opt.step()
        with torch.no_grad():
            S = (A(Xt) @ B(Rt).T).numpy()
        Y = Yte.numpy().astype(bool)
        out = [f"all {auc(S[Y], S[~Y]):.3f}"]
        for k in ("portrait", "scene"):
            rows = np.array([kk == k for kk in te_q[3]])
            out.append(f"{k} {auc(S[rows][Y[rows]], S[rows][~Y[rows]]):.3f}")
        print(f"{name}: test AUC " + ", ".join(out))


if __name__ == "__main__":
    main()
