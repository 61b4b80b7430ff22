"""What keeps a local plvm server safe from the web pages its user visits, and its memory flat under load.

* :class:`RequestGuardMiddleware` — **DNS rebinding**: a request whose ``Host`` is not the bound host or a
  loopback name is refused (400), so a page on ``rebind.evil.example`` that re-points its name at 127.0.0.1
  cannot read the API. **CSRF**: a cross-site form POST needs no CORS preflight, so every *write* (any
  method but GET/HEAD/OPTIONS) must be same-origin — its ``Origin`` (else ``Referer``) must name this
  server, and ``Sec-Fetch-Site``, when the browser sends it, must be ``same-origin`` or ``none`` — or carry
  the server's bearer token (403 otherwise). Requests without any of these headers come from non-browser
  clients (curl, scripts), which no web page can make.
* :class:`PixelBudget` — a weighted semaphore over *decoded* pixels: an upload reserves ``width × height``
  (read from the header, before decoding) and holds it until its request is done, so concurrent uploads of
  large images wait for each other instead of all being decoded at once.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
from typing import Any, Awaitable, Callable, Iterable, Iterator
from urllib.parse import urlsplit

from .security import is_loopback_host

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def split_host(value: str) -> str:
    """The host part of a ``Host`` header or URL netloc (``[::1]:8000`` → ``::1``, ``a:80`` → ``a``), lowercased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.index("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_host_names(bind_host: str | None = None, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """Host names the server answers to: loopback names, the bound host and ``extra``; ``None`` (any
    host) for a wildcard bind (``0.0.0.0``/``::``), which :func:`plvm.server.check_bind` allows only with a
    token — the token then protects against rebinding."""
    if bind_host is not None and bind_host.strip().strip("[]") in WILDCARD_HOSTS:
        return None
    names = {"localhost", "localhost.", "127.0.0.1", "::1", "ip6-localhost"}
    if bind_host:
        names.add(split_host(bind_host) if not bind_host.startswith("[") else bind_host.strip("[]").lower())
    names.update(split_host(h) for h in extra if h)
    return frozenset(names)


class RequestGuardMiddleware:
    """Refuse foreign ``Host`` headers (400) and cross-origin writes without the token (403); see the module."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], allowed_hosts: frozenset[str] | None, token: str | None = None
    ):
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.token = token

    @staticmethod
    async def _reject(send: Send, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def host_allowed(self, host: str) -> bool:
        if self.allowed_hosts is None:
            return True
        name = split_host(host)
        return name in self.allowed_hosts or is_loopback_host(name)

    def _has_token(self, headers: dict[str, str]) -> bool:
        if not self.token:
            return False
        auth = headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def write_refusal(self, method: str, headers: dict[str, str]) -> str | None:
        """Why a write is refused (``None``: allowed)."""
        if method in SAFE_METHODS or self._has_token(headers):
            return None
        host = headers.get("host", "").strip().lower()
        fetch_site = headers.get("sec-fetch-site", "").strip().lower()
        if fetch_site and fetch_site not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {fetch_site[:40]})"
        for header in ("origin", "referer"):
            value = headers.get(header)
            if value is None:
                continue
            parts = urlsplit(value.strip()) if value.strip().lower() != "null" else None
            if parts is None or parts.scheme not in ("http", "https") or parts.netloc.lower() != host:
                return f"cross-origin request refused ({header.title()}: {value.strip()[:80]!r} is not {host!r})"
            return None
        return None  # no Origin, Referer or Sec-Fetch-Site: not a browser request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.host_allowed(host):
            allowed = ", ".join(sorted(self.allowed_hosts or ())) or "any"
            await self._reject(
                send,
                400,
                f"Host {host.strip()[:80]!r} is not this server (it answers to "
                f"{allowed}): refused to protect against DNS rebinding; "
                "start plvm serve with --allow-host NAME to add a name",
            )
            return
        reason = self.write_refusal(scope.get("method", "GET").upper(), headers)
        if reason is not None:
            await self._reject(
                send,
                403,
                f"{reason}: writes must come from this server's own page or carry the bearer token (CSRF protection)",
            )
            return
        await self.app(scope, receive, send)


class BudgetExceededError(Exception):
    """Waited too long for decoding room (HTTP 503)."""


class PixelBudget:
    """A weighted semaphore over decoded pixels (thread-safe, one per app — no global state).

    ``hold(n)`` waits until ``n`` pixels fit in ``capacity`` next to what other requests hold; a request
    larger than the whole capacity waits until it is alone. ``timeout`` seconds of waiting raise
    :class:`BudgetExceededError`.
    """

    def __init__(self, capacity: int, timeout: float = 300.0):
        self.capacity = max(1, int(capacity))
        self.timeout = timeout
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, pixels: int) -> int:
        want = max(1, min(int(pixels), self.capacity))
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + want <= self.capacity, timeout=self.timeout):
                raise BudgetExceededError("the server is busy decoding other large images; try again shortly")
            self.in_use += want
            self.peak = max(self.peak, self.in_use)
        return want

    def release(self, reserved: int) -> None:
        with self._cond:
            self.in_use -= reserved
            self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[int]:
        reserved = self.acquire(pixels)
        try:
            yield reserved
        finally:
            self.release(reserved)


__all__ = ["BudgetExceededError", "PixelBudget", "RequestGuardMiddleware", "allowed_host_names", "split_host"]
