"""Can LLaVA-mini v2 learn to answer visual multiple-choice questions with the option's letter?

The harness's visual QA is multiple choice (LLaVA-1.5's "Answer with the option's letter from the given choices
directly."). On the results page every method, the image prompt and no personalization included, is at chance on
it (0.31–0.34), even on "How many people are in this image?" (0.21–0.37), which v2 answers at 0.725 when asked
openly. This continues the v2 LM LoRA on generic (unnamed) visual multiple-choice questions about training scenes
(``plvm.synth.qa.visual_mc_qa``: count; clothing colour, clothing type and expression of "the person on the left";
position of a lone person), the letter the target (plain masked-LM loss), batch 8, 2 threads.

    python experiments/scripts/mc_format_probe.py train OUT STEPS LR      # resumable
    python experiments/scripts/mc_format_probe.py eval CHECKPOINT|v2 N    # held-out scenes: accuracy per kind
"""

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from v2_continuation import continued_v2

from plvm.conversation import Conversation
from plvm.eval.prompts import mc_prompt
from plvm.eval.scoring import Scorer
from plvm.models.llava_mini.stage1_task import GenericExample
from plvm.synth import qa
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.loop import LoopConfig, run_training


class VisualMC:
    def __init__(self, seed: int = 0, split: str = "train"):
        self.world = AvatarWorld(seed=0, num_identities=400)
        self.seed, self.split = seed, split

    def examples(self, index, n):
        rng = np.random.default_rng([self.seed, index])
        out = []
        for _ in range(n):
            scene = self.world.sample_scene(rng, self.split)
            item = qa.visual_mc_qa(scene.graph, rng)
            ex = GenericExample([scene.image], mc_prompt(item.question, item.options), item.correct, "visual_mc")
            ex.name = item.meta["visual"]  # the kind, for the per-kind report
            out.append(ex)
        return out

    def describe(self):
        return {"source": "visual-mc", "seed": self.seed}


@torch.no_grad()
def evaluate(checkpoint, n: int) -> None:
    lvlm, _ = continued_v2(VisualMC(), 8, checkpoint)
    lvlm.model.eval()
    scorer = Scorer(lvlm)
    hits = defaultdict(list)
    for ex in VisualMC(seed=7, split="test").examples(0, n):
        conv = Conversation()
        conv.user(ex.question, image=ex.images)
        letters = [line[0] for line in ex.question.splitlines() if line[1:3] == ". "]
        scores = scorer.letters([conv], [letters])[0]
        hits[ex.name].append(max(scores, key=scores.get) == ex.answer)
    everything = [h for v in hits.values() for h in v]
    print(
        f"all: {np.mean(everything):.3f} (n {len(everything)}); "
        + ", ".join(f"{k} {np.mean(v):.3f} (n {len(v)})" for k, v in sorted(hits.items()))
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    if sys.argv[1] == "eval":
        evaluate(None if sys.argv[2] == "v2" else Path(sys.argv[2]), int(sys.argv[3]))
    else:
        out, steps, lr = Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        _, task = continued_v2(VisualMC(), 8)
        run_training(task, LoopConfig(steps=steps, lr=lr, warmup_steps=10, save_every=50, log_every=10, threads=2), out)
