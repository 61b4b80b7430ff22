"""Could a per-concept offset (a "null calibration" when a concept is added) raise the recognition AUC? From a
``plvm eval`` predictions file: the pooled AUC as it is, and after subtracting from each concept's scores the mean
of that concept's *own negative* test questions (an oracle: a product step would only have null photos). If even
the oracle leaves the pooled AUC unchanged, the concepts share one zero point and a global one suffices. Used in
experiments/aligner-v2-base.md.

    python experiments/scripts/concept_offsets.py RUN/recog-scenes.predictions.jsonl
"""

import json
import sys
from collections import defaultdict

import numpy as np

from plvm.eval.metrics import roc_auc

rows = [json.loads(line) for line in open(sys.argv[1]) if '"task": "recog"' in line]
y = np.array([r["label"] for r in rows], dtype=bool)
s = np.array([r["score"] for r in rows], dtype=float)
negatives = defaultdict(list)
for r in rows:
    if not r["label"]:
        negatives[r["concept"]].append(r["score"])
offset = {c: float(np.mean(v)) for c, v in negatives.items()}
shifted = np.array([r["score"] - offset.get(r["concept"], 0.0) for r in rows])
print(f"{len(rows)} questions, {len(set(r['concept'] for r in rows))} concepts")
print(f"AUC as scored: {roc_auc(s[y], s[~y]):.4f}")
print(f"AUC after each concept's own negative mean is subtracted (oracle): {roc_auc(shifted[y], shifted[~y]):.4f}")
print(f"mean score: positives {s[y].mean():+.3f}, negatives {s[~y].mean():+.3f}")
