"""`RequestIdMiddleware`: one id per HTTP request, on every log line and in the response.

An incoming ``X-Request-ID`` (a proxy's or Reflector's) is kept when it looks like an id
(1-128 characters of letters, digits and ``._:-``, so it cannot forge log lines); otherwise
a new one is made (32 hex digits). The id is echoed in the response's ``X-Request-ID``
header and set in `app.logs.request_id` while the request is handled.
"""

from __future__ import annotations

import re
import uuid

from litestar.types import Message, Receive, Scope, Send

from app.logs import request_id
from app.http.middleware import HttpMiddleware

HEADER = b"x-request-id"
_VALID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def incoming_or_new(scope: Scope) -> str:
    """The request's valid ``X-Request-ID`` header, else a new random id."""
    for name, value in scope.get("headers") or ():
        if name == HEADER and _VALID.fullmatch(value.strip()):
            return value.strip().decode("ascii")
    return uuid.uuid4().hex


class RequestIdMiddleware(HttpMiddleware):
    """ASGI middleware (HTTP only) giving each request its id; see the module docstring."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = incoming_or_new(scope)
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers") or () if k.lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, rid.encode("ascii"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
