"""The HTTP application: routes, authentication, errors as JSON, one log line per request.

Granian imports `create_app` (``--factory app.main:create_app``) in each HTTP worker. The
settings are read once per process; the models live in worker processes reached through
`app.workers.client`, so restarting an HTTP worker reloads no model.
"""

from __future__ import annotations

import asyncio
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
from app.routes import JSON_BODY_LIMIT_BYTES, audio, diarization, health, models, transcription, translation
from app.settings import Settings

log = logging.getLogger("app.http")
access_log = logging.getLogger("app.access")

ROUTES = [
    health.health,
    health.ready,
    transcription.transcriptions,
    transcription.transcriptions_from_url,
    transcription.translations,
    models.models,
    diarization.diarize,
    translation.translate,
    audio.pad,
    audio.mixdown,
    audio.mixdown_v1,
]
MULTIPART_OVERHEAD_BYTES = 1024 * 1024  # headers and boundaries around the file parts


def _json_error(status: int, detail: str, headers: dict[str, str] | None = None, **extra: object) -> Response:
    return Response({"detail": detail, **extra}, status_code=status, headers=headers, media_type="application/json")


def _note_error(request: Request, detail: str) -> None:
    """Keep the error's detail for the access log line (details never hold secrets or text)."""
    request.scope.setdefault("state", {})["error"] = detail[:300]


def _openai_error(request: Request, status: int, detail: str) -> dict[str, object]:
    """Under ``/v1/``, OpenAI's ``error`` object beside ``detail``, so the OpenAI SDKs show the reason."""
    if not request.url.path.startswith("/v1/"):
        return {}
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": detail, "type": kind, "param": None, "code": None}}


def handle_service_error(request: Request, exc: ServiceError) -> Response:
    _note_error(request, exc.detail)
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return _json_error(exc.status, exc.detail, headers, **_openai_error(request, exc.status, exc.detail))


def handle_validation_error(request: Request, exc: ValidationException) -> Response:
    problems = exc.extra if isinstance(exc.extra, list) else []
    messages = []
    for problem in problems:
        if not isinstance(problem, dict):
            continue
        key, message = problem.get("key", "body"), str(problem.get("message"))
        if message == repr(key):  # Litestar's way of saying the body was empty
            message = "a JSON object is required"
        messages.append(f"{'body' if key == 'data' else key}: {message}")
    detail = "invalid request: " + ("; ".join(messages) if messages else str(exc.detail))
    _note_error(request, detail)
    return _json_error(400, detail, errors=problems)


def handle_http_exception(request: Request, exc: HTTPException) -> Response:
    detail, status = exc.detail, exc.status_code
    if status == 413:
        if request.content_type[0] == "multipart/form-data":
            detail = "request body too large (REFLECTOR_GPU_MAX_UPLOAD_BYTES)"
        else:
            detail = f"request body too large: JSON bodies are limited to {JSON_BODY_LIMIT_BYTES} bytes"
    elif detail == "Request Entity Too Large":  # Litestar's multipart part limit, sent as 400
        status, detail = 413, "too many multipart fields"
    _note_error(request, detail)
    return _json_error(status, detail, exc.headers)


def handle_unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RecursionError):
        return _json_error(400, "invalid request: the JSON body is nested too deeply")
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    _note_error(request, f"internal error ({type(exc).__name__})")
    return _json_error(500, f"internal error ({type(exc).__name__}); see the service log")


DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
DRAIN_TIMEOUT_SECONDS = 10.0


def outer_asgi(app: ASGIApp) -> ASGIApp:
    """What wraps the whole Litestar app, routing errors (404, 405) included:

    - one structured access line per request: method, path (never the query), status,
      milliseconds, audio seconds, and an error's detail;
    - an error answered before the request body was read (401, 413 on Content-Length)
      first reads and drops up to `DRAIN_LIMIT_BYTES` of it, so a client still uploading
      sees the answer instead of a reset connection (HTTP/2 stream error, broken pipe);
    - HEAD responses lose their body (HTTP/2 forbids one).
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        started = time.perf_counter()
        status = 500
        is_head = scope["method"] == "HEAD"
        body_done = False

        async def tracked_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        headers = dict(scope.get("headers") or [])
        has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers

        async def drain() -> None:
            received = 0
            while not body_done and received <= DRAIN_LIMIT_BYTES:
                message = await tracked_receive()
                received += len(message.get("body", b""))

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 400 and has_body and not body_done:
                    try:
                        await asyncio.wait_for(drain(), DRAIN_TIMEOUT_SECONDS)
                    except TimeoutError:
                        pass
            elif is_head and message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        try:
            await app(scope, tracked_receive, tracked_send)
        finally:
            audio = state.get("audio_seconds")
            error = state.get("error")
            access_log.info(
                "method=%s path=%s status=%d duration_ms=%.0f audio_s=%s%s",
                scope["method"],
                scope["path"],
                status,
                (time.perf_counter() - started) * 1000,
                "-" if audio is None else f"{audio:.2f}",
                "" if error is None else f" error={error!r}",
            )

    return wrapped


def create_app(settings: Settings | None = None) -> ASGIApp:
    """The ASGI application Granian serves: `build_app` wrapped in `outer_asgi`."""
    return outer_asgi(build_app(settings))


def build_app(settings: Settings | None = None) -> Litestar:
    """The Litestar application for `settings` (read from the environment when None)."""
    settings = settings or settings_module.load()
    setup_logging(settings.log_level)

    def provide_settings() -> Settings:
        return settings

    return Litestar(
        route_handlers=ROUTES,
        guards=[require_api_key],
        dependencies={"settings": Provide(provide_settings, use_cache=True, sync_to_thread=False)},
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
            use_handler_docstrings=True,
            render_plugins=[SwaggerRenderPlugin(path="/")],
        ),
        request_max_body_size=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
        state=State({"settings": settings}),
        logging_config=None,
    )
