"""Can the base answer the text-only multiple-choice questions when the concept is described *correctly* in words?
The text prompt's description is written by the base from the reference (its text QA 0.243, the same as with a
wrong concept); here the description is AvatarWorld's ground truth, so only the LM's reading is tested. Prints the
accuracy with the right description, with another concept's (the wrong-concept control) and with none.

    python experiments/scripts/oracle_description_probe.py eval DATA [PROJECTOR [CHECKPOINT]]
    python experiments/scripts/oracle_description_probe.py train OUT STEPS        # then: eval DATA V2 OUT/checkpoint-N

DATA: a plvm-format eval set. ``train`` continues the v2 LM LoRA on text-only questions about *training* identities
(ground-truth description + one of the paper's attribute questions as multiple choice → the letter), batch 8, lr
3e-4, 2 threads: can the LM be taught to read a description at all?
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from v2_continuation import continued_v2

from plvm.config import MINI_BASE_MODEL
from plvm.eval.prompts import EvalConversation, mc_prompt
from plvm.eval.scoring import Scorer
from plvm.injection import ConceptTensors, PersonalizedLVLM
from plvm.models.llava_mini.assembly import build_llava_mini
from plvm.models.llava_mini.stage1_task import GenericExample
from plvm.synth import qa
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.loop import LoopConfig, latest_checkpoint, run_training
from plvm.training.loss import shift_targets, weighted_answer_loss

torch.set_num_threads(2)


def describe(a: dict) -> str:
    extras = [f"{a['glasses']} glasses" if a["glasses"] != "none" else "no glasses"]
    extras += [a["mark"]] if a.get("mark", "none") != "none" else []
    extras += [f"a {a['facial_hair']}"] if a.get("facial_hair", "none") != "none" else []
    return (
        f"a {a['age']} {a['gender']} with {a['skin_tone']} skin, {a['hair_color']} {a['hair_style']} hair, "
        f"{a['eye_color']} eyes, " + ", ".join(extras)
    )


class DescribedQuestions:
    """Training identities: ``<name> is <ground-truth description>.`` + an attribute question as multiple choice."""

    def __init__(self, seed: int = 0):
        self.world = AvatarWorld(seed=0, num_identities=400)
        self.pool = self.world.split("train")
        self.seed = seed

    def examples(self, index, n):
        rng = np.random.default_rng([self.seed, index])
        out = []
        for _ in range(n):
            person = self.pool[int(rng.integers(len(self.pool)))]
            name = qa.random_concept_name(rng)
            item = qa.attribute_mc_qa(person, rng, name=f"<{name}>", extra=True)
            text = f"<{name}> is {describe(person.attributes)}.\n{mc_prompt(item.question, item.options)}"
            out.append(GenericExample([], text, item.correct, "text_mc"))
        return out

    def describe(self):
        return {"source": "described-questions", "seed": self.seed}


class TextTask:
    """The LoRA task with the text-only examples laid out as the harness asks (``raw_user``: the ``<name>`` is text,
    not a concept), the answer letter the target (plain masked-LM loss)."""

    def __init__(self, lvlm, task):
        self.lvlm, self.task = lvlm, task

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, examples):
        convs = []
        for ex in examples:
            conv = EvalConversation()
            conv.raw_user(ex.question)
            conv.assistant(ex.answer)
            convs.append(conv)
        batch = self.lvlm.collate([self.lvlm.encode(c, label_all_turns=True) for c in convs])
        none = ConceptTensors.stack([[] for _ in examples], self.lvlm.hidden_size)
        hidden, _ = self.lvlm.hidden_states(batch, none)
        h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        return weighted_answer_loss(self.lvlm.logits_for_rows(h, rows, none), targets, is_word, 1.0), {}


def evaluate(root: Path, lvlm) -> None:
    scorer = Scorer(lvlm)
    concepts = {c["id"]: c["attributes"] for c in json.loads((root / "metadata.json").read_text())["concepts"]}
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


if sys.argv[1] == "eval":
    root = Path(sys.argv[2])
    if len(sys.argv) > 4:
        lvlm, _ = continued_v2(DescribedQuestions(), 8, sys.argv[4])
    else:
        model, processor = build_llava_mini(sys.argv[3] if len(sys.argv) > 3 else None)
        lvlm = PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL)
    evaluate(root, lvlm)
else:
    out, steps = Path(sys.argv[2]), int(sys.argv[3])
    lvlm, task = continued_v2(DescribedQuestions(), 8)
    run_training(
        TextTask(lvlm, task),
        LoopConfig(steps=steps, lr=3e-4, warmup_steps=10, save_every=50, log_every=10, threads=2),
        out,
    )
    print("latest:", latest_checkpoint(out))
