"""AvatarWorld: a deterministic procedural world of cartoon people with exact ground truth.

It reproduces the setting of the PLVM paper on a CPU budget: an identity is a face (13 intrinsic
attributes), the reference is a clean frontal portrait, and queries are photos of 1–4 people in
varied scenes, each with a JSON scene graph. See ``docs/AVATARWORLD.md``.

Modules: :mod:`.attributes` (identities, distances, splits), :mod:`.palette` (colours),
:mod:`.pen` (unit->pixel drawing), :mod:`.person` (one avatar), :mod:`.backgrounds`,
:mod:`.objects`, :mod:`.scene` (composition + scene graph), :mod:`.world` (:class:`AvatarWorld`: identities,
portraits, scenes), :mod:`.sheet` (contact sheet). The package only renders; built on it and on
:mod:`plvm.synth.qa` are the training-sample streams (:mod:`plvm.synth.samples`) and the fixed evaluation set
(:mod:`plvm.synth.evalset`).
"""

from .attributes import ATTRIBUTE_NAMES, ATTRIBUTES, Identity, attribute_distance
from .person import CLOTHING_COLORS, CLOTHING_TYPES, EXPRESSIONS, Look
from .scene import Scene, SceneOptions
from .sheet import contact_sheet
from .world import AvatarWorld

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "AvatarWorld",
    "CLOTHING_COLORS",
    "CLOTHING_TYPES",
    "EXPRESSIONS",
    "Identity",
    "Look",
    "Scene",
    "SceneOptions",
    "attribute_distance",
    "contact_sheet",
]
