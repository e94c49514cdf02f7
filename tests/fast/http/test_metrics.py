"""``GET /metrics``: names, values that move, access per REFLECTOR_GPU_METRICS, Granian
workers adding up (multiprocess mode), worker gauges from a real worker, restart counts from
the supervisor, and (slow) the whole service after a real transcription."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.http.main import create_app
from app.settings import Settings, load
from app.supervision import rundir
from app.supervision.rundir import socket_path
from app.supervision.supervisor import Child, Supervisor
from app.workers.audio import AudioEngine
from app.workers.server import WorkerServer
from testing.prometheus import samples, value
from testing.service import API_KEY

ROOT = Path(__file__).resolve().parents[3]  # the checkout
REQUIRED = (
    "reflector_gpu_requests_total",
    "reflector_gpu_request_duration_seconds",
    "reflector_gpu_audio_seconds_total",
    "reflector_gpu_queue_audio_seconds",
    "reflector_gpu_worker_up",
    "reflector_gpu_worker_restarts_total",
    "reflector_gpu_model_load_seconds",
    "reflector_gpu_realtime_factor",
    "reflector_gpu_tls_certificate_expiry_timestamp_seconds",
)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rg-", dir="/tmp"))  # Unix socket paths: keep it short
    (path / "run").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def settings_for(state_dir: Path, **env: str) -> Settings:
    return load({"REFLECTOR_GPU_STATE_DIR": str(state_dir), "REFLECTOR_GPU_APIKEY": API_KEY, **env})


def scrape(client: TestClient) -> str:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def test_every_metric_is_named_and_the_certificate_expiry_is_the_served_one(state_dir: Path, cert_dir: Path) -> None:
    shutil.copyfile(cert_dir / "server.pem", rundir.serving_cert(settings_for(state_dir)))
    with TestClient(create_app(settings_for(state_dir))) as client:
        text = scrape(client)
    names = {family.name for family in text_string_to_metric_families(text)}
    for name in REQUIRED:
        assert name.removesuffix("_total") in names, name
    leaf = x509.load_pem_x509_certificate((cert_dir / "server.pem").read_bytes())
    expiry = value(text, "reflector_gpu_tls_certificate_expiry_timestamp_seconds")
    assert expiry == leaf.not_valid_after_utc.timestamp()
    # No worker runs here: each configured kind is reported down, none as up.
    assert value(text, "reflector_gpu_worker_up", worker="whisper", replica="0") == 0
    assert value(text, "reflector_gpu_worker_up", worker="translator", replica="0") is None  # not configured


def test_values_move_after_requests_and_labels_hold_no_path(state_dir: Path) -> None:
    with TestClient(create_app(settings_for(state_dir))) as client:
        before = scrape(client)
        for _ in range(3):
            assert client.get("/health").status_code == 200
        assert client.get("/no/such/file.wav?token=secret").status_code == 404
        assert client.get("/docs/openapi.json").status_code == 200 and client.get("/docs").status_code == 200
        assert client.options("/diarize").status_code == 401 and client.options("/v1/models").status_code == 401  # keyed
        after = scrape(client)
    health = ("reflector_gpu_requests_total", {"route": "health", "status": "200"})
    assert (value(before, health[0], **health[1]) or 0) + 3 == value(after, health[0], **health[1])
    assert value(after, "reflector_gpu_requests_total", route="unmatched", status="404") == 1
    for route, status in (("docs", "200"), ("options", "401")):  # not Litestar's random names or path templates
        labels = {"route": route, "status": status}
        assert value(after, "reflector_gpu_requests_total", **labels) == (value(before, "reflector_gpu_requests_total", **labels) or 0) + 2
    assert value(after, "reflector_gpu_request_duration_seconds_count", route="health") >= 3
    # The scrape itself was counted, after it was answered.
    assert value(after, "reflector_gpu_requests_total", route="metrics", status="200") >= 1
    for (_, labels), _value in samples(after).items():
        for _, label_value in labels:
            assert "/" not in label_value and "secret" not in label_value and ".wav" not in label_value


@pytest.mark.parametrize(
    ("access", "without_key", "with_key"),
    [("key", 401, 200), ("open", 200, 200), ("off", 404, 404)],
)
def test_access_per_setting(state_dir: Path, access: str, without_key: int, with_key: int) -> None:
    with TestClient(create_app(settings_for(state_dir, REFLECTOR_GPU_METRICS=access))) as client:
        assert client.get("/metrics").status_code == without_key
        assert client.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == with_key
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == without_key


_COUNT_ONE_REQUEST = """
import sys
from litestar.testing import TestClient
from app.http.main import create_app
from app.settings import load
settings = load({"REFLECTOR_GPU_STATE_DIR": sys.argv[1], "REFLECTOR_GPU_METRICS": "open"})
with TestClient(create_app(settings)) as client:
    assert client.get("/health").status_code == 200
    if sys.argv[2] == "scrape":
        sys.stdout.write(client.get("/metrics").text)
"""


def test_granian_workers_add_up_in_multiprocess_mode(state_dir: Path) -> None:
    """Three processes share PROMETHEUS_MULTIPROC_DIR, as the supervisor sets it for Granian:
    a scrape in the third sees the requests of all three."""
    metrics = state_dir / "run" / "metrics"
    metrics.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    for role in ("count", "count", "scrape"):
        result = subprocess.run(
            [sys.executable, "-c", _COUNT_ONE_REQUEST, str(state_dir), role],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
    assert len(list(metrics.glob("*.db"))) >= 3  # one set of files per process
    assert value(result.stdout, "reflector_gpu_requests_total", route="health", status="200") == 3


@pytest.fixture
def audio_worker(state_dir: Path) -> Iterator[Settings]:
    """The real audio engine (PyAV) served on its socket; two Whisper replicas configured, none
    running."""
    settings = settings_for(state_dir, REFLECTOR_GPU_WHISPER_REPLICAS="2")
    server = WorkerServer(AudioEngine(settings), settings.queue_size)
    loop = asyncio.new_event_loop()
    path = socket_path(settings, "audio", 0)
    unix_server = loop.run_until_complete(asyncio.start_unix_server(server.handle_connection, path=str(path)))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield settings
    loop.call_soon_threadsafe(unix_server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_worker_gauges_come_from_a_ping_of_each_replica(audio_worker: Settings) -> None:
    with TestClient(create_app(audio_worker)) as client:
        text = scrape(client)
    assert value(text, "reflector_gpu_worker_up", worker="audio", replica="0") == 1
    assert value(text, "reflector_gpu_queue_audio_seconds", worker="audio", replica="0") == 0
    assert value(text, "reflector_gpu_worker_jobs_total", worker="audio", replica="0") == 0
    for replica in ("0", "1"):
        assert value(text, "reflector_gpu_worker_up", worker="whisper", replica=replica) == 0
    assert value(text, "reflector_gpu_worker_up", worker="whisper", replica="2") is None


def test_supervisor_restarts_are_counted(state_dir: Path) -> None:
    settings = settings_for(state_dir)
    supervisor = Supervisor(settings, None)
    supervisor._prepare_dirs()
    assert (state_dir / "run" / "metrics").is_dir()
    crash = [sys.executable, "-c", "raise SystemExit(1)"]
    audio, whisper_1 = Child("audio-0", crash, "audio", 0), Child("whisper-1", crash, "whisper", 1)
    for child in (audio, audio, whisper_1):  # the audio worker dies twice, whisper's replica 1 once
        child.start()
        child.process.wait(30)
        supervisor._watch_worker(child, time.monotonic())
    with TestClient(create_app(settings)) as client:
        text = scrape(client)
    assert value(text, "reflector_gpu_worker_restarts_total", worker="audio") == 2
    assert value(text, "reflector_gpu_worker_restarts_total", worker="whisper") == 1
    assert value(text, "reflector_gpu_worker_restarts_total", worker="diarizer") == 0
