"""The loop one worker process runs: load an engine, then serve its Unix socket.

The asyncio loop stays free to answer `Ping`, to refuse work past the queue limits
(`Failure("Unavailable")` with ``Retry-After``), and to notice a client that hung up, which
sets the job's cancel event. The socket is bound only after the model has loaded, so a
client that can connect is talking to a ready worker.

The engine's contract is `app.workers.engine.Engine` (plain engines: one job at a time;
scheduled engines: pieces batched across jobs by their scheduler). A client that leaves has
its job cancelled, and a scheduled job's queued pieces dropped at once. A scheduled
engine's `prepare` may answer a cheap request itself (the reply struct instead of a job).
Requests with ``priority="live"`` go first: a plain engine runs them before any queued
recording (a running one is not interrupted), and a scheduled engine prepares them first
and on one more thread of their own, so a live chunk is never decoded behind a long
recording. Live jobs are never refused for the queued audio.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import importlib
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Union

import msgspec

from app import settings as settings_module
from app.errors import Cancelled, ServiceError, WorkerFailed
from app.logs import setup_logging
from app.workers import devices
from app.workers.engine import Engine
from app.workers.protocol import Accepted, Failure, Ping, encode_frame, read_frame
from app.supervision.rundir import socket_path
from app.workers.registry import spec
from app.workers.scheduler import Job, RealTimeFactor

log = logging.getLogger("app.worker")


def load_engine_class(path: str) -> type:
    """Import ``"module:Class"``."""
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


PREPARE_THREADS = 2  # requests decoded and cut at once while batches run
LIVE_PREPARE_THREADS = 1  # and more for live requests only


class PriorityRunner:
    """Runs calls on `threads` threads, those submitted as ``live`` before ``recording``
    ones (each kind in arrival order); `live_threads` more threads run live calls only.

    `submit(priority, fn, *args)` returns a `concurrent.futures.Future` of ``fn(*args)``.
    The threads are daemons that live as long as the worker process.
    """

    def __init__(self, threads: int, live_threads: int = 0, name: str = "runner") -> None:
        self._ready = threading.Condition()
        self._queues: dict[str, collections.deque] = {"live": collections.deque(), "recording": collections.deque()}
        for index in range(threads + live_threads):
            live_only = index >= threads
            threading.Thread(target=self._work, args=(live_only,), name=f"{name}-{index}", daemon=True).start()

    def submit(self, priority: str, fn, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._ready:
            self._queues["live" if priority == "live" else "recording"].append((future, fn, args))
            self._ready.notify_all()
        return future

    def _next(self, live_only: bool):
        for kind in ("live",) if live_only else ("live", "recording"):
            if self._queues[kind]:
                return self._queues[kind].popleft()
        return None

    def _work(self, live_only: bool) -> None:
        while True:
            with self._ready:
                call = self._next(live_only)
                while call is None:
                    self._ready.wait()
                    call = self._next(live_only)
            future, fn, args = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's future
                future.set_exception(exc)


def failure_from(exc: BaseException, kind: str, cancelled: bool = False) -> Failure:
    """The `Failure` reply for what a job of the `kind` worker raised: a `ServiceError` as
    itself; anything else as `Cancelled` when the client had left (its leaving broke the
    job: say, the HTTP side removed the output file under the encoder), else as
    `WorkerFailed` naming only the exception's type, logged with its traceback."""
    if not isinstance(exc, ServiceError):
        if cancelled:
            exc = Cancelled()
        else:
            log.error("%s job failed", kind, exc_info=exc)
            exc = WorkerFailed(f"the {kind} worker failed: {type(exc).__name__}")
    return Failure(type(exc).__name__, exc.detail, exc.retry_after)


class ProgressEvent(threading.Event):
    """The cancel flag handed to an engine: every look at it (`is_set`) also tells the
    worker that the engine is alive and making progress (engines look between steps:
    batches, frames, pipeline hooks), which the watchdog reads as `Pong.stalled_seconds`."""

    def __init__(self, on_progress) -> None:
        super().__init__()
        self._on_progress = on_progress

    def is_set(self) -> bool:
        self._on_progress()
        return super().is_set()
MAX_RETRY_AFTER_SECONDS = 3600


class WorkerServer:
    """Serves one loaded engine on a Unix socket; see the module docstring.

    `queue_size`: jobs running or queued before refusing; `queue_audio_seconds`: seconds of
    queued audio before refusing a recording (engines that measure audio); `replica`: this
    worker's index among its kind's replicas (reported in `Pong`).
    """

    def __init__(self, engine: Engine, queue_size: int, queue_audio_seconds: float = math.inf, replica: int = 0) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.queue_audio_seconds = queue_audio_seconds
        self.replica = replica
        self.pending = 0
        self.jobs_done = 0
        self._last_progress = time.monotonic()
        self.scheduled = engine.scheduler is not None
        self.queued_audio = 0.0  # seconds of audio of accepted, unfinished plain jobs
        self.speed = engine.scheduler.speed if self.scheduled else RealTimeFactor()
        if self.scheduled:
            self._runner = PriorityRunner(PREPARE_THREADS, LIVE_PREPARE_THREADS, name=engine.kind)
        else:
            self._runner = PriorityRunner(1, name=engine.kind)
        self._decoder = msgspec.msgpack.Decoder(Union[(Ping, *engine.request_types)])  # type: ignore[misc]

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            body = await read_frame(reader)
            if body is None:
                return
            try:
                request = self._decoder.decode(body)
            except msgspec.DecodeError as exc:
                reply: msgspec.Struct = Failure("BadRequest", f"malformed worker request: {exc}")
            else:
                reply = await self._dispatch(request, reader, writer)
            if reply is not None:
                try:
                    frame = encode_frame(reply)
                except (TypeError, ValueError, OverflowError):
                    log.exception("%s reply could not be encoded", self.engine.kind)
                    frame = encode_frame(Failure("WorkerFailed", f"the {self.engine.kind} worker sent an invalid reply"))
                writer.write(frame)
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        except asyncio.CancelledError:
            # The worker is stopping (SIGTERM): closing the connection tells the HTTP side,
            # which answers 503. Ending the task normally also keeps Python 3.11's stream
            # callback from logging the cancellation as an error with a traceback.
            pass
        finally:
            writer.close()

    def progress(self) -> None:
        """Note that the engine is making progress (see `ProgressEvent`)."""
        self._last_progress = time.monotonic()

    def stalled_seconds(self) -> float:
        """Seconds the engine has held work without progress; 0 when idle."""
        if self.pending == 0:
            return 0.0
        last = self._last_progress
        if self.scheduled:
            last = max(last, self.engine.scheduler.last_progress)
        return max(0.0, time.monotonic() - last)

    def queued_seconds(self) -> float:
        """Seconds of audio accepted and not yet processed (the scheduler's pieces, or the
        plain jobs' files)."""
        return self.engine.scheduler.queued_seconds if self.scheduled else self.queued_audio

    def pong(self) -> msgspec.Struct:
        """The engine's `Pong` with this server's queue figures."""
        return msgspec.structs.replace(
            self.engine.describe(), queued_seconds=round(self.queued_seconds(), 3), rtf=self.speed.value,
            busy=self.pending, replica=self.replica, jobs_done=self.jobs_done,
            stalled_seconds=round(self.stalled_seconds(), 3),
        )

    async def _dispatch(
        self, request: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> msgspec.Struct | None:
        if isinstance(request, Ping):
            return self.pong()
        if self.pending >= self.queue_size:
            return Failure(
                "Unavailable",
                f"the {self.engine.kind} worker has {self.pending} jobs running or queued "
                f"(REFLECTOR_GPU_QUEUE_SIZE={self.queue_size}); retry later",
                retry_after=self._retry_after(),
            )
        if self.pending == 0:
            self.progress()  # idle time is no stall
        self.pending += 1  # counted before any await, so the limit above sees every job
        seconds = 0.0
        priority = getattr(request, "priority", "recording")
        try:
            if not self.scheduled:  # measured from the file's header, before Accepted:
                seconds = await asyncio.to_thread(self.engine.audio_seconds, request) or 0.0  # a refusal comes without it
                if priority != "live" and self._over_audio_limit(seconds):
                    seconds = 0.0
                    return self._audio_limit_failure(self.queued_audio)
                self.queued_audio += seconds
            writer.write(encode_frame(Accepted()))
            await writer.drain()
            cancel = ProgressEvent(self.progress)
            job = asyncio.wrap_future(self._runner.submit(priority, self._start, request, cancel, seconds))
            hangup = asyncio.ensure_future(reader.read(1))  # b"" when the client goes away
            try:
                done, _ = await asyncio.wait({job, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if job not in done:
                    cancel.set()  # the client left; the job stops at its next check
                    await asyncio.wait({job})
                    if isinstance(job.result(), Job):
                        self._cancel(job.result())
                    return None
                if not isinstance(job.result(), Job):
                    return job.result()
                # A scheduled job: its pieces are queued; wait for them or the hangup.
                queued: Job = job.result()
                finished = asyncio.wrap_future(queued.future)
                done, _ = await asyncio.wait({finished, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if finished not in done:
                    self._cancel(queued)
                    finished.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
                    return None
                return self._reply(finished)
            finally:
                hangup.cancel()
        finally:
            self.pending -= 1
            self.jobs_done += 1
            self.queued_audio = max(0.0, self.queued_audio - seconds)

    def _cancel(self, job: Job) -> None:
        """The client left: drop the job's queued pieces now."""
        self.engine.scheduler.cancel(job, Cancelled())

    def _retry_after(self, backlog_seconds: float | None = None) -> int:
        """Seconds until the worker has room: the queued audio (or `backlog_seconds`) at the
        measured real-time factor when known, else 5."""
        wait = self.speed.wait(self.queued_seconds() if backlog_seconds is None else backlog_seconds)
        return 5 if wait is None else int(min(MAX_RETRY_AFTER_SECONDS, max(1, math.ceil(wait))))

    def _over_audio_limit(self, seconds: float, backlog: float | None = None) -> bool:
        """Whether a recording of `seconds` s must wait: audio is queued already and with
        this job it would pass `queue_audio_seconds` (a job alone is always taken)."""
        backlog = self.queued_seconds() if backlog is None else backlog
        return backlog > 0 and backlog + seconds > self.queue_audio_seconds

    def _audio_limit_failure(self, backlog: float) -> Failure:
        return Failure(
            "Unavailable",
            f"the {self.engine.kind} worker has {backlog:.0f} s of audio queued "
            f"(REFLECTOR_GPU_QUEUE_AUDIO_SECONDS={self.queue_audio_seconds:g}); retry later",
            retry_after=self._retry_after(backlog),
        )

    def _reply(self, finished: asyncio.Future) -> msgspec.Struct:
        try:
            return finished.result()
        except Exception as exc:  # noqa: BLE001 - every failure becomes the client's reply
            return failure_from(exc, self.engine.kind)

    def _start(self, request: Any, cancel: threading.Event, seconds: float = 0.0) -> msgspec.Struct | Job:
        """On an executor thread: run a plain engine's job (`seconds` of audio, timed for
        the real-time factor), or prepare and queue a scheduled engine's job (returning
        it; its future holds the result)."""
        try:
            if cancel.is_set():
                raise Cancelled()
            if not self.scheduled:
                started = time.monotonic()
                result = self.engine.handle(request, cancel)
                self.speed.add(time.monotonic() - started, seconds)
                return result
            job = self.engine.prepare(request)
            if not isinstance(job, Job):  # answered at once (Whisper's speech probabilities)
                return job
            backlog = self.queued_seconds()
            if job.priority != "live" and self._over_audio_limit(job.seconds, backlog):
                return self._audio_limit_failure(backlog)
            if cancel.is_set():
                raise Cancelled()
            self.engine.scheduler.submit(job)
            return job
        except Exception as exc:  # noqa: BLE001 - every failure becomes the client's reply
            return failure_from(exc, self.engine.kind, cancelled=cancel.is_set())


async def _serve(server: WorkerServer, path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    unix_server = await asyncio.start_unix_server(server.handle_connection, path=path)
    os.chmod(path, 0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # SIGINT stays ignored: the entrypoint decides
    log.info("%s worker ready on %s", server.engine.kind, path)
    async with unix_server:
        await stop.wait()
    if os.path.exists(path):
        os.unlink(path)


def main(kind: str, replica: int = 0) -> None:
    """Worker process entry: read settings, load the `kind` engine as replica `replica`,
    serve until SIGTERM.

    Exits with status 3 when the model cannot be loaded (the log says why).
    """
    settings = settings_module.load()
    setup_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping is the entrypoint's decision (SIGTERM)
    devices.set_replica(replica)
    worker = spec(kind)
    if worker.nice:
        os.nice(worker.nice)
    try:
        engine = load_engine_class(worker.engine)(settings)
    except ServiceError as exc:
        log.error("%s worker cannot start: %s", kind, exc.detail)
        sys.exit(3)
    except Exception:
        log.exception("%s worker cannot load its model", kind)
        sys.exit(3)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    server = WorkerServer(
        engine,
        settings.queue_size,
        settings.queue_audio_limit(engine.device),
        replica,
    )
    asyncio.run(_serve(server, str(socket_path(settings, kind, replica))))
    # A job may still run on the engine thread; its client already got its answer (503) when
    # the socket closed, so leave now instead of waiting for the model to finish.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
