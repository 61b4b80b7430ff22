"""Which first-answer-token scores separate "<sks> is here" from "not here" for an Aligner?

For held-out recognition samples (test identities, sample seed 11) it reads, at the first answer position of
"Is <sks> in this photo?", the logits of the concept row (``<sks>``), of "Yes" and of "No", and prints the ROC
AUC of ``sks − No`` (the name-first decision), ``Yes − No`` and the concept logit alone, with their means.
``--portraits``: the query is a portrait instead of a scene — the concept (positive: another photo of the
person, other clothes, background and expression) or another test identity, a look-alike half of the time.

Run: ``.venv/bin/python scripts/diag/namefirst_scores.py ALIGNER_WEIGHTS N [--portraits]``
"""
import argparse

import numpy as np
import torch

from plvm.conversation import single_turn
from plvm.pipeline import PLVM
from plvm.eval.metrics import roc_auc
from plvm.synth.avatarworld import AvatarWorld


def auc(pos, neg) -> float:
    return roc_auc(np.asarray(pos).tolist(), np.asarray(neg).tolist())


def samples(world: AvatarWorld, n: int, portraits: bool):
    rng = np.random.default_rng(11)
    if not portraits:
        stream = world.iter_personal_samples(rng, split="test", recog_to_attr=1e9)
        for _ in range(n):
            s = next(stream)
            yield s.reference, s.query, s.answer_word == "Yes"
        return
    pool = world.split("test")
    for _ in range(n):
        target = pool[int(rng.integers(len(pool)))]
        positive = bool(rng.random() < 0.5)
        other = target
        if not positive:
            look = world.look_alike(target, pool, 2, rng) if rng.random() < 0.5 else None
            other = look or pool[int(rng.choice([i for i in range(len(pool)) if pool[i] is not target]))]
        yield world.render_reference(target), world.render_reference(other, rng_or_seed=rng), positive


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("aligner")
    ap.add_argument("n", type=int)
    ap.add_argument("--portraits", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    plvm = PLVM.from_preset("mini", aligner_weights=args.aligner)
    lv, world = plvm.lvlm, AvatarWorld(seed=0)
    rows = []
    for reference, query, positive in samples(world, args.n, args.portraits):
        concept = plvm.make_concept("sks", reference)
        batch, tensors = lv.prepare([single_turn("Is <sks> in this photo?", [concept], image=query)])
        with torch.no_grad():
            hidden, _ = lv.hidden_states(batch, tensors)
            logits = lv.logits_from_hidden(hidden[0, batch.lengths[0] - 1][None], tensors)[0].float()
        rows.append((positive, float(logits[lv.vocab_size]), float(logits[lv.yes_ids].max()),
                     float(logits[lv.no_ids].max())))
    r = np.array(rows)
    pos = r[:, 0] == 1
    print(f"{args.aligner}: {'portrait' if args.portraits else 'scene'} queries, {pos.sum()} positive, "
          f"{(~pos).sum()} negative")
    for name, col in (("sks - No", r[:, 1] - r[:, 3]), ("Yes - No", r[:, 2] - r[:, 3]), ("sks", r[:, 1])):
        print(f"  {name:8s} AUC {auc(col[pos], col[~pos]):.3f}   mean: positives {col[pos].mean():+.2f}, "
              f"negatives {col[~pos].mean():+.2f}")


if __name__ == "__main__":
    main()
