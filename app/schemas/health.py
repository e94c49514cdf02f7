"""The public answers of ``GET /health`` and ``GET /ready``."""

from __future__ import annotations

from typing import Literal

import msgspec

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
