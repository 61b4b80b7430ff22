"""``plvm bench serve``: a bounded local load test of ``plvm serve``, and its memory under large uploads.

Both start ``plvm serve --model tiny`` (a random tiny model: the numbers are about the server — request
handling, validation, the store, the decoded-pixel budget — not the LLM) as a child process on
``127.0.0.1`` only, with a fresh store in a temporary directory, and stop it when done: they never run
unbounded and never touch another host.

* :func:`load_test` — ``requests`` requests at ``concurrency`` (a fixed mix of info, list, identify, ask,
  add and remove; deterministic order), reporting errors and p50/p95/max latency per kind.
* :func:`upload_memory` — the server's RSS (``/proc/<pid>/status``) idle, and its peak while ``uploads``
  concurrent ``/api/identify`` uploads of one small-file, many-pixel PNG run — with the decoded-pixel
  budget (default) and, for comparison, with it raised out of the way.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from .reliability import big_flat_png, png_bytes

MIX = (
    "info",
    "list",
    "identify",
    "ask",
    "info",
    "identify",
    "list",
    "ask",
    "add",
    "identify",
    "info",
    "ask",
    "list",
    "identify",
    "add",
    "rm",
    "info",
    "identify",
    "ask",
    "list",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """``plvm serve --model tiny`` on 127.0.0.1 in a child process (``with LocalServer(...) as s: s.url``)."""

    def __init__(self, store: Path, extra: Sequence[str] = (), faces: bool = False, startup_s: float = 120.0):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(
            os.environ,
            PLVM_FACE_BACKEND=os.environ.get("PLVM_FACE_BACKEND", "dlib") if faces else "none",
            TOKENIZERS_PARALLELISM="false",
        )
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [
            sys.executable,
            "-m",
            "plvm.cli",
            "serve",
            "--model",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--store",
            str(store),
            "--max-new-tokens",
            "8",
            "--faces" if faces else "--no-faces",
            *extra,
        ]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait(startup_s)

    def _wait(self, startup_s: float) -> None:
        import httpx

        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"plvm serve exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(self.url + "/api/info", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("plvm serve did not start")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]


def _stats(latencies: list[float], errors: int) -> dict[str, Any]:
    ms = [1000 * v for v in latencies]
    return {
        "n": len(ms),
        "errors": errors,
        "p50_ms": _percentile(ms, 0.5),
        "p95_ms": _percentile(ms, 0.95),
        "max_ms": max(ms) if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
    }


def load_test(requests: int = 500, concurrency: int = 8, faces: bool = False) -> dict[str, Any]:
    """Run the bounded load test; see the module docstring. Returns JSON-able figures."""
    import httpx

    if not 1 <= requests <= 100_000 or not 1 <= concurrency <= 64:
        raise ValueError("requests must be 1..100000 and concurrency 1..64")
    photos = [png_bytes(i, (96, 96)) for i in range(4)]
    results: list[tuple[str, float, int | str]] = []
    lock = threading.Lock()
    local = threading.local()
    with (
        tempfile.TemporaryDirectory(prefix="plvm-bench-serve-") as tmp,
        LocalServer(Path(tmp) / "store", faces=faces) as server,
    ):
        with httpx.Client(base_url=server.url, timeout=120) as setup:
            for name in ("bo", "mo"):
                setup.post(
                    "/api/concepts",
                    data={"name": name},
                    files={"image": ("r.png", photos[0 if name == "bo" else 1], "image/png")},
                )
            for i in range(requests):  # what each rm request removes exists before the run starts
                if MIX[i % len(MIX)] == "rm":
                    setup.post(
                        "/api/concepts",
                        data={"name": f"pre-{i}"},
                        files={"image": ("r.png", photos[i % len(photos)], "image/png")},
                    )

        def client() -> Any:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=server.url, timeout=120)
            return local.client

        def one(i: int) -> None:
            kind = MIX[i % len(MIX)]
            c, photo = client(), photos[i % len(photos)]
            t0 = time.perf_counter()
            try:
                if kind == "info":
                    r = c.get("/api/info")
                elif kind == "list":
                    r = c.get("/api/concepts")
                elif kind == "identify":
                    r = c.post("/api/identify", files={"image": ("q.png", photo, "image/png")})
                elif kind == "ask":
                    r = c.post(
                        "/api/ask",
                        data={"question": "Is <bo> in this photo?"},
                        files={"image": ("q.png", photo, "image/png")},
                    )
                elif kind == "add":
                    r = c.post(
                        "/api/concepts", data={"name": f"load-{i}"}, files={"image": ("r.png", photo, "image/png")}
                    )
                else:  # rm: a concept added before the run
                    r = c.delete(f"/api/concepts/pre-{i}")
                status: int | str = r.status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with lock:
                results.append((kind, time.perf_counter() - t0, status))

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    by_kind: dict[str, Any] = {}
    for kind in dict.fromkeys(MIX):
        rows = [r for r in results if r[0] == kind]
        ok = lambda s: isinstance(s, int) and s < 400  # noqa: E731
        by_kind[kind] = _stats([r[1] for r in rows], sum(not ok(r[2]) for r in rows))
    statuses: dict[str, int] = {}
    for _, _, s in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    errors = sum(v["errors"] for v in by_kind.values())
    return {
        "requests": requests,
        "concurrency": concurrency,
        "url": "127.0.0.1 (a child plvm serve --model tiny)",
        "wall_s": wall,
        "statuses": dict(sorted(statuses.items())),
        "by_kind": by_kind,
        "all": _stats([r[1] for r in results], errors),
        "command": f"plvm bench serve --requests {requests} --concurrency {concurrency}",
    }


def upload_memory(
    uploads: int = 8, size: tuple[int, int] = (16000, 2400), faces: bool = False, compare: bool = True
) -> dict[str, Any]:
    """Server RSS idle and at peak during ``uploads`` concurrent identify uploads of one large flat PNG."""
    import httpx

    big = big_flat_png(size)
    runs: dict[str, Any] = {}
    variants = [("decoded-pixel budget 40 MP (default)", [])]
    if compare:
        variants.append(("budget raised to 1000 MP (no budget, as before)", ["--max-decoded-megapixels", "1000"]))
    for label, extra in variants:
        with (
            tempfile.TemporaryDirectory(prefix="plvm-bench-mem-") as tmp,
            LocalServer(Path(tmp) / "store", extra, faces=faces) as server,
        ):
            with httpx.Client(base_url=server.url, timeout=300) as c:  # warm up: one small identify
                c.post("/api/concepts", data={"name": "bo"}, files={"image": ("r.png", png_bytes(1), "image/png")})
                c.post("/api/identify", files={"image": ("q.png", png_bytes(2), "image/png")})
            time.sleep(0.5)
            idle = server.rss_mb()
            peak = [idle]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], server.rss_mb())
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def upload(_: int) -> int:
                with httpx.Client(base_url=server.url, timeout=600) as c:
                    return c.post("/api/identify", files={"image": ("big.png", big, "image/png")}).status_code

            with cf.ThreadPoolExecutor(uploads) as pool:
                statuses = list(pool.map(upload, range(uploads)))
            done.set()
            sampler.join()
            runs[label] = {"idle_mb": idle, "peak_mb": peak[0], "statuses": sorted(set(statuses))}
    return {
        "uploads": uploads,
        "size": list(size),
        "file_kb": len(big) / 1024,
        "faces": faces,
        "runs": runs,
        "command": f"plvm bench serve --memory --uploads {uploads}",
    }


__all__ = ["LocalServer", "load_test", "upload_memory"]
