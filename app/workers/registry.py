"""The engines this service runs, one or more worker processes (replicas) each.

A `WorkerSpec` names the engine class by import path (so importing this module loads no
model library), says whether the current settings configure it and how many replicas they
ask for. A worker that is not configured is not started; its routes answer 503 with
`not_configured_detail`. Replica ``i`` of kind ``k`` listens on ``<run>/k-i.sock``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from app.supervision.rundir import socket_path
from app import models

# Recording-only work (diarization, pad and mixdown, the Whisper worker's recording lanes
# on the CPU) runs at this nice value, so on a shared CPU live meetings (Whisper's live
# lane, translation) take the cores first: CFS gives a nice-0 thread about 9x the share of
# a nice-10 one.
RECORDING_NICE = 10


@dataclass(frozen=True)
class WorkerSpec:
    """One engine: `kind` (socket name and /ready key), `engine` ("module:Class"), and the
    `nice` increment its processes run at: recording-only work (diarization, pad and
    mixdown) yields the CPU to Whisper and translation, which serve live meetings."""

    kind: str
    engine: str
    configured: Callable[[Settings], bool] = lambda settings: True
    not_configured_detail: str = ""
    replicas: Callable[[Settings], int] = lambda settings: 1
    nice: int = 0


WORKERS: tuple[WorkerSpec, ...] = (
    WorkerSpec("whisper", "app.workers.whisper:WhisperEngine", replicas=lambda s: s.whisper_replicas),
    WorkerSpec("diarizer", "app.workers.diarizer:DiarizerEngine", replicas=lambda s: s.diarization_replicas, nice=RECORDING_NICE),
    WorkerSpec(
        "translator",
        "app.workers.translator:TranslatorEngine",
        configured=models.translation_is_configured,
        not_configured_detail=models.TRANSLATION_NOT_CONFIGURED,
    ),
    WorkerSpec("audio", "app.workers.audio:AudioEngine", nice=RECORDING_NICE),
)


def spec(kind: str) -> WorkerSpec:
    """The spec named `kind`; raises KeyError for an unknown kind."""
    for worker in WORKERS:
        if worker.kind == kind:
            return worker
    raise KeyError(kind)


def replica_sockets(settings: Settings, kind: str) -> list[Path]:
    """The sockets of every replica the settings ask for, replica 0 first."""
    return [socket_path(settings, kind, i) for i in range(spec(kind).replicas(settings))]
