"""Prompt building, answer parsing and letter scoring of plvm.eval (tiny random model where one is needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from plvm.concept import ConceptEmbedding
from plvm.eval.prompts import (
    IMAGE_SLOT,
    EvalConversation,
    extract_mentions,
    join_names,
    mc_prompt,
    neutralize,
    parse_letter,
    parse_yes_no,
)
from plvm.eval.scoring import Scorer
from plvm.injection import PersonalizedLVLM
from plvm.models.tiny import tiny_llava


@pytest.fixture(scope="module")
def lvlm():
    model, processor = tiny_llava()
    return PersonalizedLVLM(model, processor, base_model="tiny")


def square(value: int) -> Image.Image:
    return Image.fromarray(np.full((28, 28, 3), value, np.uint8))


def test_parse_yes_no():
    assert parse_yes_no("Yes, <bo> is in this photo.") is True
    assert parse_yes_no("  no.") is False
    assert parse_yes_no("I can see that, yes") is True
    assert parse_yes_no("Nope, not there") is None  # "nope" is not the word "no"
    assert parse_yes_no("") is None
    assert parse_yes_no("<bo> is in this photo.") is None  # no "yes"/"no": a concept first is not an answer
    assert parse_yes_no("<bo> isn't here") is None and parse_yes_no("The <bo> cup") is None


def test_parse_letter():
    opts = {"A": "Red", "B": "Blue", "C": "Dark blue"}
    assert parse_letter("B", opts) == "B"
    assert parse_letter("(C) Dark blue", opts) == "C"
    assert parse_letter("c.", opts) == "C"
    assert parse_letter("The answer is A.", opts) == "A"
    assert parse_letter("It is red.", opts) == "A"  # exactly one option text
    assert parse_letter("A man in a hat", opts) is None  # an article is not option A
    assert parse_letter("D", opts) is None  # not an option
    assert parse_letter("blue or dark blue", opts) is None  # two option texts: ambiguous


def test_templates_and_neutralize():
    assert join_names(["a"]) == "<a>" and join_names(["a", "b"]) == "<a> and <b>"
    assert join_names(["a", "b", "c"]) == "<a>, <b> and <c>"
    assert mc_prompt("Q?", {"A": "x", "B": "y"}, "Pick.") == "Q?\nA. x\nB. y\nPick."
    assert neutralize("Is <bo> in this photo?", ["bo"]) == "Is the person in this photo?"
    assert neutralize("<bo>'s in this photo, right?", ["bo"]) == "The person's in this photo, right?"
    assert neutralize("Can you see <a> and <b>?", ["a", "b"]) == "Can you see the first person and the second person?"
    assert neutralize("What is <bo>'s hair color?\nA. Red", ["bo"]) == "What is the person's hair color?\nA. Red"
    assert extract_mentions("<Bo> met <ann> and <bo> again; <image>", ["bo", "cy"]) == ["bo"]


def test_description_becomes_a_predicate():
    from plvm.eval.methods.prompting import _as_predicate

    assert _as_predicate("The person in this image is a tall man with a <b>beard</b>.") == "a tall man with a bbeard/b"
    assert _as_predicate("The image shows an old woman.") == "an old woman"
    assert _as_predicate("A boy in a red cap") == "a boy in a red cap"
    assert _as_predicate("Red hair, blue eyes.") == "Red hair, blue eyes"


def test_eval_conversation_interleaves_images(lvlm):
    conv = EvalConversation()
    conv.raw_user(f"Here is <bo>: {IMAGE_SLOT}.\n{IMAGE_SLOT}\nIs <bo> in this photo?", [square(10), square(200)])
    content = conv.to_messages()[0]["content"]
    assert [c["type"] for c in content] == ["text", "image", "text", "image", "text"]
    assert content[0]["text"] == "Here is <bo>: " and content[-1]["text"] == "\nIs <bo> in this photo?"
    enc = lvlm.encode(conv)
    per_image = lvlm.image_inputs([square(0)])[0][0]
    assert enc.ids.count(lvlm.image_token_id) == 2 * per_image
    # the text name is ordinary tokens, not a concept slot
    assert all(s == -1 for s in enc.slot) and max(enc.ids) < lvlm.vocab_size
    # the first image run comes after "Here is <bo>: " and before the question
    first_image = enc.ids.index(lvlm.image_token_id)
    assert "Here is <bo>:" in lvlm.tokenizer.decode(enc.ids[:first_image])
    d = lvlm.hidden_size
    with_concept = EvalConversation([ConceptEmbedding("bo", torch.zeros(d), torch.zeros(d), torch.zeros(2, d), "tiny")])
    with pytest.raises(ValueError):
        with_concept.raw_user("Is <bo> here?")
    with pytest.raises(ValueError):
        EvalConversation().raw_user(f"{IMAGE_SLOT}{IMAGE_SLOT} two slots, one image", [square(0)])


def test_letter_scores_match_the_full_distribution(lvlm):
    scorer = Scorer(lvlm, batch_size=2)
    ids = scorer.letter_token_ids()
    flat = [i for letter in "ABCD" for i in ids[letter]]
    assert len(flat) == len(set(flat))  # no token is shared by two letters (the tiny BPE has a bare 'Ġ')
    space = lvlm.tokenizer.encode(" ", add_special_tokens=False)
    assert not set(space) & set(flat)
    convs = []
    for v in (10, 120, 240):
        conv = EvalConversation()
        conv.raw_user(mc_prompt("What colour?", {"A": "Red", "B": "Blue", "C": "Green"}), [square(v)])
        convs.append(conv)
    scores = scorer.letters(convs, [["A", "B", "C"]] * 3)
    logp, lengths = scorer.last_logprobs(convs)
    for row, s in zip(logp, scores):
        for letter, value in s.items():
            assert value == pytest.approx(float(torch.logsumexp(row[ids[letter]], 0)), abs=1e-5)
    decisions = scorer.decide_letter(convs, [{"A": "Red", "B": "Blue", "C": "Green"}] * 3)
    assert [d.pred for d in decisions] == [max(s, key=s.get) for s in scores]
    yn = scorer.decide_yes_no(convs)
    assert [d.pred for d in yn] == [d.score > 0 for d in yn]
    assert lengths == [scorer.prompt_length(c) for c in convs]


def test_option_likelihoods_are_the_mean_answer_logprob(lvlm):
    """``scoring="likelihood"``: each option's text as the answer, its mean token log-probability (end of turn
    included) — checked against the whole-sequence logits, for a plain prompt and one with a concept whose name the
    answer says (the concept's extra logit row), and independent of the batch size."""
    from plvm.conversation import Conversation

    d = lvlm.hidden_size
    gen = torch.Generator().manual_seed(3)
    bo = ConceptEmbedding(
        "bo", torch.randn(d, generator=gen), torch.randn(d, generator=gen), torch.randn(2, d, generator=gen), "tiny"
    )
    plain = EvalConversation()
    plain.raw_user("What colour?", [square(40)])
    personal = Conversation([bo])
    personal.user("Who is on the left?", image=square(200))
    options = [{"A": "Red", "B": "Blue", "C": "Green"}, {"A": "<bo> is.", "B": "Nobody."}]
    scores = Scorer(lvlm, batch_size=2).option_likelihoods([plain, personal], options)
    one_by_one = Scorer(lvlm, batch_size=1).option_likelihoods([plain, personal], options)
    for a, b in zip(one_by_one, scores):
        assert a == pytest.approx(b, abs=1e-5)
    assert isinstance(plain.copy(), EvalConversation) and plain.turns[-1].role == "user"  # prompts untouched
    for conv, opts, got in zip([plain, personal], options, scores):
        for letter, text in opts.items():
            full = conv.copy()
            full.assistant(text)
            batch, tensors = lvlm.prepare([full])
            with torch.no_grad():
                logp = torch.log_softmax(lvlm.forward(batch, tensors)[0].float(), -1)  # [T, V + C]
            labels = batch.labels[0]
            where = (labels[1:] != -100).nonzero().squeeze(-1)  # positions that predict an answer token
            expected = logp[where, labels[1:][where]].mean()
            assert got[letter] == pytest.approx(float(expected), abs=1e-5)
    assert max(scores[1].values()) < 0
    decisions = Scorer(lvlm).decide_letter([plain, personal], options, mode="likelihood")
    assert [dec.pred for dec in decisions] == [max(s, key=s.get) for s in scores]
    yes_no = Scorer(lvlm).decide_yes_no([plain], mode="likelihood")  # Yes/No: the same as "logits"
    assert [dec.score for dec in yes_no] == [dec.score for dec in Scorer(lvlm).decide_yes_no([plain])]
