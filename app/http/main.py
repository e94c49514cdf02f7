"""The HTTP application: routes, authentication, errors as JSON, one log line per request.

Granian imports `create_app` (``--factory app.http.main:create_app``) in each HTTP worker. The
settings are read once per process; the models live in worker processes reached through
`app.workers.client`, so restarting an HTTP worker reloads no model.
"""

from __future__ import annotations

import logging

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import ASGIApp
from multipart import ParserLimitReached

from app import settings as settings_module
from app.http import metrics
from app.http.auth import DOCS_PATH, require_api_key
from app.errors import ServiceError
from app.logs import setup_logging
from app.http.middleware import AccessLog, HeadAsGet, RequestBody
from app.http.request_id import RequestIdMiddleware
from app.http.routes import (
    JSON_BODY_LIMIT_BYTES,
    audio,
    diarization,
    health,
    models,
    realtime,
    transcription,
    translation,
)
from app.http.routes.known_speakers import KNOWN_SPEAKERS_BODY_LIMIT_BYTES
from app.settings import Settings
from app.workers.client import WorkerPool

log = logging.getLogger("app.http")

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
    realtime.realtime,
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


def _has_no_body(request: Request) -> bool:
    headers = request.headers
    return headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers


def handle_validation_error(request: Request, exc: ValidationException) -> Response:
    problems = exc.extra if isinstance(exc.extra, list) else []
    messages = []
    for problem in problems:
        if not isinstance(problem, dict):
            continue
        key, message = problem.get("key", "body"), str(problem.get("message"))
        if problem.get("source") == "body" and _has_no_body(request):
            message = "a JSON object is required"
        messages.append(f"{'body' if key == 'data' else key}: {message}")
    detail = "invalid request: " + ("; ".join(messages) if messages else str(exc.detail))
    _note_error(request, detail)
    return _json_error(400, detail, errors=problems, **_openai_error(request, 400, detail))


def handle_http_exception(request: Request, exc: HTTPException) -> Response:
    detail, status = exc.detail, exc.status_code
    if status == 413:
        if request.content_type[0] == "multipart/form-data":
            detail = "request body too large (REFLECTOR_GPU_MAX_UPLOAD_BYTES)"
        else:
            detail = (f"request body too large: JSON bodies are limited to {JSON_BODY_LIMIT_BYTES} bytes "
                      f"({KNOWN_SPEAKERS_BODY_LIMIT_BYTES} where they may carry known_speaker_references)")
    elif isinstance(exc.__context__, ParserLimitReached):  # Litestar sends the part limit as 400
        status, detail = 413, "too many multipart fields"
    _note_error(request, detail)
    return _json_error(status, detail, exc.headers, **_openai_error(request, status, detail))


def handle_unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, RecursionError):
        return _json_error(400, "invalid request: the JSON body is nested too deeply")
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    _note_error(request, f"internal error ({type(exc).__name__})")
    return _json_error(500, f"internal error ({type(exc).__name__}); see the service log")


def create_app(settings: Settings | None = None) -> ASGIApp:
    """The ASGI application Granian serves: `build_app` inside the middlewares, outermost
    first: request id (`app.http.request_id`, so the access line carries it), access log, HEAD as
    GET (`app.http.middleware`), metrics (`app.http.metrics`, inside HEAD as GET so that it sees the
    route Litestar matched), request body."""
    return RequestIdMiddleware(AccessLog(HeadAsGet(metrics.MetricsMiddleware(RequestBody(build_app(settings))))))


def _provide_settings(state: State) -> Settings:
    """The ``settings`` dependency: the one `Settings` object, kept in the app's state (where
    the API-key guard reads it too)."""
    return state.settings


def _provide_workers(state: State) -> WorkerPool:
    """The ``workers`` dependency: the app's `WorkerPool` (how handlers reach the model workers)."""
    return state.workers


def build_app(settings: Settings | None = None) -> Litestar:
    """The Litestar application for `settings` (read from the environment when None)."""
    settings = settings or settings_module.load()
    setup_logging(settings.log_level, settings.log_format)
    handlers = [*ROUTES, *metrics.routes(settings)]
    unknown = settings.open_routes - {handler.name for handler in handlers}
    if unknown:
        log.warning(
            "REFLECTOR_GPU_OPEN_ROUTES names no route: %s (those routes still need the key); route names: %s",
            ", ".join(sorted(unknown)), ", ".join(sorted(handler.name for handler in handlers if handler.name)),
        )
    return Litestar(
        route_handlers=handlers,
        guards=[require_api_key],
        dependencies={
            "settings": Provide(_provide_settings, use_cache=True, sync_to_thread=False),
            "workers": Provide(_provide_workers, use_cache=True, sync_to_thread=False),
        },
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
        state=State({"settings": settings, "workers": WorkerPool(settings)}),
        logging_config=None,
    )
