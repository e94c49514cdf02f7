"""``/pad``, ``/mixdown`` and ``/v1/audio/mixdown`` over real HTTPS, with inputs and outputs on a real SeaweedFS."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from testing.audiogen import decode, rms, write_tone, write_video_only
from testing.service import Service
from tests.fast.http.test_request_validation import PAD_OK

pytest_plugins = ["testing.seaweedfs"]

TONE_RMS = 0.5 / np.sqrt(2)


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("tones")
    return {
        "pad": write_tone(directory / "pad.wav", 3.0, 440, 44100, amp=0.5),
        "first": write_tone(directory / "first.webm", 3.0, 440, 48000, amp=0.3, kind="webm-live"),
        "second": write_tone(directory / "second.m4a", 3.0, 1000, 44100, amp=0.2, kind="m4a"),
        "mono": write_tone(directory / "mono.mp3", 1.0, 440, 22050, channels=1, kind="mp3"),
    }


@pytest.fixture(scope="module")
def stored(seaweed, tones) -> dict[str, str]:
    """Presigned GET URLs of the tones uploaded to SeaweedFS."""
    urls = {}
    for name, path in tones.items():
        seaweed.put(f"in/{path.name}", path)
        urls[name] = seaweed.presign_get(f"in/{path.name}")
    return urls


def assert_no_leftovers(service: Service) -> None:
    """The request deleted its downloads and its output."""
    tmp = service.state_dir / "tmp"
    assert not tmp.exists() or [p.name for p in tmp.iterdir()] in ([], ["processes"])


def test_pad_roundtrip(client: httpx.Client, service: Service, seaweed, stored) -> None:
    body = {
        "track_url": stored["pad"],
        "output_url": seaweed.presign_put("out/padded.webm"),
        "start_time_seconds": 1.5,
        "track_index": 0,
    }
    response = client.post("/pad", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    stored_bytes = seaweed.get("out/padded.webm")
    assert data == {"size": len(stored_bytes), "cancelled": False}
    info, samples = decode(stored_bytes)
    assert (info["codec"], info["rate"], info["layout"]) == ("opus", 48000, "stereo")
    assert samples.shape[1] / 48000 == pytest.approx(4.5, abs=0.03)
    assert rms(samples[:, : int(1.4 * 48000)]) < 1e-3
    assert rms(samples[:, int(1.6 * 48000) : int(4.4 * 48000)]) == pytest.approx(TONE_RMS, rel=0.05)
    assert seaweed.head("out/padded.webm")["ContentType"] == "audio/webm"
    assert_no_leftovers(service)


def test_mixdown_roundtrip(client: httpx.Client, service: Service, seaweed, stored) -> None:
    body = {
        # An empty URL is skipped, and its offset does not count as the smallest.
        "track_urls": ["", stored["first"], stored["second"]],
        "offsets_seconds": [0.0, 2.0, 0.5],
        "target_sample_rate": 16000,
        "output_url": seaweed.presign_put("out/mix.mp3"),
    }
    response = client.post("/mixdown", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    stored_bytes = seaweed.get("out/mix.mp3")
    assert data == {"size": len(stored_bytes), "duration_ms": 4500.0, "cancelled": False}
    info, samples = decode(stored_bytes)
    assert (info["codec"], info["rate"]) == ("mp3float", 16000)
    assert samples.shape[1] / 16000 == pytest.approx(4.5, abs=0.03)
    first, second = 0.3 / np.sqrt(2), 0.2 / np.sqrt(2)

    def level(begin: float, end: float) -> float:
        return rms(samples[:, int(begin * 16000) : int(end * 16000)])

    assert level(0.1, 1.4) == pytest.approx(second, rel=0.1)
    assert level(1.6, 2.9) == pytest.approx(np.hypot(first, second), rel=0.1)  # summed, not averaged
    assert level(3.1, 4.4) == pytest.approx(first, rel=0.1)
    assert seaweed.head("out/mix.mp3")["ContentType"] == "audio/mpeg"
    assert_no_leftovers(service)


def test_mixdown_rate_of_first_track(client: httpx.Client, seaweed, stored) -> None:
    body = {
        "track_urls": [stored["mono"], stored["first"]],
        "output_url": seaweed.presign_put("out/mix2.mp3"),
    }
    response = client.post("/mixdown", json=body)
    assert response.status_code == 200, response.text
    info, _ = decode(seaweed.get("out/mix2.mp3"))
    assert info["rate"] == 22050
    assert response.json()["duration_ms"] == pytest.approx(3000, abs=30)


def test_mixdown_v1_reflectors_modal_client_shape(client: httpx.Client, service: Service, seaweed, stored) -> None:
    """``/v1/audio/mixdown`` as Reflector's ``feature/modal-mixdown`` branch calls it."""
    body = {
        "track_urls": [stored["first"], stored["second"]],
        "output_url": seaweed.presign_put("out/mix-v1.mp3"),
        "target_sample_rate": 48000,
        "expected_duration_sec": 3.0,
    }
    response = client.post("/v1/audio/mixdown", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"duration_ms", "tracks_mixed", "audio_uploaded"}
    assert (data["tracks_mixed"], data["audio_uploaded"]) == (2, True)
    assert data["duration_ms"] == pytest.approx(3000, abs=30)
    info, samples = decode(seaweed.get("out/mix-v1.mp3"))
    assert (info["codec"], info["rate"]) == ("mp3float", 48000)
    first, second = 0.3 / np.sqrt(2), 0.2 / np.sqrt(2)
    assert rms(samples[:, int(0.2 * 48000) : int(2.8 * 48000)]) == pytest.approx(np.hypot(first, second), rel=0.1)
    assert_no_leftovers(service)
    # Without a rate the mix is 48 kHz (Reflector's default), whatever the tracks' rates.
    body = {"track_urls": [stored["mono"], ""], "output_url": seaweed.presign_put("out/mix-v1b.mp3")}
    response = client.post("/v1/audio/mixdown", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["tracks_mixed"] == 1
    assert decode(seaweed.get("out/mix-v1b.mp3"))[0]["rate"] == 48000


def test_inputs_that_are_not_audio(
    client: httpx.Client, service: Service, seaweed, audio_server, tmp_path
) -> None:
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"definitely not audio\n" * 500)
    video = write_video_only(tmp_path / "video.mkv")
    output = seaweed.presign_put("out/never.webm")
    response = client.post(
        "/pad", json={**PAD_OK, "track_url": audio_server.add("junk.webm", junk), "output_url": output}
    )
    assert response.status_code == 400
    assert (
        response.json()["detail"] == "the track cannot be decoded: Invalid data found when processing input"
    )
    response = client.post(
        "/pad", json={**PAD_OK, "track_url": audio_server.add("video.mkv", video), "output_url": output}
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "the track has no audio stream"
    good = audio_server.add("good.wav", write_tone(tmp_path / "good.wav", 0.5, 440, 16000))
    response = client.post(
        "/mixdown", json={"track_urls": [good, "", f"{audio_server.url}/junk.webm"], "output_url": output}
    )
    assert response.status_code == 400
    assert response.json()["detail"].startswith("track 2 cannot be decoded: Invalid data")
    with pytest.raises(Exception, match="Not Found|404"):
        seaweed.head("out/never.webm")
    assert_no_leftovers(service)


def test_source_not_found(client: httpx.Client, seaweed, audio_server) -> None:
    response = client.post(
        "/mixdown",
        json={
            "track_urls": [f"{audio_server.url}/missing.webm?X-Amz-Signature=abc"],
            "output_url": seaweed.presign_put("out/x.mp3"),
        },
    )
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail.startswith("track 0: ") and "404" in detail and "abc" not in detail


def test_store_down_and_bad_signatures(client: httpx.Client, service: Service, seaweed, stored) -> None:
    body = {"track_url": stored["mono"], "start_time_seconds": 0.5, "track_index": 1}
    response = client.post(
        "/pad", json={**body, "output_url": "http://127.0.0.1:9/reflector/out.webm?X-Amz-Signature=abc"}
    )
    assert response.status_code == 502
    assert response.json()["detail"].startswith(
        "uploading the result (PUT to 127.0.0.1:9) failed after 3 attempts: cannot connect"
    )

    expired = seaweed.presign_put("out/expired.webm", expires=1)
    time.sleep(1.5)
    response = client.post("/pad", json={**body, "output_url": expired})
    assert response.status_code == 502
    detail = response.json()["detail"]
    assert detail.startswith("uploading the result (PUT to 127.0.0.1:")
    assert detail.endswith("failed: HTTP 403 Forbidden (AccessDenied: Request has expired)")

    tampered = seaweed.presign_put("out/tampered.webm").replace("X-Amz-Signature=", "X-Amz-Signature=0")
    response = client.post("/pad", json={**body, "output_url": tampered})
    assert response.status_code == 502
    assert "PUT to 127.0.0.1:" in response.json()["detail"]
    assert "SignatureDoesNotMatch" in response.json()["detail"]
    assert_no_leftovers(service)


def test_object_store_behind_the_hosts_ca(
    client: httpx.Client, cert_dir: Path, make_put_server, stored
) -> None:
    """An HTTPS store whose certificate comes from the CA in REFLECTOR_GPU_TLS_DIR; no chunked body."""
    store = make_put_server(tls=(cert_dir / "server.pem", cert_dir / "server-key.pem"))
    response = client.post(
        "/pad",
        json={
            "track_url": stored["mono"],
            "output_url": store.url("out.webm"),
            "start_time_seconds": 2.0,
            "track_index": 0,
        },
    )
    assert response.status_code == 200, response.text
    [received] = store.received
    assert received.headers["Content-Length"] == str(response.json()["size"]) == str(len(received.body))
    assert "Transfer-Encoding" not in received.headers
    _, samples = decode(received.body)
    assert samples.shape[1] / 48000 == pytest.approx(3.0, abs=0.03)


def test_audio_worker_killed_during_a_job(service: Service, seaweed, stored, tmp_path) -> None:
    """503 for the request the worker held, nothing left on disk, and the next request works."""
    long_track = write_tone(tmp_path / "long.wav", 300.0, 440, 16000, channels=1)
    seaweed.put("in/long.wav", long_track)
    body = {
        "track_url": seaweed.presign_get("in/long.wav"),
        "output_url": seaweed.presign_put("out/long.webm"),
        "start_time_seconds": 1.0,
        "track_index": 0,
    }
    client = service.client()
    response = service.kill_worker_mid_request("audio", lambda: client.post("/pad", json=body))
    assert response.status_code == 503, response.text
    assert "audio worker" in response.json()["detail"]
    assert_no_leftovers(service)
    response = client.post("/pad", json={**body, "track_url": stored["mono"]})
    assert response.status_code == 200, response.text
