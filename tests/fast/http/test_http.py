"""The HTTP side in-process (fast tier): routes, the key guard, middlewares, error mapping.

The real app (`create_app`) behind Litestar's test client; workers are stub engines behind
the real `WorkerServer` on real Unix sockets (testing/stub_workers.py). No model is loaded.
"""

from __future__ import annotations

import logging
import threading

import anyio
import msgspec
import pytest

from app.errors import FAILURE_KINDS, ClientGone, ServiceError, Unauthorized
from app.http.main import build_app
from app.http.middleware import RequestBody
from app.workers.messages import TranscribeRequest, Transcript, TranslateRequest, Translation, Word
from app.workers.protocol import MAX_FRAME_BYTES, Accepted, encode_frame
from testing.stub_workers import API_KEY, StubEngine, leftovers, make_settings, open_client

pytest_plugins = ["testing.stub_workers"]


def echo_transcript(request: TranscribeRequest, cancel: threading.Event) -> Transcript:
    """One word per request, placed at the request's offset: shows what reached the worker."""
    word = Word(word=f" {request.language}", start=request.timestamp_offset, end=request.timestamp_offset + 0.5)
    return Transcript(text=word.word, words=[word], duration=0.5)


def whisper_stub(handle=echo_transcript, **kwargs) -> StubEngine:
    return StubEngine("whisper", (TranscribeRequest,), handle, **kwargs)


def upload(client, name: str = "a.wav", data: bytes = b"RIFF-not-really", **fields):
    return client.post("/v1/audio/transcriptions", files={"file": (name, data, "audio/wav")}, data=fields)


# -- the key guard ----------------------------------------------------------------------
def test_key_is_required_except_on_open_routes(stub_settings, workers) -> None:
    with open_client(stub_settings, key=None) as anonymous:
        refused = upload(anonymous)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert "REFLECTOR_GPU_APIKEY" in refused.json()["detail"]
        assert upload(anonymous, data=b"x" * 100_000).status_code == 401  # a body it never read
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/ready").status_code == 503  # open, and honest: nothing runs
        assert anonymous.get("/docs/openapi.json").status_code == 200
    with open_client(stub_settings, key="wrong-key") as wrong:
        assert upload(wrong).status_code == 401
    with open_client(make_settings(stub_settings.state_dir, open_routes=frozenset({"translate"})), key=None) as c:
        assert c.post("/translate", params={"text": "hi", "source_language": "en", "target_language": "en"}).status_code == 200
        assert c.post("/diarize", params={"audio_file_url": "http://127.0.0.1:9/a.wav"}).status_code == 401


def test_an_unknown_open_route_name_is_reported_at_start(stub_settings, caplog, monkeypatch) -> None:
    """A misspelt name in REFLECTOR_GPU_OPEN_ROUTES opens nothing; the log says so and lists the names."""
    monkeypatch.setattr("app.http.main.setup_logging", lambda *args: None)  # keep caplog's handler
    with caplog.at_level(logging.WARNING, logger="app.http"):
        build_app(make_settings(stub_settings.state_dir, open_routes=frozenset({"translat", "translate"})))
    [record] = [r for r in caplog.records if "OPEN_ROUTES" in r.getMessage()]
    assert "names no route: translat (" in record.getMessage() and "translate" in record.getMessage().split("route names:")[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.http"):
        build_app(make_settings(stub_settings.state_dir, open_routes=frozenset({"translate"})))
    assert not [r for r in caplog.records if "OPEN_ROUTES" in r.getMessage()]


def test_head_health_answers_200_without_a_body(app_client) -> None:
    response = app_client.head("/health")
    assert response.status_code == 200 and response.content == b""
    get = app_client.get("/health")
    assert get.json() == {"status": "ok"} and response.headers["content-length"] == str(len(get.content))


# -- a request through a stub worker --------------------------------------------------------
def test_upload_reaches_the_worker_and_its_file_is_deleted(app_client, workers, stub_settings, caplog) -> None:
    engine = whisper_stub()
    workers.serve(engine)
    with caplog.at_level(logging.INFO, logger="app.access"):
        answer = upload(app_client, language="de")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"text": " de", "words": [{"word": " de", "start": 0.0, "end": 0.5}], "filename": "a.wav"}
    [request] = engine.requests
    assert request.language == "de" and request.path.startswith(str(stub_settings.tmp_dir))
    assert leftovers(stub_settings) == []
    assert "path=/v1/audio/transcriptions status=200" in caplog.text and "audio_s=0.50" in caplog.text


def test_ready_reports_each_worker(app_client, workers) -> None:
    workers.serve(whisper_stub())
    body = app_client.get("/ready").json()
    assert body["workers"]["whisper"] == "ready" and body["workers"]["translator"] == "not configured"
    assert body["status"] == "loading" and body["workers"]["audio"] == "loading"


@pytest.mark.parametrize("kind", sorted(FAILURE_KINDS))
def test_each_worker_failure_keeps_its_status(app_client, workers, kind: str) -> None:
    cls = FAILURE_KINDS[kind]

    def fail(request, cancel):
        raise cls(f"stub says {kind}", retry_after=3)

    workers.serve(whisper_stub(fail))
    answer = upload(app_client)
    expected = 500 if cls is ServiceError else cls.status
    if cls in (ClientGone,):  # 499 is a log-only code; the stub still answers it
        expected = 499
    assert answer.status_code == expected
    assert answer.json()["detail"] == f"stub says {kind}"
    assert answer.headers["Retry-After"] == "3"
    if cls is Unauthorized:
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_an_unexpected_worker_exception_is_500_naming_its_type_only(app_client, workers) -> None:
    def crash(request, cancel):
        raise KeyError("secret transcript text")

    workers.serve(whisper_stub(crash))
    answer = upload(app_client)
    assert answer.status_code == 500 and answer.json()["detail"] == "the whisper worker failed: KeyError"


def test_a_missing_worker_is_503_with_retry_after(app_client) -> None:
    answer = upload(app_client)  # nothing serves whisper: the 1-s start timeout runs out
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "10"
    assert "whisper worker is not running" in answer.json()["detail"]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(lambda _: encode_frame(Accepted()) + b"\x00\x00\x00\x03abc", id="not-msgpack"),
        pytest.param(lambda _: encode_frame(Accepted()) + encode_frame(Word("x", 0.0, 1.0)), id="wrong-type"),
        pytest.param(lambda _: (MAX_FRAME_BYTES + 1).to_bytes(4, "big"), id="oversized"),
    ],
)
def test_an_unreadable_worker_reply_is_502(app_client, workers, reply) -> None:
    workers.serve_raw("whisper", reply)
    answer = upload(app_client)
    assert answer.status_code == 502
    assert answer.json()["detail"].startswith("the whisper worker sent a reply this server cannot read")


def test_queue_limit_refuses_with_retry_after(app_client, workers) -> None:
    release = threading.Event()
    engine = whisper_stub(release=release)
    workers.serve(engine, queue_size=1)
    results: list = []
    first = threading.Thread(target=lambda: results.append(upload(app_client)))
    first.start()
    try:
        assert engine.started.wait(10)
        refused = upload(app_client)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
        assert "REFLECTOR_GPU_QUEUE_SIZE=1" in refused.json()["detail"]
    finally:
        release.set()
        first.join(10)
    assert results[0].status_code == 200


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        (None, "body: a JSON object is required"),
        ({}, "missing required field `audio_file_url`"),
        ({"audio_file_url": ""}, "audio_file_url"),
        ({"audio_file_url": "ftp://host/a.wav"}, "http:// or https://"),
        ({"audio_file_url": "http://h/a.wav", "timestamp_offset": -1}, "timestamp_offset"),
        ({"audio_file_url": "http://h/a.wav", "timestamp_offset": 1e8}, "timestamp_offset"),
        ({"audio_file_url": "http://h/a.wav", "language": "english!"}, "language"),
    ],
)
def test_from_url_body_errors_name_the_field(app_client, body, phrase: str) -> None:
    answer = app_client.post("/v1/audio/transcriptions-from-url", json=body)
    assert answer.status_code == 400
    assert phrase in answer.json()["detail"]


def test_too_many_multipart_fields_is_413(app_client) -> None:
    fields = {f"f{i}": "x" for i in range(1100)}
    answer = app_client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"x", "audio/wav")}, data=fields)
    assert answer.status_code == 413 and answer.json()["detail"] == "too many multipart fields"


def test_translate_validates_before_saying_no_model(app_client) -> None:
    missing = app_client.post("/translate", json={"source_language": "en", "target_language": "fr"})
    assert missing.status_code == 400 and "no text" in missing.json()["detail"]
    too_long = app_client.post("/translate", params={"text": "x" * 20001})
    assert too_long.status_code == 413
    bad = app_client.post("/translate", params={"text": "hi", "target_language": "xx-notalang"})
    assert bad.status_code == 400 and "target_language" in bad.json()["detail"]
    unconfigured = app_client.post("/translate", params={"text": "hi", "target_language": "de"})
    assert unconfigured.status_code == 503 and "python -m app.models fetch translation" in unconfigured.json()["detail"]


def test_translate_through_a_worker(app_client, workers, stub_settings) -> None:
    engine = StubEngine("translator", (TranslateRequest,), lambda r, c: Translation(text=r.text.upper(), pieces=1))
    workers.serve(engine)
    with open_client(make_settings(stub_settings.state_dir, translation_model="stub")) as client:
        answer = client.post("/translate", params={"text": "hallo", "source_language": "de", "target_language": "en"})
    assert answer.status_code == 200 and answer.json() == {"text": {"de": "hallo", "en": "HALLO"}}
    assert engine.requests == [TranslateRequest("hallo", "de", "en")]


# -- a client that leaves during its upload -----------------------------------------------------
def test_request_body_turns_an_early_disconnect_into_client_gone() -> None:
    """`RequestBody` turns ``http.disconnect`` before the end of the body into `ClientGone`."""
    messages = [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []
    caught: list[BaseException] = []

    async def app(scope, receive, send):
        try:
            while True:
                await receive()
        except ClientGone as exc:
            caught.append(exc)
            await send({"type": "http.response.start", "status": exc.status, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"1000")]}
    anyio.run(RequestBody(app), scope, receive, send)
    assert caught and sent[0]["status"] == 499


@pytest.fixture
def asgi_app(stub_settings):
    """The bare ASGI app (built in set-up: `create_app` sets up logging, which would drop caplog's handler)."""
    from app.http.main import create_app

    return create_app(stub_settings)


def test_upload_disconnect_is_logged_as_499(asgi_app, caplog) -> None:
    """Through the whole app: the multipart parser sees the disconnect; the access line says 499."""
    asgi = asgi_app
    boundary = b"xyz"
    head = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\npartial"
    messages = [{"type": "http.request", "body": head, "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/audio/transcriptions", "raw_path": b"/v1/audio/transcriptions", "query_string": b"",
        "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        "headers": [
            (b"content-type", b"multipart/form-data; boundary=" + boundary),
            (b"content-length", b"100000"),
            (b"authorization", f"Bearer {API_KEY}".encode()),
        ],
    }
    with caplog.at_level(logging.INFO, logger="app.access"):
        anyio.run(asgi, scope, receive, send)
    assert sent[0]["status"] == 499
    assert "status=499" in caplog.text and "status=500" not in caplog.text


def test_the_openapi_document_is_json(app_client) -> None:
    schema = msgspec.json.decode(app_client.get("/docs/openapi.json").content)
    assert "/v1/audio/transcriptions-from-url" in schema["paths"]


# -- routes that download their audio first --------------------------------------------------
def test_from_url_downloads_then_transcribes_with_the_offset(app_client, workers, stub_settings, audio_server) -> None:
    engine = whisper_stub()
    workers.serve(engine)
    url = f"{audio_server.url}/sample.wav?X-Amz-Signature=secret"
    body = {"audio_file_url": url, "timestamp_offset": 12.5, "language": "en"}
    answer = app_client.post("/v1/audio/transcriptions-from-url", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"text": " en", "words": [{"word": " en", "start": 12.5, "end": 13.0}]}
    for language in (None, "auto", ""):  # omitted, auto or empty: detected by the worker
        assert app_client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": url, "language": language}).status_code == 200
    first, *detected = engine.requests
    assert first.timestamp_offset == 12.5 and first.path.startswith(str(stub_settings.tmp_dir))
    # All three ask for detection: one job, then the result store answers (tests/test_recording.py).
    assert first.priority == "recording" and [r.language for r in detected] == [None]
    assert leftovers(stub_settings) == []  # the download was deleted


def test_diarize_answers_public_turns(app_client, workers, stub_settings, audio_server) -> None:
    from app.workers.messages import Diarization, DiarizeRequest
    from app.workers.messages import Turn as WireTurn

    def diarize(request: DiarizeRequest, cancel) -> Diarization:
        return Diarization(diarization=[WireTurn(request.timestamp, request.timestamp + 1.0, 0)], duration=30.0)

    workers.serve(StubEngine("diarizer", (DiarizeRequest,), diarize))
    answer = app_client.post("/diarize", params={"audio_file_url": f"{audio_server.url}/sample.wav", "timestamp": "2.5"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"diarization": [{"start": 2.5, "end": 3.5, "speaker": 0}]}
    missing = app_client.post("/diarize", params={"audio_file_url": f"{audio_server.url}/gone.wav"})
    assert missing.status_code == 404 and "answered 404" in missing.json()["detail"]
    assert leftovers(stub_settings) == []
