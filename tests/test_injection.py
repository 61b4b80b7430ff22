"""Non-mutating personalization (plvm.injection) on tiny random LLaVA-1.5-style and OneVision models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from plvm.concept import ConceptEmbedding
from plvm.conversation import Conversation, UnknownConceptError, context_marker, single_turn
from plvm.injection import CONTEXT_SLOT, IGNORE_INDEX, ConceptTensors, PersonalizedLVLM
from plvm.models.tiny import tiny_llava, tiny_onevision

K = 4


def make_concept(name: str, d: int, seed: int, base: str = "tiny", tied: bool = False) -> ConceptEmbedding:
    g = torch.Generator().manual_seed(seed)
    e_word = torch.randn(d, generator=g)
    e_weight = e_word.clone() if tied else torch.randn(d, generator=g)
    return ConceptEmbedding(name, e_word, e_weight, torch.randn(K, d, generator=g), base)


def image(seed: int, size=(40, 52)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))


@pytest.fixture(params=["llava15", "chatml-tied", "onevision"])
def lvlm(request) -> PersonalizedLVLM:
    if request.param == "onevision":
        model, processor = tiny_onevision()
    elif request.param == "chatml-tied":
        model, processor = tiny_llava(template="chatml", tie_word_embeddings=True)
    else:
        model, processor = tiny_llava(template="llava15")
    lv = PersonalizedLVLM(model, processor, base_model="tiny")
    lv.tied = request.param == "chatml-tied"
    return lv


def extended_copy(lv: PersonalizedLVLM, concepts: list[ConceptEmbedding]):
    """A deep copy of the base model whose vocabulary is explicitly extended with the concept rows.

    New ids: ``V + c`` name token of concept c (embedding e_word, head row e_weight), then
    ``V + C + c*K + j`` context token j of concept c.
    """
    model = copy.deepcopy(lv.model)
    V, C = lv.vocab_size, len(concepts)
    model.resize_token_embeddings(V + C + C * K, mean_resizing=False)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        for c, concept in enumerate(concepts):
            emb[V + c] = concept.e_word
            if head.data_ptr() != emb.data_ptr():
                head[V + c] = concept.e_weight
            for j in range(K):
                emb[V + C + c * K + j] = concept.context[j]
    return model


def explicit_ids(lv: PersonalizedLVLM, enc, n_concepts: int) -> torch.Tensor:
    V = lv.vocab_size
    ids = [
        (V + n_concepts + c * K + (s - 1)) if tid == CONTEXT_SLOT else tid
        for tid, s, c in zip(enc.ids, enc.slot, enc.concept)
    ]
    return torch.tensor([ids])


def test_injected_logits_equal_explicitly_extended_vocabulary(lvlm):
    d = lvlm.hidden_size
    concepts = [make_concept("bo", d, 1, tied=lvlm.tied), make_concept("mia", d, 2, tied=lvlm.tied)]
    conv = single_turn("Can you see <bo> and <mia> here?", concepts, image=image(0))
    batch, tensors = lvlm.prepare([conv])
    ours = lvlm(batch, tensors)
    assert ours.shape == (1, len(batch.lengths) and batch.lengths[0], lvlm.vocab_size + 2)

    enc = lvlm.encode(conv)
    reference_model = extended_copy(lvlm, concepts)
    with torch.no_grad():
        ref = reference_model(
            input_ids=explicit_ids(lvlm, enc, 2), attention_mask=batch.attention_mask, **batch.vision
        ).logits
    torch.testing.assert_close(ours, ref[..., : lvlm.vocab_size + 2], atol=1e-5, rtol=1e-5)


def test_base_model_is_bit_identical_after_personalized_calls(lvlm):
    before = {k: v.clone() for k, v in lvlm.model.state_dict().items()}
    vocab_before = lvlm.model.get_input_embeddings().weight.shape
    d = lvlm.hidden_size
    bo = make_concept("bo", d, 3)
    for step in range(3):
        conv = single_turn("Is <bo> in this photo?", [bo], image=image(step))
        lvlm.score_yes_no(conv)
        lvlm.generate(conv, max_new_tokens=3)
    # a training-style backward pass: gradients reach the concept, never the base model
    e_word = bo.e_word.clone().requires_grad_(True)
    tensors = ConceptTensors.stack([[(e_word, bo.e_weight, bo.context)]], d)
    batch = lvlm.collate([lvlm.encode(single_turn("Is <bo> here?", [bo], image=image(9), answer="Yes, <bo> is."))])
    logits = lvlm(batch, tensors)
    logits.float().logsumexp(-1).sum().backward()
    assert e_word.grad is not None and e_word.grad.abs().sum() > 0
    after = lvlm.model.state_dict()
    assert set(before) == set(after)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert all(p.grad is None for p in lvlm.model.parameters())
    assert lvlm.model.get_input_embeddings().weight.shape == vocab_before


def test_two_concepts_stay_separate(lvlm):
    d = lvlm.hidden_size
    a, b = make_concept("aa", d, 4), make_concept("bb", d, 5)
    conv = single_turn("Is <aa> with <bb>?", [a, b], image=image(1))
    enc = lvlm.encode(conv)
    first_b = min(i for i, (s, c) in enumerate(zip(enc.slot, enc.concept)) if c == 1)
    assert all(c in (-1, 0) for c in enc.concept[:first_b])  # A's segment comes before B's

    def logits_with(a_, b_):
        batch, tensors = lvlm.prepare([single_turn("Is <aa> with <bb>?", [a_, b_], image=image(1))])
        with torch.no_grad():
            return lvlm(batch, tensors)

    base = logits_with(a, b)
    b_changed = logits_with(a, make_concept("bb", d, 6))
    a_changed = logits_with(make_concept("aa", d, 7), b)
    V = lvlm.vocab_size
    # B's embeddings do not affect positions before B's segment (except B's own logit column)
    torch.testing.assert_close(b_changed[0, :first_b, : V + 1], base[0, :first_b, : V + 1])
    assert not torch.allclose(b_changed[0, first_b:], base[0, first_b:])
    # A's embeddings change what comes after A's segment
    first_a = enc.concept.index(0)
    assert not torch.allclose(a_changed[0, first_a:first_b], base[0, first_a:first_b])


def test_generation_emits_concept_token_and_decodes_name(lvlm):
    d = lvlm.hidden_size
    bo = make_concept("bo", d, 8)
    conv = single_turn("Who is this?", [bo], image=image(2))
    batch, tensors = lvlm.prepare([conv])
    with torch.no_grad():
        hidden, _ = lvlm.hidden_states(batch, tensors)
        h = hidden[0, -1]
        base_max = lvlm.model.get_output_embeddings()(h).max()
    # choose e_weight so that <bo> wins the first step by a margin
    strong = ConceptEmbedding("bo", bo.e_word, h * (base_max.abs() + 20) / h.dot(h), bo.context, "tiny")
    conv = single_turn("Who is this?", [strong], image=image(2))
    streamed: list[str] = []
    result = lvlm.generate(conv, max_new_tokens=4, on_text=streamed.append)
    assert result.ids[0] == lvlm.vocab_size  # the concept's extended id
    assert result.text.startswith("<bo>")
    assert "".join(streamed).strip() == result.text
    assert lvlm.decode([lvlm.vocab_size], ["bo"]) == "<bo>"


def test_kv_cache_generation_matches_full_forward(lvlm):
    """Each greedy step with the cache picks the argmax of a full, uncached forward over the same ids."""
    d = lvlm.hidden_size
    bo = make_concept("bo", d, 10, tied=lvlm.tied)
    conv = single_turn("Describe <bo>.", [bo], image=image(3))
    result = lvlm.generate(conv, max_new_tokens=5)
    enc = lvlm.encode(conv)
    V = lvlm.vocab_size
    ids = explicit_ids(lvlm, enc, 1)[0].tolist()
    reference_model = extended_copy(lvlm, [bo])
    batch = lvlm.collate([enc])
    for tid in result.ids:
        with torch.no_grad():
            logits = reference_model(input_ids=torch.tensor([ids]), **batch.vision).logits[0, -1, : V + 1]
        assert int(logits.argmax()) == tid
        ids.append(tid)


def test_score_yes_no_reads_first_answer_token(lvlm):
    d = lvlm.hidden_size
    bo = make_concept("bo", d, 11)
    convs = [single_turn("Is <bo> in this photo?", [bo], image=image(s)) for s in range(2)]
    scores = lvlm.score_yes_no(convs)
    assert scores.shape == (2,)
    batch, tensors = lvlm.prepare(convs[:1])
    with torch.no_grad():
        logp = torch.log_softmax(lvlm(batch, tensors)[0, -1].float(), -1)
    expected = torch.logsumexp(logp[lvlm.yes_ids], 0) - torch.logsumexp(logp[lvlm.no_ids], 0)
    torch.testing.assert_close(scores[0], expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scores[0], scores[1])  # the image matters


def test_a_concepts_output_row_does_not_count_as_yes(lvlm):
    """Recognition is "Yes" against "No": a concept whose logit row wins the first answer token scores as one with
    an ordinary row, also when its file records the retired ``answer_style`` metadata (ignored)."""
    d = lvlm.hidden_size
    bo, al = make_concept("bo", d, 12), make_concept("al", d, 13)
    probe = single_turn("Is <bo> in this photo?", [bo, al], image=image(4))
    batch, tensors = lvlm.prepare([probe])
    with torch.no_grad():
        h = lvlm.hidden_states(batch, tensors)[0][0, -1]
        base_max = lvlm.model.get_output_embeddings()(h).max()
    strong = ConceptEmbedding(
        "bo",
        bo.e_word,
        h * (base_max.abs() + 20) / h.dot(h),
        bo.context,
        "tiny",
        metadata={"answer_style": "name-first"},
    )
    legacy = single_turn("Is <bo> in this photo?", [strong, al], image=image(4))
    with torch.no_grad():
        assert int(lvlm(*lvlm.prepare([legacy]))[0, -1].argmax()) == lvlm.vocab_size  # <bo>'s row wins
    torch.testing.assert_close(lvlm.score_yes_no(legacy), lvlm.score_yes_no(probe), atol=1e-4, rtol=1e-4)


def test_concept_added_mid_dialogue_keeps_earlier_turns():
    model, processor = tiny_llava(template="chatml")
    lv = PersonalizedLVLM(model, processor, base_model="tiny")
    d = lv.hidden_size
    bo, mia = make_concept("bo", d, 12), make_concept("mia", d, 13)
    conv = Conversation([bo])
    conv.user("Is <bo> here?", image=image(4))
    conv.assistant("Yes, <bo> is here.")
    before = lv.encode(conv, add_generation_prompt=False)
    conv.add_concept(mia)
    conv.user("And <mia>?")
    after = lv.encode(conv)
    n = len(before.ids) - 2  # the rendered answer turn ends identically; compare the shared prefix
    assert after.ids[:n] == before.ids[:n]
    assert after.concept.count(1) == 1 + K + 1  # mia: name in intro, K context slots, name in question
    with pytest.raises(UnknownConceptError, match="<bo>, <mia>"):
        conv.user("Is <zed> here?")


def test_a_turns_concepts_are_introduced_before_its_photo():
    lv_model, processor = tiny_llava(template="chatml")
    lv = PersonalizedLVLM(lv_model, processor, base_model="tiny")
    d = lv.hidden_size
    conv = Conversation([make_concept("bo", d, 12)])
    conv.user("Is <bo> here?", image=image(4))
    conv.assistant("Yes.")
    conv.add_concept(make_concept("mia", d, 13))
    conv.user("And <mia>?")
    messages = conv.to_messages()
    assert [c["type"] for c in messages[0]["content"]] == ["text", "image", "text"]
    assert messages[0]["content"][0]["text"] == f"<bo> is {context_marker('bo')}.\n"
    assert messages[2]["content"] == [{"type": "text", "text": f"<mia> is {context_marker('mia')}. And <mia>?"}]
    enc = lv.encode(conv)  # in the tokens: bo's name and context slots, then the image, then the question
    image_at = enc.ids.index(lv.image_token_id)
    assert enc.slot.index(K) < image_at  # bo's last context slot
    assert enc.slot.index(0) < image_at < [i for i, s in enumerate(enc.slot) if s == 0][1]


def test_answer_labels_and_answer_word():
    model, processor = tiny_llava(template="llava15")
    lv = PersonalizedLVLM(model, processor, base_model="tiny")
    bo = make_concept("bo", lv.hidden_size, 14)
    enc = lv.encode(single_turn("Is <bo> in this photo?", [bo], image=image(5), answer="Yes, <bo> is in this photo."))
    labelled = [i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX]
    assert labelled == list(range(labelled[0], len(enc.ids)))  # the answer is one suffix
    assert lv.decode([enc.labels[i] for i in labelled], ["bo"]) == "Yes, <bo> is in this photo."
    word = [i for i in labelled if enc.answer_word[i]]
    assert lv.decode([enc.ids[i] for i in word], ["bo"]) == "Yes"
    assert [enc.labels[i] for i in labelled].count(lv.vocab_size) == 1  # <bo> is predicted via its own row


def test_incompatible_concept_is_refused():
    model, processor = tiny_llava()
    lv = PersonalizedLVLM(model, processor, base_model="tiny")
    other_base = make_concept("bo", lv.hidden_size, 15, base="llava-hf/llava-1.5-7b-hf")
    with pytest.raises(ValueError, match="made for base model"):
        lv.score_yes_no(single_turn("Is <bo> here?", [other_base], image=image(6)))
    wrong_size = make_concept("bo", lv.hidden_size + 8, 16)
    with pytest.raises(ValueError, match="hidden size"):
        lv.score_yes_no(single_turn("Is <bo> here?", [wrong_size], image=image(6)))


def test_only_a_yes_no_first_word_is_flagged():
    model, processor = tiny_llava(template="chatml")
    lv = PersonalizedLVLM(model, processor, base_model="tiny")
    bo = make_concept("bo", lv.hidden_size, 17)
    attribute = lv.encode(single_turn("What is <bo>'s hair color?", [bo], answer="<bo>'s hair is brown."))
    assert not any(attribute.answer_word)  # Eq. 2 weights the Yes/No word only
    negative = lv.encode(single_turn("Is <bo> here?", [bo], image=image(7), answer="No, <bo> is not here."))
    flagged = [t for t, w in zip(negative.ids, negative.answer_word) if w]
    assert lv.decode(flagged, ["bo"]) == "No"
