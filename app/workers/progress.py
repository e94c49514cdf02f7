"""`ProgressLog`: a long job's progress in the log, at most every 30 s.

A job says how far it got with `update(done_seconds, total_seconds)` as often as it likes
(every batch, every few frames); a line is logged only once the job has run for `interval`
seconds, then at most once per `interval`. The line carries numbers only, never text:

    ... INFO app.worker.audio progress job=pad done=0.42 audio_s=1512.0 total_s=3600.0 rtf=0.031 eta_s=65

``done`` is the share of the audio processed (0..1), ``rtf`` the real-time factor so far
(processing seconds per audio second), ``eta_s`` the estimated seconds left at that rate.
With ``REFLECTOR_GPU_LOG_FORMAT=json`` the same fields are keys of the JSON object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

PROGRESS_INTERVAL_SECONDS = 30.0  # the "at most every 30 s", also the delay before the first line


class ProgressLog:
    """Progress lines for one job named `job` (a kind of work such as ``pad``, never user text).

    `total_seconds`: the job's audio length (s) when known at the start; `update` may give or
    correct it later. `clock` returns seconds (monotonic); tests pass a fake one.
    """

    def __init__(
        self,
        logger: logging.Logger,
        job: str,
        total_seconds: float | None = None,
        interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.job = job
        self.total_seconds = total_seconds
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.last_logged = self.started

    def update(self, done_seconds: float, total_seconds: float | None = None) -> bool:
        """Note that `done_seconds` (s) of the audio are processed; logs a line when one is due.

        Returns True when a line was logged. Nothing is logged before `interval` seconds of
        running, more often than every `interval` seconds, or while the total is unknown or
        nothing is done yet (no rate to estimate from).
        """
        if total_seconds is not None:
            self.total_seconds = total_seconds
        now = self.clock()
        if now - self.last_logged < self.interval:
            return False
        total = self.total_seconds
        if not total or total <= 0 or done_seconds <= 0:
            return False
        done_seconds = min(done_seconds, total)
        elapsed = now - self.started
        rtf = elapsed / done_seconds
        self.last_logged = now
        self.logger.info(
            "progress",
            extra={
                "fields": {
                    "job": self.job,
                    "done": round(done_seconds / total, 3),
                    "audio_s": round(done_seconds, 1),
                    "total_s": round(total, 1),
                    "rtf": round(rtf, 4),
                    "eta_s": round((total - done_seconds) * rtf),
                }
            },
        )
        return True
