"""Does removing each concept's own score level rescue recognition? (per-concept offsets on null photos)

For every concept of a stored ``plvm eval`` run (its ``.predictions.jsonl``), it scores the concept against K
*null photos* — AvatarWorld scenes (``--null portrait``: portraits) of train-split identities only, so never the concept — and takes the mean
log-odds as the concept's offset. It then prints the recognition ROC AUC of the stored scores as they are and
minus their concept's offset, over all questions and within each photo that has both a positive and a
negative question.

Run: ``.venv/bin/python scripts/diag/concept_offset.py ALIGNER_WEIGHTS DATA_DIR PREDICTIONS.jsonl K``
"""
import argparse
import collections
import json

import numpy as np
import torch
from PIL import Image

from plvm.conversation import single_turn
from plvm.eval.metrics import roc_auc
from plvm.eval.readers import read_plvm
from plvm.pipeline import PLVM
from plvm.synth.avatarworld import AvatarWorld


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("aligner")
    ap.add_argument("data")
    ap.add_argument("predictions")
    ap.add_argument("k", type=int)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--null", choices=("scene", "portrait"), default="scene", help="what the null photos show")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = [r for r in map(json.loads, open(args.predictions)) if r["task"] == "recog" and r["score"] is not None]
    plvm = PLVM.from_preset("mini", aligner_weights=args.aligner)
    dataset = read_plvm(args.data)
    world = AvatarWorld(seed=0)
    rng = np.random.default_rng(12345)
    pool = world.split("train")
    nulls = [world.sample_scene(rng, split="train").image if args.null == "scene"
             else world.render_reference(pool[int(rng.integers(len(pool)))], rng_or_seed=rng) for _ in range(args.k)]
    offsets = {}
    for cid in sorted({r["concept"] for r in rows}):
        record = dataset.concepts[cid]
        concept = plvm.make_concept(record.name, Image.open(record.reference).convert("RGB"))
        scores = []
        for s in range(0, len(nulls), args.batch):
            convs = [single_turn(f"Is <{concept.name}> in this photo?", [concept], image=im)
                     for im in nulls[s:s + args.batch]]
            scores += plvm.lvlm.score_yes_no(convs).tolist()
        offsets[cid] = float(np.mean(scores))
    spread = np.array(list(offsets.values()))
    print(f"{args.predictions}: {len(rows)} questions, {len(offsets)} concepts, K = {args.k} null {args.null}s; "
          f"concept offsets mean {spread.mean():+.3f}, sd {spread.std():.3f}")
    for name, adjust in (("as scored", lambda r: r["score"]), ("minus offset", lambda r: r["score"] - offsets[r["concept"]])):
        pos = [adjust(r) for r in rows if r["label"]]
        neg = [adjust(r) for r in rows if not r["label"]]
        by = collections.defaultdict(dict)
        for r in rows:
            by[r["image"]][r["label"]] = adjust(r)
        pairs = [(d[True], d[False]) for d in by.values() if True in d and False in d]
        acc = 0.5 * (np.mean(np.array(pos) > 0) + np.mean(np.array(neg) <= 0))
        print(f"  {name:12s} AUC {roc_auc(pos, neg):.3f}; within-photo P(pos > neg) "
              f"{np.mean([a > b for a, b in pairs]):.3f} over {len(pairs)} photos; mean acc at 0 {acc:.3f}")


if __name__ == "__main__":
    main()
