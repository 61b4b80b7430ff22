"""Rendering speed of AvatarWorld: ``python -m plvm.bench.avatarworld [--n 200] [--size 224]``.

Rendering is pure Python + Pillow + NumPy element-wise work on one thread; the benchmark also caps
the usual BLAS/OpenMP thread variables at 1 for the child libraries that read them late, and reports
the machine it ran on. No timing is asserted anywhere: the numbers are for humans.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from typing import Any

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, load, and library versions."""
    import numpy
    import PIL

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "loadavg": load,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }


def _rates(fn, n: int, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append(n / (time.perf_counter() - t))
    return out


def _summary(rates: list[float]) -> dict[str, float]:
    return {"min": round(min(rates), 1), "median": round(statistics.median(rates), 1), "max": round(max(rates), 1)}


def bench_render(
    n: int = 200, size: int = 224, repeats: int = 3, warmup: int = 20, seed: int = 0, threads: int = 1
) -> dict[str, Any]:
    """Time ``n`` random scenes (1–4 people) and ``n // 2`` reference portraits, ``repeats`` times each
    after ``warmup`` untimed scenes. Returns min/median/max rates and machine info."""
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    import numpy as np

    from plvm.synth.avatarworld import AvatarWorld

    t0 = time.perf_counter()
    world = AvatarWorld(seed=seed, size=size)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    for _ in range(warmup):
        world.sample_scene(rng)
    scene_rates = _rates(lambda: world.sample_scene(rng), n, repeats)
    pool = world.split("train")
    counter = itertools.count()
    ref_rates = _rates(
        lambda: world.render_reference(pool[next(counter) % len(pool)], rng_or_seed=rng), max(1, n // 2), repeats
    )
    med = statistics.median(scene_rates)
    return {
        "what": "AvatarWorld.sample_scene (train split, 1-4 people) and render_reference",
        "n": n,
        "size": size,
        "repeats": repeats,
        "warmup": warmup,
        "seed": seed,
        "threads": threads,
        "world_build_s": round(build_s, 3),
        "scenes_per_s": _summary(scene_rates),
        "ms_per_scene_median": round(1000.0 / med, 2),
        "references_per_s": _summary(ref_rates),
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(json.dumps(bench_render(args.n, args.size, args.repeats, args.warmup, args.seed), indent=2))


if __name__ == "__main__":
    main()
