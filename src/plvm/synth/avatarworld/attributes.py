"""Identity attributes of AvatarWorld: what defines *who* an avatar is.

An :class:`Identity` is a fixed assignment of one value to each of the 13 intrinsic attributes in
:data:`ATTRIBUTES`. Everything that can change from photo to photo (clothing, expression, pose,
position, background) is *not* an attribute; it lives in the scene graph instead.

Identities are sampled from a seed by :func:`sample_identities`. About half of them are drawn as
"relatives" of an earlier identity of the same split (2–3 attributes re-drawn), so that *hard
negatives* — identities that share most attributes with a target — exist in every split. Any two
identities differ in at least :data:`MIN_DISTANCE` attributes so that they stay visually
distinguishable.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

#: Attribute name -> its possible values (in a fixed order). Order of the keys is the canonical order.
ATTRIBUTES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "gender": ("man", "woman"),
        "age": ("young", "middle-aged", "old"),
        "face_shape": ("round", "oval", "square", "long", "heart"),
        "skin_tone": ("pale", "fair", "medium", "olive", "brown", "dark"),
        "hair_color": ("black", "brown", "blonde", "red", "grey", "white"),
        "hair_style": ("short", "long", "curly", "bald", "ponytail", "bun", "spiky", "bob"),
        "eye_color": ("brown", "blue", "green", "grey"),
        "eyebrows": ("thin", "thick", "arched"),
        "nose": ("small", "large", "pointed", "round", "wide"),
        "mouth": ("small", "wide", "full", "thin"),
        "facial_hair": ("none", "mustache", "beard", "goatee", "stubble"),
        "glasses": ("none", "round", "square"),
        "mark": ("none", "freckles", "mole", "scar", "birthmark"),
    }
)

ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTES)

#: Two distinct identities always differ in at least this many attributes.
MIN_DISTANCE = 2

# Sampling weights (relative; missing values get weight 1.0). Keyed by attribute, then optionally by gender.
_WEIGHTS: Mapping[str, Mapping[str, Mapping[str, float]]] = MappingProxyType(
    {
        "age": {"*": {"young": 0.4, "middle-aged": 0.35, "old": 0.25}},
        "hair_color": {"*": {"black": 1.5, "brown": 1.5, "blonde": 1.1, "red": 0.9, "grey": 0.4, "white": 0.3}},
        "hair_style": {
            "man": {
                "short": 3.0,
                "long": 0.6,
                "curly": 1.5,
                "bald": 1.5,
                "ponytail": 0.3,
                "bun": 0.3,
                "spiky": 1.5,
                "bob": 0.3,
            },
            "woman": {
                "short": 1.0,
                "long": 2.5,
                "curly": 1.5,
                "bald": 0.1,
                "ponytail": 1.5,
                "bun": 1.3,
                "spiky": 0.3,
                "bob": 1.5,
            },
        },
        "facial_hair": {"man": {"none": 2.0, "mustache": 1.0, "beard": 1.0, "goatee": 1.0, "stubble": 1.0}},
        "glasses": {"*": {"none": 3.0, "round": 1.0, "square": 1.0}},
        "mark": {"*": {"none": 2.0, "freckles": 1.0, "mole": 1.0, "scar": 1.0, "birthmark": 1.0}},
    }
)


def _weights(name: str, gender: str) -> np.ndarray:
    table = _WEIGHTS.get(name, {})
    w = table.get(gender, table.get("*", {}))
    values = ATTRIBUTES[name]
    p = np.array([float(w.get(v, 1.0)) for v in values])
    return p / p.sum()


def stable_hash(*parts: Any) -> int:
    """A process-independent 32-bit hash of ``parts`` (Python's ``hash`` of str is salted per process)."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


@dataclass(frozen=True)
class Identity:
    """One person of AvatarWorld.

    Attributes:
        id: Stable identifier such as ``"id0042"``.
        attributes: Attribute name -> value, one entry per name of :data:`ATTRIBUTES`.
        split: ``"train"`` or ``"test"``; the two splits never share an identity.
        family: Id of the identity this one was derived from (a "relative"), or ``None``.
    """

    id: str
    attributes: dict[str, str]
    split: str = "train"
    family: str | None = None

    def __hash__(self) -> int:  # attributes is a dict; identity is defined by its id
        return hash(self.id)

    def __getitem__(self, name: str) -> str:
        return self.attributes[name]

    def describe(self) -> str:
        """Short English description, e.g. ``"a young woman with long red hair, green eyes, ..."``."""
        a = self.attributes
        parts = [
            f"{a['eye_color']} eyes",
            f"{a['skin_tone']} skin",
            f"a {a['face_shape']} face",
            f"a {a['nose']} nose",
            f"a {a['mouth']} mouth",
            f"{a['eyebrows']} eyebrows",
        ]
        if a["facial_hair"] != "none":
            parts.append(FACIAL_HAIR_PHRASE[a["facial_hair"]])
        if a["glasses"] != "none":
            parts.append(f"{a['glasses']} glasses")
        if a["mark"] != "none":
            parts.append(MARK_PHRASE[a["mark"]])
        return f"{person_noun(a)} with {hair_phrase(a)}, " + join_words(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "split": self.split, "family": self.family, "attributes": dict(self.attributes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Identity":
        return cls(
            id=data["id"],
            attributes=dict(data["attributes"]),
            split=data.get("split", "train"),
            family=data.get("family"),
        )

    def with_attributes(self, **changes: str) -> "Identity":
        """A copy with some attributes replaced (values are validated). Useful for tests and probes."""
        attrs = dict(self.attributes)
        for k, v in changes.items():
            if k not in ATTRIBUTES or v not in ATTRIBUTES[k]:
                raise ValueError(f"invalid attribute {k}={v!r}")
            attrs[k] = v
        return Identity(id=self.id, attributes=attrs, split=self.split, family=self.family)


# ----------------------------------------------------------------------------------------------- phrases
FACIAL_HAIR_PHRASE: Mapping[str, str] = MappingProxyType(
    {"none": "no facial hair", "mustache": "a mustache", "beard": "a beard", "goatee": "a goatee", "stubble": "stubble"}
)
MARK_PHRASE: Mapping[str, str] = MappingProxyType(
    {
        "none": "no marks",
        "freckles": "freckles",
        "mole": "a mole on the cheek",
        "scar": "a scar on the cheek",
        "birthmark": "a birthmark on the cheek",
    }
)


def join_words(items: Sequence[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    items = list(items)
    if not items:
        return ""
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def person_noun(a: Mapping[str, str]) -> str:
    """``"a young man"``, ``"a middle-aged woman"``, ``"an old man"``."""
    age = a["age"]
    article = "an" if age[0] in "aeiou" else "a"
    return f"{article} {age} {a['gender']}"


def hair_phrase(a: Mapping[str, str]) -> str:
    """Noun phrase for hair, e.g. ``"short black hair"``, ``"blonde hair in a bun"``, ``"a bald head"``."""
    c, s = a["hair_color"], a["hair_style"]
    return {
        "short": f"short {c} hair",
        "long": f"long {c} hair",
        "curly": f"curly {c} hair",
        "bald": f"a bald head with {c} hair on the sides",
        "ponytail": f"{c} hair in a ponytail",
        "bun": f"{c} hair in a bun",
        "spiky": f"spiky {c} hair",
        "bob": f"a {c} bob",
    }[s]


# ---------------------------------------------------------------------------------------------- sampling
def attribute_distance(a: Identity | Mapping[str, str], b: Identity | Mapping[str, str]) -> int:
    """Number of attributes (out of :data:`ATTRIBUTE_NAMES`) on which ``a`` and ``b`` differ."""
    aa = a.attributes if isinstance(a, Identity) else a
    bb = b.attributes if isinstance(b, Identity) else b
    return sum(aa[k] != bb[k] for k in ATTRIBUTE_NAMES)


def _draw_attributes(rng: np.random.Generator, women_share: float = 0.5) -> dict[str, str]:
    """Fresh attributes; ``women_share`` (the current share of women) nudges the gender towards balance."""
    p_woman = 0.5 + 0.5 * (0.5 - women_share) * 2
    gender = "woman" if rng.random() < min(0.9, max(0.1, p_woman)) else "man"
    attrs: dict[str, str] = {"gender": gender}
    for name in ATTRIBUTE_NAMES[1:]:
        values = ATTRIBUTES[name]
        attrs[name] = values[int(rng.choice(len(values), p=_weights(name, gender)))]
    if gender == "woman":
        attrs["facial_hair"] = "none"
    # older people are more likely to be grey or white haired
    if attrs["age"] == "old" and rng.random() < 0.5:
        attrs["hair_color"] = ("grey", "white")[int(rng.integers(2))]
    return attrs


def mutable_attributes(attrs: Mapping[str, str]) -> list[str]:
    """Attributes a relative may differ in: all but gender (and facial hair for women)."""
    names = [n for n in ATTRIBUTE_NAMES if n != "gender"]
    if attrs["gender"] == "woman":
        names.remove("facial_hair")
    return names


def mutate(attrs: Mapping[str, str], k: int, rng: np.random.Generator) -> dict[str, str]:
    """Copy of ``attrs`` with exactly ``k`` attributes changed to a different value (drawn with the
    sampling weights of that attribute)."""
    out = dict(attrs)
    names = mutable_attributes(attrs)
    for i in rng.permutation(len(names))[:k]:
        name = names[int(i)]
        values = ATTRIBUTES[name]
        p = _weights(name, attrs["gender"]) * np.array([v != attrs[name] for v in values])
        out[name] = values[int(rng.choice(len(values), p=p / p.sum()))]
    return out


@dataclass(frozen=True)
class IdentitySampler:
    """Draws a list of identities with splits and relatives from a seed (see module docstring).

    Args:
        num_identities: Total number of identities.
        test_fraction: Fraction (rounded) of identities held out as the ``"test"`` split.
        relative_prob: Probability that a new identity is a relative of an earlier one of its split.
        relative_changes: Possible numbers of re-drawn attributes for a relative.
    """

    num_identities: int = 400
    test_fraction: float = 0.2
    relative_prob: float = 0.5
    relative_changes: tuple[int, ...] = (2, 2, 3)
    min_distance: int = MIN_DISTANCE
    _max_tries: int = field(default=200, repr=False)

    def sample(self, seed: int) -> list[Identity]:
        n = int(self.num_identities)
        if n < 1:
            raise ValueError("num_identities must be >= 1")
        n_test = int(round(n * float(self.test_fraction)))
        if not 0 <= n_test <= n:
            raise ValueError("test_fraction must be within [0, 1]")
        rng = np.random.default_rng([int(seed), 7001])
        is_test = np.zeros(n, dtype=bool)
        is_test[rng.permutation(n)[:n_test]] = True
        out: list[Identity] = []
        for i in range(n):
            split = "test" if is_test[i] else "train"
            same_split = [p for p in out if p.split == split]
            for _ in range(self._max_tries):
                family = None
                if same_split and rng.random() < self.relative_prob:
                    parent = same_split[int(rng.integers(len(same_split)))]
                    k = int(self.relative_changes[int(rng.integers(len(self.relative_changes)))])
                    attrs = mutate(parent.attributes, k, rng)
                    family = parent.family or parent.id
                else:
                    women = sum(p.attributes["gender"] == "woman" for p in same_split)
                    attrs = _draw_attributes(rng, women / len(same_split) if same_split else 0.5)
                if all(attribute_distance(attrs, p.attributes) >= self.min_distance for p in out):
                    break
            else:  # pragma: no cover - the attribute space has ~1e9 points
                raise RuntimeError("could not draw a distinct identity")
            out.append(Identity(id=f"id{i:04d}", attributes=attrs, split=split, family=family))
        return out


def nearest(identity: Identity, pool: Iterable[Identity], n: int) -> list[Identity]:
    """The ``n`` identities of ``pool`` (other than ``identity``) closest in attribute distance."""
    cands = [p for p in pool if p.id != identity.id]
    cands.sort(key=lambda p: (attribute_distance(identity, p), p.id))
    return cands[:n]
