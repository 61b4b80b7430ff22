"""Can the LLaVA-mini LM learn to read a person's attributes when the person fills the image?

Session 8 found that no base names a *scene* person's hair colour, though a linear probe reads it from the
image tokens. This diagnostic removes the small-face problem: portraits (a training identity's portrait with
random clothing, background and expression), one dialogue of attribute questions per portrait ("What color is
this person's hair?" → "Red."). A fresh LoRA continues the given base (projector frozen) and is resumable.
Before and after, held-out portraits of test identities are scored by candidate log-likelihood per attribute.

Run: ``.venv/bin/python scripts/diag/portrait_attrs.py OUT STEPS [--base CKPT_OR_PROJECTOR] [--r 16] [--lr 5e-4]``
(``--eval-only`` scores the base; ``--checkpoint DIR`` scores a checkpoint of OUT).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from plvm.injection import PersonalizedLVLM
from plvm.models.base_eval import candidate_logprobs
from plvm.models.mini_lora import MiniLoraConfig
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.loop import LoopConfig, latest_checkpoint, load_checkpoint, run_training
from plvm.training.stage1_task import GenericExample, ProjectorTrainingTask

from _base import load_mini_lvlm

QUESTIONS = {
    "hair_color": ("What color is this person's hair?", ("black", "brown", "blonde", "red", "grey", "white")),
    "hair_style": ("What is this person's hairstyle?",
                   ("short", "long", "curly", "bald", "ponytail", "bun", "spiky", "bob")),
    "age": ("Is this person young, middle-aged or old?", ("young", "middle-aged", "old")),
    "gender": ("Is this person a man or a woman?", ("man", "woman")),
    "glasses": ("Is this person wearing glasses?", ("yes", "no")),
    "skin_tone": ("What is this person's skin tone?", ("pale", "fair", "medium", "olive", "brown", "dark")),
    "eye_color": ("What color are this person's eyes?", ("brown", "blue", "green", "grey")),
}


def truth(identity, kind: str) -> str:
    if kind == "glasses":
        return "no" if identity.attributes["glasses"] == "none" else "yes"
    return identity.attributes[kind]


def answer(value: str) -> str:
    return f"{value.capitalize()}."


class PortraitAttributeSource:
    """Portrait dialogues: every attribute of :data:`QUESTIONS` asked once, in a random order."""

    def __init__(self, world: AvatarWorld, seed: int, split: str = "train", size: int = 168):
        self.world, self.seed, self.split, self.size = world, seed, split, size
        self.people = world.split(split)

    def examples(self, index: int, n: int) -> list[GenericExample]:
        rng = np.random.default_rng([self.seed, index])
        out = []
        for _ in range(n):
            who = self.people[int(rng.integers(len(self.people)))]
            image = self.world.render_reference(who, self.size, rng)
            kinds = [str(k) for k in rng.permutation(list(QUESTIONS))]
            turns = [(QUESTIONS[k][0], answer(truth(who, k))) for k in kinds]
            out.append(GenericExample([image], turns[0][0], turns[0][1], "portrait", turns[1:]))
        return out

    def describe(self) -> dict:
        return {"kind": "portrait_attributes", "seed": self.seed, "split": self.split, "size": self.size}


def evaluate(lvlm: PersonalizedLVLM, world: AvatarWorld, n: int = 120, seed: int = 4321) -> dict:
    rng = np.random.default_rng(seed)
    people = world.split("test")
    hits = {k: [] for k in QUESTIONS}
    truths = {k: [] for k in QUESTIONS}
    for i in range(n):
        who = people[int(rng.integers(len(people)))]
        image = world.render_reference(who, 168, rng)
        for k, (q, values) in QUESTIONS.items():
            lp = candidate_logprobs(lvlm, GenericExample([image], q, ""), [answer(v) for v in values])
            hits[k].append(values[int(lp.argmax())] == truth(who, k))
            truths[k].append(truth(who, k))
    res = {}
    for k in QUESTIONS:
        _, counts = np.unique(truths[k], return_counts=True)
        res[k] = {"accuracy": round(float(np.mean(hits[k])), 3), "majority": round(counts.max() / n, 3)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("steps", type=int)
    ap.add_argument("--base", default=None, help="stage-1 checkpoint or projector file (default: committed)")
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-eval", type=int, default=120)
    ap.add_argument("--eval-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    lvlm = load_mini_lvlm(args.base)
    world = AvatarWorld(seed=0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.eval_only:
        print(json.dumps(evaluate(lvlm, world, args.n_eval), indent=1))
        return
    task = ProjectorTrainingTask(lvlm, PortraitAttributeSource(world, args.seed), batch_size=2,
                                 lora=MiniLoraConfig(args.r, 2 * args.r), train_projector=False)
    cfg = LoopConfig(steps=args.steps, lr=args.lr, warmup_steps=30, save_every=50, log_every=10,
                     mixed_precision="bf16", seed=args.seed, threads=2)
    run_training(task, cfg, out)
    ckpt = latest_checkpoint(out)
    load_checkpoint(ckpt, task, None)
    task.tuner.eval()
    res = evaluate(lvlm, world, args.n_eval)
    (out / f"eval_{ckpt.name}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
