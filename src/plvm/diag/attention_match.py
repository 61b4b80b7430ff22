"""Attention-match probe: does a base LVLM compare the two people of an image-prompt question, and where?

The image-prompt question ("Here is <name>: <reference>." + query + "Is <name> in this photo?") needs the LM to
compare the reference's person with each person in the query. This probe renders held-out **twins** — the same
reference, name and question with a query that shows the named person ("Yes") and one that does not ("No") —
and reports, in a few minutes:

* **answer**: the AUC of the model's Yes/No log-odds, positive against negative prompts (what ``plvm eval``'s
  image-prompt row measures, on twins);
* **heads**: for every attention head ``(layer, head)`` of the LM, how often its pooled attention log-odds from
  a query person's head tokens onto the reference's head
  (:func:`plvm.models.llava_mini.stage1_task.reference_attention_logodds`) is higher for the named person than
  for another person *of the same twin pair* (the negative query's people and the positive query's others) —
  an AUC stratified by pair, so that the size of a head (portrait or scene) does not count as identity. A head
  near 1.0 compares people; 0.5 does not.

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

    ``examples`` come as twins: a positive prompt (answer "Yes…") then its negative (same name), as
    :func:`twin_examples` makes them. ``lvlm``'s model must run eager attention (the only kind that returns
    attention weights). Returns ``{"answer": {"auc", "mean_pos", "mean_neg", "accuracy"}, "heads": [[AUC per
    head] per layer], "n_prompts", "n_query_heads"}``.
    """
    if len(examples) % 2 or any(
        not (p.answer.startswith("Yes") and n.answer.startswith("No") and p.name == n.name)
        for p, n in zip(examples[::2], examples[1::2])
    ):
        raise ValueError("the probe needs twin examples: a Yes prompt, then its No prompt with the same name")
    none = ConceptTensors.stack([[]], lvlm.hidden_size)
    odds: dict[bool, list[float]] = {True: [], False: []}
    concordance = []  # per twin pair: [L, H] share of (named, other) head pairs ordered right
    named: list[torch.Tensor] = []
    others: list[torch.Tensor] = []
    for k, ex in enumerate(examples):
        if k % 2 == 0:
            named, others = [], []  # this pair's query heads: [L, H] pooled log-odds each
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
        for j, (_, is_named) in enumerate(ex.query_heads):
            (named if is_named else others).append(z[..., j])
        if k % 2 == 1:
            if len(named) != 1 or not others:
                raise ValueError("each twin pair needs one named query head and at least one other")
            diff = named[0] - torch.stack(others)  # [n_others, L, H]
            concordance.append(((diff > 0).float() + 0.5 * (diff == 0).float()).mean(0))
    heads = torch.stack(concordance).mean(0).tolist()  # [L, H]
    return {
        "answer": {
            "auc": float(roc_auc(odds[True], odds[False])),
            "mean_pos": float(np.mean(odds[True])),
            "mean_neg": float(np.mean(odds[False])),
            "accuracy": float((sum(x > 0 for x in odds[True]) + sum(x <= 0 for x in odds[False])) / len(examples)),
        },
        "heads": heads,
        "n_prompts": len(examples),
        "n_query_heads": sum(len(ex.query_heads) for ex in examples),
    }


def top_heads(heads: list[list[float]], k: int = 10) -> list[tuple[int, int, float]]:
    """The ``k`` heads with the highest AUC: ``(layer, head, auc)``."""
    flat = [(layer, h, auc) for layer, row in enumerate(heads) for h, auc in enumerate(row)]
    return sorted(flat, key=lambda t: -t[2])[:k]
