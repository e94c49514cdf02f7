"""``GET /health`` (the HTTP side is up) and ``GET /ready`` (every configured worker answers)."""

from __future__ import annotations

import asyncio
from typing import Literal

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency

from app.settings import Settings
from app.workers import client
from app.workers.protocol import Pong
from app.supervision.rundir import failed_marker
from app.workers.registry import WORKERS

ReplicaStatus = Literal["ready", "loading", "failed"]
# A kind's state in /ready's `workers`: a `ReplicaStatus`, "not configured", or the line a
# ready worker gives about its model (`Pong.status`): "downloading 41% of 1.6 GB (...)".
WorkerState = str


class Health(msgspec.Struct):
    status: Literal["ok"] = "ok"


class ReplicaState(msgspec.Struct):
    """One worker process: its `state`, the seconds of audio it has queued, its measured
    real-time factor (processing s per audio s; None before its first job), its jobs
    running or queued, how long its model took to load (s), the `model` it serves, and its
    `status` line about that model (``ready``, a download's progress, a fallback and why)."""

    replica: int
    state: ReplicaStatus
    queued_seconds: float = 0.0
    rtf: float | None = None
    busy: int = 0
    load_seconds: float | None = None
    model: str | None = None
    status: str | None = None


class Readiness(msgspec.Struct):
    """`status`: ``ready`` when every replica of every configured worker answers a ping;
    ``degraded`` when one is down after a crash or a failed start (the supervisor is
    restarting it); else ``loading``. `workers`: one state per kind (``ready`` only when all
    its replicas are; a ready kind whose model is still being fetched, or that serves a
    fallback, shows that line instead, e.g. ``downloading 41% of 1.6 GB (large-v3-turbo;
    serving tiny.en+base meanwhile)``); `replicas`: the per-replica detail."""

    status: Literal["ready", "loading", "degraded"]
    workers: dict[str, WorkerState]
    replicas: dict[str, list[ReplicaState]] = {}


def _replica_state(settings: Settings, kind: str, replica: int, pong: Pong | None) -> ReplicaState:
    if pong is not None:
        return ReplicaState(
            replica, "ready", pong.queued_seconds, pong.rtf, pong.busy, pong.load_seconds, pong.model, pong.status
        )
    state: ReplicaStatus = "failed" if failed_marker(settings, kind, replica).exists() else "loading"
    return ReplicaState(replica, state)


@get("/health", opt={"open": True}, name="health", sync_to_thread=False)
def health() -> Health:
    """Alive: the HTTP side answers. Says nothing about the models (see /ready)."""
    return Health()


@get("/ready", opt={"open": True}, name="ready")
async def ready(settings: NamedDependency[Settings]) -> Response[Readiness]:
    """200 when every replica of every configured worker has loaded its model and answers a
    ping, else 503."""
    targets = [(w.kind, i) for w in WORKERS if w.configured(settings) for i in range(w.replicas(settings))]
    pongs = await asyncio.gather(*(client.ping(settings, kind, i) for kind, i in targets))
    replicas: dict[str, list[ReplicaState]] = {}
    for (kind, i), pong in zip(targets, pongs):
        replicas.setdefault(kind, []).append(_replica_state(settings, kind, i, pong))
    states: dict[str, WorkerState] = {w.kind: "not configured" for w in WORKERS}
    for kind, found in replicas.items():
        kinds = {r.state for r in found}
        states[kind] = "ready" if kinds == {"ready"} else "failed" if "failed" in kinds else "loading"
        notes = [r.status for r in found if r.status not in (None, "ready")]
        if states[kind] == "ready" and notes:
            states[kind] = notes[0]  # what the model is doing: downloading, a fallback and why
    is_ready = all(pong is not None for pong in pongs)
    status = "ready" if is_ready else "degraded" if "failed" in states.values() else "loading"
    body = Readiness(status=status, workers=states, replicas=replicas)
    return Response(body, status_code=200 if is_ready else 503)
