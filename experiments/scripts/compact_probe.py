"""Can LLaVA-mini v2 learn to compare a person with a *compact* reference — PLVM's prompt ``<bo> is <t1>…<t16>.`` with
``<t1>…<t16>`` the reference's own image tokens over its head box, average-pooled to 4 × 4 (what the mini Aligner's
context is anchored to)? Continues the v2 LM LoRA on image-prompt twins of training identities laid out that way:
Eq. 2 (w 10) on the Yes/No word plus :class:`AttentionMatch`'s two targets, the compare head (8, 0) now looking from
each query head onto the 16 context tokens. A share ``SHARE`` of the batches keeps the full image prompt (144
tokens), so that what works now is rehearsed.

    python experiments/scripts/compact_probe.py OUT STEPS LR SHARE     # train (resumable), batch 4, 2 threads
    python experiments/scripts/compact_probe.py OUT eval PAIRS        # held-out twins: compact and image-prompt AUC
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from v2_continuation import continued_v2, word_embedding

from plvm.concept import ConceptEmbedding
from plvm.config import MINI_BASE_MODEL
from plvm.conversation import single_turn
from plvm.diag.attention_match import AttentionProbeConfig, twin_examples
from plvm.diag.identity_probe import region_weights
from plvm.eval.metrics import roc_auc
from plvm.injection import ConceptTensors
from plvm.models.llava_mini.stage1_data import AvatarWorldGenericSource
from plvm.models.llava_mini.stage1_task import (
    AttentionMatch,
    answer_attention_logodds,
    generic_conversation,
)
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.attention import bce_with_logs, captured_attention, pooled_attention_logodds
from plvm.training.head_anchor import base_head_targets
from plvm.training.loop import LoopConfig, latest_checkpoint, load_checkpoint, run_training
from plvm.training.loss import shift_targets, weighted_answer_loss

K = 16
out = Path(sys.argv[1])
torch.set_num_threads(2)
world = AvatarWorld(seed=0, num_identities=400)
source = AvatarWorldGenericSource(
    world, 21, split="train", mix=(0, 0, 0, 1), same_portrait_share=0.5, image_prompt_pairs=True
)
match = AttentionMatch(layer=8, head=0, answer_layer=20, answer_head=0)
lvlm, task = continued_v2(source, 4, word_weight=10.0, attention_match=match)
model, processor = lvlm.model, lvlm.processor
word = word_embedding(lvlm)


@torch.no_grad()
def compact(ex) -> ConceptEmbedding:
    ctx = base_head_targets(model, processor.image_processor, [(ex.images[0], ex.reference_head)], K)[0]
    return ConceptEmbedding(ex.name, word, torch.zeros_like(word), ctx, MINI_BASE_MODEL)


def compact_conv(ex, concept, with_answer=True):
    return single_turn(ex.question, [concept], image=ex.images[-1], answer=ex.answer if with_answer else None)


def compact_loss(examples):
    concepts = [compact(ex) for ex in examples]
    batch = lvlm.collate([lvlm.encode(compact_conv(ex, c)) for ex, c in zip(examples, concepts)])
    ct = ConceptTensors.from_concepts([[c] for c in concepts], lvlm.hidden_size)
    with captured_attention(model, [8, 20]) as att:
        hidden, _ = lvlm.hidden_states(batch, ct)
    h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
    logits = lvlm.logits_for_rows(h, rows, ct)
    loss = weighted_answer_loss(logits, targets, is_word, 10.0)
    compare, labels, report, present = [], [], [], []
    for b, ex in enumerate(examples):
        query = (batch.ids[b] == lvlm.image_token_id).nonzero().squeeze(-1)
        ctx_cells = (batch.slot[b] > 0).nonzero().squeeze(-1)
        grid = round(query.numel() ** 0.5)
        w, hgt = ex.images[-1].size
        weights = torch.stack([region_weights(box, w, hgt, grid) for box, _ in ex.query_heads])
        compare.append(pooled_attention_logodds(att[8][b, 0], query, ctx_cells, weights))
        labels += [float(named) for _, named in ex.query_heads]
        answer_pos = int(batch.answer_word[b].nonzero()[0]) - 1
        one_image = dataclasses.replace(ex, images=ex.images[-1:])  # the prompt shows only the query
        z, shown = answer_attention_logodds(att[20][b, 0], batch.ids[b], answer_pos, one_image, lvlm.image_token_id)
        report.append(z)
        present.append(float(shown))
    match_loss, logs = bce_with_logs(torch.cat(compare), labels, "match")
    report_loss, report_logs = bce_with_logs(torch.stack(report), present, "report")
    with torch.no_grad():
        word_ce = torch.nn.functional.cross_entropy(logits[is_word].float(), targets[is_word])
    return loss + match_loss + report_loss, {"compact_word": float(word_ce), **logs, **report_logs}


class CompactTask:
    """The v2 continuation: a batch of 4 image-prompt examples (two twin pairs), all compact, or with probability
    ``share`` per batch all shown as the usual image prompt (the stage's own loss)."""

    def __init__(self, share: float):
        self.share = share

    def __getattr__(self, name):
        return getattr(task, name)

    def batch(self, step):
        return task.batch(step), bool(np.random.default_rng([5, step]).random() < self.share)

    def loss(self, batch):
        examples, full = batch
        if full:
            loss, logs = task.loss(examples)
            return loss, {"full_" + k: v for k, v in logs.items()}
        return compact_loss(examples)


@torch.no_grad()
def evaluate(pairs: int) -> None:
    examples = twin_examples(AttentionProbeConfig(pairs=pairs, portrait_share=0.0, seed=0))
    odds = {"compact": {True: [], False: []}, "image": {True: [], False: []}}
    for ex in examples:
        yes = ex.answer.startswith("Yes")
        c = compact(ex)
        odds["compact"][yes].append(float(lvlm.score_yes_no(compact_conv(ex, c, with_answer=False))[0]))
        odds["image"][yes].append(float(lvlm.score_yes_no(generic_conversation(ex, with_answer=False))[0]))
    for kind, o in odds.items():
        auc = roc_auc(o[True], o[False])
        print(f"{kind}: AUC {auc:.3f}  mean pos {np.mean(o[True]):+.2f} neg {np.mean(o[False]):+.2f}")


if sys.argv[2] == "eval":
    ckpt = latest_checkpoint(out) if out.exists() else None
    if ckpt is not None:
        load_checkpoint(ckpt, task, None)
        print(f"LoRA of {ckpt}")
    else:
        print("v2 LoRA as committed")
    model.eval()
    evaluate(int(sys.argv[3]))
else:
    steps, lr, share = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    run_training(
        CompactTask(share),
        LoopConfig(steps=steps, lr=lr, warmup_steps=10, save_every=25, log_every=5, seed=0, threads=2),
        out,
    )
