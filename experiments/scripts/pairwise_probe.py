"""Can a ranking loss through the LM improve the head-anchored context tokens? Eq. 2 trains a Yes/No word that a
prior satisfies (experiments/aligner-v2-base.md §1, §3, §9: with the resampler trained, "Yes" to everything). A
pairwise loss on twins cannot be met by a prior: the same reference and question, one scene with the concept and
one without (half the time with a look-alike), loss ``softplus(−(s⁺ − s⁻))`` on the Yes/No log-odds ``s``, plus
``λ · ‖c − c₀‖² / ‖c₀‖²`` keeping the 16 context tokens ``c`` near the starting Aligner's ``c₀``.

    python experiments/scripts/pairwise_probe.py OUT STEPS LR LAMBDA TRAIN ACCUM

Starts from the committed Aligner; TRAIN is what trains: ``context`` (the resampler), ``rows`` (``f_word``; the only
row the Yes/No log-odds read) or ``both``; batch 2 twins × ACCUM accumulation steps, 2 threads,
resumable checkpoints under OUT (``plvm eval --aligner-weights OUT/checkpoint-N`` reads them).
"""

import copy
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plvm.conversation import single_turn
from plvm.injection import ConceptTensors
from plvm.pipeline import PLVM
from plvm.synth import qa
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.aligner_task import AlignerTrainingTask
from plvm.training.data import AvatarWorldPersonalSource
from plvm.training.loop import LoopConfig, run_training

out, steps, lr, lam = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
train, accum = sys.argv[5], int(sys.argv[6])
assert train in ("context", "rows", "both"), train
plvm = PLVM.from_preset("mini")
world = AvatarWorld(seed=0, num_identities=400)
base = AlignerTrainingTask(
    plvm.lvlm, plvm.aligner, plvm.reference_processor, AvatarWorldPersonalSource(world, seed=0, split="train")
)
pool = world.split("train")


def twins(index: int, n: int) -> list[tuple]:
    rng = np.random.default_rng([7, index])
    out = []
    for _ in range(n):
        a = pool[int(rng.integers(len(pool)))]
        ref = world.render_reference(a, rng_or_seed=rng)
        other = world.look_alike(a, pool, 2, rng) if rng.random() < 0.5 else None
        pos = world.sample_scene(rng, "train", include=[a])
        neg = world.sample_scene(rng, "train", include=[other] if other else [], exclude=[a])
        question = qa.recognition_qa(rng, True).question
        out.append((ref, pos.image, neg.image, question))
    return out


def log_odds(question_images, e_word, e_weight, context):
    """``[N]`` Yes/No log-odds with gradients; ``question_images`` = [(question, image, concept index)]."""
    convs = [single_turn(q, [base._placeholder], image=img) for q, img, _ in question_images]
    batch = plvm.lvlm.collate([plvm.lvlm.encode(c, True) for c in convs])
    idx = [i for _, _, i in question_images]
    tensors = ConceptTensors.stack([[(e_word[i], e_weight[i], context[i])] for i in idx], plvm.lvlm.hidden_size)
    hidden, _ = plvm.lvlm.hidden_states(batch, tensors)
    last = torch.tensor(batch.lengths) - 1
    h = hidden[torch.arange(hidden.shape[0]), last]
    logp = torch.log_softmax(plvm.lvlm.logits_from_hidden(h, tensors).float(), dim=-1)
    return torch.logsumexp(logp[:, plvm.lvlm.yes_ids], -1) - torch.logsumexp(logp[:, plvm.lvlm.no_ids], -1)


class PairwiseTask:
    def trainable_module(self):
        module = base.trainable_module()
        if train == "context":
            module.f_word.requires_grad_(False)
        if train == "rows":
            module.resampler.requires_grad_(False)
        module.f_weight.requires_grad_(False)
        return module

    def trainable_state_dict(self):
        return base.trainable_state_dict()

    def load_trainable_state_dict(self, state):
        base.load_trainable_state_dict(state)

    def describe(self):
        return {**base.describe(), "probe": {"pairwise": True, "lambda": lam, "train": train, "accum": accum}}

    def batch(self, step):
        return twins(step, 2)

    def loss(self, items):
        z_ref = plvm.aligner.encode_reference(base.reference_pixels([r for r, *_ in items]))  # one encoder pass
        e_word, e_weight, context = plvm.aligner(z_ref=z_ref)
        with torch.no_grad():
            c0 = frozen_resampler(z_ref[:, 1:])
        qi = [(q, p, i) for i, (_, p, _, q) in enumerate(items)] + [(q, n, i) for i, (_, _, n, q) in enumerate(items)]
        s = log_odds(qi, e_word, e_weight, context)
        margin = s[: len(items)] - s[len(items) :]
        rank = F.softplus(-margin).mean()
        drift = ((context - c0) ** 2).sum(-1).div(c0.pow(2).sum(-1)).mean()
        return rank + lam * drift, {"rank": float(rank), "drift": float(drift), "margin": float(margin.mean())}


frozen_resampler = copy.deepcopy(plvm.aligner.resampler).eval()  # the starting context map, c₀
torch.manual_seed(0)
run_training(
    PairwiseTask(),
    LoopConfig(steps=steps, lr=lr, warmup_steps=5, save_every=25, log_every=5, seed=0, threads=2, grad_accum=accum),
    out,
)
