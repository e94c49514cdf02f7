"""``GET /health`` (the HTTP side is up) and ``GET /ready`` (every configured worker answers)."""

from __future__ import annotations

import asyncio
from typing import Literal

import msgspec
from litestar import Response, get

from app.settings import Settings
from app.workers import client
from app.workers.registry import WORKERS

WorkerState = Literal["ready", "loading", "failed", "not configured"]


class Health(msgspec.Struct):
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct):
    """`status`: ``ready`` when every configured worker answers a ping; ``degraded`` when one
    is down after a crash or a failed start (the supervisor is restarting it); else ``loading``."""

    status: Literal["ready", "loading", "degraded"]
    workers: dict[str, WorkerState]


@get("/health", opt={"open": True}, name="health", sync_to_thread=False)
def health() -> Health:
    """Alive: the HTTP side answers. Says nothing about the models (see /ready)."""
    return Health()


@get("/ready", opt={"open": True}, name="ready")
async def ready(settings: Settings) -> Response[Readiness]:
    """200 when every configured worker has loaded its model and answers a ping, else 503."""
    configured = [w for w in WORKERS if w.configured(settings)]
    pongs = await asyncio.gather(*(client.ping(settings, w.kind) for w in configured))
    states: dict[str, WorkerState] = {w.kind: "not configured" for w in WORKERS}
    for worker, pong in zip(configured, pongs):
        if pong is not None:
            states[worker.kind] = "ready"
        elif (settings.run_dir / f"{worker.kind}.failed").exists():
            states[worker.kind] = "failed"
        else:
            states[worker.kind] = "loading"
    is_ready = all(pong is not None for pong in pongs)
    status = "ready" if is_ready else "degraded" if "failed" in states.values() else "loading"
    body = Readiness(status=status, workers=states)
    return Response(body, status_code=200 if is_ready else 503)
