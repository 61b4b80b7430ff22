"""Held-out own-pair AUC of several Aligner checkpoints on one row fit's cached answer states.

``RUN`` is a ``plvm train --row-fit-queries N`` output folder: its ``row-fit-states-N.safetensors`` and the held-out
identities of its ``row-fit.json``. For each checkpoint it prints the ROC AUC, pooled over the cached queries about
held-out identities, of ``h · e_weight(own reference) − logit_No`` (``plvm.training.row_fit.own_pair_objective``):
the row fit's selection metric, for weights that were selected otherwise.

Run: ``.venv/bin/python scripts/diag/own_pair_auc.py RUN N CHECKPOINT [CHECKPOINT ...]``
"""
import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from plvm.aligner import Aligner
from plvm.config import get_preset
from plvm.training.row_fit import AnswerStates, own_pair_objective


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("n", type=int)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    args = ap.parse_args()
    path = args.run / f"row-fit-states-{args.n}.safetensors"
    with safe_open(str(path), "pt") as f:
        tag = f.metadata()["tag"]
    states = AnswerStates.load(path, tag)
    if states is None:
        raise SystemExit(f"{path} holds states of an older layout (no own references): run the row fit again")
    held = set(json.loads((args.run / "row-fit.json").read_text())["heldout_identities"])
    about = torch.tensor([c in held for c in states.concept_ids])
    print(f"{path}: {int(about.sum())} queries about {len(held)} held-out identities, "
          f"{int(states.own_labels[about].sum())} positive")
    aligner = Aligner(get_preset("mini").aligner, None)
    for checkpoint in args.checkpoints:
        aligner.load_trainable_state_dict(load_file(str(checkpoint / "trainable.safetensors")))
        with torch.no_grad():
            rows = aligner.output_row(states.own_tokens).float()
        print(f"  {checkpoint}: held-out own-pair AUC {own_pair_objective(states, rows, about)[1]:.3f}")


if __name__ == "__main__":
    main()
