"""Attention-match probe: does a base LVLM compare the two people of an image-prompt question, and where?

The image-prompt question ("Here is <name>: <reference>." + query + "Is <name> in this photo?") needs the LM to
compare the reference's person with each person in the query. This probe renders held-out **twins** — the same
reference, name and question with a query that shows the named person ("Yes") and one that does not ("No") —
and reports, in a few minutes:

* **answer**: the AUC of the model's Yes/No log-odds, positive against negative prompts (what ``plvm eval``'s
  image-prompt row measures, on twins);
* **heads**: for every attention head ``(layer, head)`` of the LM, the AUC with which its pooled attention
  log-odds from a query person's head tokens onto the reference's head
  (:func:`plvm.models.llava_mini.stage1_task.reference_attention_logodds`) tells the named person from
  everyone else in the queries. A head near 1.0 compares people; 0.5 does not.

The second reading chooses the head that :class:`~plvm.models.llava_mini.stage1_task.AttentionMatch` teaches,
and shows whether training made it compare; the first shows whether the rest of the LM reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from plvm.eval.metrics import roc_auc
from plvm.injection import ConceptTensors, PersonalizedLVLM
from plvm.models.llava_mini.stage1_task import GenericExample, generic_conversation, reference_attention_logodds


@dataclass(frozen=True)
class AttentionProbeConfig:
    """Held-out twin pairs (test-split identities) the probe renders."""

    pairs: int = 60
    portrait_share: float = 0.5  # share of pairs whose queries are portraits (else scenes of 1-3 people)
    seed: int = 0
    world_seed: int = 0
    num_identities: int = 400

    def __post_init__(self) -> None:
        if self.pairs < 2:
            raise ValueError(f"pairs must be >= 2, got {self.pairs}")
        if not 0.0 <= self.portrait_share <= 1.0:
            raise ValueError(f"portrait_share must be in [0, 1], got {self.portrait_share}")


def twin_examples(config: AttentionProbeConfig) -> list[GenericExample]:
    """``2 · pairs`` image-prompt examples of held-out identities, positive and negative twin in turn."""
    from plvm.models.llava_mini.stage1_data import AvatarWorldGenericSource
    from plvm.synth.avatarworld import AvatarWorld

    world = AvatarWorld(seed=config.world_seed, num_identities=config.num_identities)
    source = AvatarWorldGenericSource(
        world,
        config.seed,
        split="test",
        mix=(0, 0, 0, 1),
        same_portrait_share=config.portrait_share,
        image_prompt_pairs=True,
    )
    return source.examples(0, 2 * config.pairs)


@torch.no_grad()
def run_attention_probe(lvlm: PersonalizedLVLM, examples: list[GenericExample]) -> dict[str, Any]:
    """Answer and per-head readings (module docstring) over image-prompt ``examples`` with head boxes.

    ``lvlm``'s model must run eager attention (the only kind that returns attention weights). Returns
    ``{"answer": {"auc", "mean_pos", "mean_neg", "accuracy"}, "heads": [[AUC per head] per layer],
    "n_prompts", "n_query_heads"}``; a prompt's label is whether its answer starts with "Yes".
    """
    none = ConceptTensors.stack([[]], lvlm.hidden_size)
    odds: dict[bool, list[float]] = {True: [], False: []}
    named, others = [], []  # per query head box: [L, H] pooled log-odds
    for ex in examples:
        batch = lvlm.collate([lvlm.encode(generic_conversation(ex, with_answer=False))])
        out = lvlm.model.model(
            inputs_embeds=lvlm.embed(batch, none),
            attention_mask=batch.attention_mask,
            output_attentions=True,
            **batch.vision,
        )
        if not out.attentions or out.attentions[0] is None:
            raise ValueError("the model returned no attention weights: set its attention implementation to eager")
        logp = torch.log_softmax(lvlm.logits_from_hidden(out.last_hidden_state[:, -1], none).float(), dim=-1)[0]
        odds[ex.answer.startswith("Yes")].append(
            float(torch.logsumexp(logp[lvlm.yes_ids], -1) - torch.logsumexp(logp[lvlm.no_ids], -1))
        )
        attention = torch.stack([a[0] for a in out.attentions])  # [L, H, T, T]
        z = reference_attention_logodds(attention, batch.ids[0], ex, lvlm.image_token_id)  # [L, H, n_heads]
        for k, (_, is_named) in enumerate(ex.query_heads):
            (named if is_named else others).append(z[..., k])
    if not (odds[True] and odds[False] and named and others):
        raise ValueError("the probe needs positive and negative prompts, and named and other query heads")
    pos, neg = torch.stack(named), torch.stack(others)  # [n, L, H]
    heads = [
        [float(roc_auc(pos[:, layer, h].tolist(), neg[:, layer, h].tolist())) for h in range(pos.shape[2])]
        for layer in range(pos.shape[1])
    ]
    return {
        "answer": {
            "auc": float(roc_auc(odds[True], odds[False])),
            "mean_pos": float(np.mean(odds[True])),
            "mean_neg": float(np.mean(odds[False])),
            "accuracy": float((sum(x > 0 for x in odds[True]) + sum(x <= 0 for x in odds[False])) / len(examples)),
        },
        "heads": heads,
        "n_prompts": len(examples),
        "n_query_heads": len(pos) + len(neg),
    }


def top_heads(heads: list[list[float]], k: int = 10) -> list[tuple[int, int, float]]:
    """The ``k`` heads with the highest AUC: ``(layer, head, auc)``."""
    flat = [(layer, h, auc) for layer, row in enumerate(heads) for h, auc in enumerate(row)]
    return sorted(flat, key=lambda t: -t[2])[:k]
