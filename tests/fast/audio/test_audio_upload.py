"""PUT uploads to presigned URLs: Content-Length, retries, errors, CA trust; real SeaweedFS."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from app import tls
from app.errors import UpstreamError
from app.settings import Settings
from testing.seaweedfs import put

pytest_plugins = ["testing.seaweedfs"]  # the store servers and the `payload` fixture


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for one upload, with the retries' back-off cut to 10 ms (the attempts, their
    count and their outcomes are what these tests check, not the waiting)."""
    from app.audio import upload as upload_module

    monkeypatch.setattr(upload_module, "BACKOFF_SECONDS", (0.01, 0.01))
    return Settings(state_dir=tmp_path / "state")


def test_test_server_refuses_chunked(put_server):
    """The check below means something: a chunked PUT is refused by this server."""

    def body():
        yield b"abc"

    response = httpx.put(put_server.url("x"), content=body())
    assert response.status_code == 501
    assert put_server.refused == ["chunked"]


def test_sends_content_length_not_chunked(settings, put_server, payload):
    assert put(settings, put_server.url("a.webm"), payload) == payload.stat().st_size
    [received] = put_server.received
    assert received.body == payload.read_bytes()
    assert received.headers["Content-Length"] == str(payload.stat().st_size)
    assert "Transfer-Encoding" not in received.headers
    assert received.headers["Content-Type"] == "audio/webm"
    assert received.path.startswith("/reflector/a.webm?X-Amz-Signature=")


def test_retries_transient_errors(settings, put_server, payload):
    put_server.answers = [503, 500]
    assert put(settings, put_server.url("a.webm"), payload) == payload.stat().st_size
    assert len(put_server.received) == 1  # the third attempt, with the whole body again
    assert put_server.received[0].body == payload.read_bytes()


def test_retries_are_bounded(settings, put_server, payload):
    put_server.answers = [503] * 10
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        put(settings, put_server.url("a.webm"), payload)
    assert time.monotonic() - started < 10
    assert len(put_server.answers) == 7  # three attempts
    port = put_server.url("").split(":")[2].split("/")[0]
    assert caught.value.detail == (
        f"uploading the result (PUT to 127.0.0.1:{port}) failed after 3 attempts: "
        "HTTP 503 Service Unavailable (SlowDown: scripted failure)"
    )
    assert caught.value.status == 502


def test_client_errors_are_not_retried(settings, put_server, payload):
    put_server.answers = [403, 403]
    with pytest.raises(
        UpstreamError, match=r"^uploading the result \(PUT to .*\) failed: HTTP 403"
    ) as caught:
        put(settings, put_server.url("a.webm"), payload)
    assert put_server.answers == [403]
    assert "Signature" not in caught.value.detail and "secret" not in caught.value.detail


def test_store_down(settings, payload):
    with pytest.raises(
        UpstreamError,
        match=r"^uploading the result \(PUT to 127\.0\.0\.1:9\) failed after 3 attempts: cannot connect",
    ):
        put(settings, "http://127.0.0.1:9/bucket/key?X-Amz-Signature=s", payload)


def test_a_store_that_hangs_up_mid_body_is_a_broken_connection(settings, payload):
    """A server that reads the request head and closes (as Python's http.server does for a
    method it lacks): the message says the connection broke, not that it could not connect."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        with pytest.raises(UpstreamError) as caught:
            put(settings, f"http://127.0.0.1:{port}/bucket/key?X-Amz-Signature=s", payload)
    finally:
        listener.close()
    assert caught.value.detail.startswith(
        f"uploading the result (PUT to 127.0.0.1:{port}) failed after 3 attempts: the connection broke"
    ), caught.value.detail


@pytest.fixture(scope="module")
def store_certs(tmp_path_factory) -> Path:
    """A CA and a localhost server certificate made by our own code, as `make cert` writes them."""
    directory = tmp_path_factory.mktemp("store-certs")
    tls.make_cert(directory, "localhost", "IP:127.0.0.1")
    return directory


def test_custom_ca_trust(tmp_path, store_certs, payload, make_put_server):
    server = make_put_server(tls=(store_certs / "server.pem", store_certs / "server-key.pem"))
    url = server.url("a.webm")
    with pytest.raises(
        UpstreamError, match=r"TLS verification failed; trust its CA with REFLECTOR_GPU_EXTRA_CA"
    ):
        put(Settings(state_dir=tmp_path), url, payload)
    assert put(Settings(state_dir=tmp_path, extra_ca=(store_certs / "ca.crt",)), url, payload) > 0
    assert put(Settings(state_dir=tmp_path, tls_dir=store_certs), url, payload) > 0
    assert len(server.received) == 2
