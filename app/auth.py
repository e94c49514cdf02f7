"""API-key authentication: ``Authorization: Bearer <REFLECTOR_GPU_APIKEY>``.

A Litestar guard applied to every route. Open without the key: the API docs and OpenAPI
schema (existing health checks poll ``/docs``), ``/health``, ``/ready`` (handlers marked
``opt={"open": True}``), and any route whose name is listed in `REFLECTOR_GPU_OPEN_ROUTES`.
With no key configured every route is open (the entrypoint logs that loudly).
"""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app.errors import Unauthorized
from app.settings import Settings

DOCS_PATH = "/docs"


def presented_key(authorization: str | None) -> str | None:
    """The token of a ``Bearer`` Authorization header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_api_key(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard: raises `Unauthorized` unless the route is open or the key matches (constant time)."""
    settings: Settings = connection.app.state.settings
    if not settings.apikey:
        return
    if handler.opt.get("open") or connection.scope["path"].startswith(DOCS_PATH):
        return
    if handler.name and handler.name in settings.open_routes:
        return
    token = presented_key(connection.headers.get("authorization"))
    if token is None or not hmac.compare_digest(token.encode(), settings.apikey.encode()):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <REFLECTOR_GPU_APIKEY>'")
