"""Logs: the JSON format, request ids on every line of a request, progress lines of long jobs."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from litestar.testing import TestClient

from app.audio.pad import pad_file
from app.logs import setup_logging
from app.http.main import create_app
from app.settings import load
from app.workers.progress import ProgressLog
from testing.service import API_KEY, write_wav


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's output, whatever format a test sets; the handlers restored after."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved
    root.setLevel(level)


def use_format(stream: io.StringIO, fmt: str) -> None:
    setup_logging("INFO", fmt)
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)


def json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_format_has_the_same_fields_as_text(captured: io.StringIO) -> None:
    log = logging.getLogger("app.test")
    use_format(captured, "json")
    log.warning("disk %s", "full", extra={"fields": {"free_bytes": 12}})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = json_lines(captured)
    assert first["level"] == "WARNING" and first["logger"] == "app.test" and first["message"] == "disk full"
    assert first["free_bytes"] == 12 and first["time"].endswith("+00:00")
    assert "request_id" not in first  # outside a request
    assert "ValueError: boom" in second["exception"]
    text = io.StringIO()
    use_format(text, "text")
    log.warning("disk %s", "full", extra={"fields": {"free_bytes": 12}})
    assert text.getvalue().rstrip().endswith("WARNING app.test disk full free_bytes=12")


@pytest.fixture
def app_settings() -> Iterator:
    state = Path(tempfile.mkdtemp(prefix="rg-", dir="/tmp"))
    yield load({"REFLECTOR_GPU_STATE_DIR": str(state), "REFLECTOR_GPU_APIKEY": API_KEY, "REFLECTOR_GPU_LOG_FORMAT": "json"})
    shutil.rmtree(state, ignore_errors=True)


def test_every_line_of_a_request_carries_its_id(captured: io.StringIO, app_settings) -> None:
    app = create_app(app_settings)  # sets up JSON logging from the settings
    logging.getLogger().handlers[0].setStream(captured)
    with TestClient(app) as client:
        kept = client.get("/health", headers={"X-Request-ID": "reflector-42.a:b"})
        made = client.post("/translate", json={"text": "x"})  # 401: its error line too
        forged = client.get("/health", headers={"X-Request-ID": "a b" + "c" * 200})
    assert kept.headers["x-request-id"] == "reflector-42.a:b"
    assert len(made.headers["x-request-id"]) == 32
    assert forged.headers["x-request-id"] != "a b" + "c" * 200 and len(forged.headers["x-request-id"]) == 32
    lines = json_lines(captured)
    access = [line for line in lines if line["logger"] == "app.access"]
    assert [line["request_id"] for line in access] == [
        "reflector-42.a:b", made.headers["x-request-id"], forged.headers["x-request-id"]
    ]
    assert all("request_id" in line for line in lines if line["logger"].startswith("app."))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_logged_at_most_every_30_seconds(captured: io.StringIO) -> None:
    use_format(captured, "json")
    clock = FakeClock()
    progress = ProgressLog(logging.getLogger("app.worker.test"), "transcription", total_seconds=3600.0, clock=clock)
    logged = []
    for second in range(1, 101):  # 100 s of work at 20 s of audio per second (RTF 0.05)
        clock.now += 1
        logged.append(progress.update(second * 20.0))
    assert [i + 1 for i, done in enumerate(logged) if done] == [30, 60, 90]
    lines = json_lines(captured)
    assert [line["done"] for line in lines] == [round(600 / 3600, 3), round(1200 / 3600, 3), 0.5]
    assert all(line["rtf"] == 0.05 and line["job"] == "transcription" for line in lines)
    assert [line["eta_s"] for line in lines] == [150, 120, 90]
    assert set(lines[0]) == {"time", "level", "logger", "message", "job", "done", "audio_s", "total_s", "rtf", "eta_s"}


def test_a_short_job_or_unknown_length_logs_nothing(captured: io.StringIO) -> None:
    use_format(captured, "text")
    clock = FakeClock()
    short = ProgressLog(logging.getLogger("app.worker.test"), "pad", total_seconds=60.0, clock=clock)
    clock.now += 29
    assert not short.update(59.0)
    unknown = ProgressLog(logging.getLogger("app.worker.test"), "pad", clock=clock)
    clock.now += 100
    assert not unknown.update(10.0)
    assert unknown.update(10.0, total_seconds=20.0)  # the length became known
    assert "progress job=pad done=0.5 audio_s=10.0 total_s=20.0 rtf=10.0 eta_s=100" in captured.getvalue()


def test_pad_reports_its_progress_through_the_audio_timeline(tmp_path: Path) -> None:
    """The real pad pipeline calls `progress` with the seconds of input pushed through and
    the input's stated length (the silence before it is the filter graph's own)."""
    rate = 16000
    t = np.arange(40 * rate) / rate
    source = write_wav(tmp_path / "tone.wav", (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    calls: list[tuple[float, float]] = []
    pad_file(source, tmp_path / "out.webm", 5.0, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 10
    assert all(total == pytest.approx(40.0, abs=0.05) for _, total in calls)
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and dones[0] < 10 and dones[-1] > 35
