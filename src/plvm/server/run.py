"""Running the app with uvicorn (``plvm serve``), and in a background thread (tests, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from .security import BindError, check_bind, is_loopback_host


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          log_level: str = "info") -> None:
    """Run ``app`` until interrupted; refuses a non-loopback ``host`` without a ``token``."""
    import uvicorn

    check_bind(host, token)
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
