"""Can the base answer the text-only multiple-choice questions when the concept is described *correctly* in words?
The text prompt's description is written by the base from the reference (its text QA 0.243, the same as with a
wrong concept); here the description is AvatarWorld's ground truth, so only the LM's reading is tested. Prints the
accuracy with the right description, with another concept's (the wrong-concept control) and with none.

    python experiments/scripts/oracle_description_probe.py DATA [PROJECTOR]     # DATA: a plvm-format eval set
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from plvm.config import MINI_BASE_MODEL
from plvm.eval.prompts import EvalConversation, mc_prompt
from plvm.eval.scoring import Scorer
from plvm.injection import PersonalizedLVLM
from plvm.models.llava_mini.assembly import build_llava_mini

torch.set_num_threads(2)
root = Path(sys.argv[1])
model, processor = build_llava_mini(sys.argv[2] if len(sys.argv) > 2 else None)
scorer = Scorer(PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL))
concepts = {c["id"]: c["attributes"] for c in json.loads((root / "metadata.json").read_text())["concepts"]}


def describe(a: dict) -> str:
    extras = [f"{a['glasses']} glasses" if a["glasses"] != "none" else "no glasses"]
    extras += [a["mark"]] if a.get("mark", "none") != "none" else []
    extras += [f"a {a['facial_hair']}"] if a.get("facial_hair", "none") != "none" else []
    return (
        f"a {a['age']} {a['gender']} with {a['skin_tone']} skin, {a['hair_color']} {a['hair_style']} hair, "
        f"{a['eye_color']} eyes, " + ", ".join(extras)
    )


ids = sorted(concepts)
rng = np.random.default_rng(0)
rows = {"right": [], "wrong": [], "none": []}
for cid in ids:
    other = ids[(ids.index(cid) + 1 + int(rng.integers(len(ids) - 1))) % len(ids)]
    for item in json.loads((root / cid / "non_query_ques.json").read_text()):
        question = mc_prompt(item["question"].replace("<sks>", "<bo>"), item["multiple_choice"])
        for variant, who in (("right", cid), ("wrong", other), ("none", None)):
            conv = EvalConversation()
            intro = f"<bo> is {describe(concepts[who])}.\n" if who else ""
            conv.raw_user(intro + question)
            scores = scorer.letters([conv], [list(item["multiple_choice"])])[0]
            rows[variant].append(max(scores, key=scores.get) == item["correct_answer"])
for variant, hits in rows.items():
    print(f"{variant}: {np.mean(hits):.3f} on {len(hits)} questions")
print("example description:", describe(concepts[ids[0]]))
