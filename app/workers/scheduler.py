"""Batching pieces of many requests on one model, live first, recordings taking turns.

A request becomes a `Job` cut into `Piece`s (for Whisper: speech regions merged into at
most 30 s each). The scheduler keeps every job's pending pieces and runs batches on
*lanes*, one thread each, that call the engine's ``run_batch(pieces)``:

- the **bulk lane** takes pieces of recordings in turn, one piece per recording per round,
  so a 6-hour file does not hold a 10-minute one for its whole length (and live pieces
  first when there is no live lane);
- the **live lanes** (`live_lanes` of them, when `live_lane` is on) take all live pieces,
  so a live piece never waits for a running batch of recording pieces (CTranslate2 runs
  batches at once on one loaded model: ``inter_threads``, faster-whisper's
  ``num_workers``), and the live pieces queued while they decode go together into the
  next live batch. They call `live_run_batch` when given (the engine may run live pieces
  elsewhere), and the general lanes run at nice `lane_nice` so that on a CPU the live
  lanes take the cores first (which is also why general lanes leave live pieces alone:
  handed to a niced lane, a live piece waited seconds for a core).

A batch holds pieces that share one compatibility key (for Whisper: language, task and
decoding options): at most `batch_size` pieces of recordings, or every queued live piece up
to `live_batch_size` (live pieces are short and come from many requests at once; an engine
may decode several of them in one model row, as Whisper packs short chunks into one 30-s
window). Pieces of one job keep their order within a batch and the job's pieces are
handed out in order. When a job's last piece is done the engine's
``finish(job)`` assembles the answer on the job's own timeline. A cancelled job loses its
queued pieces at once; pieces of it that are already in a running batch are discarded.

Backpressure counts seconds of audio: `queued_seconds` is the audio of pending and running
pieces, and `estimated_wait(seconds)` turns a backlog into seconds of processing from the
measured real-time factor (an exponential moving average of batch time / batch audio).
This module imports no model library; it is tested with plain functions as the engine.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from app.workers.devices import nice_this_thread
from app.workers.progress import ProgressLog

log = logging.getLogger("app.worker.scheduler")

from app.workers.messages import Priority

RTF_SMOOTHING = 0.3  # weight of the newest batch in the moving average


class RealTimeFactor:
    """Processing seconds per second of audio, as an exponential moving average over jobs
    or batches (the newest weighs `RTF_SMOOTHING`); `value` is None before the first."""

    def __init__(self) -> None:
        self.value: float | None = None

    def add(self, elapsed: float, audio: float) -> None:
        """Count `elapsed` s of processing spent on `audio` s (ignored when `audio` is 0)."""
        if audio <= 0:
            return
        rtf = elapsed / audio
        self.value = rtf if self.value is None else (1 - RTF_SMOOTHING) * self.value + RTF_SMOOTHING * rtf

    def wait(self, audio: float) -> float | None:
        """Seconds of processing `audio` s take at the measured factor (None before any)."""
        return None if self.value is None else audio * self.value


@dataclass(eq=False)
class Piece:
    """One unit of model work: `index` within its job, `seconds` of audio, engine `data`."""

    job: Job
    index: int
    seconds: float
    data: Any


@dataclass(eq=False)
class Job:
    """One request's pieces and their outputs.

    `key`: pieces of jobs with equal keys may share a batch. `context`: whatever the engine
    needs to finish the job (e.g. its timeline). `future` resolves to ``finish(job)`` or to
    the first exception of a batch that held one of its pieces.
    """

    priority: Priority
    key: Hashable
    context: Any = None
    id: int = field(default_factory=itertools.count().__next__)
    future: Future = field(default_factory=Future)
    pieces: collections.deque = field(default_factory=collections.deque)
    outputs: dict[int, Any] = field(default_factory=dict)
    total: int = 0
    seconds: float = 0.0
    seconds_done: float = 0.0
    cancelled: bool = False
    progress: ProgressLog | None = None  # set by `Scheduler.submit`, named after the scheduler

    def add(self, seconds: float, data: Any) -> Piece:
        """Append a piece of `seconds` of audio (call before `Scheduler.submit`)."""
        piece = Piece(self, self.total, seconds, data)
        self.pieces.append(piece)
        self.total += 1
        self.seconds += seconds
        return piece

    @property
    def done(self) -> bool:
        return len(self.outputs) == self.total


class Scheduler:
    """Runs `run_batch` over pieces of submitted jobs on `lanes` general lane threads and
    `live_lanes` live ones (see the module docstring).

    `run_batch(pieces) -> outputs` (one output per piece, same order) runs on a lane
    thread; `finish(job) -> result` runs once all of a job's outputs are in. Both may
    raise: the exception fails every job that had a piece in that batch (or that job).
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Piece]], Sequence[Any]],
        finish: Callable[[Job], Any],
        batch_size: int,
        lanes: int = 1,
        live_lane: bool = True,
        live_run_batch: Callable[[Sequence[Piece]], Sequence[Any]] | None = None,
        lane_nice: int = 0,
        name: str = "scheduler",
        live_batch_size: int | None = None,
        live_lanes: int = 1,
    ) -> None:
        self.run_batch = run_batch
        self.live_batch_size = live_batch_size or batch_size
        self.live_run_batch = live_run_batch or run_batch
        self.lane_nice = lane_nice
        self.finish = finish
        self.batch_size = batch_size
        self.name = name
        self._lock = threading.Condition()
        self._live: collections.deque[Job] = collections.deque()
        self._recordings: collections.deque[Job] = collections.deque()
        self._queued_seconds = 0.0
        self.speed = RealTimeFactor()  # of batches: processing seconds per audio second
        self._stopped = False
        self.batches_run = 0
        self.jobs_done = 0
        self.last_progress = time.monotonic()  # when a batch last ended (the watchdog's pulse)
        self._lanes = lanes
        self._live_running = 0  # pieces of live jobs in running batches
        self._live_lane = live_lane
        live = [f"live{i}" if live_lanes > 1 else "live" for i in range(live_lanes if live_lane else 0)]
        kinds = [(f"bulk{i}", False) for i in range(lanes)] + [(lane, True) for lane in live]
        self._threads = [
            threading.Thread(target=self._lane, args=(live_only,), name=f"{name}-{lane}", daemon=True)
            for lane, live_only in kinds
        ]
        for thread in self._threads:
            thread.start()

    # -- public ------------------------------------------------------------------------
    def submit(self, job: Job) -> Future:
        """Queue `job`'s pieces; returns its future. A job with no pieces finishes at once
        (on the caller's thread, outside the lock: `finish` may take a while)."""
        job.progress = job.progress or ProgressLog(log, self.name)
        if job.total == 0:
            with self._lock:
                self.jobs_done += 1
            self._finish(job)
            return job.future
        with self._lock:
            (self._live if job.priority == "live" else self._recordings).append(job)
            self._queued_seconds += job.seconds
            self._lock.notify_all()
        return job.future

    def cancel(self, job: Job, error: BaseException) -> None:
        """Drop `job`'s queued pieces now and fail its future with `error`."""
        with self._lock:
            if job.cancelled or job.future.done():
                return
            job.cancelled = True
            self._drop(job)
        job.future.set_exception(error)

    def stop(self) -> None:
        """Let the lane threads exit once their running batch is done."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()

    @property
    def queued_seconds(self) -> float:
        """Seconds of audio in pending and running pieces."""
        return max(0.0, self._queued_seconds)

    @property
    def rtf(self) -> float | None:
        """Measured real-time factor: seconds of batch time per second of audio (EMA)."""
        return self.speed.value

    def estimated_wait(self, seconds: float) -> float | None:
        """Seconds of processing `seconds` of audio take at the measured RTF (None before any)."""
        return self.speed.wait(seconds)

    def queued_pieces(self, job: Job) -> int:
        """How many of `job`'s pieces are still waiting for a lane."""
        with self._lock:
            return len(job.pieces)

    # -- lanes -------------------------------------------------------------------------
    def _lane(self, live_only: bool) -> None:
        if not live_only:
            nice_this_thread(self.lane_nice)
        while True:
            with self._lock:
                batch = self._take(live_only)
                while not batch and not self._stopped:
                    self._lock.wait()
                    batch = self._take(live_only)
                if not batch:
                    return
            self._run(batch, self.live_run_batch if live_only else self.run_batch)

    def _limit(self, live_only: bool) -> int:
        """Recording pieces the next batch may take: `batch_size`, or with several general
        lanes an equal share of what is queued, counting the busy lanes too (lock held).

        A busy lane will want its share when its batch ends: taking the whole queue into one
        batch would leave that lane idle at the end while this one still runs (4 pieces on
        2 lanes: 1 + 2 rounds on one lane, 1 on the other, instead of 2 + 2)."""
        if live_only or self._lanes == 1:
            return self.batch_size
        queues = (self._recordings,) if self._live_lane else (self._live, self._recordings)
        waiting = sum(len(job.pieces) for job in itertools.chain(*queues))
        return max(1, min(self.batch_size, -(-waiting // self._lanes)))

    def _take(self, live_only: bool) -> list[Piece]:
        """Compatible pieces: every queued live piece (up to `live_batch_size`, jobs in
        arrival order; for the live lane, or any lane when there is none), else (unless
        `live_only`) up to `_limit` recording pieces, one per job per round. Call with the
        lock held."""
        batch: list[Piece] = []
        key: Hashable = None
        for job in list(self._live) if live_only or not self._live_lane else ():
            while job.pieces and len(batch) < self.live_batch_size and (not batch or job.key == key):
                key = job.key
                batch.append(self._pop(job))
            if len(batch) == self.live_batch_size:
                break
        if batch or live_only or self._live_running or self._live:
            # While live pieces wait or run, recording lanes start nothing new: the live
            # lane gets the device (on the CPU, the cores) as soon as the running batches end.
            return self._ordered(batch)
        limit = self._limit(live_only)
        progress = True
        while len(batch) < limit and progress:
            progress = False
            for _ in range(len(self._recordings)):
                if not self._recordings:
                    break
                job = self._recordings[0]
                self._recordings.rotate(-1)  # the next round starts after this job
                if job.pieces and (not batch or job.key == key):
                    key = job.key
                    batch.append(self._pop(job))
                    progress = True
                    if len(batch) == limit:
                        break
        return self._ordered(batch)

    def _pop(self, job: Job) -> Piece:
        piece = job.pieces.popleft()
        self._live_running += job.priority == "live"
        if not job.pieces:
            (self._live if job.priority == "live" else self._recordings).remove(job)
        return piece

    @staticmethod
    def _ordered(batch: list[Piece]) -> list[Piece]:
        """Group a batch's pieces by job, each job's pieces in order (engines rely on it)."""
        order = {id(piece.job): i for i, piece in reversed(list(enumerate(batch)))}
        return sorted(batch, key=lambda piece: (order[id(piece.job)], piece.index))

    def _drop(self, job: Job) -> None:
        """Forget `job`'s queued pieces (lock held)."""
        self._queued_seconds -= sum(piece.seconds for piece in job.pieces)
        job.pieces.clear()
        for queue in (self._live, self._recordings):
            if job in queue:
                queue.remove(job)

    def _run(self, batch: list[Piece], run_batch: Callable[[Sequence[Piece]], Sequence[Any]]) -> None:
        live = [piece for piece in batch if not piece.job.cancelled]
        started = time.monotonic()
        error: BaseException | None = None
        outputs: Sequence[Any] = ()
        if live:
            try:
                outputs = run_batch(live)
            except BaseException as exc:  # noqa: BLE001 - handed to the jobs' futures
                error = exc
        elapsed = time.monotonic() - started
        audio = sum(piece.seconds for piece in live)
        finished: list[Job] = []
        failed: dict[int, Job] = {}
        with self._lock:
            self.batches_run += 1
            self.last_progress = time.monotonic()
            self._queued_seconds -= sum(piece.seconds for piece in batch)  # `_drop` left running ones
            if live and error is None:
                self.speed.add(elapsed, audio)
            for piece in batch:
                self._live_running -= piece.job.priority == "live"
            self._lock.notify_all()  # lanes held back by live work may go on
            for index, piece in enumerate(live):
                job = piece.job
                if job.cancelled or job.future.done():
                    continue
                if error is not None:
                    job.cancelled = True
                    self._drop(job)
                    failed[job.id] = job
                    continue
                job.outputs[piece.index] = outputs[index]
                job.seconds_done += piece.seconds
                if job.done:
                    finished.append(job)
                elif job.progress is not None:
                    job.progress.update(job.seconds_done, job.seconds)
            self.jobs_done += len(failed) + len(finished)
        for job in failed.values():
            job.future.set_exception(error)  # type: ignore[arg-type]
        for job in finished:
            self._finish(job)

    def _finish(self, job: Job) -> None:
        """Assemble a job's answer with the engine's `finish` (outside the lock) into its future."""
        try:
            result = self.finish(job)
        except BaseException as exc:  # noqa: BLE001 - handed to the job's future
            if not job.future.done():
                job.future.set_exception(exc)
            return
        if not job.future.done():
            job.future.set_result(result)
