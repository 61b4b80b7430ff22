"""PLVM §3.3 training-data synthesis with Stable Diffusion + IP-Adapter (face), filters and QA construction.

* :mod:`.generator` — :class:`IPAdapterGenerator` (diffusers), per-image seeds, batching;
* :mod:`.run` — :func:`run_synthesis`, the resumable run over a folder of reference faces;
* :mod:`.training_items` — recognition pairs from the paper's templates, attribute answers from the base LVLM;
* :mod:`.tiny` — tiny random components in the real layouts (tests, ``--tiny``).

Prompts live in :mod:`plvm.synth.prompts_bank`, filters in :mod:`plvm.synth.filters`, the command line in
:mod:`plvm.cli.ipadapter`. ``diffusers`` is imported only when a generator is built.
"""

from .run import Reference, RunReport, SettingsMismatch, SynthConfig, discover_references, image_seed, run_synthesis
from .training_items import (
    CallableAnswerer,
    ConceptData,
    LVLMAnswerer,
    attribute_questions,
    build_items,
    to_concept_answer,
    to_this_person,
)

__all__ = [
    "CallableAnswerer",
    "ConceptData",
    "LVLMAnswerer",
    "Reference",
    "RunReport",
    "SettingsMismatch",
    "SynthConfig",
    "attribute_questions",
    "build_items",
    "discover_references",
    "image_seed",
    "run_synthesis",
    "to_concept_answer",
    "to_this_person",
]
