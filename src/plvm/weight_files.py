"""Where the weight files the product loads are found — the one resolver for packaged weights.

A weight file is named relative to its model folder, e.g. ``llava-mini-v2/projector.safetensors`` (LLaVA-mini's
trained projector) or ``plvm-mini/aligner.safetensors`` (the mini Aligner), and looked for, in order, in

1. ``models/<name>`` of the repository checkout (src layout: two levels above the ``plvm`` package), then
2. ``plvm/data/<name>`` inside the installed package.

:func:`find` returns the first existing file (or ``None``), :func:`locate` the same or, when there is none, the
first candidate (the place to put it, named in error messages).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # src/plvm (or site-packages/plvm)
REPO_ROOT = PACKAGE_DIR.parents[1]  # the checkout root (src layout)

# LLaVA-mini v2 (identity-shaped projector + LM LoRA); v1 (``llava-mini/``) is where v2's recipe starts.
LLAVA_MINI_PROJECTOR = "llava-mini-v2/projector.safetensors"
MINI_ALIGNER = "plvm-mini/aligner.safetensors"


def candidates(name: str | Path) -> list[Path]:
    """Where weight file ``name`` (relative to its model folder) is looked for, in order."""
    return [REPO_ROOT / "models" / name, PACKAGE_DIR / "data" / name]


def find(name: str | Path) -> Path | None:
    """The first existing candidate of weight file ``name``, or ``None``."""
    return next((path for path in candidates(name) if path.is_file()), None)


def locate(name: str | Path) -> Path:
    """:func:`find`, or the first candidate when weight file ``name`` exists nowhere yet."""
    return find(name) or candidates(name)[0]
