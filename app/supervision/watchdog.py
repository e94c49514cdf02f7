"""The supervisor's watchdog: a worker that stops making progress is killed and restarted.

A worker whose process is alive can still be stuck: a CUDA call that never returns, a
deadlock in a native library, or a process stopped by a signal. Exit codes say nothing
then, so (as gunicorn's arbiter does with its workers' heartbeats) the supervisor asks:
every `poll_seconds` a thread pings each ready replica over its socket and notes when it
last answered and how long it has held work without progress (`Pong.stalled_seconds`,
fed by the engine's looks at its cancel flag and by finished batches). `verdict()` names
a replica that has not answered, or has been stalled, for longer than
``REFLECTOR_GPU_WORKER_HANG_SECONDS``; the supervisor then kills it, its requests get 503,
and it is restarted like any worker that exits.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from app.workers.protocol import Ping, Pong, encode_frame, recv_frame

MAX_PONG_BYTES = 1024 * 1024


def ping_blocking(path: Path, timeout: float) -> Pong | None:
    """Ping the worker at `path` without an event loop; None when it does not answer a
    well-formed `Pong` within `timeout` seconds."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(encode_frame(Ping()))
            return msgspec.msgpack.decode(recv_frame(sock, MAX_PONG_BYTES), type=Pong)
    except (OSError, EOFError, ValueError, msgspec.DecodeError):
        return None


@dataclass
class Health:
    """What the watchdog knows of one replica since it was (re)started: when it last
    answered a ping (monotonic s) and the stall it reported then (s)."""

    answered: float
    stalled: float = 0.0


class Watchdog:
    """Pings every watched socket every `poll_seconds` on a daemon thread (see the module
    docstring). `hang_seconds`: the longest silence or stall tolerated."""

    def __init__(self, hang_seconds: float, poll_seconds: float | None = None) -> None:
        self.hang_seconds = hang_seconds
        self.poll_seconds = poll_seconds or max(0.5, min(5.0, hang_seconds / 3))
        self._lock = threading.Lock()
        self._watched: dict[Path, Health] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._thread.start()

    def watch(self, path: Path) -> None:
        """Start watching the worker at `path` (call when it became ready)."""
        with self._lock:
            self._watched[path] = Health(answered=time.monotonic())

    def forget(self, path: Path) -> None:
        """Stop watching `path` (its process exited or was killed)."""
        with self._lock:
            self._watched.pop(path, None)

    def verdict(self, path: Path, now: float | None = None) -> str | None:
        """Why the worker at `path` counts as hung, or None while it is healthy."""
        now = time.monotonic() if now is None else now
        with self._lock:
            health = self._watched.get(path)
        if health is None:
            return None
        silent = now - health.answered
        if silent > self.hang_seconds:
            return f"it has not answered a ping for {silent:.0f} s"
        stalled = health.stalled + (now - health.answered if health.stalled else 0.0)
        if stalled > self.hang_seconds:
            return f"it has held work for {stalled:.0f} s without progress"
        return None

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            with self._lock:
                paths = list(self._watched)
            for path in paths:
                pong = ping_blocking(path, timeout=min(self.poll_seconds, 5.0))
                if pong is None:
                    continue
                with self._lock:
                    health = self._watched.get(path)
                    if health is not None:
                        health.answered = time.monotonic()
                        health.stalled = pong.stalled_seconds
