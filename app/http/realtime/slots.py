"""At most `REFLECTOR_GPU_REALTIME_SESSIONS` realtime sessions at once, across HTTP workers.

Each open session holds an exclusive `flock` on one of the files
``<run>/realtime/slot-<i>`` (i < the limit). Granian's worker processes share the run
directory, so the limit is the host's, not each worker's; a lock dies with its process,
so a crashed worker never leaks a slot. The files are empty and stay for the next session.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from app.settings import Settings


def _try_slot(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def session_slot(settings: Settings) -> Iterator[bool]:
    """Yields True while this session holds a slot, False when every slot is taken."""
    directory = settings.run_dir / "realtime"
    directory.mkdir(parents=True, exist_ok=True)
    fd = None
    for index in range(settings.realtime_sessions):
        fd = _try_slot(directory / f"slot-{index}")
        if fd is not None:
            break
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
