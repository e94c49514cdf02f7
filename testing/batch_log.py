"""A record of the batches a Whisper engine runs, for tests and scripts/device_check.py."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Batch:
    """One batch: its lane (``live`` or ``recording``), its pieces, the tokens its segments
    hold, and when it ran (`time.monotonic` seconds)."""

    lane: str
    pieces: int
    tokens: int
    start: float
    end: float


class BatchLog:
    """Wraps `engine._run_batch` (a `app.workers.whisper.WhisperEngine`) to record each batch.

    `recording_started` is set when a recording batch starts; `live_beside_recording()`
    counts the live batches that ran entirely while a recording batch ran."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.batches: list[Batch] = []
        self.recording_started = threading.Event()
        run = engine._run_batch

        def logged(pieces, live):
            started = time.monotonic()
            if not live:
                self.recording_started.set()
            outputs = run(pieces, live)
            tokens = sum(len(segment["tokens"]) for segments in outputs for segment in segments)
            self.batches.append(Batch("live" if live else "recording", len(pieces), tokens, started, time.monotonic()))
            return outputs

        engine._run_batch = logged

    def close(self) -> None:
        """Stop recording: the engine runs its own `_run_batch` again."""
        vars(self.engine).pop("_run_batch", None)

    def lane(self, name: str) -> list[Batch]:
        return [batch for batch in self.batches if batch.lane == name]

    def live_beside_recording(self) -> int:
        recordings = self.lane("recording")
        return sum(
            any(r.start < b.start and b.end < r.end for r in recordings) for b in self.lane("live")
        )
