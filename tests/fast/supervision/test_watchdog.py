"""The watchdog: a worker that stops answering or stops making progress is judged hung.

Fast tests use a stub engine behind a real `WorkerServer` socket; the slow test stops the
real Whisper worker with SIGSTOP in the middle of a request.
"""

from __future__ import annotations

import socket
import threading
import time

import msgspec
import pytest

from app.supervision.rundir import socket_path
from app.supervision.watchdog import Watchdog, ping_blocking
from testing.stub_workers import StubEngine


pytest_plugins = ["testing.stub_workers"]


class Request(msgspec.Struct, tag="stub-job", frozen=True):
    pass


class Done(msgspec.Struct, tag="stub-done", frozen=True):
    pass


@pytest.fixture
def served(workers):
    """A stub engine whose job looks at its cancel flag 4 times, then blocks until released.
    Yields (socket path, release event, submit), submit() sending one job in the background."""
    release = threading.Event()

    def handle(request: Request, cancel: threading.Event) -> Done:
        for _ in range(4):
            cancel.is_set()
            time.sleep(0.05)
        release.wait(30)
        return Done()

    workers.serve(StubEngine("stub", (Request,), handle))
    path = socket_path(workers.settings, "stub")

    def submit() -> None:
        from app.workers.protocol import encode_frame

        def send() -> None:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                sock.sendall(encode_frame(Request()))
                sock.recv(1024)  # Accepted
                release.wait(30)

        threading.Thread(target=send, daemon=True).start()

    yield path, release, submit
    release.set()


def test_an_idle_worker_reports_no_stall_and_a_stuck_one_does(served) -> None:
    path, release, submit = served
    assert ping_blocking(path, 2).stalled_seconds == 0.0
    submit()
    time.sleep(1.0)  # 4 beats in the first 0.2 s, then nothing
    stalled = ping_blocking(path, 2).stalled_seconds
    assert 0.5 < stalled < 1.5
    release.set()
    deadline = time.monotonic() + 5
    while ping_blocking(path, 2).busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ping_blocking(path, 2).stalled_seconds == 0.0


def test_the_watchdog_judges_a_stalled_worker_hung(served) -> None:
    path, _, submit = served
    watchdog = Watchdog(hang_seconds=1.0, poll_seconds=0.2)
    watchdog.watch(path)
    try:
        time.sleep(1.5)
        assert watchdog.verdict(path) is None  # idle for long is healthy
        submit()
        deadline = time.monotonic() + 5
        while watchdog.verdict(path) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "without progress" in (watchdog.verdict(path) or "")
    finally:
        watchdog.stop()


def test_the_watchdog_judges_a_silent_worker_hung(tmp_path) -> None:
    watchdog = Watchdog(hang_seconds=0.5, poll_seconds=0.1)
    missing = tmp_path / "nobody.sock"
    watchdog.watch(missing)
    try:
        assert watchdog.verdict(missing) is None
        time.sleep(1.0)
        assert "not answered" in (watchdog.verdict(missing) or "")
        watchdog.forget(missing)
        assert watchdog.verdict(missing) is None
    finally:
        watchdog.stop()
