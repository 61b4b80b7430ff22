"""Where does a recognition score vary: with the concept asked about, with the photo, or with whether they match?

For C concepts of an evaluation set (PLVM layout) and one query photo of each, it scores every (photo, concept)
pair with the harness's scorer (``PersonalizedLVLM.score_yes_no``, one forward) → a C × C grid ``z`` whose
diagonal holds the positives. It prints the two-way decomposition of ``z``'s variance (concept main effect,
photo main effect, residual) and the ROC AUC of diagonal vs off-diagonal cells for ``z`` as it is, with each
concept's mean over photos removed (a per-concept threshold, which a concept could carry, calibrated on
unrelated photos), with each photo's mean over concepts removed (ranking the concepts for one photo, as
``identify`` does), and with both.

Run: ``.venv/bin/python scripts/diag/score_grid.py ALIGNER_WEIGHTS DATA_DIR C [--query K]``
"""
import argparse

import numpy as np
import torch
from PIL import Image

from plvm.conversation import single_turn
from plvm.eval.metrics import roc_auc
from plvm.eval.readers import read_plvm
from plvm.pipeline import PLVM


def diag_auc(z: np.ndarray) -> float:
    eye = np.eye(len(z), dtype=bool)
    return roc_auc(z[eye].tolist(), z[~eye].tolist())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("aligner")
    ap.add_argument("data")
    ap.add_argument("c", type=int)
    ap.add_argument("--query", type=int, default=0, help="which query photo of each concept")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    plvm = PLVM.from_preset("mini", aligner_weights=args.aligner)
    dataset = read_plvm(args.data)
    records = [r for _, r in sorted(dataset.concepts.items()) if len(r.query_images) > args.query][: args.c]
    concepts = plvm.make_concepts([r.name for r in records], [Image.open(r.reference).convert("RGB") for r in records])
    photos = [Image.open(r.query_images[args.query]).convert("RGB") for r in records]
    pairs = [(i, j) for i in range(len(photos)) for j in range(len(concepts))]
    z = np.zeros((len(photos), len(concepts)))
    for s in range(0, len(pairs), args.batch):
        chunk = pairs[s:s + args.batch]
        convs = [single_turn(f"Is <{concepts[j].name}> in this photo?", [concepts[j]], image=photos[i]) for i, j in chunk]
        for (i, j), v in zip(chunk, plvm.lvlm.score_yes_no(convs).tolist()):
            z[i, j] = v
    photo_mean, concept_mean, grand = z.mean(1, keepdims=True), z.mean(0, keepdims=True), z.mean()
    residual = z - photo_mean - concept_mean + grand
    total = float(((z - grand) ** 2).sum())
    print(f"{args.aligner} on {args.data}: {len(photos)} photos x {len(concepts)} concepts (query {args.query})")
    print(f"  variance shares: concept {float(((concept_mean - grand) ** 2).sum()) * len(photos) / total:.3f}, "
          f"photo {float(((photo_mean - grand) ** 2).sum()) * len(concepts) / total:.3f}, "
          f"residual {float((residual ** 2).sum()) / total:.3f}")
    print(f"  mean z: matched {np.diag(z).mean():+.3f}, unmatched {z[~np.eye(len(z), dtype=bool)].mean():+.3f}")
    for name, grid in (("as scored", z), ("minus concept mean", z - concept_mean),
                       ("minus photo mean", z - photo_mean), ("minus both", residual)):
        print(f"  AUC {name:18s} {diag_auc(grid):.3f}")


if __name__ == "__main__":
    main()
