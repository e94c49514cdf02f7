"""The Litestar application: routes, authentication, errors as JSON, one log line per request.

Granian imports `create_app` (``--factory app.main:create_app``) in each HTTP worker. The
settings are read once per process; the models live in worker processes reached through
`app.workers.client`, so restarting an HTTP worker reloads no model.
"""

from __future__ import annotations

import logging
import time

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app import settings as settings_module
from app.auth import DOCS_PATH, require_api_key
from app.errors import ServiceError
from app.logs import setup_logging
from app.routes import health, transcription, translation
from app.settings import Settings

log = logging.getLogger("app.http")
access_log = logging.getLogger("app.access")

ROUTES = [
    health.health,
    health.ready,
    transcription.transcriptions,
    transcription.transcriptions_from_url,
    translation.translate,
]
MULTIPART_OVERHEAD_BYTES = 1024 * 1024  # headers and boundaries around the file parts


def _json_error(status: int, detail: str, headers: dict[str, str] | None = None, **extra: object) -> Response:
    return Response({"detail": detail, **extra}, status_code=status, headers=headers, media_type="application/json")


def handle_service_error(request: Request, exc: ServiceError) -> Response:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return _json_error(exc.status, exc.detail, headers)


def handle_validation_error(request: Request, exc: ValidationException) -> Response:
    problems = exc.extra if isinstance(exc.extra, list) else []
    messages = [f"{p.get('key', 'body')}: {p.get('message')}" for p in problems if isinstance(p, dict)]
    detail = "invalid request: " + ("; ".join(messages) if messages else str(exc.detail))
    return _json_error(400, detail, errors=problems)


def handle_http_exception(request: Request, exc: HTTPException) -> Response:
    detail = exc.detail
    if exc.status_code == 413:
        detail = "request body too large (REFLECTOR_GPU_MAX_UPLOAD_BYTES)"
    return _json_error(exc.status_code, detail, exc.headers)


def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _json_error(500, f"internal error ({type(exc).__name__}); see the service log")


def access_log_middleware(app: ASGIApp) -> ASGIApp:
    """One structured line per request: method, path (never the query), status, ms, audio s."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            audio = scope.get("state", {}).get("audio_seconds")
            access_log.info(
                "method=%s path=%s status=%d duration_ms=%.0f audio_s=%s",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                "-" if audio is None else f"{audio:.2f}",
            )

    return middleware


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the application for `settings` (read from the environment when None)."""
    settings = settings or settings_module.load()
    setup_logging(settings.log_level)

    def provide_settings() -> Settings:
        return settings

    return Litestar(
        route_handlers=ROUTES,
        guards=[require_api_key],
        dependencies={"settings": Provide(provide_settings, use_cache=True, sync_to_thread=False)},
        middleware=[access_log_middleware],
        exception_handlers={
            ServiceError: handle_service_error,
            ValidationException: handle_validation_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        openapi_config=OpenAPIConfig(
            title="Reflector GPU host",
            version="0.1.0",
            path=DOCS_PATH,
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
        request_max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
        state=State({"settings": settings}),
        logging_config=None,
    )
