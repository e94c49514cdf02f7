"""Wire format between the HTTP side and the model workers.

A frame is a 4-byte big-endian length followed by a msgpack document (msgspec). A
connection carries exactly one request and one reply: the client sends a tagged request
struct; the worker answers `Accepted` as soon as it has queued a job, then the engine's
tagged result struct or a `Failure`. A refusal decided from the request and the file's
header (a full queue, a plain engine's queued audio) comes without `Accepted`; a scheduled
engine's audio limit is checked once the job is decoded and cut, so that refusal follows
`Accepted` (the HTTP side treats both alike: 503 with ``Retry-After``). A connection that closes before `Accepted` never reached a live worker and
may be retried; one that closes after it lost its job. A client that closes its end before
the reply cancels the job. Every message is a tagged
`msgspec.Struct`, so a decoder is built from the union of the types it accepts.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgspec

MAX_FRAME_BYTES = 256 * 1024 * 1024  # a 6-hour transcript is a few MB; this is a sanity cap
_LENGTH = struct.Struct(">I")


class Ping(msgspec.Struct, tag="ping", frozen=True):
    """Liveness and readiness probe; answered at once even while a job runs."""


class Pong(msgspec.Struct, tag="pong", frozen=True):
    """Answer to `Ping`.

    `model`: what the engine loaded (a name or path); `device`: ``cpu`` or ``cuda``;
    `busy`: jobs running or queued; `info`: engine-specific facts (e.g. languages).
    `replica`: this worker's index among the replicas of its kind (0-based);
    `queued_seconds`: seconds of audio accepted and not yet processed; `rtf`: measured
    real-time factor of recent work (processing seconds per audio second; None before the
    first job); `jobs_done`: jobs finished since start (any outcome); `load_seconds`: how
    long loading the model took; `stalled_seconds`: how long the engine has held work
    without showing progress (0 when idle), which the supervisor's watchdog reads.
    `status`: ``ready``, or one line on what the engine is doing about its model meanwhile
    (``downloading 41% of 1.6 GB (serving tiny.en+base meanwhile)``, a fallback and why).
    """

    kind: str
    model: str
    device: str
    busy: int = 0
    info: dict[str, Any] = {}
    replica: int = 0
    queued_seconds: float = 0.0
    rtf: float | None = None
    jobs_done: int = 0
    load_seconds: float | None = None
    stalled_seconds: float = 0.0
    status: str = "ready"


class Accepted(msgspec.Struct, tag="accepted", frozen=True):
    """The worker queued the job; the result follows on the same connection."""


class Failure(msgspec.Struct, tag="failure", frozen=True):
    """A job failed. `kind` is the name of an `app.errors.ServiceError` subclass."""

    kind: str
    detail: str
    retry_after: int | None = None


class FrameTooLarge(ValueError):
    """A frame's length prefix is over `MAX_FRAME_BYTES` (a corrupt stream or a runaway reply)."""


_encoder = msgspec.msgpack.Encoder()


def encode_frame(message: msgspec.Struct) -> bytes:
    """Serialise `message` into one length-prefixed frame."""
    body = _encoder.encode(message)
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """Read one frame's body; None when the peer closed the connection first.

    Raises `FrameTooLarge` (a `ValueError`) for a frame over `MAX_FRAME_BYTES`.
    """
    try:
        header = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame of {length} bytes is over the {MAX_FRAME_BYTES}-byte limit")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None


def recv_frame(sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Read one frame's body from a blocking socket (for callers without an event loop,
    such as the supervisor's watchdog). Raises `EOFError` when the peer closes first,
    `FrameTooLarge` for a frame over `max_bytes`, `OSError` (e.g. a time-out) from the socket."""

    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    (length,) = _LENGTH.unpack(exactly(_LENGTH.size))
    if length > max_bytes:
        raise FrameTooLarge(f"frame of {length} bytes is over the {max_bytes}-byte limit")
    return exactly(length)
