"""``GET /v1/realtime``: OpenAI's Realtime API transcription session over a WebSocket.

The OpenAI SDKs connect to ``<base_url>/realtime`` (``?intent=transcription``, a
``model`` when given: both accepted and ignored) with ``Authorization: Bearer <key>``.
Before the upgrade the handler checks the key (401 with ``WWW-Authenticate: Bearer`` and
a JSON body, unless ``realtime`` is in ``REFLECTOR_GPU_OPEN_ROUTES``) and takes a session
slot (503 with ``Retry-After`` past ``REFLECTOR_GPU_REALTIME_SESSIONS``): both are real
HTTP answers, sent with the ASGI WebSocket denial response. The session itself is
`app.http.realtime.session.RealtimeSession`.
"""

from __future__ import annotations

import logging
import time

import msgspec
from litestar import WebSocket, websocket
from litestar.di import NamedDependency

from app.http import metrics
from app.http.auth import KEY_BEFORE_UPGRADE, check_api_key
from app.errors import ServiceError, Unauthorized, Unavailable
from app.http.realtime.session import RealtimeSession
from app.http.realtime.slots import session_slot
from app.settings import Settings
from app.workers.client import WorkerPool

log = logging.getLogger("app.realtime")

DENIAL_EXTENSION = "websocket.http.response"
BUSY_RETRY_AFTER_SECONDS = 10
CLOSE_REFUSED = 1013  # RFC 6455 "try again later", when the server cannot send an HTTP denial


async def _deny(socket: WebSocket, error: ServiceError) -> None:
    """Answer the upgrade request with `error`'s status and JSON body instead of upgrading."""
    metrics.REALTIME_REFUSED.labels(status=str(error.status)).inc()
    if DENIAL_EXTENSION not in (socket.scope.get("extensions") or {}):
        await socket.close(code=CLOSE_REFUSED, reason=error.detail.encode()[:123].decode(errors="ignore"))
        return
    body = msgspec.json.encode({
        "detail": error.detail,
        "error": {"message": error.detail, "type": "invalid_request_error" if error.status < 500 else "server_error",
                  "param": None, "code": None},
    })
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    await socket.send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
    await socket.send({"type": "websocket.http.response.body", "body": body})


async def _languages(workers: WorkerPool) -> tuple[str, ...] | None:
    """The loaded Whisper model's languages (None while no replica answers)."""
    pong = await workers.any_pong("whisper")
    languages = None if pong is None else pong.info.get("languages")
    return tuple(languages) if isinstance(languages, list) else None


@websocket("/v1/realtime", name="realtime", opt={KEY_BEFORE_UPGRADE: True})
async def realtime(
    socket: WebSocket, settings: NamedDependency[Settings], workers: NamedDependency[WorkerPool]
) -> None:
    """OpenAI's Realtime API transcription session (see the README's "Realtime transcription")."""
    await socket.receive()  # websocket.connect: the handshake waits for our answer
    try:
        check_api_key(socket, socket.route_handler)
    except Unauthorized as exc:
        log.info("realtime session refused: missing or wrong API key")
        await _deny(socket, exc)
        return
    with session_slot(settings) as held:
        if not held:
            log.warning("realtime session refused: %d sessions open (REFLECTOR_GPU_REALTIME_SESSIONS)",
                        settings.realtime_sessions)
            await _deny(socket, Unavailable(
                f"{settings.realtime_sessions} realtime sessions are open, the most this host takes "
                "(REFLECTOR_GPU_REALTIME_SESSIONS); retry later", retry_after=BUSY_RETRY_AFTER_SECONDS,
            ))
            return
        languages = await _languages(workers)
        # Litestar's accept() would wait for the connect message again: it was read above.
        await socket.send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        session = RealtimeSession(socket, settings, workers, languages)
        started = time.monotonic()
        metrics.REALTIME_OPEN.inc()
        end = "error"
        try:
            end = await session.run()
        finally:
            metrics.REALTIME_OPEN.dec()
            metrics.REALTIME_SESSIONS.labels(end=end).inc()
            log.info(
                "realtime session ended", extra={"fields": {
                    "end": end, "seconds": round(time.monotonic() - started, 1),
                    "audio_s": round(session.audio_seconds, 2), "items": session.items,
                    "key": socket.scope.get("state", {}).get("key_name", "-"),
                }},
            )
