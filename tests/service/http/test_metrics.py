"""``GET /metrics``: names, values that move, access per REFLECTOR_GPU_METRICS, Granian
workers adding up (multiprocess mode), worker gauges from a real worker, restart counts from
the supervisor, and (slow) the whole service after a real transcription."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import settings as settings_module
from app import tls
from app.supervision import rundir
from testing.prometheus import value
from testing.service import Service


def test_the_service_counts_a_transcription_across_its_processes(service: Service, sample_wav: Path) -> None:
    """The whole service (Granian in multiprocess mode, real workers): a real transcription
    moves the request, duration and audio counters; every worker is up; the expiry is the
    certificate the service presents."""
    with service.client() as client:
        before = client.get("/metrics").text
        response = client.post("/v1/audio/transcriptions", files={"file": ("sample.wav", sample_wav.read_bytes())})
        assert response.status_code == 200, response.text
        response = client.get("/metrics")
    assert response.status_code == 200
    after = response.text
    assert list((service.state_dir / "run" / "metrics").glob("*.db")), "Granian is not in multiprocess mode"
    route = {"route": "transcriptions"}
    moved = (value(after, "reflector_gpu_requests_total", status="200", **route) or 0) - (
        value(before, "reflector_gpu_requests_total", status="200", **route) or 0
    )
    assert moved == 1
    audio = (value(after, "reflector_gpu_audio_seconds_total", **route) or 0) - (
        value(before, "reflector_gpu_audio_seconds_total", **route) or 0
    )
    assert audio == pytest.approx(30.0, abs=1.5)  # pyannote's sample.wav lasts 30 s
    for kind in ("whisper", "diarizer", "audio"):
        assert value(after, "reflector_gpu_worker_up", worker=kind, replica="0") == 1, kind
    served = tls._load_chain(rundir.serving_cert(settings_module.load({"REFLECTOR_GPU_STATE_DIR": str(service.state_dir)})))[0]
    assert value(after, "reflector_gpu_tls_certificate_expiry_timestamp_seconds") == served.not_valid_after_utc.timestamp()
    with service.client(key=None) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
