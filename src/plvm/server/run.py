"""Running the app with uvicorn (``plvm serve``), and in a background thread (tests, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .security import BindError, check_bind, is_loopback_host


def return_large_buffers_to_the_os(threshold: int = 1 << 20) -> bool:
    """Make glibc serve allocations above ``threshold`` bytes with ``mmap`` (returned to the OS on free).

    glibc raises its mmap threshold dynamically after large frees, after which decoded images (Pillow's
    16 MiB blocks) land in per-thread heaps that are never shrunk: a server that decoded one large upload on
    each of its worker threads then holds one image per thread. A fixed threshold turns that off
    (``mallopt(M_MMAP_THRESHOLD)``, the knob behind ``MALLOC_MMAP_THRESHOLD_``). Process-wide, so it is
    called by :func:`serve` (the process that runs the server), not by the library. Returns whether it
    applied (``False`` off glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def serve(
    app: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, log_level: str = "info"
) -> None:
    """Run ``app`` until interrupted; refuses a non-loopback ``host`` without a ``token``."""
    import uvicorn

    check_bind(host, token)
    return_large_buffers_to_the_os()
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)


@dataclass
class BackgroundServer:
    """A uvicorn server on a thread (``with BackgroundServer.start(app) as s: s.url``)."""

    server: Any
    thread: threading.Thread
    url: str

    @classmethod
    def start(cls, app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0) -> "BackgroundServer":
        import uvicorn

        if not is_loopback_host(host):
            raise BindError(f"BackgroundServer listens on loopback addresses only, not {host}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="plvm-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return cls(server, thread, f"http://{host}:{sock.getsockname()[1]}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
