"""The methods compared by the harness — PLVM and its baselines behind one interface.

Every method turns *a question about concepts* into *a conversation for the same frozen LVLM*; the harness
scores all of them the same way (:mod:`plvm.eval.scoring`). A question is text with ``<name>`` for each
concept and a list of :class:`Binding` saying whose data personalizes each name (normally the concept
itself; another identity for the wrong-concept control).

=========================  ==================================================  =========================
method (key)               what the LVLM sees about concept ``<bo>``            prompt tokens per concept
=========================  ==================================================  =========================
``none``                   nothing: ``<bo>`` is rewritten "the person"          0
``text``                   ``<bo> is <description>.`` — a ≤ T-token            name + description tokens
                           description the base model wrote from the reference
``image``                  ``Here is <bo>: <image>.`` — the reference image     name + image tokens
``yollava``                ``<bo> is <t1>…<tk>.`` learnt per concept by         1 + k
                           gradient descent (Eq. 2) on its train images
``plvm``                   ``<bo> is <t1>…<tk>.`` from the Aligner, one pass    1 + k
=========================  ==================================================  =========================

"Prompt tokens per concept" counts the tokens that carry the concept (glue words such as ``is`` or ``Here
is`` are not counted); name tokens of the prompting baselines are ordinary text tokens (``<``, ``bo``, ``>``).

One module per family: :mod:`.base` (:class:`Method`, :class:`Binding`), :mod:`.prompting` (``none``, ``text``,
``image``), :mod:`.embedding` (``plvm``, ``yollava``), :mod:`.identification` (``identify``, ``plvm-idp``);
:func:`build_methods` makes them by key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ...injection import PersonalizedLVLM
from .base import Binding, Method
from .embedding import EmbeddingMethod, PLVMMethod, YoLLaVA, YoLLaVAConfig
from .identification import FeatureTable, IdentifyIndex, IdentifyRecognition, PLVMIdentifyPrompt
from .prompting import ImagePrompt, NoPersonalization, TextPrompt

# ============================================================================ factory
METHOD_KEYS = ("none", "text", "image", "yollava", "plvm", "identify", "plvm-idp")


@dataclass
class MethodOptions:
    """Knobs of :func:`build_methods` (the CLI's method flags)."""

    phrase: str = "the person"
    text_tokens: int | None = None  # default: PLVM's k (equal budget), else 16
    describe_prompt: str = "Describe the person in this image in one short sentence."
    yollava: YoLLaVAConfig = field(default_factory=YoLLaVAConfig)
    yollava_k: int | None = None  # default: PLVM's k
    yollava_cache: Path | None = None  # folder of tuned concepts reused across runs (YoLLaVA's ``cache``)
    face: Any = None  # face backend of identify / plvm-idp (plvm.encoders.face.FaceEncoder); None: image features
    identify_threshold: float | None = None  # image-feature cosine threshold (None: plvm.identify's default)


def build_methods(
    keys: Sequence[str], lvlm: PersonalizedLVLM, plvm: Any = None, options: MethodOptions | None = None
) -> list[Method]:
    """Instantiate methods by key (:data:`METHOD_KEYS`) on one shared LVLM."""
    options = options or MethodOptions()
    k = plvm.aligner.config.num_queries if plvm is not None else None
    shared: dict[str, IdentifyIndex] = {}

    def index() -> IdentifyIndex:  # one index (and one photo cache) for both identify methods
        if "index" not in shared:
            if plvm is None:
                raise ValueError("the identify methods need a PLVM (its reference encoder)")
            kw = {} if options.identify_threshold is None else {"threshold": options.identify_threshold}
            shared["index"] = IdentifyIndex(plvm, options.face, **kw)
        return shared["index"]

    factories: dict[str, Callable[[], Method]] = {
        "none": lambda: NoPersonalization(lvlm, options.phrase),
        "text": lambda: TextPrompt(lvlm, options.text_tokens or k or 16, options.describe_prompt),
        "image": lambda: ImagePrompt(lvlm),
        "yollava": lambda: YoLLaVA(
            lvlm,
            YoLLaVAConfig(**{**asdict(options.yollava), "k": options.yollava_k or k or options.yollava.k}),
            cache=options.yollava_cache,
        ),
        "plvm": lambda: _plvm_method(plvm, lvlm),
        "identify": lambda: IdentifyRecognition(lvlm, index()),
        "plvm-idp": lambda: PLVMIdentifyPrompt(_plvm_method(plvm, lvlm).plvm, index()),
    }
    unknown = [key for key in keys if key not in factories]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_KEYS)}")
    return [factories[key]() for key in dict.fromkeys(keys)]


def _plvm_method(plvm: Any, lvlm: PersonalizedLVLM) -> PLVMMethod:
    if plvm is None:
        raise ValueError("method 'plvm' needs a PLVM (Aligner + LVLM)")
    if plvm.lvlm is not lvlm:
        raise ValueError("PLVM must wrap the same LVLM as the other methods")
    return PLVMMethod(plvm)


__all__ = [
    "Binding",
    "EmbeddingMethod",
    "FeatureTable",
    "IdentifyIndex",
    "IdentifyRecognition",
    "ImagePrompt",
    "METHOD_KEYS",
    "Method",
    "MethodOptions",
    "NoPersonalization",
    "PLVMIdentifyPrompt",
    "PLVMMethod",
    "TextPrompt",
    "YoLLaVA",
    "YoLLaVAConfig",
    "build_methods",
]
