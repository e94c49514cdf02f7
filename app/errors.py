"""Every failure the service can answer with, and the HTTP status each one maps to.

One exception type per kind of failure, all of them in this module, in three families (as
httpx groups its errors): `ClientFailure` (the request's fault, 4xx), `UpstreamFailure` (a
remote URL's, 502/504/404) and `WorkerFailure` (this host's, 5xx). Workers raise these
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


class ClientFailure(ServiceError):
    """The family of failures the request itself caused: fix the request, then send it again (4xx)."""

    status = 400


class UpstreamFailure(ServiceError):
    """The family of failures of a remote URL the request named (an audio download, a
    presigned upload) (5xx, or 404 for a missing source)."""

    status = 502


class WorkerFailure(ServiceError):
    """The family of failures on this host's side: a worker busy, restarting, failed or
    unconfigured; retrying later may succeed (5xx)."""

    status = 503


class BadRequest(ClientFailure):
    """The request is malformed or asks for something this host cannot do (400)."""

    status = 400


class InvalidAudio(BadRequest):
    """The bytes are not decodable audio, or hold no audio stream (400)."""


class ClientGone(ClientFailure):
    """The client disconnected before the answer; logged as 499 (nginx's code), never sent."""

    status = 499


class Unauthorized(ClientFailure):
    """Missing or wrong API key (401, with ``WWW-Authenticate: Bearer``)."""

    status = 401


class SourceNotFound(UpstreamFailure):
    """The audio URL answered 404 (404)."""

    status = 404


class PayloadTooLarge(ClientFailure):
    """An upload, download, text or audio duration is over its configured limit (413)."""

    status = 413


class UpstreamError(UpstreamFailure):
    """A remote URL failed: refused, DNS, TLS, an HTTP error, a redirect loop (502)."""

    status = 502


class Unavailable(WorkerFailure):
    """A worker is busy, restarting, died while holding the request, or not configured (503)."""

    status = 503


class Cancelled(Unavailable):
    """The client went away, so its job was stopped (503, which nobody reads). Raised by an
    engine that sees its cancel event set, and by the worker server for a job whose
    client left before or while it ran."""

    def __init__(self, detail: str = "cancelled: the client went away", *, retry_after: int | None = None) -> None:
        super().__init__(detail, retry_after=retry_after)


class UpstreamTimeout(UpstreamFailure):
    """A remote URL did not answer in time (504)."""

    status = 504


class WorkerFailed(WorkerFailure):
    """A worker raised something unexpected; the detail is the exception's type only (500)."""

    status = 500


class WorkerReplyInvalid(WorkerFailure):
    """A worker answered with a frame the HTTP side cannot read: over
    `app.workers.protocol.MAX_FRAME_BYTES`, not msgpack, or not a type the request expects
    (a worker of another version, say) (502)."""

    status = 502


class ModelNotFound(WorkerFailure):
    """Configured weights are missing; the detail names the setting and how to fix it (503)."""

    status = 503


# What a worker's ``Failure.kind`` may name (the worker sends the class name), written out so
# that the HTTP side never depends on which modules happen to be imported. A test checks that every `ServiceError` subclass
# in the code base is defined here and listed here.
FAILURE_KINDS: dict[str, type[ServiceError]] = {
    cls.__name__: cls
    for cls in (
        ServiceError,
        ClientFailure,
        UpstreamFailure,
        WorkerFailure,
        BadRequest,
        InvalidAudio,
        ClientGone,
        Unauthorized,
        SourceNotFound,
        PayloadTooLarge,
        UpstreamError,
        Unavailable,
        Cancelled,
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
