"""Scene prompts for IP-Adapter data synthesis (PLVM §3.3), generated reproducibly from slot lists.

The paper writes ~200 prompts of the form *"A person (wearing …) is (doing …) at (place)"* and draws 5 per
reference face. We build them from our own slot lists (no external LLM): each :data:`PLACES` entry has a
phrase with its preposition and the activities that make sense there; :data:`ANYWHERE` activities fit every
place; :data:`CLOTHING` fills the optional *wearing* slot.

    bank = build_prompt_bank(200, seed=0)       # e.g. "A person wearing a red hoodie is jogging in a city park."
    five = prompts_for_reference(bank, "00042", k=5, seed=0)   # 5 distinct prompts, a pure function of the id

Everything is a pure function of ``(n, seed)`` / ``(reference id, k, seed)``: reruns and resumed runs get
the same prompts.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

DEFAULT_N_PROMPTS = 200
DEFAULT_PER_REFERENCE = 5
#: Appended to the scene text for Stable Diffusion (the filters score the bare scene text).
DEFAULT_STYLE = "photo, realistic, natural light, detailed face, high quality"
DEFAULT_NEGATIVE = (
    "lowres, blurry, deformed face, disfigured, extra limbs, bad anatomy, cartoon, drawing, "
    "watermark, text, multiple people"
)

CLOTHING: tuple[str, ...] = (
    "a red hoodie",
    "a navy business suit",
    "a denim jacket",
    "a white t-shirt",
    "a yellow raincoat",
    "a black leather jacket",
    "a striped sweater",
    "a floral summer dress",
    "a green parka",
    "a grey wool coat",
    "a chef's apron",
    "a white lab coat",
    "a blue polo shirt",
    "a plaid flannel shirt",
    "a knitted scarf and beanie",
    "a sports jersey",
    "a linen shirt",
    "a black turtleneck",
    "an orange windbreaker",
    "a beige trench coat",
    "a cardigan",
    "a tuxedo",
    "a graduation gown",
    "work overalls",
    "a cycling jersey",
    "a ski jacket",
    "a hawaiian shirt",
    "a hospital scrub top",
    "a formal evening dress",
    "a baseball cap and a t-shirt",
)

#: Activities that fit every place.
ANYWHERE: tuple[str, ...] = (
    "smiling at the camera",
    "taking a selfie",
    "waving hello",
    "laughing out loud",
    "looking into the distance",
    "talking on the phone",
)

#: (place phrase with its preposition, activities that fit there).
PLACES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "at the beach",
        ("walking along the shore", "building a sandcastle", "sitting under an umbrella", "flying a kite"),
    ),
    (
        "in a coffee shop",
        ("drinking a cappuccino", "working on a laptop", "reading a newspaper", "ordering at the counter"),
    ),
    ("in a city park", ("jogging", "feeding the ducks", "sitting on a bench", "walking a dog")),
    ("in a modern kitchen", ("chopping vegetables", "baking a cake", "making pancakes", "washing dishes")),
    ("in a library", ("reading a book", "browsing the shelves", "taking notes", "studying quietly")),
    ("on a snowy mountain", ("skiing", "building a snowman", "hiking with poles", "drinking hot chocolate")),
    ("at a train station", ("waiting for a train", "checking the timetable", "carrying a suitcase", "reading a map")),
    (
        "in an office",
        ("giving a presentation", "typing on a computer", "reviewing documents", "writing on a whiteboard"),
    ),
    ("at a music festival", ("dancing", "playing the guitar", "singing into a microphone", "clapping along")),
    ("in a garden", ("watering the flowers", "planting tomatoes", "picking strawberries", "trimming a hedge")),
    ("at a football stadium", ("cheering for a team", "holding a scarf up", "eating a hot dog", "watching the match")),
    (
        "on a busy city street",
        ("crossing the road", "hailing a taxi", "carrying shopping bags", "walking past shop windows"),
    ),
    (
        "in a museum",
        ("looking at a painting", "examining a sculpture", "reading an exhibit label", "sketching in a notebook"),
    ),
    ("by a lake", ("fishing from a dock", "paddling a canoe", "skipping stones", "having a picnic")),
    ("in a gym", ("lifting weights", "running on a treadmill", "stretching on a mat", "doing push-ups")),
    ("at a birthday party", ("blowing out candles", "opening a present", "cutting the cake", "holding balloons")),
    ("in a classroom", ("teaching a lesson", "raising a hand", "writing on a blackboard", "reading aloud")),
    (
        "at an airport",
        ("pulling a suitcase", "boarding a plane", "looking at the departure board", "waiting at the gate"),
    ),
    ("in a forest", ("hiking on a trail", "taking photos of trees", "sitting on a log", "collecting mushrooms")),
    (
        "at a farmers market",
        ("buying fresh vegetables", "tasting cheese", "carrying a basket of apples", "choosing flowers"),
    ),
    ("in a restaurant", ("eating pasta", "raising a glass", "reading the menu", "tasting a dessert")),
    (
        "on a sailing boat",
        ("steering the wheel", "pulling a rope", "enjoying the sea breeze", "looking through binoculars"),
    ),
    (
        "in a recording studio",
        ("singing into a microphone", "playing the piano", "wearing headphones", "adjusting a mixing desk"),
    ),
    ("at a campsite", ("roasting marshmallows", "pitching a tent", "sitting by the campfire", "reading a trail map")),
    (
        "on a rooftop terrace",
        ("watching the sunset", "drinking lemonade", "reading a magazine", "taking photos of the skyline"),
    ),
)


@dataclass(frozen=True)
class ScenePrompt:
    """One scene: the bare ``text`` (scored by the CLIP filter) and its slots."""

    text: str
    activity: str
    place: str
    clothing: str | None = None

    def sd_prompt(self, style: str = DEFAULT_STYLE) -> str:
        """The prompt given to Stable Diffusion: the scene followed by the style words."""
        return f"{self.text.rstrip('.')}, {style}" if style else self.text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render(activity: str, place: str, clothing: str | None = None) -> str:
    """``"A person wearing a red hoodie is jogging in a city park."`` (the paper's template)."""
    wearing = f" wearing {clothing}" if clothing else ""
    return f"A person{wearing} is {activity} {place}."


def build_prompt_bank(n: int = DEFAULT_N_PROMPTS, seed: int = 0, clothing_share: float = 0.8) -> list[ScenePrompt]:
    """``n`` distinct scene prompts, places in turn (shuffled), activities and clothing drawn by ``seed``.

    ``clothing_share`` is the share of prompts with the optional *wearing* slot.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    rng = np.random.default_rng([seed, 0x5CE7E])
    capacity = sum(len(acts) + len(ANYWHERE) for _, acts in PLACES) * (len(CLOTHING) + 1)
    if n > capacity:
        raise ValueError(f"at most {capacity} distinct prompts can be built from the slot lists")
    out: list[ScenePrompt] = []
    seen: set[str] = set()
    order = [int(i) for i in rng.permutation(len(PLACES))]
    i = 0
    while len(out) < n:
        place, specific = PLACES[order[i % len(order)]]
        i += 1
        # two in three activities are the place's own, the rest fit anywhere
        pool = specific if rng.random() < 2 / 3 else ANYWHERE
        activity = pool[int(rng.integers(len(pool)))]
        clothing = CLOTHING[int(rng.integers(len(CLOTHING)))] if rng.random() < clothing_share else None
        text = render(activity, place, clothing)
        if text in seen:
            continue
        seen.add(text)
        out.append(ScenePrompt(text=text, activity=activity, place=place, clothing=clothing))
    return out


def stable_hash(text: str) -> int:
    """A process-independent 32-bit hash (``hash()`` is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def prompts_for_reference(
    bank: Sequence[ScenePrompt], reference_id: str, k: int = DEFAULT_PER_REFERENCE, seed: int = 0
) -> list[ScenePrompt]:
    """``k`` distinct prompts of ``bank`` for one reference (a pure function of id, k and seed)."""
    if k > len(bank):
        raise ValueError(f"asked for {k} prompts per reference from a bank of {len(bank)}")
    rng = np.random.default_rng([seed, stable_hash(reference_id)])
    return [bank[int(j)] for j in rng.choice(len(bank), size=k, replace=False)]
