"""The watchdog: a worker that stops answering or stops making progress is judged hung.

Fast tests use a stub engine behind a real `WorkerServer` socket; the slow test stops the
real Whisper worker with SIGSTOP in the middle of a request.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from app.supervision.watchdog import ping_blocking
from testing.service import running_service

pytest_plugins = ["testing.stub_workers"]


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
