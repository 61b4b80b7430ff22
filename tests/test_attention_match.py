"""Stage-1 attention-match supervision (plvm.models.llava_mini.stage1_task.AttentionMatch): the pooled attention
log-odds by hand, the loss read from the right layer and head, and training that lowers it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from plvm.injection import ConceptTensors, PersonalizedLVLM
from plvm.models.llava_mini.lora import MiniLoraConfig
from plvm.models.llava_mini.stage1_task import (
    AttentionMatch,
    GenericExample,
    ProjectorTrainingTask,
    answer_attention_logodds,
    generic_conversation,
    reference_attention_logodds,
)
from plvm.models.tiny import tiny_llava
from plvm.training.loop import LoopConfig, run_training

LEFT = (0.0, 0.0, 14.0, 28.0)  # a 28-px image's left column of 14-px patches: cells 0 and 2 of a 2×2 grid
TOP_LEFT = (0.0, 0.0, 14.0, 14.0)  # cell 0
WHOLE = (0.0, 0.0, 28.0, 28.0)  # all four cells, a quarter each


def blank(value: int) -> Image.Image:
    return Image.fromarray(np.full((28, 28, 3), value, np.uint8))


def test_reference_attention_logodds_by_hand():
    # 3 text tokens, reference image (4 tokens, positions 3-6), 2 text tokens, query image (positions 9-12), 1 text
    image = 99
    ids = torch.tensor([1, 2, 3] + [image] * 4 + [4, 5] + [image] * 4 + [6])
    example = GenericExample(
        [blank(0), blank(255)],
        "q",
        "a",
        "image_prompt",
        name="bo",
        reference_head=LEFT,
        query_heads=[(TOP_LEFT, True), (WHOLE, False)],
    )
    gen = torch.Generator().manual_seed(0)
    attention = torch.randn(2, 14, 14, generator=gen).tril().masked_fill(torch.ones(14, 14).triu(1).bool(), -1e9)
    attention = attention.softmax(-1)  # two heads, causal rows
    z = reference_attention_logodds(attention, ids, example, image)
    assert z.shape == (2, 2)
    for h in range(2):
        mass = [float(attention[h, q, 3] + attention[h, q, 5]) for q in (9, 10, 11, 12)]  # ref cells 0 and 2
        logit = [math.log(m / (1 - m)) for m in mass]
        assert z[h, 0].item() == pytest.approx(logit[0], rel=1e-5)  # the top-left box: query cell 0 only
        assert z[h, 1].item() == pytest.approx(sum(logit) / 4, rel=1e-5)  # the whole image: a quarter each
    with pytest.raises(ValueError, match="square grids"):
        reference_attention_logodds(attention[:, :12, :12], ids[:12], example, image)  # 7 image tokens


class TwinPrompts:
    """Image-prompt twins on flat-coloured images: a reference, then a query that is "the same" (Yes) or not."""

    def examples(self, index: int, n: int) -> list[GenericExample]:
        rng = np.random.default_rng([5, index])
        out = []
        for k in range(n):
            same = k % 2 == 0
            shade = int(rng.integers(0, 200))
            query = blank(shade if same else 255 - shade)
            out.append(
                GenericExample(
                    [blank(shade), query],
                    "Is <bo> in this photo?",
                    "Yes" if same else "No",
                    "image_prompt",
                    name="bo",
                    reference_head=LEFT,
                    query_heads=[(TOP_LEFT, same), (WHOLE, False)],
                )
            )
        return out

    def describe(self):
        return {"source": "twin-prompts"}


def test_answer_attention_logodds_by_hand():
    image = 99
    ids = torch.tensor([1, 2, 3] + [image] * 4 + [4, 5] + [image] * 4 + [6, 7])  # query at 9-12, answer row 14
    gen = torch.Generator().manual_seed(1)
    attention = torch.randn(3, 15, 15, generator=gen).masked_fill(torch.ones(15, 15).triu(1).bool(), -1e9)
    attention = attention.softmax(-1)

    def example(query_heads):
        return GenericExample(
            [blank(0), blank(9)], "q", "a", "image_prompt", name="bo", reference_head=LEFT, query_heads=query_heads
        )

    def logit(m):
        return torch.log(m) - torch.log1p(-m)

    # the named person shown: the mass on their head (query cell 0 = position 9) only
    z, shown = answer_attention_logodds(attention, ids, 14, example([(TOP_LEFT, True), (WHOLE, False)]), image)
    assert shown and z.shape == (3,)
    torch.testing.assert_close(z, logit(attention[:, 14, 9]))
    # not shown: the mass on every person's head (here the union: the top-left cell and the right column)
    right = (14.0, 0.0, 28.0, 28.0)
    z, shown = answer_attention_logodds(attention, ids, 14, example([(TOP_LEFT, False), (right, False)]), image)
    assert not shown
    torch.testing.assert_close(z, logit(attention[:, 14, [9, 10, 12]].sum(-1)))


def test_attention_match_reads_its_layers_and_heads_and_training_lowers_it(tmp_path):
    model, processor = tiny_llava(template="chatml")
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    match = AttentionMatch(layer=0, head=2, weight=1.0, answer_layer=1, answer_head=1)
    task = ProjectorTrainingTask(
        lvlm, TwinPrompts(), batch_size=4, lora=MiniLoraConfig(r=4, lora_alpha=8), attention_match=match
    )
    assert task.describe()["attention_match"] == {
        "layer": 0,
        "head": 2,
        "weight": 1.0,
        "answer_layer": 1,
        "answer_head": 1,
    }
    fixed = TwinPrompts().examples(999, 4)
    with torch.no_grad():
        loss, logs = task.loss(fixed)
    assert {"loss_word", "loss_match", "match_acc", "match_auc", "loss_report", "report_acc", "report_auc"} <= set(logs)

    # the same losses from an independent forward that returns every layer's attention
    batch = lvlm.collate([lvlm.encode(generic_conversation(ex), label_all_turns=True) for ex in fixed])
    none = ConceptTensors.stack([[] for _ in fixed], lvlm.hidden_size)
    with torch.no_grad():
        out = model.model(
            inputs_embeds=lvlm.embed(batch, none),
            attention_mask=batch.attention_mask,
            output_attentions=True,
            **batch.vision,
        )

    def compare(layer, head):
        return torch.cat(
            [
                reference_attention_logodds(out.attentions[layer][b, head], batch.ids[b], ex, lvlm.image_token_id)
                for b, ex in enumerate(fixed)
            ]
        )

    labels = torch.tensor([float(named) for ex in fixed for _, named in ex.query_heads])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert logs["loss_match"] == pytest.approx(bce(compare(0, 2), labels).item(), rel=1e-4)
    assert not torch.allclose(compare(0, 2), compare(0, 1))  # heads differ: the loss above is the named head's
    report, shown = [], []
    for b, ex in enumerate(fixed):
        answer_row = int(batch.answer_word[b].nonzero()[0]) - 1  # the position that predicts "Yes"/"No"
        assert batch.ids[b, answer_row + 1] in lvlm.yes_ids + lvlm.no_ids
        z, present = answer_attention_logodds(
            out.attentions[1][b, 1], batch.ids[b], answer_row, ex, lvlm.image_token_id
        )
        report.append(z)
        shown.append(float(present))
    assert shown == [1.0, 0.0, 1.0, 0.0]
    assert logs["loss_report"] == pytest.approx(bce(torch.stack(report), torch.tensor(shown)).item(), rel=1e-4)

    # lr 1e-2: at 2e-2 the tiny model's report loss rose after 30 steps on one CPU and diverged by 60
    run_training(task, LoopConfig(steps=30, lr=1e-2, save_every=30, log_every=10), tmp_path)
    with torch.no_grad():
        _, after = task.loss(fixed)
    assert after["loss_match"] < logs["loss_match"] - 0.1, (logs["loss_match"], after["loss_match"])
    assert after["loss_report"] < logs["loss_report"] - 0.1, (logs["loss_report"], after["loss_report"])


def test_attention_match_refuses_a_head_the_lm_does_not_have():
    model, processor = tiny_llava(template="chatml")
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    lora = MiniLoraConfig(r=4, lora_alpha=8)
    for layer, head in ((2, 0), (0, 4)):  # 2 layers × 4 heads
        with pytest.raises(ValueError, match="not in the LM"):
            ProjectorTrainingTask(lvlm, TwinPrompts(), lora=lora, attention_match=AttentionMatch(layer, head))
    with pytest.raises(ValueError, match="not in the LM"):  # the report head (1, 4) is beyond 4 heads
        ProjectorTrainingTask(
            lvlm, TwinPrompts(), lora=lora, attention_match=AttentionMatch(0, 0, answer_layer=1, answer_head=4)
        )
    with pytest.raises(ValueError, match="positive"):
        AttentionMatch(weight=0.0)
    with pytest.raises(ValueError, match="after the compare head"):
        AttentionMatch(layer=1, head=0, answer_layer=1)


def test_attention_probe_answer_agrees_with_the_scorer_and_heads_are_stratified_by_pair():
    from plvm.diag.attention_match import run_attention_probe, top_heads

    model, processor = tiny_llava(template="chatml")
    model.set_attn_implementation("eager")
    lvlm = PersonalizedLVLM(model, processor, base_model="tiny")
    examples = TwinPrompts().examples(0, 8)
    result = run_attention_probe(lvlm, examples)
    assert result["n_prompts"] == 8 and result["n_query_heads"] == 16
    assert len(result["heads"]) == 2 and all(len(row) == 4 for row in result["heads"])  # 2 layers × 4 heads

    # the answer reading is the product's scorer on the same prompts
    from plvm.eval.metrics import roc_auc

    with torch.no_grad():
        odds = lvlm.score_yes_no([generic_conversation(ex, with_answer=False) for ex in examples]).tolist()
    yes = [o for o, ex in zip(odds, examples) if ex.answer == "Yes"]
    no = [o for o, ex in zip(odds, examples) if ex.answer == "No"]
    assert result["answer"]["auc"] == pytest.approx(roc_auc(yes, no))
    assert result["answer"]["mean_pos"] == pytest.approx(float(np.mean(yes)), abs=1e-4)

    # each head's reading, by hand: per twin pair, the named head (top-left box of the Yes query) against the
    # pair's other heads (the Yes query's whole box, both boxes of the No query), then the mean over pairs
    z = []
    for ex in examples:
        batch = lvlm.collate([lvlm.encode(generic_conversation(ex, with_answer=False))])
        none = ConceptTensors.stack([[]], lvlm.hidden_size)
        with torch.no_grad():
            out = model.model(
                inputs_embeds=lvlm.embed(batch, none),
                attention_mask=batch.attention_mask,
                output_attentions=True,
                **batch.vision,
            )
        attention = torch.stack([a[0] for a in out.attentions])
        z.append(reference_attention_logodds(attention, batch.ids[0], ex, lvlm.image_token_id))  # [L, H, 2]
    for layer, h in ((0, 0), (1, 3)):
        shares = []
        for k in range(0, 8, 2):
            named = z[k][layer, h, 0]
            others = [z[k][layer, h, 1], z[k + 1][layer, h, 0], z[k + 1][layer, h, 1]]
            shares.append(sum(float(named > o) + 0.5 * float(named == o) for o in others) / 3)
        assert result["heads"][layer][h] == pytest.approx(sum(shares) / 4)
    with pytest.raises(ValueError, match="twin"):
        run_attention_probe(lvlm, examples[1:7])  # a No prompt first
    best = top_heads(result["heads"], 3)
    assert len(best) == 3 and best[0][2] == max(max(row) for row in result["heads"]) >= best[2][2]

    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="eager"):
        run_attention_probe(lvlm, examples)


def test_diag_attention_match_refuses_bad_arguments_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from plvm.cli import app

    for args, message in (
        (["--head", "8"], "--head needs 'layer,head'"),
        (["--head", "a,b"], "--head needs 'layer,head'"),
        (["--projector", str(tmp_path / "missing.safetensors")], "no projector file"),
    ):
        result = CliRunner().invoke(app, ["diag", "attention-match", *args])
        assert result.exit_code != 0 and message in result.output, result.output
