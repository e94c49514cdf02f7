"""Recording routes and the result store in-process (fast tier): stub workers, real sockets.

What keys a result (the audio's bytes and the parameters, not the URL), the
``Idempotency-Key`` header, the store turned off, and a job that outlives its client (or,
with ``REFLECTOR_GPU_ORPHAN_SECONDS=0``, does not).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import msgspec

from app.results import ResultStore, results_dir
from app.workers.messages import TranscribeRequest, Transcript, Word
from testing.stub_workers import API_KEY, StubEngine, leftovers, make_settings, open_client

pytest_plugins = ["testing.stub_workers"]
ROUTE = "/v1/audio/transcriptions-from-url"


def echo_transcript(request: TranscribeRequest, cancel: threading.Event) -> Transcript:
    word = Word(word=f" {request.language}", start=request.timestamp_offset, end=request.timestamp_offset + 0.5)
    return Transcript(text=word.word, words=[word], duration=30.0)


def test_the_same_audio_at_another_url_is_answered_from_the_store(app_client, workers, stub_settings, audio_server, caplog) -> None:
    engine = StubEngine("whisper", (TranscribeRequest,), echo_transcript)
    workers.serve(engine)
    with caplog.at_level(logging.INFO, logger="app.access"):
        first = app_client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/sample.wav?X-Amz-Signature=1"})
        again = app_client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/redirect"})  # same bytes
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert len(engine.requests) == 1
    assert "result=stored" in caplog.text.splitlines()[-1] and "audio_s=30.00" in caplog.text.splitlines()[-1]
    shifted = app_client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/sample.wav", "timestamp_offset": 4.0})
    german = app_client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/sample.wav", "language": "de"})
    assert shifted.json()["words"][0]["start"] == 4.0 and german.json()["text"] == " de"
    assert len(engine.requests) == 3  # other parameters are other results
    assert leftovers(stub_settings) == []


def test_idempotency_key_is_answered_before_downloading(app_client, workers, audio_server) -> None:
    engine = StubEngine("whisper", (TranscribeRequest,), echo_transcript)
    workers.serve(engine)
    key = {"Idempotency-Key": "recording-7-track-1"}
    first = app_client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/sample.wav"}, headers=key)
    # The URL now answers 404, but the key names a result that is kept: nothing is downloaded.
    again = app_client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/gone.wav"}, headers=key)
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert app_client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/gone.wav"}).status_code == 404
    other = app_client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/gone.wav", "language": "de"}, headers=key)
    assert other.status_code == 404  # the same key with other parameters is another result
    assert len(engine.requests) == 1


def test_ttl_zero_keeps_nothing(workers, stub_settings, audio_server) -> None:
    engine = StubEngine("whisper", (TranscribeRequest,), echo_transcript)
    workers.serve(engine)
    off = make_settings(stub_settings.state_dir, result_ttl_seconds=0.0)
    with open_client(off) as client:
        for _ in range(2):
            assert client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/sample.wav"}).status_code == 200
    assert len(engine.requests) == 2 and not results_dir(off).exists()


def _scope(body: bytes) -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": ROUTE, "raw_path": ROUTE.encode(), "query_string": b"", "root_path": "",
        "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {API_KEY}".encode()),
        ],
    }


async def _leaving_client(app, body: bytes, started: threading.Event) -> int:
    """POST `body` and leave as soon as the worker started the job; returns the status sent."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        while not started.is_set():
            await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(_scope(body), receive, send)
    return sent[0]["status"]


def test_a_recording_job_outlives_its_client_and_the_retry_collects_it(workers, stub_settings, audio_server) -> None:
    from app.http.main import create_app

    release = threading.Event()
    cancelled: list[bool] = []

    def transcribe(request: TranscribeRequest, cancel: threading.Event) -> Transcript:
        cancelled.append(cancel.is_set())
        return echo_transcript(request, cancel)

    engine = StubEngine("whisper", (TranscribeRequest,), transcribe, release=release)
    workers.serve(engine)
    app = create_app(stub_settings)
    store = ResultStore.open(stub_settings)
    assert store is not None

    async def scenario() -> None:
        body = json.dumps({"audio_file_url": f"{audio_server.url}/sample.wav?sig=first", "language": "en"}).encode()
        assert await _leaving_client(app, body, engine.started) == 499
        release.set()  # the job goes on without its client and is kept
        for _ in range(500):
            if any(store.root.glob("*.entry")):
                break
            await asyncio.sleep(0.01)
        assert any(store.root.glob("*.entry"))

    asyncio.run(scenario())
    assert cancelled == [False]
    with open_client(stub_settings) as client:
        retry = client.post(ROUTE, json={"audio_file_url": f"{audio_server.url}/sample.wav?sig=second", "language": "en"})
    assert retry.status_code == 200 and msgspec.json.decode(retry.content)["text"] == " en"
    assert len(engine.requests) == 1 and leftovers(stub_settings) == []


def test_orphan_seconds_zero_cancels_at_once(workers, stub_settings, audio_server) -> None:
    from app.http.main import create_app

    release = threading.Event()
    cancelled: list[bool] = []
    done = threading.Event()

    def transcribe(request: TranscribeRequest, cancel: threading.Event) -> Transcript:
        cancelled.append(cancel.is_set())
        done.set()
        return echo_transcript(request, cancel)

    engine = StubEngine("whisper", (TranscribeRequest,), transcribe, release=release)
    workers.serve(engine)
    settings = make_settings(stub_settings.state_dir, orphan_seconds=0.0)
    app = create_app(settings)

    async def scenario() -> int:
        body = json.dumps({"audio_file_url": f"{audio_server.url}/sample.wav"}).encode()
        status = await _leaving_client(app, body, engine.started)
        await asyncio.sleep(0.3)  # the worker sees the hang-up and sets the job's cancel event
        release.set()
        return status

    assert asyncio.run(scenario()) == 499
    assert done.wait(10) and cancelled == [True]
    assert not list(results_dir(settings).glob("*.entry"))
