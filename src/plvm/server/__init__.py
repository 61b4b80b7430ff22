"""The HTTP API and web page of plvm (FastAPI).

>>> from plvm.server import create_app, ServerLimits
>>> app = create_app(plvm, store, token=None, limits=ServerLimits())

``plvm serve`` runs it with uvicorn (:func:`plvm.server.run.serve`). Needs the ``serve`` extra
(fastapi, uvicorn, python-multipart).
"""

from .app import create_app
from .limits import ServerLimits
from .security import BindError, check_bind, is_loopback_host

__all__ = ["BindError", "ServerLimits", "check_bind", "create_app", "is_loopback_host"]
