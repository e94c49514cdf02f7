"""Stopping work for a client that went away.

Once a request's body has been read, the next ASGI ``receive()`` message is
``http.disconnect``, sent when the client closes the connection. `while_connected` races
that against the work: when the client leaves first, the work is cancelled, which closes its
worker connection, and the worker drops or stops the job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from litestar import Request

from app.errors import ClientGone

_T = TypeVar("_T")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def while_connected(request: Request, work: Awaitable[_T]) -> _T:
    """Await `work` (after the body was read); raise `ClientGone` if the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone("the client closed the connection; its job was cancelled")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
