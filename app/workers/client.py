"""The HTTP side's client for the model workers.

`call()` picks a replica of the worker kind (the one with the least queued audio, asked
with a `Ping`; replica ``i`` listens on ``<state>/run/<kind>-<i>.sock``), opens one
connection for the request, sends it, and waits for the reply. While a worker is
(re)starting its socket is missing or refuses connections: the client keeps trying for
`Settings.worker_start_timeout` seconds (30 by default, well inside the live client's 90).
A worker that dies while holding the request closes the connection without a reply, which
becomes `Unavailable` (503). If the calling task is cancelled (the HTTP client went away),
the connection is closed and the worker cancels the job.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, TypeVar, Union

import msgspec

from app.errors import Unavailable, WorkerReplyInvalid, from_failure
from app.settings import Settings
from app.workers.protocol import Accepted, Failure, FrameTooLarge, Ping, Pong, encode_frame, read_frame
from app.supervision.rundir import socket_path
from app.workers.registry import spec

_R = TypeVar("_R", bound=msgspec.Struct)
_turns = itertools.count()


async def _connect(path: str, deadline: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    delay = 0.05
    while True:
        try:
            return await asyncio.open_unix_connection(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def pick_replica(settings: Settings, kind: str) -> int:
    """The replica of `kind` with the least queued audio (then the fewest jobs, then the
    next in turn) among those answering a ping; the next in turn when none answers."""
    count = spec(kind).replicas(settings)
    if count == 1:
        return 0
    pongs = await asyncio.gather(*(ping(settings, kind, replica, timeout=1.0) for replica in range(count)))
    turn = next(_turns)  # ties (say, an idle host) go round the replicas
    answering = [(p.queued_seconds, p.busy, (i - turn) % count, i) for i, p in enumerate(pongs) if p is not None]
    return min(answering)[3] if answering else turn % count


async def call(settings: Settings, kind: str, request: msgspec.Struct, result_type: type[_R]) -> _R:
    """Send `request` to a replica of the `kind` worker (`pick_replica`) and return its
    `result_type` reply.

    Raises the `app.errors.ServiceError` the worker reported, or `Unavailable` when the
    worker is not configured, does not come up in time, or dies during the job.
    """
    worker = spec(kind)
    if not worker.configured(settings):
        raise Unavailable(worker.not_configured_detail or f"{kind} is not configured on this host")
    path = str(socket_path(settings, kind, await pick_replica(settings, kind)))
    deadline = time.monotonic() + settings.worker_start_timeout
    decoder = msgspec.msgpack.Decoder(Union[Accepted, result_type, Failure])
    while True:
        try:
            reader, writer = await _connect(path, deadline)
        except OSError:
            raise Unavailable(
                f"the {kind} worker is not running (still loading its model, or failing to start: "
                "see the service log); retry later",
                retry_after=10,
            ) from None
        accepted = False
        reply: Any = None
        try:
            writer.write(encode_frame(request))
            await writer.drain()
            first = await read_frame(reader)
            if first is not None:
                reply = decoder.decode(first)
                if isinstance(reply, Accepted):
                    accepted = True
                    body = await read_frame(reader)
                    reply = None if body is None else decoder.decode(body)
        except (ConnectionError, BrokenPipeError):
            reply = None
        except (FrameTooLarge, msgspec.DecodeError) as exc:
            raise WorkerReplyInvalid(f"the {kind} worker sent a reply this server cannot read ({exc}); retry") from None
        finally:
            writer.close()
        if reply is not None:
            break
        if accepted:
            raise Unavailable(f"the {kind} worker stopped while handling this request; retry", retry_after=5)
        # A dying worker's socket took the request without queueing it: safe to try again.
        if time.monotonic() >= deadline:
            raise Unavailable(f"the {kind} worker is not answering; retry later", retry_after=10)
        await asyncio.sleep(0.1)
    if isinstance(reply, Failure):
        raise from_failure(reply.kind, reply.detail, reply.retry_after)
    return reply


async def ping(settings: Settings, kind: str, replica: int = 0, timeout: float = 2.0) -> Pong | None:
    """Replica `replica`'s `Pong`, or None when it is not listening or does not answer in `timeout` s."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(socket_path(settings, kind, replica)))
            try:
                writer.write(encode_frame(Ping()))
                await writer.drain()
                body = await read_frame(reader)
            finally:
                writer.close()
    except (OSError, TimeoutError, FrameTooLarge):
        return None
    if body is None:
        return None
    try:
        return msgspec.msgpack.decode(body, type=Pong)
    except msgspec.DecodeError:
        return None


async def any_pong(settings: Settings, kind: str) -> Pong | None:
    """The `Pong` of the first replica of `kind` (in replica order) that answers, all pinged
    at once; None when none does. Replicas load the same model, so any one describes it."""
    pongs = await asyncio.gather(*(ping(settings, kind, i) for i in range(spec(kind).replicas(settings))))
    return next((pong for pong in pongs if pong is not None), None)


class WorkerPool:
    """The HTTP side's handle on the model workers for one `Settings`: what route handlers
    get injected as ``workers`` (one per Granian worker process, made by the app factory).

    `call`, `ping` and `any_pong` are this module's functions bound to the settings; tests
    may inject a pool of their own.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def call(self, kind: str, request: msgspec.Struct, result_type: type[_R]) -> _R:
        """`call` a replica of the `kind` worker (see the module function)."""
        return await call(self.settings, kind, request, result_type)

    async def ping(self, kind: str, replica: int = 0, timeout: float = 2.0) -> Pong | None:
        """Replica `replica`'s `Pong`, or None (see `ping`)."""
        return await ping(self.settings, kind, replica, timeout)

    async def any_pong(self, kind: str) -> Pong | None:
        """The first answering replica's `Pong` (see `any_pong`)."""
        return await any_pong(self.settings, kind)
