"""Is the image prompt a teacher worth distilling into PLVM? On AvatarWorld recognition samples (the training mix's
questions, Table 10 phrasings), the image prompt's Yes/No log-odds (teacher: the reference's image tokens in the
prompt) against the committed Aligner's (student: 1 + 16 tokens): AUC of each, their correlation, the teacher's
best threshold. Used in experiments/aligner-v2-base.md §9.

    python experiments/scripts/distill_probe.py N SPLIT [ALIGNER]   # e.g. 200 test
"""

import sys

import numpy as np
import torch

from plvm.conversation import single_turn
from plvm.eval.metrics import roc_auc
from plvm.eval.prompts import IMAGE_PROMPT_TEMPLATE, IMAGE_SLOT, EvalConversation
from plvm.pipeline import PLVM
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.data import AvatarWorldPersonalSource

torch.set_num_threads(2)
n, split = int(sys.argv[1]), sys.argv[2]
plvm = PLVM.from_preset("mini", aligner_weights=sys.argv[3] if len(sys.argv) > 3 else None)
source = AvatarWorldPersonalSource(AvatarWorld(seed=0, num_identities=400), seed=4242, split=split)
rows = []
index = 0
while len(rows) < n:
    for ex in source.examples(index, 8):
        if ex.query is None:
            continue
        teacher = EvalConversation()
        text = IMAGE_PROMPT_TEMPLATE.format(name="sks", image=IMAGE_SLOT) + "\n" + IMAGE_SLOT + "\n" + ex.question
        teacher.raw_user(text, [ex.reference, ex.query])
        concept = plvm.make_concept("sks", ex.reference)
        t = float(plvm.lvlm.score_yes_no(teacher)[0])
        s = float(plvm.lvlm.score_yes_no(single_turn(ex.question, [concept], image=ex.query))[0])
        rows.append((ex.kind == "recog_pos", t, s))
    index += 1
y = np.array([r[0] for r in rows])
t = np.array([r[1] for r in rows])
s = np.array([r[2] for r in rows])
print(f"{len(rows)} recognition samples ({y.sum()} positive), split {split}")
print(f"teacher AUC {roc_auc(t[y], t[~y]):.3f}  student AUC {roc_auc(s[y], s[~y]):.3f}")
print(f"corr(teacher, student) {np.corrcoef(t, s)[0, 1]:.3f}")
for name, v in (("teacher", t), ("student", s)):
    best = max(((v > th) == y).mean() for th in np.unique(v))
    at_zero = ((v > 0) == y).mean()
    print(f"{name}: mean pos {v[y].mean():+.2f} neg {v[~y].mean():+.2f}; acc at 0 {at_zero:.3f}, best {best:.3f}")
