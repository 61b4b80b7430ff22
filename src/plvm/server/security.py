"""Bearer-token auth and the "no public bind without a token" rule."""

from __future__ import annotations

import hmac
import ipaddress
from typing import Optional

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="required when the server was started with a token")


class BindError(ValueError):
    """Refusing to listen on a non-loopback address without a token."""


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); anything else is public."""
    host = host.strip().strip("[]")
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_bind(host: str, token: str | None) -> None:
    """Raise :class:`BindError` when ``host`` is not loopback and no token is set."""
    if not is_loopback_host(host) and not token:
        raise BindError(
            f"refusing to listen on {host} without a token: anyone who can reach it could use the model and "
            "the concept store. Pass --token TOKEN (or set $PLVM_TOKEN), or bind to 127.0.0.1"
        )


class TokenAuth:
    """A FastAPI dependency: ``Authorization: Bearer <token>`` must match (constant-time compare)."""

    def __init__(self, token: str | None):
        self.token = token

    def __call__(self, credentials: Optional[HTTPAuthorizationCredentials] = Depends(_bearer)) -> None:
        if not self.token:
            return
        given = credentials.credentials.strip() if credentials is not None else ""
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )
