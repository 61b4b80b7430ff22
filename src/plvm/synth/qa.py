"""Question/answer generation for AvatarWorld, from identities and scene graphs.

Personalised questions use a placeholder name (``"<sks>"`` by default; multi-concept questions use
one name per concept, e.g. ``"<a>"``, ``"<b>"``). Recognition questions come verbatim from the
paper's templates (``plvm/data/paper_templates.json``); text-only attribute questions use the paper's
seven ``text_only_questions`` plus a few extra ones (``EXTRA_ATTRIBUTE_QUESTIONS``) for training.

Answers are short and regular so that a tiny language model can learn them:

* recognition: the template answer (``"Yes, <sks> is in this photo."``);
* attribute, free form: ``"<sks>'s hair is brown."``, ``"<sks> is old."``, ``"<sks> has a small nose."``;
* multiple choice (``QA.options`` is set): ``QA.answer`` is the option **letter** (``"B"``),
  ``QA.answer_text`` its text (``"Brown"``) and ``QA.prompt`` is the question followed by one
  ``"A. ..."`` line per option and LLaVA's instruction
  ``"Answer with the option's letter from the given choices directly."``;
* generic visual QA, open form: one capitalised word or short phrase with a full stop (``"Two."``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from .avatarworld.attributes import ATTRIBUTES, FACIAL_HAIR_PHRASE, Identity, hair_phrase, join_words, person_noun
from .avatarworld.backgrounds import background_phrase
from .avatarworld.objects import OBJECT_NAMES
from .avatarworld.person import CLOTHING_COLORS, CLOTHING_TYPES, EXPRESSIONS

MC_SUFFIX = "Answer with the option's letter from the given choices directly."
CHOICE_LETTERS = "ABCD"  # letters of generated multiple-choice options: at most four options
SKS = "<sks>"


# ================================================================================ templates
@dataclass(frozen=True)
class Templates:
    """The paper's question templates (Tables 10–12 of the supplementary material)."""

    recognition_positive: tuple[tuple[str, str], ...]
    recognition_negative: tuple[tuple[str, str], ...]
    text_only_questions: tuple[str, ...]
    caption_prompt_neutral: str
    caption_prompt_primed: str
    mc_llava_recognition_query: str


@functools.lru_cache(maxsize=1)
def load_templates() -> Templates:
    """Load ``plvm/data/paper_templates.json`` from the installed package (immutable, cached)."""
    text = resources.files("plvm").joinpath("data/paper_templates.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return Templates(
        recognition_positive=tuple((d["question"], d["answer"]) for d in data["recognition_positive"]),
        recognition_negative=tuple((d["question"], d["answer"]) for d in data["recognition_negative"]),
        text_only_questions=tuple(data["text_only_questions"]),
        caption_prompt_neutral=data["caption_prompt_neutral"],
        caption_prompt_primed=data["caption_prompt_primed"],
        mc_llava_recognition_query=data["mc_llava_recognition_query"],
    )


# ================================================================================ QA record
@dataclass(frozen=True)
class QA:
    """One question/answer pair.

    Attributes:
        question: Question text (with placeholder names such as ``<sks>``).
        answer: Target answer; for multiple choice, the correct letter.
        kind: What the pair tests: ``recog_pos``, ``recog_neg``, ``attribute``, ``attribute_mc``,
            ``visual_mc``, ``multi_concept``, ``generic_vqa``.
        options: Letter -> option text for multiple choice, else ``None``.
        correct: Correct letter for multiple choice, else ``None``.
        answer_text: Text of the correct option (multiple choice) or ``None``.
        meta: Extra ground truth (which attribute / visual property was asked, its value, ...).
    """

    question: str
    answer: str
    kind: str
    options: dict[str, str] | None = None
    correct: str | None = None
    answer_text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The question as shown to a model (options and LLaVA's MC instruction appended for MC)."""
        if not self.options:
            return self.question
        lines = [self.question] + [f"{k}. {v}" for k, v in self.options.items()] + [MC_SUFFIX]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "kind": self.kind,
            "options": self.options,
            "correct": self.correct,
            "answer_text": self.answer_text,
            "meta": self.meta,
        }


def _choice(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def make_mc(
    question: str,
    correct_text: str,
    distractors: Sequence[str],
    rng: np.random.Generator,
    n_options: int,
    kind: str,
    meta: dict[str, Any] | None = None,
) -> QA:
    """A multiple-choice QA with the correct text at a random letter among ``n_options`` options."""
    pool = [d for d in dict.fromkeys(distractors) if d != correct_text]
    k = max(2, min(int(n_options), len(pool) + 1, len(CHOICE_LETTERS)))
    chosen = [pool[int(i)] for i in rng.permutation(len(pool))[: k - 1]]
    pos = int(rng.integers(k))
    texts = chosen[:pos] + [correct_text] + chosen[pos:]
    options = {CHOICE_LETTERS[i]: t for i, t in enumerate(texts)}
    letter = CHOICE_LETTERS[pos]
    return QA(
        question=question,
        answer=letter,
        kind=kind,
        options=options,
        correct=letter,
        answer_text=correct_text,
        meta=dict(meta or {}),
    )


# ================================================================================ recognition
def recognition_qa(rng: np.random.Generator, positive: bool, name: str = SKS) -> QA:
    """A paper recognition template: ``"Is <sks> in this photo?"`` -> ``"Yes, <sks> is in this photo."``."""
    t = load_templates()
    q, a = _choice(rng, t.recognition_positive if positive else t.recognition_negative)
    return QA(
        question=q.replace(SKS, name),
        answer=a.replace(SKS, name),
        kind="recog_pos" if positive else "recog_neg",
        meta={"answer_word": "Yes" if positive else "No"},
    )


def recognition_pair_qa(rng: np.random.Generator, name: str = SKS) -> tuple[QA, QA]:
    """A positive and a negative recognition QA with the *same* question (a template both lists share).

    The two differ only in their answers, so a pair of samples built from them (same reference, same text,
    query images of the concept and of someone else) can be told apart only by looking at the query image.
    """
    t = load_templates()
    negative = {}
    for q, a in t.recognition_negative:
        negative.setdefault(q, []).append(a)
    shared = [(q, a) for q, a in t.recognition_positive if q in negative]
    if not shared:
        raise ValueError("the recognition templates share no question between positives and negatives")
    q, a_pos = _choice(rng, shared)
    a_neg = _choice(rng, negative[q])
    question = q.replace(SKS, name)
    return (
        QA(question=question, answer=a_pos.replace(SKS, name), kind="recog_pos", meta={"answer_word": "Yes"}),
        QA(question=question, answer=a_neg.replace(SKS, name), kind="recog_neg", meta={"answer_word": "No"}),
    )


_NAME_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "j", "ch", "sh")
_NAME_VOWELS = ("a", "e", "i", "o", "u")


def random_concept_name(rng: np.random.Generator) -> str:
    """A short made-up concept name (``"bo"``, ``"kel"``, ``"shimo"``): one or two consonant-vowel syllables,
    sometimes with a final consonant — the kind of name a user gives a concept, never a real word on purpose."""
    syllables = "".join(_choice(rng, _NAME_ONSETS) + _choice(rng, _NAME_VOWELS) for _ in range(int(rng.integers(1, 3))))
    return syllables + (_choice(rng, ("l", "n", "m", "x", "")) if rng.random() < 0.4 else "")


# ================================================================================ attributes
#: The paper's text-only questions -> the attribute each one asks about.
PAPER_QUESTION_ATTRIBUTE: Mapping[str, str] = MappingProxyType(
    {
        "What is <sks>'s hair color?": "hair_color",
        "What color are <sks>'s eyes?": "eye_color",
        "What is <sks>'s skin tone?": "skin_tone",
        "How would you describe <sks>'s hairstyle?": "hair_style",
        "Does <sks> have any distinctive facial features?": "mark",
        "Is <sks> young or old?": "age",
        "What do you describe about <sks>'s nose?": "nose",
    }
)

#: Extra attribute questions of our own (training only), one per remaining attribute.
EXTRA_ATTRIBUTE_QUESTIONS: Mapping[str, str] = MappingProxyType(
    {
        "What shape is <sks>'s face?": "face_shape",
        "Does <sks> wear glasses?": "glasses",
        "Does <sks> have facial hair?": "facial_hair",
        "What is <sks>'s mouth like?": "mouth",
        "What are <sks>'s eyebrows like?": "eyebrows",
        "Is <sks> a man or a woman?": "gender",
    }
)

_STYLE_ANSWER = MappingProxyType(
    {
        "short": "{n} has short hair.",
        "long": "{n} has long hair.",
        "curly": "{n} has curly hair.",
        "bald": "{n} is bald.",
        "ponytail": "{n} wears a ponytail.",
        "bun": "{n} wears a bun.",
        "spiky": "{n} has spiky hair.",
        "bob": "{n} has a bob haircut.",
    }
)
_MARK_WORD = MappingProxyType({"freckles": "freckles", "mole": "a mole", "scar": "a scar", "birthmark": "a birthmark"})

#: Multiple-choice option text for each attribute value.
OPTION_TEXT: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "hair_style": {
            "short": "Short hair",
            "long": "Long hair",
            "curly": "Curly hair",
            "bald": "Bald",
            "ponytail": "A ponytail",
            "bun": "A bun",
            "spiky": "Spiky hair",
            "bob": "A bob cut",
        },
        "mark": {
            "none": "No marks",
            "freckles": "Freckles",
            "mole": "A mole",
            "scar": "A scar",
            "birthmark": "A birthmark",
        },
        "glasses": {"none": "No glasses", "round": "Round glasses", "square": "Square glasses"},
        "facial_hair": {
            "none": "No facial hair",
            "mustache": "A mustache",
            "beard": "A beard",
            "goatee": "A goatee",
            "stubble": "Stubble",
        },
        "gender": {"man": "A man", "woman": "A woman"},
    }
)


def option_text(attribute: str, value: str) -> str:
    """Option text of an attribute value (``"Brown"``, ``"A ponytail"``, ``"Middle-aged"``)."""
    table = OPTION_TEXT.get(attribute)
    if table is not None:
        return table[value]
    return value[:1].upper() + value[1:]


def attribute_answer(attrs: Mapping[str, str], attribute: str, name: str = SKS) -> str:
    """Free-form answer about one attribute, e.g. ``"<sks>'s hair is brown."``."""
    v = attrs[attribute]
    n = name
    if attribute == "hair_color":
        return f"{n}'s hair is {v}."
    if attribute == "eye_color":
        return f"{n}'s eyes are {v}."
    if attribute == "skin_tone":
        return f"{n}'s skin tone is {v}."
    if attribute == "hair_style":
        return _STYLE_ANSWER[v].format(n=n)
    if attribute == "mark":
        feats = []
        if v != "none":
            feats.append(_MARK_WORD[v])
        if attrs.get("facial_hair", "none") != "none":
            feats.append(FACIAL_HAIR_PHRASE[attrs["facial_hair"]])
        if attrs.get("glasses", "none") != "none":
            feats.append(f"{attrs['glasses']} glasses")
        if not feats:
            return f"No, {n} has no distinctive facial features."
        return f"Yes, {n} has {join_words(feats)}."
    if attribute == "age":
        return f"{n} is {v}."
    if attribute == "nose":
        return f"{n} has a {v} nose."
    if attribute == "face_shape":
        return f"{n} has a {v} face."
    if attribute == "glasses":
        return f"No, {n} does not wear glasses." if v == "none" else f"Yes, {n} wears {v} glasses."
    if attribute == "facial_hair":
        return f"No, {n} has no facial hair." if v == "none" else f"Yes, {n} has {FACIAL_HAIR_PHRASE[v]}."
    if attribute == "mouth":
        return f"{n} has a {v} mouth."
    if attribute == "eyebrows":
        return f"{n} has {v} eyebrows."
    if attribute == "gender":
        return f"{n} is a {v}."
    raise KeyError(attribute)


def _question_table(extra: bool) -> dict[str, str]:
    t = load_templates()
    table = {q: PAPER_QUESTION_ATTRIBUTE[q] for q in t.text_only_questions}
    if extra:
        table.update(EXTRA_ATTRIBUTE_QUESTIONS)
    return table


def _pick_question(rng: np.random.Generator, question: str | int | None, extra: bool) -> tuple[str, str]:
    table = _question_table(extra)
    qs = list(table)
    if question is None:
        q = _choice(rng, qs)
    elif isinstance(question, int):
        q = qs[question]
    else:
        q = question
        if q not in table:
            table = _question_table(True)
            if q not in table:
                raise KeyError(f"unknown attribute question {q!r}")
    return q, table[q]


def attribute_qa(
    identity: Identity,
    rng: np.random.Generator,
    question: str | int | None = None,
    name: str = SKS,
    extra: bool = False,
) -> QA:
    """A text-only question about the identity with a free-form answer from its attributes.

    ``question`` may be a question string, an index into the paper's questions, or ``None`` (random;
    with ``extra=True`` the pool also holds :data:`EXTRA_ATTRIBUTE_QUESTIONS`).
    """
    q, attribute = _pick_question(rng, question, extra)
    return QA(
        question=q.replace(SKS, name),
        answer=attribute_answer(identity.attributes, attribute, name),
        kind="attribute",
        meta={"attribute": attribute, "value": identity.attributes[attribute]},
    )


def attribute_mc_qa(
    identity: Identity,
    rng: np.random.Generator,
    question: str | int | None = None,
    n_options: int = 3,
    name: str = SKS,
    extra: bool = False,
) -> QA:
    """The multiple-choice form of :func:`attribute_qa` (options are values of the asked attribute).

    For the "distinctive facial features" question the options are skin marks
    (``"Freckles"``, ``"A scar"``, ``"No marks"``, ...).
    """
    q, attribute = _pick_question(rng, question, extra)
    value = identity.attributes[attribute]
    correct = option_text(attribute, value)
    others = [option_text(attribute, v) for v in ATTRIBUTES[attribute] if v != value]
    return make_mc(
        q.replace(SKS, name),
        correct,
        others,
        rng,
        n_options,
        "attribute_mc",
        {"attribute": attribute, "value": value, "free_answer": attribute_answer(identity.attributes, attribute, name)},
    )


# ================================================================================ visual QA
VISUAL_KINDS: tuple[str, ...] = ("position", "vertical", "clothing_color", "clothing_type", "expression", "count")
_POSITION_TEXT = MappingProxyType({"left": "On the left", "middle": "In the middle", "right": "On the right"})
_LOCATION = MappingProxyType({"left": "on the left", "middle": "in the middle", "right": "on the right"})
_EXPRESSION_PHRASE = MappingProxyType(
    {
        "smiling": "smiling",
        "serious": "looking serious",
        "surprised": "looking surprised",
        "sad": "looking sad",
        "angry": "looking angry",
    }
)
_NUMBER_WORD = MappingProxyType({1: "one", 2: "two", 3: "three", 4: "four", 5: "five"})


def _person(graph: Mapping[str, Any], identity_id: str) -> Mapping[str, Any]:
    for p in graph["people"]:
        if p["identity"] == identity_id:
            return p
    raise KeyError(f"{identity_id} is not in this scene")


def _subject(graph: Mapping[str, Any], rng: np.random.Generator) -> tuple[Mapping[str, Any], str] | None:
    """A person that can be referred to unambiguously without a name, and the phrase for them."""
    people = graph["people"]
    if len(people) == 1:
        return people[0], "the person"
    counts: dict[str, int] = {}
    for p in people:
        counts[p["position"]] = counts.get(p["position"], 0) + 1
    unique = [p for p in people if counts[p["position"]] == 1]
    if not unique:
        return None
    p = _choice(rng, unique)
    return p, f"the person {_LOCATION[p['position']]}"


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def visual_mc_qa(
    graph: Mapping[str, Any],
    rng: np.random.Generator,
    target: str | None = None,
    kind: str | None = None,
    n_options: int = 3,
    name: str = SKS,
) -> QA:
    """A multiple-choice question about what is visible in the photo.

    With ``target`` (an identity id in the scene) the subject is ``name`` (personalised); without,
    the subject is "the person on the left"-style (or the question is about the people count).
    ``kind`` is one of :data:`VISUAL_KINDS` (random if ``None``).
    """
    kinds = list(VISUAL_KINDS)
    n_people = len(graph["people"])
    if kind is None:
        if target is None:  # unnamed subjects: only kinds that stay well-posed
            kinds = ["count", "clothing_color", "clothing_type", "expression"] + (
                ["position", "vertical"] if n_people == 1 else []
            )
        kind = _choice(rng, kinds)
    if kind not in VISUAL_KINDS:
        raise ValueError(f"unknown visual question kind {kind!r}")
    if kind == "count":
        correct = str(n_people)
        others = [str(k) for k in range(1, 5) if k != n_people]
        return make_mc(
            "How many people are in this image?",
            correct,
            others,
            rng,
            n_options,
            "visual_mc",
            {"visual": "count", "value": n_people},
        )
    if target is not None:
        p = _person(graph, target)
        subj, poss = name, f"{name}'s"
    else:
        found = _subject(graph, rng)
        if found is None:
            return visual_mc_qa(graph, rng, None, "count", n_options, name)
        p, subj = found
        poss = f"{subj}'s" if subj == "the person" else f"the clothes of {subj}"
    meta = {"visual": kind, "identity": p["identity"]}
    if kind == "position":
        q = f"Where is {subj} in this image?" if target is not None else "Where is the person in this image?"
        if target is None and n_people > 1:  # position of an unnamed person is ill-posed; ask the count
            return visual_mc_qa(graph, rng, None, "count", n_options, name)
        return make_mc(
            q,
            _POSITION_TEXT[p["position"]],
            list(_POSITION_TEXT.values()),
            rng,
            n_options,
            "visual_mc",
            {**meta, "value": p["position"]},
        )
    if kind == "vertical":
        q = f"Is {subj} in the top half or the bottom half of the image?"
        if target is None and n_people > 1:
            return visual_mc_qa(graph, rng, None, "count", n_options, name)
        return make_mc(
            q,
            "Top half" if p["vertical"] == "top" else "Bottom half",
            ["Top half", "Bottom half"],
            rng,
            2,
            "visual_mc",
            {**meta, "value": p["vertical"]},
        )
    if kind == "clothing_color":
        q = (
            f"What color are {poss} clothes?"
            if target is not None or subj == "the person"
            else f"What color are {poss}?"
        )
        return make_mc(
            q,
            p["clothing_color"].capitalize(),
            [c.capitalize() for c in CLOTHING_COLORS],
            rng,
            n_options,
            "visual_mc",
            {**meta, "value": p["clothing_color"]},
        )
    if kind == "clothing_type":
        q = f"What is {subj} wearing?"
        opts = [f"{_article(t).capitalize()} {t}" for t in CLOTHING_TYPES]
        correct = f"{_article(p['clothing_type']).capitalize()} {p['clothing_type']}"
        return make_mc(q, correct, opts, rng, n_options, "visual_mc", {**meta, "value": p["clothing_type"]})
    if kind == "expression":
        q = (
            f"What is {subj}'s facial expression?"
            if target is not None or subj == "the person"
            else f"What is the facial expression of {subj}?"
        )
        return make_mc(
            q,
            p["expression"].capitalize(),
            [e.capitalize() for e in EXPRESSIONS],
            rng,
            n_options,
            "visual_mc",
            {**meta, "value": p["expression"]},
        )
    raise AssertionError(kind)


# ================================================================================ multi-concept
def multi_concept_qa(graph: Mapping[str, Any], names: Mapping[str, str], rng: np.random.Generator | None = None) -> QA:
    """``"Can you see <a> and <b> in this photo?"`` for the concepts ``names`` (identity id -> name).

    Answers: ``"Yes, I can see both <a> and <b>."``, ``"I can see <a>, but not <b>."``,
    ``"No, I can see neither <a> nor <b>."`` (three concepts: ``"Yes, I can see <a>, <b> and <c>."``,
    ``"No, I can see none of <a>, <b> and <c>."``).
    """
    ids = list(names)
    if len(ids) < 2:
        raise ValueError("multi_concept_qa needs at least two concepts")
    if rng is not None:
        ids = [ids[int(i)] for i in rng.permutation(len(ids))]
    in_scene = {p["identity"] for p in graph["people"]}
    present = [i for i in ids if i in in_scene]
    absent = [i for i in ids if i not in in_scene]
    ns = [names[i] for i in ids]
    q = f"Can you see {join_words(ns)} in this photo?"
    if not absent:
        a = f"Yes, I can see both {ns[0]} and {ns[1]}." if len(ns) == 2 else f"Yes, I can see {join_words(ns)}."
    elif not present:
        a = (
            f"No, I can see neither {ns[0]} nor {ns[1]}."
            if len(ns) == 2
            else f"No, I can see none of {join_words(ns)}."
        )
    else:
        a = (
            f"I can see {join_words([names[i] for i in present])}, "
            f"but not {join_words([names[i] for i in absent]).replace(' and ', ' or ')}."
        )
    return QA(
        question=q,
        answer=a,
        kind="multi_concept",
        meta={"present": present, "absent": absent, "answer_word": "Yes" if not absent else "No"},
    )


# ================================================================================ captions
def person_phrase(p: Mapping[str, Any]) -> str:
    """Generic noun phrase for a person of a scene graph: ``"a young man with short black hair"``."""
    a = p["attributes"]
    extras = []
    if a["facial_hair"] != "none":
        extras.append(FACIAL_HAIR_PHRASE[a["facial_hair"]])
    if p.get("glasses_worn"):
        extras.append("glasses")
    phrase = f"{person_noun(a)} with {hair_phrase(a)}"
    if extras:
        phrase += " and " + join_words(extras) if len(extras) == 1 else ", " + join_words(extras)
    return phrase


def clothing_phrase(p: Mapping[str, Any]) -> str:
    """``"wearing a blue hoodie"``."""
    c = p["clothing_color"]
    return f"wearing {_article(c)} {c} {p['clothing_type']}"


def _objects_sentence(graph: Mapping[str, Any]) -> str:
    objs = [f"{_article(o['color'])} {o['color']} {o['name']}" for o in graph.get("objects", [])]
    if not objs:
        return ""
    return f" There is {join_words(objs)}."


def scene_caption(graph: Mapping[str, Any]) -> str:
    """Generic caption naming nobody, e.g. ``"Two people: on the left a young man with short black hair
    wearing a blue hoodie, smiling; on the right ... The photo is taken indoors, in front of ..."``."""
    people = graph["people"]
    n = len(people)
    head = "One person" if n == 1 else f"{_NUMBER_WORD[n].capitalize()} people"
    items = [
        f"{_LOCATION[p['position']]} {person_phrase(p)} {clothing_phrase(p)}, {_EXPRESSION_PHRASE[p['expression']]}"
        for p in people
    ]
    return (
        f"{head}: "
        + "; ".join(items)
        + f". The photo is taken {background_phrase(graph['background'])}."
        + _objects_sentence(graph)
    )


def concept_caption(graph: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """Caption that names the known concepts: ``"<a> is on the left wearing a red t-shirt, smiling, next
    to <b> on the right wearing a blue hoodie, looking serious."``; other people are described."""
    people = graph["people"]
    if not any(p["identity"] in names for p in people):
        return scene_caption(graph)
    clauses = []
    for p in people:
        who = names.get(p["identity"]) or person_phrase(p)
        clauses.append(
            (
                p["identity"] in names,
                who,
                f"{_LOCATION[p['position']]} {clothing_phrase(p)}, {_EXPRESSION_PHRASE[p['expression']]}",
            )
        )
    first = next(i for i, c in enumerate(clauses) if c[0])
    ordered = [clauses[first]] + clauses[:first] + clauses[first + 1 :]
    text = f"{ordered[0][1]} is {ordered[0][2]}"
    for _named, who, rest in ordered[1:]:
        text += f", next to {who} {rest}"
    pron = "They are" if len(people) > 1 else f"{ordered[0][1]} is"
    return text + f". {pron} {background_phrase(graph['background'])}."


#: What a person description (:func:`person_phrase`) can change in a negative of :func:`described_person_vqa`.
DESCRIBED_PROPERTIES: tuple[str, ...] = ("gender", "age", "hair_color", "hair_style", "facial_hair", "glasses")


def check_described_properties(properties: Sequence[str]) -> tuple[str, ...]:
    """``properties`` as a tuple if they are distinct members of :data:`DESCRIBED_PROPERTIES` (else ``ValueError``)."""
    properties = tuple(properties)
    if not properties or not set(properties) <= set(DESCRIBED_PROPERTIES) or len(set(properties)) < len(properties):
        raise ValueError(f"described properties must be distinct values of {DESCRIBED_PROPERTIES}, got {properties}")
    if properties == ("facial_hair",):
        raise ValueError("described properties: facial_hair alone cannot change a woman's description (she has none)")
    return properties


# ================================================================================ generic VQA
GENERIC_OPEN_KINDS: tuple[str, ...] = (
    "count",
    "clothing_color",
    "clothing_type",
    "expression",
    "hair_color",
    "glasses",
    "object",
    "setting",
    "age",
)


def open_kind_weights(weights: Mapping[str, float] | str) -> dict[str, float]:
    """Validated sampling weights of open :data:`GENERIC_OPEN_KINDS` (``"hair_color=3,glasses=1"`` or a mapping).

    Open questions are drawn from the listed kinds only (as always, a kind that cannot be asked about the
    photo — no single person to name, a background that is neither indoors nor outdoors — falls back to
    ``count``); multiple-choice and described-person questions keep their shares. Weights need not sum to 1.
    Raises ``ValueError`` on an unknown kind, a malformed entry, a negative weight or an all-zero table.
    """
    if isinstance(weights, str):
        table: dict[str, float] = {}
        for entry in filter(None, (e.strip() for e in weights.split(","))):
            name, sep, value = entry.partition("=")
            try:
                if not sep:
                    raise ValueError(entry)
                table[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"open kind weight {entry!r} is not of the form kind=number") from None
        weights = table
    unknown = sorted(set(weights) - set(GENERIC_OPEN_KINDS))
    if unknown:
        raise ValueError(f"unknown open question kind(s) {unknown}; known: {', '.join(GENERIC_OPEN_KINDS)}")
    values = [float(w) for w in weights.values()]
    if any(not w >= 0 for w in values) or sum(values) <= 0 or sum(values) == float("inf"):  # not w >= 0: NaN
        raise ValueError(f"open kind weights must be >= 0 with a positive sum, got {dict(weights)}")
    return {k: float(w) for k, w in weights.items()}


def generic_vqa(
    graph: Mapping[str, Any],
    rng: np.random.Generator,
    kind: str | None = None,
    mc_prob: float = 0.3,
    described_share: float = 0.0,
    open_kinds: Mapping[str, float] | None = None,
    described_properties: Sequence[str] = DESCRIBED_PROPERTIES,
) -> QA:
    """A non-personalised question about the photo (open form, or multiple choice with ``mc_prob``).

    With ``described_share > 0`` that share of the questions are :func:`described_person_vqa` ("Is there
    a young woman with long red hair in this image?"); at 0 the random stream is the one of earlier versions.
    ``open_kinds`` (see :func:`open_kind_weights`) sets the proportions of the open kinds (``None``: uniform
    over :data:`GENERIC_OPEN_KINDS`, the stream of earlier versions); ``described_properties`` are the
    properties a described-person negative may change.
    """
    if kind is None and described_share > 0 and rng.random() < described_share:
        return described_person_vqa(graph, rng, properties=described_properties)
    if kind is None and rng.random() < mc_prob:
        return visual_mc_qa(graph, rng, None, None, int(rng.integers(2, 5)))
    if kind is None and open_kinds is not None:
        names = list(open_kinds)
        p = np.asarray([open_kinds[k] for k in names], dtype=float)
        kind = names[int(rng.choice(len(names), p=p / p.sum()))]
    kind = kind or _choice(rng, GENERIC_OPEN_KINDS)
    people = graph["people"]
    n = len(people)
    if kind == "count":
        return QA(
            "How many people are in this image?",
            f"{_NUMBER_WORD[n].capitalize()}.",
            "generic_vqa",
            meta={"visual": "count", "value": n},
        )
    if kind == "object":
        present = sorted({o["name"] for o in graph.get("objects", [])})
        if present and rng.random() < 0.5:
            obj, ans = _choice(rng, present), "Yes."
        else:
            absent = [o for o in OBJECT_NAMES if o not in present]
            obj, ans = _choice(rng, absent), "No."
        return QA(
            f"Is there {_article(obj)} {obj} in this image?",
            ans,
            "generic_vqa",
            meta={"visual": "object", "value": obj, "answer_word": ans[:-1]},
        )
    if kind == "setting":
        bk = graph["background"]["kind"]
        if bk not in ("indoor", "outdoor"):
            return generic_vqa(graph, rng, "count")
        ans = "Indoors." if bk == "indoor" else "Outdoors."
        return QA(
            "Is this photo taken indoors or outdoors?", ans, "generic_vqa", meta={"visual": "setting", "value": bk}
        )
    found = _subject(graph, rng)
    if found is None:
        return generic_vqa(graph, rng, "count")
    p, subj = found
    meta = {"visual": kind, "identity": p["identity"]}
    if kind == "clothing_color":
        return QA(
            f"What color is {subj} wearing?",
            f"{p['clothing_color'].capitalize()}.",
            "generic_vqa",
            meta={**meta, "value": p["clothing_color"]},
        )
    if kind == "clothing_type":
        c = p["clothing_color"]
        return QA(
            f"What is {subj} wearing?",
            _clothing_answer(c, p["clothing_type"]),
            "generic_vqa",
            meta={**meta, "value": p["clothing_type"], "color": c},
        )
    if kind == "expression":
        return QA(
            f"What is the facial expression of {subj}?",
            f"{p['expression'].capitalize()}.",
            "generic_vqa",
            meta={**meta, "value": p["expression"]},
        )
    if kind == "hair_color":
        v = p["attributes"]["hair_color"]
        return QA(f"What color is the hair of {subj}?", f"{v.capitalize()}.", "generic_vqa", meta={**meta, "value": v})
    if kind == "glasses":
        ans = "Yes." if p["glasses_worn"] else "No."
        return QA(
            f"Is {subj} wearing glasses?",
            ans,
            "generic_vqa",
            meta={**meta, "value": bool(p["glasses_worn"]), "answer_word": ans[:-1]},
        )
    if kind == "age":
        v = p["attributes"]["age"]
        return QA(f"Is {subj} young or old?", f"{v.capitalize()}.", "generic_vqa", meta={**meta, "value": v})
    raise ValueError(f"unknown generic question kind {kind!r}")


def _redescribe(p: Mapping[str, Any], changes: Sequence[str], rng: np.random.Generator) -> dict[str, Any]:
    """A copy of scene person ``p`` with each property in ``changes`` set to another value (a woman has no
    facial hair; facial hair is only changed on a man)."""
    a = dict(p["attributes"])
    glasses = bool(p.get("glasses_worn"))
    for prop in changes:
        if prop == "glasses":
            glasses = not glasses
        elif prop == "facial_hair" and a["gender"] != "man":
            continue
        else:
            a[prop] = _choice(rng, [v for v in ATTRIBUTES[prop] if v != a[prop]])
    if a["gender"] != "man":
        a["facial_hair"] = "none"
    return {**p, "attributes": a, "glasses_worn": glasses}


def described_person_vqa(
    graph: Mapping[str, Any],
    rng: np.random.Generator,
    positive: bool | None = None,
    n_changed: int | None = None,
    properties: Sequence[str] = DESCRIBED_PROPERTIES,
) -> QA:
    """ "Is there a young woman with long red hair and glasses in this image?" about a person description.

    Yes: the description (:func:`person_phrase`) of someone in the photo. No: that description with
    ``n_changed`` (random 1 to min(3, len(properties))) of ``properties`` (default
    :data:`DESCRIBED_PROPERTIES`) changed, fitting nobody in the photo. This is
    the single-image skill a frozen LVLM uses to recognise a concept that is *described* to it — the
    Aligner's tokens (§3.1) play the description. ``meta["n_changed"]`` is 0 for a Yes; ``meta["changed"]``
    lists the properties changed (not a woman's facial hair, which stays "none").
    """
    people = graph["people"]
    if not people:
        raise ValueError("a described-person question needs a photo with people")
    properties = check_described_properties(properties)
    if positive is None:
        positive = bool(rng.random() < 0.5)
    p = _choice(rng, people)
    present = {person_phrase(q) for q in people}
    phrase, changed, props = person_phrase(p), 0, []
    if not positive:
        n = int(n_changed if n_changed is not None else rng.integers(1, min(3, len(properties)) + 1))
        if not 1 <= n <= len(properties):
            raise ValueError(f"n_changed must be in 1..{len(properties)}, got {n}")
        for subject in [p] + [q for q in people if q is not p]:  # the others only if p cannot be changed
            for _ in range(20):  # a change may hit a value another person in the photo has
                props = [properties[int(i)] for i in rng.choice(len(properties), n, replace=False)]
                candidate = person_phrase(_redescribe(subject, props, rng))
                if candidate not in present:
                    p, phrase, changed = subject, candidate, n
                    break
            if changed:
                break
        else:
            raise ValueError("could not find a description that fits nobody in the photo")
    ans = "No." if changed else "Yes."
    return QA(
        f"Is there {phrase} in this image?",
        ans,
        "generic_vqa",
        meta={
            "visual": "described_person",
            "identity": p["identity"],
            "value": phrase,
            "n_changed": changed,
            "answer_word": ans[:-1],
            "changed": [q for q in props if q != "facial_hair" or p["attributes"]["gender"] == "man"]
            if changed
            else [],
        },
    )


def _clothing_answer(color: str, kind: str) -> str:
    return f"{_article(color).capitalize()} {color} {kind}."


def generic_vqa_candidates(item: QA) -> tuple[str, ...]:
    """Every well-formed answer to the open generic question ``item`` (its true answer is one of them).

    The closed answer set of each open kind — e.g. the clothing colours for "What color is ... wearing?" —
    so a model can be scored by ranking answers by likelihood (chance = 1 / number of candidates).

    Raises:
        ValueError: ``item`` is multiple choice (score its letters instead) or of an unknown kind.
    """
    if item.options:
        raise ValueError("multiple-choice item: score its option letters")
    kind = item.meta.get("visual")
    if kind == "count":
        cands = [f"{_NUMBER_WORD[n].capitalize()}." for n in range(1, 5)]
    elif kind == "clothing_color":
        cands = [f"{c.capitalize()}." for c in CLOTHING_COLORS]
    elif kind == "clothing_type":
        cands = [_clothing_answer(item.meta["color"], t) for t in CLOTHING_TYPES]
    elif kind == "expression":
        cands = [f"{e.capitalize()}." for e in EXPRESSIONS]
    elif kind in ("hair_color", "age"):
        cands = [f"{v.capitalize()}." for v in ATTRIBUTES[kind]]
    elif kind in ("glasses", "object", "described_person"):
        cands = ["Yes.", "No."]
    elif kind == "setting":
        cands = ["Indoors.", "Outdoors."]
    else:
        raise ValueError(f"no candidate answers for generic question kind {kind!r}")
    if item.answer not in cands:
        raise ValueError(f"answer {item.answer!r} is not among the candidates of kind {kind!r}")
    return tuple(cands)


def caption_prompt(rng: np.random.Generator) -> str:
    """A caption request (the paper's neutral caption prompt or a short variant)."""
    return _choice(
        rng, (load_templates().caption_prompt_neutral, "Describe this image.", "Write a short caption for this photo.")
    )
