"""The contract between a worker process's server (`app.workers.server`) and its engine.

An engine loads one kind of model and answers the request structs of `app.workers.messages`.
`WorkerServer` reads nothing of an engine but what `Engine` names; every engine class in
`app.workers.registry.WORKERS` satisfies it (a test checks each one).

Two ways to run jobs:
- a *plain* engine (`scheduler` is None) runs one job at a time on one thread with
  `handle`; when `audio_seconds` gives the job's audio length (from the file's header, never
  decoded), the server counts queued audio and the real-time factor for it and refuses a
  recording past ``REFLECTOR_GPU_QUEUE_AUDIO_SECONDS``;
- a *scheduled* engine (`ScheduledEngine`: `scheduler` set) has its requests prepared
  (decoded, cut into pieces) by `prepare` on a small pool of threads; their pieces join the
  scheduler, which batches pieces of many jobs, live first. Queued audio is the scheduler's.
Either raises `app.errors.ServiceError` subclasses for failures the client should see.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Protocol

import msgspec

from app.workers.protocol import Pong
from app.workers.scheduler import Job, Scheduler


class Engine(Protocol):
    """What every engine has.

    `kind`: the worker kind (socket name, /ready key); `request_types`: the tagged request
    structs it answers; `device`: ``cpu`` or ``cuda``; `scheduler`: None for a plain engine.
    ``__init__(settings)`` loads the model and may raise anything (the worker then exits 3).
    """

    kind: ClassVar[str]
    request_types: ClassVar[tuple[type[msgspec.Struct], ...]]
    device: str
    scheduler: Scheduler | None

    def describe(self) -> Pong:
        """The engine's `Pong` (model, device, facts); the server adds its queue figures."""
        ...

    def handle(self, request: Any, cancel: threading.Event) -> msgspec.Struct:
        """Run one job to its result; look at `cancel` between steps (it also tells the
        watchdog the engine is making progress)."""
        ...

    def audio_seconds(self, request: Any) -> float | None:
        """Seconds of audio the job processes, from the file's header; None: not measured."""
        ...


class ScheduledEngine(Engine, Protocol):
    """An engine whose jobs are cut into pieces and batched by its `scheduler`."""

    scheduler: Scheduler

    def prepare(self, request: Any) -> Job | msgspec.Struct:
        """Decode and cut one request into a `Job` of pieces (not yet submitted), or answer a
        cheap request at once with its reply struct (Whisper's speech probabilities).
        Requests with ``priority="live"`` are prepared first, on a thread of their own."""
        ...


ENGINE_MEMBERS = ("kind", "request_types", "device", "scheduler", "describe", "handle", "audio_seconds")
