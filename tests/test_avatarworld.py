"""Tests of AvatarWorld: determinism, pixel ground truth, splits, hard negatives, QA, writers, CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plvm.synth import qa
from plvm.synth.avatarworld import ATTRIBUTES, AvatarWorld, Identity, SceneOptions
from plvm.synth.avatarworld.attributes import MIN_DISTANCE, attribute_distance
from plvm.synth.avatarworld.palette import CLOTHING, EYE, GLASSES_FRAME, HAIR, SKIN
from plvm.synth.avatarworld.person import EYE_U, EYE_V, face_geometry, landmarks
from plvm.synth.avatarworld.scene import portrait_to_pixel
from plvm.synth.evalset import build_eval_set
from plvm.synth.samples import iter_generic_samples, iter_personal_samples
from plvm.synth.writers import write_multiconcept, write_plvm_format, write_yollava_format

SIZE = 224


@pytest.fixture(scope="module")
def world() -> AvatarWorld:
    return AvatarWorld(seed=0, num_identities=120, test_fraction=0.25)


def _base(**changes: str) -> Identity:
    attrs = {
        "gender": "man",
        "age": "young",
        "face_shape": "round",
        "skin_tone": "pale",
        "hair_color": "black",
        "hair_style": "short",
        "eye_color": "brown",
        "eyebrows": "thin",
        "nose": "small",
        "mouth": "small",
        "facial_hair": "none",
        "glasses": "none",
        "mark": "none",
    }
    return Identity("probe", attrs).with_attributes(**changes)


def _pixel(img: Image.Image, u: float, v: float, r: int = 1) -> np.ndarray:
    """Median colour of a (2r+1)^2 patch around the portrait point (u, v)."""
    x, y = portrait_to_pixel(u, v, img.size[0])
    a = np.asarray(img, dtype=np.int32)
    xi, yi = int(round(x)), int(round(y))
    return np.median(a[yi - r : yi + r + 1, xi - r : xi + r + 1].reshape(-1, 3), axis=0)


def _nearest(rgb: np.ndarray, palette) -> str:
    return min(palette, key=lambda k: float(np.sum((np.asarray(palette[k]) - rgb) ** 2)))


# ----------------------------------------------------------------------------------- identities
def test_attribute_space_is_rich_enough():
    rich = [k for k, v in ATTRIBUTES.items() if 3 <= len(v) <= 8]
    assert len(rich) >= 8
    assert set(ATTRIBUTES["age"]) == {"young", "middle-aged", "old"}


def test_identities_deterministic_valid_and_distinct(world):
    again = AvatarWorld(seed=0, num_identities=120, test_fraction=0.25)
    other = AvatarWorld(seed=1, num_identities=120, test_fraction=0.25)
    assert [i.to_dict() for i in world.identities] == [i.to_dict() for i in again.identities]
    assert [i.attributes for i in world.identities] != [i.attributes for i in other.identities]
    ids = world.identities
    assert [i.id for i in ids] == [f"id{k:04d}" for k in range(120)]
    for i in ids:
        assert set(i.attributes) == set(ATTRIBUTES)
        assert all(i.attributes[k] in ATTRIBUTES[k] for k in ATTRIBUTES)
        if i.attributes["gender"] == "woman":
            assert i.attributes["facial_hair"] == "none"
        assert i.describe().startswith(("a ", "an "))
    for a in range(len(ids)):
        for b in range(a + 1, len(ids)):
            assert attribute_distance(ids[a], ids[b]) >= MIN_DISTANCE


def test_splits_never_share_identities(world):
    train, test = world.split("train"), world.split("test")
    assert len(test) == 30 and len(train) == 90
    assert not {i.id for i in train} & {i.id for i in test}
    assert {i.id for i in train} | {i.id for i in test} == {i.id for i in world.identities}
    assert all(i.split == "test" for i in test)
    assert [i.id for i in AvatarWorld(seed=0, num_identities=120, test_fraction=0.25).split("test")] == [
        i.id for i in test
    ]
    with pytest.raises(ValueError):
        world.split("val")


def test_hard_negatives_are_within_the_chosen_distance(world):
    pool = world.split("test")
    rng = np.random.default_rng(0)
    found = 0
    for ident in pool:
        for d in (2, 3):
            hn = world.hard_negatives(ident, pool, max_distance=d, n=4, rng=rng)
            assert len(hn) <= 4
            for h in hn:
                assert h.id != ident.id and h.split == "test"
                assert 1 <= world.attribute_distance(ident, h) <= d
            expected = sum(1 for p in pool if p.id != ident.id and attribute_distance(ident, p) <= d)
            assert len(hn) == min(4, expected)
            found += bool(hn)
        exact = world.hard_negatives(ident, pool, max_distance=3, n=10, rng=rng, min_distance=3)
        assert all(attribute_distance(ident, h) == 3 for h in exact)
    assert found > 0  # relatives make hard negatives exist
    changed = _base().with_attributes(hair_color="red", nose="wide", mark="scar")
    assert attribute_distance(_base(), changed) == 3 == attribute_distance(changed, _base())
    assert attribute_distance(_base(), _base()) == 0


# ----------------------------------------------------------------------------------- determinism
def test_rendering_is_deterministic_per_seed(world):
    ids = world.split("train")
    a = world.sample_scene(np.random.default_rng(5))
    b = world.sample_scene(np.random.default_rng(5))
    c = world.sample_scene(np.random.default_rng(6))
    assert a.image.tobytes() == b.image.tobytes() and a.graph == b.graph
    assert a.image.tobytes() != c.image.tobytes()
    assert a.image.mode == "RGB" and a.image.size == (SIZE, SIZE)
    r1 = world.render_reference(ids[0])
    r2 = AvatarWorld(seed=0, num_identities=120, test_fraction=0.25).render_reference(ids[0])
    assert r1.tobytes() == r2.tobytes()
    assert (
        world.render_reference(ids[0], rng_or_seed=1).tobytes()
        == world.render_reference(ids[0], rng_or_seed=1).tobytes()
    )
    assert world.render_reference(ids[1]).tobytes() != r1.tobytes()
    assert world.render_reference(ids[0], size=112).size == (112, 112)
    json.dumps(a.graph)  # JSON-serialisable


def test_scene_graph_is_consistent(world):
    rng = np.random.default_rng(1)
    for _ in range(12):
        scene = world.sample_scene(rng, split="train")
        g = scene.graph
        assert g["n_people"] == len(g["people"]) and 1 <= g["n_people"] <= 4
        assert len(set(scene.identity_ids)) == g["n_people"]
        W, H = g["size"]
        xs = [p["center"][0] for p in g["people"]]
        assert xs == sorted(xs)
        for p in g["people"]:
            assert world.identity(p["identity"]).split == "train"
            assert p["attributes"] == world.identity(p["identity"]).attributes
            x0, y0, x1, y1 = p["bbox"]
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
            fx0, fy0, fx1, fy1 = p["face_bbox"]
            assert x0 <= fx0 < fx1 <= x1 and y0 <= fy0 < fy1 <= y1
            cx = p["center"][0]
            assert p["position"] == ("left" if cx < W / 3 else "right" if cx > 2 * W / 3 else "middle")
            assert p["vertical"] == ("top" if p["center"][1] < H / 2 else "bottom")
            assert p["face_visible"] >= 0.5
        for o in g["objects"]:
            assert set(o) >= {"name", "color", "bbox"}
    big = world.render_scene(world.split("train")[:4], np.random.default_rng(0), size=160)
    assert big.image.size == (160, 160) and big.graph["n_people"] == 4


# ----------------------------------------------------------------------------------- pixel ground truth
@pytest.mark.parametrize("color", ATTRIBUTES["hair_color"])
def test_hair_colour_is_drawn_in_the_hair_region(world, color):
    ident = _base(hair_color=color, skin_tone="dark" if color in ("blonde", "white", "grey") else "pale")
    img = world.render_reference(ident, size=SIZE, rng_or_seed=0)
    u, v = landmarks(ident.attributes)["hair"]
    assert _nearest(_pixel(img, u, v), HAIR) == color
    bald = world.render_reference(ident.with_attributes(hair_style="bald"), size=SIZE, rng_or_seed=0)
    top = _pixel(bald, 0.25, -0.8)  # the scalp is skin when bald ...
    assert _nearest(top, {**SKIN, color: HAIR[color]}) == ident.attributes["skin_tone"]
    side = landmarks({**ident.attributes, "hair_style": "bald"})["hair"]  # ... with hair on the sides
    assert _nearest(_pixel(bald, *side), HAIR) == color


@pytest.mark.parametrize("eye", ATTRIBUTES["eye_color"])
def test_eye_colour_is_drawn_in_the_iris(world, eye):
    img = world.render_reference(_base(eye_color=eye), size=SIZE, rng_or_seed=0)
    for sd in (-1, 1):
        rgb = _pixel(img, sd * EYE_U - 0.08, EYE_V + 0.01, r=0)
        assert _nearest(rgb, EYE) == eye


@pytest.mark.parametrize("tone", ATTRIBUTES["skin_tone"])
def test_skin_tone_is_drawn_on_the_cheek(world, tone):
    img = world.render_reference(_base(skin_tone=tone), size=SIZE, rng_or_seed=0)
    assert _nearest(_pixel(img, *landmarks(_base().attributes)["cheek_l"]), SKIN) == tone


@pytest.mark.parametrize("glasses", ATTRIBUTES["glasses"])
def test_glasses_frames_are_dark_pixels_around_the_eyes_only_when_worn(world, glasses):
    for shape in ("round", "long"):
        ident = _base(glasses=glasses, face_shape=shape, skin_tone="fair")
        img = world.render_reference(ident, size=SIZE, rng_or_seed=0)
        a = np.asarray(img, dtype=np.int32)
        x0, y0 = portrait_to_pixel(-0.1, -0.16, SIZE)
        x1, y1 = portrait_to_pixel(0.1, -0.0, SIZE)
        bridge = a[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1]
        dark = (np.abs(bridge - np.asarray(GLASSES_FRAME)).sum(axis=2) < 60).sum()
        # the frame's outer rim beside each eye
        rim_dark = []
        for sd in (-1, 1):
            x, y = portrait_to_pixel(sd * (EYE_U + (0.27 if glasses == "round" else 0.29)), EYE_V, SIZE)
            row = a[int(round(y)), int(round(x)) - 3 : int(round(x)) + 4]
            rim_dark.append(bool((np.abs(row - np.asarray(GLASSES_FRAME)).sum(axis=1) < 60).any()))
        if glasses == "none":
            assert dark == 0 and not any(rim_dark)
        else:
            assert dark >= 3 and all(rim_dark)


@pytest.mark.parametrize("facial_hair", ["none", "beard", "goatee"])
def test_facial_hair_covers_the_chin(world, facial_hair):
    ident = _base(facial_hair=facial_hair, hair_color="black", skin_tone="pale")
    img = world.render_reference(ident, size=SIZE, rng_or_seed=0)
    chin = _pixel(img, 0.0, face_geometry("round").ry - 0.08)
    assert _nearest(chin, {"hair": HAIR["black"], "skin": SKIN["pale"]}) == (
        "skin" if facial_hair == "none" else "hair"
    )


def test_clothing_colour_is_drawn_on_the_torso():
    w = AvatarWorld(seed=0, num_identities=40, scene_options=SceneOptions(occlusion_prob=0.0))
    rng = np.random.default_rng(3)
    checked = 0
    for k in range(16):
        ident = w.split("train")[k]
        scene = w.render_scene([ident], rng)
        p = scene.graph["people"][0]
        s = p["head_width"] / 2
        u, v = landmarks(ident.attributes)["torso"]
        x, y = p["center"][0] + u * s, p["center"][1] + v * s
        if y >= scene.image.size[1] - 1:
            continue
        rgb = np.asarray(scene.image, dtype=np.int32)[int(round(y)), int(round(x))]
        assert _nearest(rgb, CLOTHING) == p["clothing_color"], (ident.id, p["clothing_type"])
        checked += 1
    assert checked >= 10


# ----------------------------------------------------------------------------------- QA
def test_templates_load_from_the_package():
    t = qa.load_templates()
    assert len(t.recognition_positive) >= 20 and len(t.recognition_negative) >= 20
    assert set(t.text_only_questions) == set(qa.PAPER_QUESTION_ATTRIBUTE)


def test_qa_answers_agree_with_the_scene_graph(world):
    rng = np.random.default_rng(11)
    for _ in range(25):
        scene = world.sample_scene(rng)
        g = scene.graph
        n = g["n_people"]
        count = qa.visual_mc_qa(g, rng, kind="count", n_options=int(rng.integers(2, 5)))
        assert count.options[count.correct] == str(n) == count.answer_text and count.answer == count.correct
        assert 2 <= len(count.options) <= 4 and len(set(count.options.values())) == len(count.options)
        target = g["people"][int(rng.integers(n))]
        for kind, key in (
            ("position", "position"),
            ("clothing_color", "clothing_color"),
            ("clothing_type", "clothing_type"),
            ("expression", "expression"),
            ("vertical", "vertical"),
        ):
            item = qa.visual_mc_qa(g, rng, target=target["identity"], kind=kind)
            assert item.meta["value"] == target[key]
            assert target[key].lower() in item.options[item.correct].lower()
            assert "<sks>" in item.question and item.prompt.endswith(qa.MC_SUFFIX)
        assert qa.generic_vqa(g, rng, kind="count").answer == ["One.", "Two.", "Three.", "Four."][n - 1]
        gen = qa.generic_vqa(g, rng)
        if gen.options:
            assert gen.correct in gen.options
        cap = qa.scene_caption(g)
        assert cap.startswith(["One person", "Two people", "Three people", "Four people"][n - 1])
        assert all(p["clothing_color"] in cap for p in g["people"])
        first = g["people"][0]
        named = qa.concept_caption(g, {first["identity"]: "<a>"})
        assert named.startswith(f"<a> is {qa._LOCATION[first['position']]} wearing")
        pos, neg = qa.recognition_qa(rng, True), qa.recognition_qa(rng, False)
        assert pos.answer.startswith("Yes") and neg.answer.startswith("No") and "<sks>" in pos.question
    ids = world.split("train")
    scene = world.render_scene([ids[0], ids[1]], np.random.default_rng(0))
    both = qa.multi_concept_qa(scene.graph, {ids[0].id: "<a>", ids[1].id: "<b>"})
    part = qa.multi_concept_qa(scene.graph, {ids[0].id: "<a>", ids[2].id: "<b>"})
    none = qa.multi_concept_qa(scene.graph, {ids[3].id: "<a>", ids[4].id: "<b>", ids[5].id: "<c>"})
    assert both.answer == "Yes, I can see both <a> and <b>."
    assert both.question == "Can you see <a> and <b> in this photo?"
    assert part.answer == "I can see <a>, but not <b>."
    assert none.answer == "No, I can see none of <a>, <b> and <c>."


def test_attribute_qa_answers_come_from_the_identity(world):
    rng = np.random.default_rng(2)
    paper = qa.load_templates().text_only_questions
    for ident in world.split("test")[:10]:
        for q in paper:
            free = qa.attribute_qa(ident, rng, question=q)
            attribute = qa.PAPER_QUESTION_ATTRIBUTE[q]
            assert free.meta["attribute"] == attribute and free.question == q
            value = ident.attributes[attribute]
            if attribute != "mark" or value != "none":
                assert value.replace("freckles", "freckle") in free.answer or attribute == "hair_style"
            mc = qa.attribute_mc_qa(ident, rng, question=q, n_options=3)
            assert len(mc.options) == 3
            assert mc.options[mc.correct] == qa.option_text(attribute, value)
        assert qa.attribute_answer(ident.attributes, "hair_color") == f"<sks>'s hair is {ident['hair_color']}."
        assert qa.attribute_answer(ident.attributes, "age") == f"<sks> is {ident['age']}."


def test_personal_samples_match_their_ground_truth(world):
    rng = np.random.default_rng(4)
    it = iter_personal_samples(world, rng, positive_ratio=0.5, recog_to_attr=2.0, hard_negative_share=1.0)
    kinds = set()
    train_ids = {i.id for i in world.split("train")}
    for _ in range(30):
        s = next(it)
        kinds.add(s.kind)
        assert s.identity_id in train_ids and s.reference.size == (SIZE, SIZE)
        if s.kind == "attribute":
            assert s.query is None and s.answer_word is None and s.graph is None
            continue
        ids = [p["identity"] for p in s.graph["people"]]
        assert set(ids) <= train_ids and s.query_identities == tuple(ids)
        if s.kind == "recog_pos":
            assert s.identity_id in ids and s.answer_word == "Yes" and s.answer.startswith("Yes")
        else:
            assert s.identity_id not in ids and s.answer_word == "No" and s.answer.startswith("No")
            assert s.hard_negative in ids
    assert kinds == {"recog_pos", "recog_neg", "attribute"}


def test_portrait_queries_show_one_person_with_the_right_answer(world):
    rng = np.random.default_rng(5)
    it = iter_personal_samples(world, rng, positive_ratio=0.5, recog_to_attr=10.0, portrait_query_share=1.0)
    train_ids = {i.id for i in world.split("train")}
    seen = set()
    for _ in range(30):
        s = next(it)
        if s.kind == "attribute":
            continue
        seen.add(s.kind)
        assert s.graph is None and len(s.query_identities) == 1 and s.query.size == s.reference.size
        (person,) = s.query_identities
        assert person in train_ids and (person == s.identity_id) == (s.kind == "recog_pos")
        assert s.hard_negative in (None, person)
    assert seen == {"recog_pos", "recog_neg"}
    # share 0 draws scenes only; a share outside [0, 1] is refused
    scenes = iter_personal_samples(world, np.random.default_rng(5), recog_to_attr=10.0)
    assert all(s.query is None or s.graph is not None for s in (next(scenes) for _ in range(10)))
    with pytest.raises(ValueError, match="portrait_query_share"):
        next(iter_personal_samples(world, rng, portrait_query_share=1.5))


def test_generic_samples_match_their_ground_truth(world):
    rng = np.random.default_rng(8)
    it = iter_generic_samples(world, rng, weights=(1, 1, 2))
    kinds = set()
    for _ in range(24):
        s = next(it)
        kinds.add(s.kind)
        if s.kind == "same_person":
            assert len(s.images) == 2 and s.answer in ("Yes", "No")
            graph = s.graphs[1]
            if graph is not None:
                assert (s.meta["identity"] in [p["identity"] for p in graph["people"]]) == (s.answer == "Yes")
            else:
                assert (s.meta["other"] == s.meta["identity"]) == (s.answer == "Yes")
        else:
            assert len(s.images) == 1 and s.answer
            if s.kind == "caption":
                assert s.answer == qa.scene_caption(s.graphs[0])
    assert kinds == {"caption", "vqa", "same_person"}


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_same_portrait_share_chooses_the_second_image_and_keeps_both_answers(world, share):
    it = iter_generic_samples(world, np.random.default_rng(3), weights=(0, 0, 1), same_portrait_share=share)
    samples = [next(it) for _ in range(16)]
    assert all((s.graphs[1] is None) == (share == 1.0) for s in samples)  # portraits have no scene graph
    assert {s.answer for s in samples} == {"Yes", "No"}
    with pytest.raises(ValueError, match="same_portrait_share"):
        next(iter_generic_samples(world, np.random.default_rng(3), same_portrait_share=1.5))


def test_described_person_question_describes_someone_present_or_nobody_present(world):
    rng = np.random.default_rng(11)
    seen = {True: 0, False: 0}
    changes = set()
    for _ in range(80):
        graph = world.sample_scene(rng, "train").graph
        item = qa.described_person_vqa(graph, rng)
        phrase = item.meta["value"]
        assert item.question == f"Is there {phrase} in this image?"
        present = {qa.person_phrase(p) for p in graph["people"]}
        yes = item.answer == "Yes."
        assert yes == (phrase in present) == (item.meta["n_changed"] == 0)
        assert item.meta["answer_word"] == item.answer[:-1]
        assert qa.generic_vqa_candidates(item) == ("Yes.", "No.")
        seen[yes] += 1
        changes.add(item.meta["n_changed"])
        if not yes:  # the negative is its subject's description with properties changed
            subject = next(p for p in graph["people"] if p["identity"] == item.meta["identity"])
            assert phrase != qa.person_phrase(subject)
            assert 0 < len(item.meta["changed"]) <= item.meta["n_changed"]
            assert set(item.meta["changed"]) <= set(qa.DESCRIBED_PROPERTIES)
            if subject["attributes"]["gender"] == "woman":
                assert "facial_hair" not in item.meta["changed"]
        else:
            assert item.meta["changed"] == []
    assert min(seen.values()) >= 25 and changes == {0, 1, 2, 3}
    forced = qa.described_person_vqa(graph, np.random.default_rng(0), positive=False, n_changed=2)
    assert forced.answer == "No." and forced.meta["n_changed"] == 2


def test_described_share_one_asks_only_described_questions_and_zero_none(world):
    old = iter_generic_samples(world, np.random.default_rng(5), weights=(0, 1, 0))
    zero = iter_generic_samples(world, np.random.default_rng(5), weights=(0, 1, 0), described_share=0.0)
    a, b = [next(old) for _ in range(12)], [next(zero) for _ in range(12)]
    assert [(s.question, s.answer) for s in a] == [(s.question, s.answer) for s in b]
    assert not any(s.meta["qa"]["meta"].get("visual") == "described_person" for s in a)
    every = iter_generic_samples(world, np.random.default_rng(5), weights=(0, 1, 0), described_share=1.0)
    assert all(next(every).meta["qa"]["meta"]["visual"] == "described_person" for _ in range(8))


def test_open_kind_weights_parse_and_reject_bad_tables():
    assert qa.open_kind_weights("hair_color=3, glasses=1") == {"hair_color": 3.0, "glasses": 1.0}
    assert qa.open_kind_weights({"age": 2}) == {"age": 2.0}
    for bad, match in (
        ("hair=1", "unknown open question kind"),
        ("hair_color", "kind=number"),
        ("hair_color=x", "kind=number"),
        ("hair_color=-1", ">= 0"),
        ("hair_color=0", ">= 0"),
        ("hair_color=nan", ">= 0"),
        ("", ">= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            qa.open_kind_weights(bad)


def test_open_kinds_draw_only_the_listed_kinds_in_proportion(world):
    rng = np.random.default_rng(3)
    graph = world.sample_scene(rng, n_people=2).graph
    kinds = Counter(
        qa.generic_vqa(graph, rng, mc_prob=0.0, open_kinds={"hair_color": 3.0, "count": 1.0}).meta["visual"]
        for _ in range(400)
    )
    assert set(kinds) == {"hair_color", "count"}
    assert 0.65 < kinds["hair_color"] / 400 < 0.85  # 3:1 -> 0.75
    stream = iter_generic_samples(world, np.random.default_rng(4), weights=(0, 1, 0), open_kinds="hair_color=1")
    items = [next(stream).meta["qa"] for _ in range(20)]
    open_items = [item for item in items if not item["options"]]  # multiple choice keeps its share
    assert open_items and all(item["meta"]["visual"] == "hair_color" for item in open_items)
    with pytest.raises(ValueError, match="unknown open question kind"):
        next(iter_generic_samples(world, np.random.default_rng(0), open_kinds={"shoes": 1.0}))


# ----------------------------------------------------------------------------------- eval set + writers
@pytest.fixture(scope="module")
def small_eval(world):
    return build_eval_set(
        world, n_identities=4, queries_per_identity=(2, 3), n_text_qa=6, n_multi2=3, n_multi3=2, n_external=2, size=96
    )


def test_eval_set_shape_and_isolation(world, small_eval):
    es = small_eval
    concepts = {i.id for i in es.identities}
    assert len(concepts) == 4 and all(i.split == "test" for i in es.identities)
    assert not concepts & {i.id for i in es.strangers}
    assert len(es.text_qa) == 6 and len(es.visual_qa) == len(es.queries)
    for q in es.queries:
        ids = {p["identity"] for p in q.graph["people"]}
        assert q.identity_id in ids and ids & concepts == {q.identity_id}  # no other concept in its photos
        assert all(world.identity(i).split == "test" for i in ids)
    for m in es.multi:
        ids = {p["identity"] for p in m.graph["people"]}
        assert set(m.concepts) == ids & concepts
        assert (m.external and not m.concepts) or (not m.external and len(m.concepts) in (2, 3))
    again = build_eval_set(
        world, n_identities=4, queries_per_identity=(2, 3), n_text_qa=6, n_multi2=3, n_multi3=2, n_external=2, size=96
    )
    assert [q.graph for q in again.queries] == [q.graph for q in es.queries]
    assert again.queries[0].image.tobytes() == es.queries[0].image.tobytes()


def test_portrait_eval_set_asks_about_another_photo_of_the_concept_alone(tmp_path, world):
    from plvm.eval.readers import read_plvm

    es = build_eval_set(
        world,
        n_identities=3,
        queries_per_identity=(2, 2),
        n_text_qa=3,
        n_multi2=0,
        n_multi3=0,
        n_external=0,
        size=96,
        query_kind="portrait",
    )
    assert es.meta["query_kind"] == "portrait" and len(es.queries) == 6 and es.visual_qa == []
    for q in es.queries:
        assert q.graph is None and q.image.size == (96, 96)
        ref = np.asarray(es.references[q.identity_id], float)
        assert np.abs(np.asarray(q.image, float) - ref).mean() > 1.0  # another photo, not the reference
    # the portrait of a concept shows that concept: closer to its own reference than to the others'
    for q in es.queries:
        dist = {c: np.abs(np.asarray(q.image, float) - np.asarray(r, float)).mean() for c, r in es.references.items()}
        assert dist[q.identity_id] < max(dist.values())
    dataset = read_plvm(write_plvm_format(es, tmp_path / "plvm"))
    assert sorted(dataset.concepts) == sorted(i.id for i in es.identities)
    assert sum(len(c.query_images) for c in dataset.concepts.values()) == 6
    with pytest.raises(ValueError, match="query_kind"):
        build_eval_set(world, n_identities=3, query_kind="crowd")


def _same_image(path: Path, img: Image.Image) -> bool:
    with Image.open(path) as f:
        return f.convert("RGB").tobytes() == img.tobytes()


def test_writers_round_trip(tmp_path, world, small_eval):
    es = small_eval
    root = write_plvm_format(es, tmp_path / "plvm")
    graphs = json.loads((root / "scene_graphs.json").read_text())
    meta = json.loads((root / "metadata.json").read_text())
    attrs = {c["id"]: c["attributes"] for c in meta["concepts"]}
    assert set(attrs) == {i.id for i in es.identities}
    n_visual = n_text = 0
    for ident in es.identities:
        d = root / ident.id
        assert _same_image(d / "ref_img.png", es.references[ident.id])
        for q in es.queries_of(ident.id):
            assert _same_image(d / f"query_img{q.index}.png", q.image)
            assert graphs[f"{ident.id}/query_img{q.index}.png"] == q.graph
        for rec in json.loads((d / "query_ques.json").read_text()):
            assert {"ref_img", "query_img", "question", "multiple_choice", "correct_answer"} <= set(rec)
            assert set(rec["multiple_choice"]) == {"A", "B", "C"}
            assert rec["multiple_choice"][rec["correct_answer"]] == rec["answer"]
            assert (root / rec["ref_img"]).is_file() and (root / rec["query_img"]).is_file()
            g = graphs[rec["query_img"]]
            me = next(p for p in g["people"] if p["identity"] == ident.id)
            if rec["visual"] == "count":
                assert rec["answer"] == str(g["n_people"])
            else:
                assert me[rec["visual"]].lower() in rec["answer"].lower()
            n_visual += 1
        for rec in json.loads((d / "non_query_ques.json").read_text()):
            assert rec["query_img"] is None and rec["multiple_choice"][rec["correct_answer"]] == qa.option_text(
                rec["attribute"], attrs[ident.id][rec["attribute"]]
            )
            n_text += 1
    assert n_visual == len(es.visual_qa) and n_text == len(es.text_qa)

    yroot = write_yollava_format(es, tmp_path / "yollava")
    for ident in es.identities:
        assert _same_image(yroot / "train" / ident.id / "0.png", es.references[ident.id])
        files = sorted((yroot / "test" / ident.id).glob("*.png"))
        assert len(files) == len(es.queries_of(ident.id))
        for q in es.queries_of(ident.id):
            assert _same_image(yroot / "test" / ident.id / f"{q.index}.png", q.image)
    yvisual = json.loads((yroot / "query_ques.json").read_text())
    ytext = json.loads((yroot / "non_query_ques.json").read_text())
    assert len(yvisual) == len(es.visual_qa) and len(ytext) == len(es.text_qa)
    assert all((yroot / r["query_img"]).is_file() and (yroot / r["ref_img"]).is_file() for r in yvisual)

    mroot = write_multiconcept(es, root)  # next to the PLVM concept folders
    assert mroot == root / "multi"
    ann = json.loads((mroot / "annotations.json").read_text())
    index = json.loads((mroot / "index.json").read_text())
    mgraphs = json.loads((mroot / "scene_graphs.json").read_text())
    assert list(ann) == [f"{m.name}.png" for m in es.multi] == [Path(r["file"]).name for r in index["images"]]
    for (name, concepts), rec, m in zip(ann.items(), index["images"], es.multi):
        assert _same_image(mroot / "images" / name, m.image)
        assert concepts == m.concepts == rec["concepts"] and (concepts == []) == rec["external"] == m.external
        assert mgraphs[rec["file"]] == m.graph
        for c in concepts:
            assert (root / c / "ref_img.png").is_file() and (mroot / index["concepts"][c]["reference"]).is_file()


def test_cli_runs_standalone(tmp_path):
    from typer.testing import CliRunner

    from plvm.cli.synth import app

    runner = CliRunner()
    assert runner.invoke(app, ["avatarworld", "--help"]).exit_code == 0
    res = runner.invoke(
        app,
        [
            "avatarworld",
            "--out",
            str(tmp_path / "o"),
            "--num-identities",
            "30",
            "--n-identities",
            "2",
            "--queries-min",
            "1",
            "--queries-max",
            "1",
            "--n-text-qa",
            "2",
            "--n-multi2",
            "1",
            "--n-multi3",
            "0",
            "--n-external",
            "1",
            "--size",
            "64",
            "--quiet",
            "--contact-sheet",
            str(tmp_path / "sheet.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "o" / "plvm").glob("id*/ref_img.png"))) == 2
    assert len(list((tmp_path / "o" / "yollava" / "test").glob("id*/*.png"))) == 2
    assert (tmp_path / "o" / "plvm" / "multi" / "annotations.json").is_file()
    assert (tmp_path / "o" / "yollava" / "multi" / "annotations.json").is_file()
    assert Image.open(tmp_path / "sheet.png").size[0] > 64
