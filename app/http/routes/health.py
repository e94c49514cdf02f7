"""``GET /health`` (the HTTP side is up) and ``GET /ready`` (every configured worker answers)."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.di import NamedDependency

from app.schemas.health import Health, Readiness, ReplicaState, ReplicaStatus, WorkerState
from app.settings import Settings
from app.supervision.rundir import failed_marker
from app.workers.client import WorkerPool
from app.workers.protocol import Pong
from app.workers.registry import WORKERS


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
async def ready(settings: NamedDependency[Settings], workers: NamedDependency[WorkerPool]) -> Response[Readiness]:
    """200 when every replica of every configured worker has loaded its model and answers a
    ping, else 503."""
    targets = [(w.kind, i) for w in WORKERS if w.configured(settings) for i in range(w.replicas(settings))]
    pongs = await asyncio.gather(*(workers.ping(kind, i) for kind, i in targets))
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
