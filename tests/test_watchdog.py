"""The watchdog: a worker that stops answering or stops making progress is judged hung.

Fast tests use a stub engine behind a real `WorkerServer` socket; the slow test stops the
real Whisper worker with SIGSTOP in the middle of a request.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from app.supervision.rundir import socket_path
from app.supervision.watchdog import Watchdog, ping_blocking
from testing.service import running_service
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


@pytest.mark.slow
def test_a_worker_stopped_mid_request_is_killed_and_its_request_gets_503(cert_dir: Path, sample_wav: Path) -> None:
    with running_service(cert_dir, REFLECTOR_GPU_WORKER_HANG_SECONDS="10") as service:
        [pid] = service.child_pids("app.workers.server whisper")
        result: dict[str, httpx.Response] = {}

        def send() -> None:
            with sample_wav.open("rb") as audio:
                result["response"] = service.client().post(
                    "/v1/audio/transcriptions", files={"file": ("sample.wav", audio, "audio/wav")}
                )

        sender = threading.Thread(target=send)
        sender.start()
        worker_socket = service.state_dir / "run" / "whisper-0.sock"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not getattr(ping_blocking(worker_socket, 1), "busy", 0):
            time.sleep(0.01)  # until the worker holds the job
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        sender.join(60)
        assert result["response"].status_code == 503, result["response"].text
        assert time.monotonic() - stopped < 30
        assert "hung" in service.log()
        service.wait_ready(60)
        with sample_wav.open("rb") as audio:
            again = service.client().post("/v1/audio/transcriptions", files={"file": ("sample.wav", audio, "audio/wav")})
        assert again.status_code == 200, again.text
