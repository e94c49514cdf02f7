"""The engines this service runs, one worker process each.

A `WorkerSpec` names the engine class by import path (so importing this module loads no
model library) and says whether the current settings configure it. A worker that is not
configured is not started; its routes answer 503 with `not_configured_detail`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.settings import Settings
from app.workers import translator


@dataclass(frozen=True)
class WorkerSpec:
    """One engine: `kind` (socket name and /ready key), `engine` ("module:Class")."""

    kind: str
    engine: str
    configured: Callable[[Settings], bool] = lambda settings: True
    not_configured_detail: str = ""


WORKERS: tuple[WorkerSpec, ...] = (
    WorkerSpec("whisper", "app.workers.whisper:WhisperEngine"),
    WorkerSpec("diarizer", "app.workers.diarizer:DiarizerEngine"),
    WorkerSpec(
        "translator",
        "app.workers.translator:TranslatorEngine",
        configured=translator.is_configured,
        not_configured_detail=translator.NOT_CONFIGURED,
    ),
    WorkerSpec("audio", "app.workers.audio:AudioEngine"),
)


def spec(kind: str) -> WorkerSpec:
    """The spec named `kind`; raises KeyError for an unknown kind."""
    for worker in WORKERS:
        if worker.kind == kind:
            return worker
    raise KeyError(kind)


def socket_path(settings: Settings, kind: str):
    """Where the `kind` worker listens: ``<state>/run/<kind>.sock``."""
    return settings.run_dir / f"{kind}.sock"


def replica_sockets(settings: Settings, kind: str) -> list[Path]:
    """The sockets of the `kind` workers listening now, by replica index: ``<run>/<kind>.sock``
    (replica 0 of a single worker) and ``<run>/<kind>-<n>.sock`` (replica n). Empty when none is up."""
    pattern = re.compile(rf"{re.escape(kind)}(?:-(\d+))?\.sock")
    found: list[tuple[int, Path]] = []
    for path in settings.run_dir.glob(f"{kind}*.sock"):
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match.group(1) or 0), path))
    return [path for _, path in sorted(found)]


def replica_index(path: Path) -> int:
    """The replica number in a socket name from `replica_sockets` (0 for ``<kind>.sock``)."""
    _, dash, number = path.stem.rpartition("-")
    return int(number) if dash and number.isdigit() else 0
