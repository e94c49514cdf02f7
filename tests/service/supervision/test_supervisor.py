"""The entrypoint's supervision: certificate renewal without dropping the listener, clean stops."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from app import tls
from app.audio.decode import decode_mono
from testing.service import (
    pyannote_sample_dir,
    queued_seconds,
    running_service,
    start_service,
    strict_context,
    wait_for,
    write_wav,
)


def served_fingerprint(port: int, ca_file: Path) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with strict_context(ca_file).wrap_socket(raw, server_hostname="localhost") as conn:
            return hashlib.sha256(conn.getpeercert(binary_form=True)).hexdigest()


def _replace(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".new")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def test_certificate_swap_is_served_and_a_broken_swap_is_ignored(tmp_path: Path) -> None:
    issued = tmp_path / "issued"
    tls.make_cert(issued, "localhost", "IP:127.0.0.1")
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.pem", "server-key.pem"):
        shutil.copyfile(issued / name, live / name)
    ca_file = issued / "ca.crt"
    with running_service(
        None, REFLECTOR_GPU_TLS="files", REFLECTOR_GPU_TLS_CERT=str(live / "server.pem"),
        REFLECTOR_GPU_TLS_KEY=str(live / "server-key.pem"), ca_file=ca_file,
    ) as service:
        port = int(service.base_url.rsplit(":", 1)[1])
        client = service.client(key=None, timeout=10)
        before = served_fingerprint(port, ca_file)

        tls.make_cert(issued, "localhost", "IP:127.0.0.1")  # a renewal from the same CA
        _replace(issued / "server-key.pem", live / "server-key.pem")
        _replace(issued / "server.pem", live / "server.pem")
        renewed = before
        deadline = time.monotonic() + 30
        while renewed == before and time.monotonic() < deadline:
            assert client.get("/health").status_code == 200  # the listener never drops
            time.sleep(0.5)
            renewed = served_fingerprint(port, ca_file)
        assert renewed != before, service.log()
        assert "certificate renewed" in service.log()

        (live / "server.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        deadline = time.monotonic() + 12
        while "rejected" not in service.log() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "new certificate files rejected" in service.log()
        assert served_fingerprint(port, ca_file) == renewed
        assert client.get("/health").status_code == 200


def test_sigterm_stops_everything_within_ten_seconds(cert_dir: Path) -> None:
    service = start_service(cert_dir)
    try:
        children = service.child_pids("")
        assert len(children) >= 2  # a model worker and Granian
        started = time.monotonic()
        status = service.stop()
        assert status == 0
        assert time.monotonic() - started < 10
        assert all(not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text() for pid in children)
        assert not (service.state_dir / "run" / "whisper-0.sock").exists()
    finally:
        service.stop()
        shutil.rmtree(service.state_dir, ignore_errors=True)


def test_a_request_longer_than_the_drain_gets_503_not_a_cut_connection(cert_dir: Path, tmp_path: Path, audio_server) -> None:
    """SIGTERM while a 10-minute recording is being transcribed: the service stops within
    10 s and the request gets an answer: a JSON 503 once the drain time is over (the
    workers are stopped before Granian), never a dropped connection or a traceback."""
    audio = decode_mono(pyannote_sample_dir() / "sample.wav")
    url = audio_server.add("stop-10min.wav", write_wav(tmp_path / "10min.wav", np.tile(audio, 20)))
    service = start_service(cert_dir, ORPHAN_SECONDS="0")
    outcome: list[object] = []

    def transcribe() -> None:
        try:
            outcome.append(service.client(timeout=60).post(
                "/v1/audio/transcriptions-from-url", json={"audio_file_url": url, "timestamp_offset": 7.0}
            ))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    try:
        thread = threading.Thread(target=transcribe)
        thread.start()
        assert wait_for(lambda: queued_seconds(service) > 60), service.log()  # its pieces are queued
        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)  # as `podman stop`; the client stays connected
        assert service.process.wait(20) == 0
        elapsed = time.monotonic() - started
        thread.join(30)
        log = service.log()
        assert elapsed < 10, log
        [response] = outcome
        assert isinstance(response, httpx.Response), f"{response!r}\n{log}"
        assert response.status_code == 503 and "detail" in response.json()
        assert "Traceback" not in log and "Exception in callback" not in log, log
    finally:
        service.stop()
        shutil.rmtree(service.state_dir, ignore_errors=True)


def test_children_stop_when_the_supervisor_is_killed(cert_dir: Path) -> None:
    service = start_service(cert_dir)
    try:
        children = service.child_pids("")
        assert len(children) >= 2
        service.process.kill()  # SIGKILL: the supervisor cannot forward anything
        service.process.wait()
        deadline = time.monotonic() + 15
        alive = children
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
                     and "zombie" not in Path(f"/proc/{pid}/status").read_text()]
        assert not alive, f"children outlived the supervisor: {alive}"
    finally:
        service.stop()
        shutil.rmtree(service.state_dir, ignore_errors=True)
