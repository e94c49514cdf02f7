"""The two transcription routes over real HTTPS, called as Reflector calls them."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import jiwer
import numpy as np
import pytest

from testing.service import Service, running_service, strict_context, write_wav


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text.lower())).strip()


def assert_word_times(words: list[dict], minimum: float = 0.0) -> None:
    for word in words:
        assert set(word) == {"word", "start", "end"}
        assert minimum <= word["start"] <= word["end"]
        assert round(word["start"], 2) == word["start"] and round(word["end"], 2) == word["end"]
    for current, following in zip(words, words[1:]):
        assert current["start"] <= following["start"]
        assert current["end"] <= following["start"]


@pytest.fixture(scope="module")
def silence_wav(tmp_path_factory) -> Path:
    return write_wav(tmp_path_factory.mktemp("audio") / "silence.wav", np.zeros(16000 * 10, dtype=np.float32))


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory, sample_wav: Path) -> Path:
    """The first 0.2 s of speech in the sample (Diane's "Hello?" starts at 6.68 s)."""
    from app.audio.decode import decode_mono

    audio = decode_mono(sample_wav)
    return write_wav(tmp_path_factory.mktemp("audio") / "short.wav", audio[int(6.7 * 16000) : int(6.9 * 16000)])


def test_openai_sdk_transcribes_the_sample(service: Service, sample_wav: Path, sample_words: list[str]) -> None:
    """Reflector's live path: the OpenAI SDK with verbose_json and word timestamps."""
    import openai

    http_client = httpx.Client(verify=strict_context(service.ca_file))
    sdk = openai.OpenAI(api_key=service.api_key, base_url=service.base_url + "/v1", http_client=http_client)
    with sample_wav.open("rb") as audio:
        result = sdk.audio.transcriptions.create(
            file=audio,
            model="whisper-1",
            response_format="verbose_json",
            language="en",
            timestamp_granularities=["word"],
        )
    data = result.model_dump()
    assert data["filename"] == "sample.wav"
    wer = jiwer.wer(normalise(" ".join(sample_words)), normalise(data["text"]))
    print(f"tiny.en WER on sample.wav: {wer:.3f}")
    assert wer <= 0.20
    words = data["words"]
    assert len(words) > 50
    assert_word_times(words)
    assert normalise(" ".join(w["word"] for w in words)) == normalise(data["text"])


def test_several_files_answer_results_in_order(client: httpx.Client, sample_wav: Path, silence_wav: Path) -> None:
    files = [
        ("files", ("first.wav", silence_wav.read_bytes(), "audio/wav")),
        ("files", ("second.wav", sample_wav.read_bytes(), "audio/wav")),
    ]
    response = client.post("/v1/audio/transcriptions", files=files, data={"batch": "true", "language": "en"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["first.wav", "second.wav"]
    assert results[0]["text"] == "" and results[0]["words"] == []
    assert "chicago" in results[1]["text"].lower()


def test_single_entry_under_files_answers_one_object(client: httpx.Client, silence_wav: Path) -> None:
    response = client.post("/v1/audio/transcriptions", files=[("files", ("a.wav", silence_wav.read_bytes()))])
    assert response.status_code == 200
    assert response.json() == {"text": "", "words": [], "filename": "a.wav"}


def test_short_clip_is_padded_and_transcribed(client: httpx.Client, short_clip: Path) -> None:
    response = client.post("/v1/audio/transcriptions", files={"file": ("short.wav", short_clip.read_bytes())})
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"text", "words", "filename"}


@pytest.mark.parametrize(
    ("name", "content", "fields", "status", "phrase"),
    [
        ("empty.wav", b"", {}, 400, "empty"),
        ("noise.wav", b"this is certainly not a RIFF file" * 40, {}, 400, "decode"),
        ("notes.txt", b"hello", {}, 400, "mp3, mp4, mpeg, mpga, m4a, wav, webm"),
        ("a.wav", None, {"batch": "true"}, 400, "files"),
        ("a.wav", None, {"language": "tlh"}, 400, "supports: en"),
        ("a.wav", None, {"batch": "maybe"}, 400, "batch: Expected `bool`, got `str` (true or false)"),
    ],
)
def test_bad_uploads_get_json_errors(
    client: httpx.Client, silence_wav: Path, name: str, content: bytes | None, fields: dict, status: int, phrase: str
) -> None:
    content = silence_wav.read_bytes() if content is None else content
    response = client.post("/v1/audio/transcriptions", files={"file": (name, content)}, data=fields)
    assert response.status_code == status, response.text
    assert phrase in response.json()["detail"]


def test_form_fields_that_are_not_utf8_are_400(client: httpx.Client, silence_wav: Path) -> None:
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\n".encode()
        + b"\x80\x81\r\n"
        + f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n".encode()
        + silence_wav.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client.post(
        "/v1/audio/transcriptions", content=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 400, response.text
    assert "UTF-8" in response.json()["detail"]


def test_no_file_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/audio/transcriptions", data={"model": "whisper-1"})
    assert response.status_code == 400
    assert "file" in response.json()["detail"]


def test_from_url_shifts_words_by_the_offset(client: httpx.Client, audio_server) -> None:
    url = f"{audio_server.url}/sample.wav?X-Amz-Signature=secret"
    plain = client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": url})
    shifted = client.post(
        "/v1/audio/transcriptions-from-url",
        json={"audio_file_url": url, "timestamp_offset": 100.0, "language": "en", "model": "x", "batch": True},
    )
    assert plain.status_code == shifted.status_code == 200, shifted.text
    a, b = plain.json(), shifted.json()
    assert set(b) == {"text", "words"}
    assert a["text"] == b["text"] and len(a["words"]) == len(b["words"]) > 50
    assert_word_times(b["words"], minimum=100.0)
    for before, after in zip(a["words"], b["words"]):
        assert after["start"] == pytest.approx(before["start"] + 100.0, abs=0.011)


def test_from_url_follows_redirects(client: httpx.Client, audio_server) -> None:
    response = client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": f"{audio_server.url}/redirect"})
    assert response.status_code == 200
    assert "chicago" in response.json()["text"].lower()


@pytest.mark.parametrize(
    ("path", "status", "phrase"),
    [("/missing.wav?sig=secret", 404, "404"), ("/error500?sig=secret", 502, "500"), ("/loop?sig=secret", 502, "redirected")],
)
def test_from_url_source_failures(client: httpx.Client, audio_server, service: Service, path: str, status: int, phrase: str) -> None:
    response = client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": audio_server.url + path})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert phrase in detail and "127.0.0.1" in detail
    assert "secret" not in detail and "secret" not in service.log()


def test_from_url_unreachable_host_names_it(client: httpx.Client) -> None:
    from testing.service import free_port

    url = f"http://127.0.0.1:{free_port()}/audio.wav"
    response = client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": url})
    assert response.status_code == 502
    assert "127.0.0.1" in response.json()["detail"]


def test_wrong_or_missing_key_is_401(service: Service, silence_wav: Path) -> None:
    for key in (None, "wrong-key"):
        response = service.client(key=key).post("/v1/audio/transcriptions", files={"file": ("a.wav", silence_wav.read_bytes())})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "API key" in response.json()["detail"]
    lower = service.client(key=None, timeout=60)
    lower.headers["Authorization"] = f"bearer {service.api_key}"
    assert lower.post("/v1/audio/transcriptions", files={"file": ("a.wav", silence_wav.read_bytes())}).status_code == 200


def test_docs_health_ready_are_open(service: Service) -> None:
    anonymous = service.client(key=None)
    assert anonymous.get("/docs").status_code == 200
    assert anonymous.get("/docs/openapi.json").json()["paths"]["/v1/audio/transcriptions-from-url"]
    assert anonymous.get("/health").json() == {"status": "ok"}
    ready = anonymous.get("/ready").json()
    assert ready["status"] == "ready" and ready["workers"]["whisper"] == "ready"


def _whisper_pid(service: Service) -> int:
    pids = service.child_pids("app.workers.server whisper")
    assert len(pids) == 1, pids
    return pids[0]


def test_worker_killed_between_requests_is_restarted(cert_dir: Path, silence_wav: Path) -> None:
    with running_service(cert_dir) as service:
        client = service.client()
        files = {"file": ("a.wav", silence_wav.read_bytes())}
        assert client.post("/v1/audio/transcriptions", files=files).status_code == 200
        import os

        os.kill(_whisper_pid(service), signal.SIGKILL)
        response = client.post("/v1/audio/transcriptions", files=files)
        assert response.status_code == 200, response.text


def test_worker_killed_during_a_request_gives_503(cert_dir: Path, sample_wav: Path) -> None:
    with running_service(cert_dir) as service:
        client = service.client()
        response = service.kill_worker_mid_request(
            "whisper", lambda: client.post("/v1/audio/transcriptions", files={"file": ("s.wav", sample_wav.read_bytes())})
        )
        assert response.status_code == 503
        assert "worker" in response.json()["detail"]
        service.wait_ready()
        assert "restart 1" in service.log()


def test_limits_and_an_open_host(cert_dir: Path, sample_wav: Path, audio_server) -> None:
    """Small limits answer 413; with no key configured the host is open."""
    with running_service(
        cert_dir,
        api_key=None,
        REFLECTOR_GPU_MAX_UPLOAD_BYTES="300000",
        REFLECTOR_GPU_MAX_DOWNLOAD_BYTES="300000",
        REFLECTOR_GPU_MAX_AUDIO_SECONDS="5",
        REFLECTOR_GPU_DOWNLOAD_TIMEOUT="2",
        REFLECTOR_GPU_QUEUE_SIZE="1",
    ) as service:
        assert "ANYONE" in service.log()
        client = service.client(key=None)
        big = client.post("/v1/audio/transcriptions", files={"file": ("s.wav", sample_wav.read_bytes())})
        assert big.status_code == 413 and "REFLECTOR_GPU_MAX_UPLOAD_BYTES" in big.json()["detail"]
        download = client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": f"{audio_server.url}/sample.wav"})
        assert download.status_code == 413 and "REFLECTOR_GPU_MAX_DOWNLOAD_BYTES" in download.json()["detail"]
        slow = client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": f"{audio_server.url}/slow"})
        assert slow.status_code == 504 and "127.0.0.1" in slow.json()["detail"]
        from app.audio.decode import decode_mono

        seven_seconds = write_wav(service.state_dir / "seven.wav", decode_mono(sample_wav)[: 7 * 16000])
        too_long = client.post("/v1/audio/transcriptions", files={"file": ("seven.wav", seven_seconds.read_bytes())})
        assert too_long.status_code == 413 and "REFLECTOR_GPU_MAX_AUDIO_SECONDS" in too_long.json()["detail"]

        # A queue of one: while one job runs, the next is refused with Retry-After.
        four_seconds = write_wav(service.state_dir / "four.wav", decode_mono(sample_wav)[6 * 16000 : 10 * 16000])
        from concurrent.futures import ThreadPoolExecutor

        def post(_: int):
            return client.post("/v1/audio/transcriptions", files={"file": ("four.wav", four_seconds.read_bytes())})

        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(post, range(4)))
        assert 200 in [r.status_code for r in statuses]
        refused = [r for r in statuses if r.status_code == 503]
        assert refused and all(int(r.headers["retry-after"]) > 0 for r in refused)
        assert "queued" in refused[0].json()["detail"]


def test_wrong_key_with_a_body_gets_its_401_over_http2(service: Service, sample_wav: Path) -> None:
    """The guard reads the upload before answering, so the client sees the 401, not a reset."""
    with httpx.Client(base_url=service.base_url, verify=strict_context(service.ca_file), http2=True, timeout=30) as c:
        for _ in range(5):
            response = c.post(
                "/v1/audio/transcriptions",
                headers={"Authorization": "Bearer wrong"},
                files={"file": ("s.wav", sample_wav.read_bytes())},
            )
            assert response.http_version == "HTTP/2" and response.status_code == 401


def test_head_answers_without_a_body_over_http2(service: Service) -> None:
    """h2 is a test dependency (pyproject): without it httpx raises instead of skipping."""
    with httpx.Client(base_url=service.base_url, verify=strict_context(service.ca_file), http2=True, timeout=10) as c:
        response = c.head("/health")
        assert response.http_version == "HTTP/2" and response.status_code == 200 and response.content == b""
        assert int(response.headers["content-length"]) == len(c.get("/health").content)
