"""Stopping work for a client that went away.

Once a request's body has been read, the next ASGI ``receive()`` message is
``http.disconnect``, sent when the client closes the connection. `while_connected` races
that against the work: when the client leaves first, the work is cancelled, which closes its
worker connection, and the worker drops or stops the job. That is right for live uploads,
which nobody retries late. Recording routes use `ClientWatch.keep_going` instead: their job goes on
without the client for a while, so that Reflector's retry can collect the result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from litestar import Request

from app.errors import ClientGone

_T = TypeVar("_T")
log = logging.getLogger("app.http")
_orphans: set[asyncio.Future[Any]] = set()  # strong references: the loop keeps only weak ones


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class ClientWatch:
    """Watches one request's client from after its body was read until `close()`.

    One ``receive()`` stays pending for the whole request, however many steps race it.
    """

    def __init__(self, request: Request) -> None:
        self._left = asyncio.ensure_future(_disconnected(request))

    def close(self) -> None:
        self._left.cancel()

    async def while_connected(self, work: Awaitable[_T]) -> _T:
        """Await `work`; raise `ClientGone` after cancelling it if the client leaves first."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task, self._left}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGone("the client closed the connection; its job was cancelled")
        finally:
            if not task.done():
                task.cancel()

    async def keep_going(
        self,
        job: asyncio.Future[_T],
        grace_seconds: float,
        on_orphaned: Callable[[asyncio.Future[_T]], None] | None = None,
    ) -> _T:
        """Await the task `job`; if the client leaves first, raise `ClientGone` but let `job`
        run on without it for at most `grace_seconds` (then it is cancelled).
        `on_orphaned(job)` is called when an orphaned job ends, to clean up what its result
        holds. With `grace_seconds` 0 this is `while_connected`: the job is cancelled at once.
        """
        if grace_seconds <= 0:
            return await self.while_connected(job)
        try:
            await asyncio.wait({job, self._left}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server cancelled the handler: the job still goes on
            _orphan(job, grace_seconds, on_orphaned)
            raise
        if job.done():
            return job.result()
        _orphan(job, grace_seconds, on_orphaned)
        raise ClientGone(f"the client closed the connection; its job goes on for up to {grace_seconds:g} s for a retry")


async def while_connected(request: Request, work: Awaitable[_T]) -> _T:
    """Await `work` (after the body was read); raise `ClientGone` if the client leaves first."""
    watch = ClientWatch(request)
    try:
        return await watch.while_connected(work)
    finally:
        watch.close()


def _orphan(job: asyncio.Future[_T], grace_seconds: float, on_orphaned: Callable[[asyncio.Future[_T]], None] | None) -> None:
    deadline = asyncio.get_running_loop().call_later(grace_seconds, job.cancel)
    _orphans.add(job)

    def finished(task: asyncio.Future[_T]) -> None:
        _orphans.discard(task)
        deadline.cancel()
        if task.cancelled():
            log.info("an orphaned job was cancelled after %g s (REFLECTOR_GPU_ORPHAN_SECONDS)", grace_seconds)
        elif task.exception() is not None:
            log.info("an orphaned job failed: %s", type(task.exception()).__name__)
        if on_orphaned is not None:
            on_orphaned(task)

    job.add_done_callback(finished)
