"""Shared machinery of the cost benchmarks (``plvm bench …``): timing, machine facts, results, tables.

Every benchmark

* fixes the number of intra-op threads (:func:`set_threads`, ``torch.set_num_threads``),
* warms up before it times, repeats, and reports min / median / max (:func:`measure`, :class:`Stats`),
* records the machine it ran on and the load average at start and end (:func:`machine_info`); a run
  that started on a busy machine is flagged ``under_load`` and the Markdown says so,
* returns a :class:`BenchResult`: JSON-serialisable data plus one Markdown table per measurement, and
  the exact command that reproduces it.

Nothing here asserts anything about timings: the numbers are for humans.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

#: A run is flagged as taken under load when other processes kept at least this many CPU cores busy
#: (measured over a short window before the run and again after it, our own CPU time subtracted).
LOAD_FLAG_THRESHOLD = 0.3
LOAD_WINDOW_S = 1.0

NOT_MEASURED = "not yet measured — run `plvm bench all`"


# ---------------------------------------------------------------------- machine
def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[key] = int(parts[0]) * 1024  # kB -> bytes
    except OSError:
        pass
    return out


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    """CPU model name and feature flags from ``/proc/cpuinfo`` (first CPU)."""
    model, flags = "", []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or "unknown", flags


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Unix
        return None


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``."""
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            fields = [float(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def others_busy_cores(window: float = LOAD_WINDOW_S) -> float | None:
    """CPU cores kept busy by *other* processes over ``window`` seconds (this process sleeps meanwhile)."""
    start, own0 = _cpu_times(), sum(os.times()[:4])
    t0 = time.perf_counter()
    time.sleep(window)
    end, own1 = _cpu_times(), sum(os.times()[:4])
    elapsed = time.perf_counter() - t0
    if start is None or end is None or end[1] <= start[1]:
        return None
    ncpu = os.cpu_count() or 1
    busy_cores = (end[0] - start[0]) / (end[1] - start[1]) * ncpu
    return round(max(0.0, busy_cores - (own1 - own0) / elapsed), 2)


def machine_info(threads: int | None = None, load_window: float = LOAD_WINDOW_S) -> dict[str, Any]:
    """CPU model, cores, RAM, library versions, threads and the load average *now*."""
    import torch

    model, flags = _cpu_model_and_flags()
    mem = _meminfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        usable = os.cpu_count()
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover
        tf_version = None
    load = loadavg()
    others = others_busy_cores(load_window)
    return {
        "cpu": model,
        "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags],
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "ram_bytes": mem.get("MemTotal"),
        "ram_available_bytes": mem.get("MemAvailable"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": tf_version,
        "numpy": np.__version__,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "loadavg_start": load,
        "others_busy_cores_start": others,
        "under_load": bool(others is not None and others >= LOAD_FLAG_THRESHOLD),
    }


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads`` (default: all usable CPUs) and the usual BLAS variables; returns it."""
    import torch

    n = threads or default_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    return n


# ---------------------------------------------------------------------- timing
@dataclass
class Stats:
    """Summary of repeated measurements (seconds unless ``unit`` says otherwise)."""

    n: int
    min: float
    median: float
    max: float
    mean: float
    p95: float
    unit: str = "s"
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: Sequence[float], unit: str = "s") -> "Stats":
        xs = [float(x) for x in samples]
        if not xs:
            raise ValueError("no samples")
        return cls(
            n=len(xs),
            min=min(xs),
            median=statistics.median(xs),
            max=max(xs),
            mean=statistics.fmean(xs),
            p95=float(np.percentile(xs, 95)),
            unit=unit,
            samples=xs,
        )

    def scaled(self, factor: float, unit: str) -> "Stats":
        return Stats.of([x * factor for x in self.samples], unit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Stats":
        return cls(**d)

    def fmt(self, digits: int = 1, bold_median: bool = True) -> str:
        """``min / **median** / max unit``."""
        med = f"**{self.median:.{digits}f}**" if bold_median else f"{self.median:.{digits}f}"
        return f"{self.min:.{digits}f} / {med} / {self.max:.{digits}f} {self.unit}".strip()


def measure(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[Stats, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; → (seconds, last result)."""
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    samples = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        samples.append(time.perf_counter() - t0)
    return Stats.of(samples), result


# ---------------------------------------------------------------------- results
@dataclass
class Table:
    title: str
    markdown: str

    def to_dict(self) -> dict[str, str]:
        return {"title": self.title, "markdown": self.markdown}


@dataclass
class BenchResult:
    """One benchmark run: what was measured, how to rerun it, where, and its tables."""

    name: str
    command: str
    settings: dict[str, Any]
    machine: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tiny: bool = False
    started_at: str = ""
    duration_s: float = 0.0
    loadavg_end: list[float] | None = None
    others_busy_cores_end: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tables"] = [t.to_dict() for t in self.tables]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchResult":
        d = dict(d)
        d["tables"] = [Table(**t) for t in d.get("tables", [])]
        return cls(**d)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_jsonable(self.to_dict()), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BenchResult":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def markdown(self, heading_level: int = 3) -> str:
        """All tables with the command above them, the machine line and the notes."""
        h = "#" * heading_level
        took = (
            f" The run took {self.duration_s / 60:.1f} min."
            if self.duration_s >= 60
            else (f" The run took {self.duration_s:.0f} s." if self.duration_s else "")
        )
        parts = [
            f"```bash\n{self.command}\n```",
            machine_line(self.machine, self.loadavg_end, self.others_busy_cores_end) + took,
        ]
        if self.tiny:
            parts.insert(
                0,
                "> **Tiny smoke run** — random tiny models; these numbers only show that the "
                "code runs and are *not* results.",
            )
        for table in self.tables:
            parts.append(f"{h} {table.title}\n\n{table.markdown}")
        if self.notes:
            parts.append("\n".join(f"* {n}" for n in self.notes))
        return "\n\n".join(parts)


class Run:
    """Context for one benchmark: sets threads, records the machine at start and the load at the end."""

    def __init__(self, name: str, command: str, settings: dict[str, Any], threads: int | None, tiny: bool):
        self.threads = set_threads(threads)
        self.load_window = 0.2 if tiny else LOAD_WINDOW_S  # smoke runs: keep the whole thing quick
        self.result = BenchResult(
            name=name,
            command=command,
            settings={**settings, "threads": self.threads},
            machine=machine_info(self.threads, self.load_window),
            tiny=tiny,
            started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        self._t0 = time.perf_counter()

    def finish(self) -> BenchResult:
        self.result.duration_s = round(time.perf_counter() - self._t0, 2)
        self.result.loadavg_end = loadavg()
        self.result.others_busy_cores_end = others_busy_cores(self.load_window)
        if (self.result.others_busy_cores_end or 0.0) >= LOAD_FLAG_THRESHOLD:
            self.result.machine["under_load"] = True
        return self.result


def machine_line(
    machine: dict[str, Any], load_end: Sequence[float] | None = None, others_end: float | None = None
) -> str:
    """One human line about the machine; flags runs taken while other processes used the CPU."""
    ram = machine.get("ram_bytes")
    ram_s = f"{ram / 2**30:.1f} GiB RAM" if ram else "RAM unknown"
    load = machine.get("loadavg_start")
    load_s = "/".join(f"{x:.2f}" for x in load) if load else "?"
    end_s = "/".join(f"{x:.2f}" for x in load_end) if load_end else "?"
    flags = ", ".join(machine.get("cpu_flags") or []) or "-"
    others = machine.get("others_busy_cores_start")
    others_s = "?" if others is None else f"{others:.2f}"
    others_e = "?" if others_end is None else f"{others_end:.2f}"
    line = (
        f"Machine: {machine.get('cpu') or '?'} ({machine.get('usable_cpus')} usable of "
        f"{machine.get('cpu_count')} CPUs; {flags}), {ram_s}, torch {machine.get('torch')}, "
        f"transformers {machine.get('transformers')}, {machine.get('torch_threads')} torch threads, "
        f"nice {machine.get('nice')}. CPU cores busy with other processes: {others_s} before the run, "
        f"{others_e} after it; load average {load_s} at start, {end_s} at end."
    )
    if machine.get("under_load"):
        line = (
            f"**⚠ taken under load** (other processes kept ≥ {LOAD_FLAG_THRESHOLD} CPU cores busy before or "
            "after the run — absolute times are pessimistic; ratios measured interleaved are less affected). " + line
        )
    return line


# ---------------------------------------------------------------------- tables
def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_int(n: int | float | None) -> str:
    return "-" if n is None else f"{int(n):,}"


def fmt_pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100.0 * x:.{digits}f} %"


def fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def fmt_bytes_exact(n: int | float | None) -> str:
    """``41,892 B (40.9 KiB)``."""
    if n is None:
        return "-"
    return f"{n:,.0f} B ({fmt_bytes(n)})" if n >= 1024 else f"{n:,.0f} B"


def command_line(prog: str, args: Sequence[tuple[str, Any]]) -> str:
    """``plvm bench cost --repeats 3 --tiny`` from ``[("--repeats", 3), ("--tiny", True)]`` (None/False dropped)."""
    parts = [prog]
    for flag, value in args:
        if value is None or value is False:
            continue
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, ",".join(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return " ".join(parts)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Stats):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    return obj


def eprint(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


__all__ = [
    "BenchResult",
    "LOAD_FLAG_THRESHOLD",
    "others_busy_cores",
    "NOT_MEASURED",
    "Run",
    "Stats",
    "Table",
    "command_line",
    "default_threads",
    "eprint",
    "fmt_bytes",
    "fmt_bytes_exact",
    "fmt_int",
    "fmt_pct",
    "loadavg",
    "machine_info",
    "machine_line",
    "md_table",
    "measure",
    "set_threads",
]
