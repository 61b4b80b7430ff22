"""AvatarWorld: a deterministic procedural world of cartoon people with exact ground truth.

It reproduces the setting of the PLVM paper on a CPU budget: an identity is a face (13 intrinsic
attributes), the reference is a clean frontal portrait, and queries are photos of 1–4 people in
varied scenes, each with a JSON scene graph. See ``docs/AVATARWORLD.md``.

Modules: :mod:`.attributes` (identities, distances, splits), :mod:`.palette` (colours),
:mod:`.pen` (unit->pixel drawing), :mod:`.person` (one avatar), :mod:`.backgrounds`,
:mod:`.objects`, :mod:`.scene` (composition + scene graph), :mod:`.world` (:class:`AvatarWorld` and
sample streams), :mod:`.evalset` (the fixed evaluation set), :mod:`.sheet` (contact sheet).
"""

from .attributes import ATTRIBUTE_NAMES, ATTRIBUTES, Identity, attribute_distance
from .evalset import EvalQA, EvalQuery, EvalSet, MultiImage, build_eval_set
from .person import CLOTHING_COLORS, CLOTHING_TYPES, EXPRESSIONS, Look
from .scene import Scene, SceneOptions
from .sheet import contact_sheet
from .world import AvatarWorld, GenericSample, PersonalSample

__all__ = [
    "ATTRIBUTES", "ATTRIBUTE_NAMES", "AvatarWorld", "CLOTHING_COLORS", "CLOTHING_TYPES", "EXPRESSIONS",
    "EvalQA", "EvalQuery", "EvalSet", "GenericSample", "Identity", "Look", "MultiImage", "PersonalSample",
    "Scene", "SceneOptions", "attribute_distance", "build_eval_set", "contact_sheet",
]
