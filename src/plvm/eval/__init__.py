"""Evaluation harness: PLVM and its baselines on the same data, at the same token budget (§4).

Entry points: :func:`read_dataset` → :func:`build_methods` → :func:`run_evaluation` (or ``plvm eval``).
Modules: ``readers`` (dataset formats), ``metrics``, ``prompts``, ``scoring``, ``methods`` (one per method family),
``recognition``, ``multiple_choice`` (text and visual QA), ``multiconcept``, ``captioning`` (tasks), ``report``,
``harness``; the command line is :mod:`plvm.cli.evaluate`.
"""

from .config import EvalConfig
from .harness import EvalResult, run_evaluation
from .methods import (
    Binding,
    ImagePrompt,
    Method,
    MethodOptions,
    NoPersonalization,
    PLVMMethod,
    TextPrompt,
    YoLLaVA,
    YoLLaVAConfig,
    build_methods,
)
from .metrics import binary_metrics, choice_metrics, mention_metrics
from .readers import EvalDataset, read_dataset, read_plvm, read_yollava

__all__ = [
    "Binding",
    "EvalConfig",
    "EvalDataset",
    "EvalResult",
    "ImagePrompt",
    "Method",
    "MethodOptions",
    "NoPersonalization",
    "PLVMMethod",
    "TextPrompt",
    "YoLLaVA",
    "YoLLaVAConfig",
    "binary_metrics",
    "build_methods",
    "choice_metrics",
    "mention_metrics",
    "read_dataset",
    "read_plvm",
    "read_yollava",
    "run_evaluation",
]
