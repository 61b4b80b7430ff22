"""Can LLaVA-mini v2's LM learn to answer MC-LLaVA's set questions ("Can you see <a> and <b> in this photo?")?

On 376 held-out set questions every method ranks them at AUC 0.61–0.64 while ranking one-concept questions at
0.81–0.85 (experiments/aligner-v2-base.md §11): the base answers "and" poorly. This continues the v2 LM LoRA on
PLVM-format questions about *training* identities, each concept's context its portrait's 16 pooled head tokens (what
the mini Aligner's context is anchored to) and its word the embedding of " person":

* set questions (share ``SET``): a scene of 2–3 people, all of them named (Yes), or the same set with one member
  swapped for an absent person, half of them look-alikes (No);
* otherwise one-concept questions: one person, in the scene or not (half each).

Eq. 2 with w = 10 on the Yes/No word, batch 4, 2 threads.

    python experiments/scripts/set_question_probe.py train OUT STEPS LR SET   # resumable
    python experiments/scripts/set_question_probe.py eval CHECKPOINT|v2 N     # held-out: AUC of set / one-concept
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from v2_continuation import continued_v2, word_embedding

from plvm.concept import ConceptEmbedding
from plvm.config import MINI_BASE_MODEL
from plvm.conversation import Conversation
from plvm.diag.identity_probe import region_weights
from plvm.eval.config import EvalConfig
from plvm.eval.metrics import roc_auc
from plvm.eval.prompts import join_names
from plvm.injection import ConceptTensors
from plvm.models.llava_mini.anchor import head_box, portrait_head_box
from plvm.synth import qa
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.attention import bce_with_logs, captured_attention, check_heads, pooled_attention_logodds
from plvm.training.head_anchor import base_head_targets
from plvm.training.loop import LoopConfig, run_training
from plvm.training.loss import shift_targets, weighted_answer_loss

QUESTION = EvalConfig().multi_question


@dataclass
class SetExample:
    portraits: list  # one reference portrait per named person
    boxes: list  # their head boxes, px
    names: list[str]
    named: list[str]  # identity ids
    scene: Any  # AvatarWorld Scene (image + graph)
    question: str
    answer: str
    kind: str  # "set" | "concept"


class SetQuestions:
    """``examples(index, n)`` → ``[SetExample]``."""

    def __init__(self, set_share: float, seed: int = 0, split: str = "train"):
        self.world = AvatarWorld(seed=0, num_identities=400)
        self.pool, self.split = self.world.split(split), split
        self.set_share, self.seed = set_share, seed

    def examples(self, index, n):
        rng = np.random.default_rng([self.seed, index])
        out = []
        for _ in range(n):
            is_set = rng.random() < self.set_share
            scene = self.world.sample_scene(rng, self.split, n_people=int(rng.integers(2, 4)) if is_set else None)
            people = [self.world.identity(p["identity"]) for p in scene.graph["people"]]
            named = list(people) if is_set else [people[int(rng.integers(len(people)))]]
            if rng.random() < 0.5:  # No: one named person swapped for someone absent, half of them a look-alike
                k = int(rng.integers(len(named)))
                others = [p for p in self.pool if p not in people]
                pick = self.world.nearest(named[k], others, 3) if rng.random() < 0.5 else others
                named[k] = pick[int(rng.integers(len(pick)))]
            answer = "Yes" if all(p in people for p in named) else "No"
            portraits = [self.world.render_reference(p, rng_or_seed=int(rng.integers(2**31))) for p in named]
            boxes = [portrait_head_box(p, im.width) for p, im in zip(named, portraits)]
            names: list[str] = []
            while len(names) < len(named):  # distinct names
                name = qa.random_concept_name(rng)
                names += [name] if name not in names else []
            question = QUESTION.format(names=join_names(names))
            ids = [p.id for p in named]
            out.append(
                SetExample(portraits, boxes, names, ids, scene, question, answer, "set" if is_set else "concept")
            )
        return out

    def describe(self):
        return {"source": "set-questions", "set_share": self.set_share, "seed": self.seed}


class SetTask:
    """``word``: the name's embedding — ``"person"`` (the word's) or ``"head"`` (the mean of the concept's 16 pooled
    head tokens, rescaled to the word embeddings' mean norm: a name that carries the person's identity);
    ``find``: ``(layer, head)`` taught, at every name in the question, to attend to that person's head in the photo
    if they are there and to no head otherwise (BCE on the pooled attention log-odds, as ``AttentionMatch``'s report
    target)."""

    def __init__(self, set_share: float, checkpoint: Path | None = None, word: str = "person", find=None):
        self.word_kind, self.find = word, find
        self.lvlm, self.task = continued_v2(SetQuestions(set_share), 4, checkpoint)
        if find is not None:
            check_heads(self.lvlm.model, [find])
            self.lvlm.model.set_attn_implementation("eager")  # the only attention that returns its weights
        self.word = word_embedding(self.lvlm)
        table = self.lvlm.model.get_input_embeddings().weight.detach()
        self.word_norm = float(table.norm(dim=-1).mean())

    def __getattr__(self, name):
        return getattr(self.task, name)

    def conversations(self, examples, with_answer=True):
        model, processor = self.lvlm.model, self.lvlm.processor
        samples = [(im, box) for ex in examples for im, box in zip(ex.portraits, ex.boxes)]
        with torch.no_grad():
            ctx = iter(base_head_targets(model, processor.image_processor, samples, 16))
        convs, concepts = [], []
        for ex in examples:
            cs = []
            for n in ex.names:
                c = next(ctx)
                word = self.word if self.word_kind == "person" else c.mean(0) * (self.word_norm / c.mean(0).norm())
                cs.append(ConceptEmbedding(n, word, word, c, MINI_BASE_MODEL))
            conv = Conversation(cs)
            conv.user(ex.question, image=[ex.scene.image])
            if with_answer:
                conv.assistant(ex.answer)
            convs.append(conv)
            concepts.append(cs)
        return convs, ConceptTensors.from_concepts(concepts, self.lvlm.hidden_size)

    def loss(self, examples):
        convs, ct = self.conversations(examples)
        batch = self.lvlm.collate([self.lvlm.encode(c) for c in convs])
        layers = [self.find[0]] if self.find is not None else []
        with captured_attention(self.lvlm.model, layers) as att:
            hidden, _ = self.lvlm.hidden_states(batch, ct)
        h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        logits = self.lvlm.logits_for_rows(h, rows, ct)
        with torch.no_grad():
            word_ce = torch.nn.functional.cross_entropy(logits[is_word].float(), targets[is_word])
        loss, logs = weighted_answer_loss(logits, targets, is_word, 10.0), {"loss_word": float(word_ce)}
        if att:
            z, labels = self.find_logodds(att[self.find[0]][:, self.find[1]], batch, examples)
            find_loss, find_logs = bce_with_logs(z, labels, "find")
            loss, logs = loss + find_loss, {**logs, **find_logs}
        return loss, logs

    def find_logodds(self, attention, batch, examples):
        """``(z [N], present [N])``: at each name token of each question (after the photo), the attention log-odds
        ``attention`` ``[B, T, T]`` puts on that person's head in the photo if they are there, else on every head."""
        zs, present = [], []
        for b, ex in enumerate(examples):
            image = (batch.ids[b] == self.lvlm.image_token_id).nonzero().squeeze(-1)
            grid = round(image.numel() ** 0.5)
            width, height = ex.scene.image.size
            people = {p["identity"]: head_box(p) for p in ex.scene.graph["people"]}
            names = ((batch.slot[b] == 0) & (torch.arange(batch.ids.shape[1]) > int(image[-1]))).nonzero().squeeze(-1)
            for q in names.tolist():
                who = ex.named[int(batch.concept[b, q])]
                shown = [people[who]] if who in people else list(people.values())
                covered = torch.stack([region_weights(box, width, height, grid) > 0 for box in shown]).any(0)
                zs.append(
                    pooled_attention_logodds(attention[b], torch.tensor([q]), image[covered], torch.ones(1, 1))[0]
                )
                present.append(float(who in people))
        return torch.stack(zs), present


@torch.no_grad()
def evaluate(checkpoint: Path | None, n: int, word: str = "person") -> None:
    task = SetTask(0.5, checkpoint, word)
    task.lvlm.model.eval()
    examples = SetQuestions(0.5, seed=7, split="test").examples(0, n)
    odds = {"set": {True: [], False: []}, "concept": {True: [], False: []}}
    for i in range(0, n, 8):
        chunk = examples[i : i + 8]
        convs, _ = task.conversations(chunk, with_answer=False)
        scores = task.lvlm.score_yes_no(convs)
        for ex, s in zip(chunk, scores.tolist()):
            odds[ex.kind][ex.answer == "Yes"].append(s)
    for kind, o in odds.items():
        pos, neg = np.array(o[True]), np.array(o[False])
        print(
            f"{kind}: AUC {roc_auc(pos.tolist(), neg.tolist()):.3f} (n {len(pos)} + {len(neg)}), "
            f"pos / neg acc at 0: {(pos > 0).mean():.3f} / {(neg <= 0).mean():.3f}"
        )


if __name__ == "__main__":
    torch.set_num_threads(2)
    if sys.argv[1] == "eval":
        word = sys.argv[4] if len(sys.argv) > 4 else "person"
        evaluate(None if sys.argv[2] == "v2" else Path(sys.argv[2]), int(sys.argv[3]), word)
    else:
        out, steps, lr, share = Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
        word = sys.argv[6] if len(sys.argv) > 6 else "person"
        find = tuple(int(x) for x in sys.argv[7].split(",")) if len(sys.argv) > 7 else None
        run_training(
            SetTask(share, word=word, find=find),
            LoopConfig(steps=steps, lr=lr, warmup_steps=10, save_every=50, log_every=10, threads=2),
            out,
        )
