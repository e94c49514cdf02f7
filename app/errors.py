"""Every failure the service can answer with, and the HTTP status each one maps to.

One exception type per kind of failure, all of them in this module. Workers raise these
too: the worker server sends a `Failure(kind=<class name>, detail=...)` message and the HTTP
side re-raises the same class through the explicit `FAILURE_KINDS` table (`from_failure`),
so the status code is decided here and only here.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error answered as ``{"detail": ...}`` with `status`.

    `detail` says what went wrong and what to do; it never carries transcript text or a
    URL's query string. `retry_after` (seconds) becomes a ``Retry-After`` header.
    """

    status: ClassVar[int] = 500

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(ServiceError):
    """The request is malformed or asks for something this host cannot do (400)."""

    status = 400


class InvalidAudio(BadRequest):
    """The bytes are not decodable audio, or hold no audio stream (400)."""


class ClientGone(ServiceError):
    """The client disconnected before the answer; logged as 499 (nginx's code), never sent."""

    status = 499


class Unauthorized(ServiceError):
    """Missing or wrong API key (401, with ``WWW-Authenticate: Bearer``)."""

    status = 401


class SourceNotFound(ServiceError):
    """The audio URL answered 404 (404)."""

    status = 404


class PayloadTooLarge(ServiceError):
    """An upload, download, text or audio duration is over its configured limit (413)."""

    status = 413


class UpstreamError(ServiceError):
    """A remote URL failed: refused, DNS, TLS, an HTTP error, a redirect loop (502)."""

    status = 502


class Unavailable(ServiceError):
    """A worker is busy, restarting, died while holding the request, or not configured (503)."""

    status = 503


class UpstreamTimeout(ServiceError):
    """A remote URL did not answer in time (504)."""

    status = 504


class WorkerFailed(ServiceError):
    """A worker raised something unexpected; the detail is the exception's type only (500)."""

    status = 500


class WorkerReplyInvalid(ServiceError):
    """A worker answered with a frame the HTTP side cannot read: over
    `app.workers.protocol.MAX_FRAME_BYTES`, not msgpack, or not a type the request expects
    (a worker of another version, say) (502)."""

    status = 502


class ModelNotFound(ServiceError):
    """Configured weights are missing; the detail names the setting and how to fix it (503)."""

    status = 503


# What a worker's ``Failure.kind`` may name (the worker sends the class name), written out so
# that the HTTP side never depends on which modules happen to be imported. A test checks that every `ServiceError` subclass
# in the code base is defined here and listed here.
FAILURE_KINDS: dict[str, type[ServiceError]] = {
    cls.__name__: cls
    for cls in (
        ServiceError,
        BadRequest,
        InvalidAudio,
        ClientGone,
        Unauthorized,
        SourceNotFound,
        PayloadTooLarge,
        UpstreamError,
        Unavailable,
        UpstreamTimeout,
        WorkerFailed,
        WorkerReplyInvalid,
        ModelNotFound,
    )
}


def from_failure(kind: str, detail: str, retry_after: int | None = None) -> ServiceError:
    """Rebuild the exception a worker reported as ``Failure(kind, detail)`` (`FAILURE_KINDS`).

    An unknown `kind` (a newer worker, say) becomes `WorkerFailed`.
    """
    return FAILURE_KINDS.get(kind, WorkerFailed)(detail, retry_after=retry_after)
