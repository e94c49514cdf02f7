"""The ASGI middlewares around the whole Litestar app (routing errors such as 404 included).

One class per job, outermost first as `app.http.main.create_app` stacks them:

- `AccessLog`: one structured line per request: method, path (never the query string),
  status, milliseconds, audio seconds, the API key's name (never the key), and an error's
  detail;
- `HeadAsGet`: ``HEAD`` is answered as ``GET`` without the body (HTTP/2 forbids one), so
  every GET route, ``/health`` included, answers HEAD;
- `RequestBody`: a client that disconnects before its body arrived raises `ClientGone`
  (logged as 499, not 500); an error answered before the body was read (401, 413 on
  Content-Length) first reads and drops up to `DRAIN_LIMIT_BYTES` of it, so a client still
  uploading sees the answer instead of a reset connection (HTTP/2 stream error, broken pipe).

Handlers leave facts for the access line in ``scope["state"]``: ``audio_seconds`` (float),
``key_name`` (the matching API key's name, set by `app.http.auth`), ``error`` (an error's
detail, already free of secrets and transcript text) and ``result`` (``stored`` or
``attached``: answered from the result store or by a job already running).
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import quote

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ClientGone

access_log = logging.getLogger("app.access")

DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
DRAIN_TIMEOUT_SECONDS = 10.0


class HttpMiddleware:
    """Base of every middleware here: wraps `app`; HTTP requests go to `handle`, anything
    else (lifespan, websockets) passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class StatusRecorder:
    """A `send` that passes every message on and keeps the response's `status` (500 until a
    response starts)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class AccessLog(HttpMiddleware):
    """Logs one ``app.access`` line per HTTP request when it ends, whatever happened."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.setdefault("state", {})
        started = time.perf_counter()
        recorder = StatusRecorder(send)
        try:
            await self.app(scope, receive, recorder)
        finally:
            audio = state.get("audio_seconds")
            error = state.get("error")
            result = state.get("result")  # "stored" or "attached" (app.http.routes.recording)
            access_log.info(
                "method=%s path=%s status=%d duration_ms=%.0f audio_s=%s key=%s%s%s",
                scope["method"],
                quote(scope["path"], safe="/"),  # a decoded %0a must not start a forged line
                recorder.status,
                (time.perf_counter() - started) * 1000,
                "-" if audio is None else f"{audio:.2f}",
                state.get("key_name", "-"),
                "" if result is None else f" result={result}",
                "" if error is None else f" error={error!r}",
            )


class HeadAsGet(HttpMiddleware):
    """Serves ``HEAD`` as ``GET`` and drops the response body (headers stay as GET's)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


class RequestBody(HttpMiddleware):
    """Turns an early disconnect into `ClientGone`, and drains an unread body before an error."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_done = False
        headers = dict(scope.get("headers") or [])
        has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers

        async def tracked_receive() -> Message:
            nonlocal body_done
            message = await receive()
            if message["type"] == "http.disconnect" and not body_done:
                body_done = True
                raise ClientGone("the client closed the connection before its request body arrived")
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def drain() -> None:
            received = 0
            while not body_done and received <= DRAIN_LIMIT_BYTES:
                message = await tracked_receive()
                received += len(message.get("body", b""))

        async def draining_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400 and has_body and not body_done:
                try:
                    await asyncio.wait_for(drain(), DRAIN_TIMEOUT_SECONDS)
                except (TimeoutError, ClientGone):
                    pass
            await send(message)

        await self.app(scope, tracked_receive, draining_send)
