"""The worker wire and the HTTP side's client (fast tier): frames, retries while a worker
starts, a worker that dies holding a job, a client that leaves."""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import numpy as np
import pytest

from app.audio.decode import stated_seconds
from app.errors import Unavailable, WorkerReplyInvalid
from app.workers import client
from app.workers.messages import Diarization, DiarizeRequest, TranscribeRequest, Transcript
from app.workers.protocol import (
    MAX_FRAME_BYTES,
    Accepted,
    Failure,
    FrameTooLarge,
    Pong,
    encode_frame,
    read_frame,
)
from testing.audiogen import write_tone
from testing.service import write_wav
from testing.stub_workers import StubEngine

pytest_plugins = ["testing.stub_workers"]


def feed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def test_frames_round_trip_and_refuse_oversized_lengths() -> None:
    async def run() -> None:
        body = await read_frame(feed(encode_frame(Failure("BadRequest", "why", 3))))
        assert msgspec.msgpack.decode(body, type=Failure) == Failure("BadRequest", "why", 3)
        assert await read_frame(feed(b"")) is None  # closed before a frame
        assert await read_frame(feed(b"\x00\x00\x00\x09abc")) is None  # closed mid-frame
        with pytest.raises(FrameTooLarge):
            await read_frame(feed((MAX_FRAME_BYTES + 1).to_bytes(4, "big")))

    asyncio.run(run())


def transcript(request, cancel) -> Transcript:
    return Transcript(text="ok", words=[], duration=1.0)


def call(settings) -> Transcript:
    return asyncio.run(client.call(settings, "whisper", TranscribeRequest(path="/x"), Transcript))


def test_the_client_waits_for_a_starting_worker(workers, stub_settings) -> None:
    settings = msgspec.structs.replace(stub_settings, worker_start_timeout=10.0)
    later = threading.Timer(0.5, lambda: workers.serve(StubEngine("whisper", (TranscribeRequest,), transcript)))
    later.start()
    started = time.monotonic()
    assert call(settings).text == "ok"
    assert time.monotonic() - started >= 0.4  # it really waited for the socket
    later.join()


def test_a_refusal_before_accepted_is_retried(workers, stub_settings) -> None:
    """A worker that closes without `Accepted` never queued the job: the client tries again."""
    attempts = []

    def respond(received: bytes) -> bytes:
        attempts.append(received)
        if len(attempts) < 3:
            return b""  # close at once, as a dying worker's socket does
        return encode_frame(Accepted()) + encode_frame(Transcript(text="third", words=[], duration=0.0))

    workers.serve_raw("whisper", respond)
    settings = msgspec.structs.replace(stub_settings, worker_start_timeout=10.0)
    assert call(settings).text == "third" and len(attempts) == 3


def test_a_worker_gone_after_accepted_is_503_without_retry(workers, stub_settings) -> None:
    attempts = []

    def respond(received: bytes) -> bytes:
        attempts.append(received)
        return encode_frame(Accepted())  # then the connection closes: the worker died

    workers.serve_raw("whisper", respond)
    with pytest.raises(Unavailable, match="stopped while handling this request") as caught:
        call(stub_settings)
    assert caught.value.retry_after == 5 and len(attempts) == 1


def test_an_unreadable_reply_is_worker_reply_invalid(workers, stub_settings) -> None:
    workers.serve_raw("whisper", lambda _: encode_frame(Pong(kind="whisper", model="m", device="cpu")))
    with pytest.raises(WorkerReplyInvalid) as caught:
        call(stub_settings)
    assert caught.value.status == 502


def test_ping_answers_the_pong_or_none(workers, stub_settings) -> None:
    assert asyncio.run(client.ping(stub_settings, "whisper")) is None  # nothing listens
    server = workers.serve(StubEngine("whisper", (TranscribeRequest,), transcript))
    pong = asyncio.run(client.ping(stub_settings, "whisper"))
    assert pong is not None and pong.kind == "whisper" and pong.busy == server.pending == 0
    workers.stop("whisper")
    workers.serve_raw("whisper", lambda _: b"\x00\x00\x00\x01\xc1")  # not msgpack
    assert asyncio.run(client.ping(stub_settings, "whisper")) is None


def test_a_client_that_leaves_cancels_the_job(workers, stub_settings) -> None:
    seen: list[bool] = []

    def handle(request, cancel: threading.Event) -> Transcript:
        seen.append(cancel.wait(10))  # set by the worker when the client hangs up
        return transcript(request, cancel)

    engine = StubEngine("whisper", (TranscribeRequest,), handle)
    workers.serve(engine)

    async def leave_early() -> None:
        task = asyncio.ensure_future(client.call(stub_settings, "whisper", TranscribeRequest(path="/x"), Transcript))
        while not engine.started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave_early())
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert seen == [True]


class AudioStubEngine(StubEngine):
    """A plain engine that states its requests' audio, as the diarizer does."""

    def audio_seconds(self, request: DiarizeRequest) -> float:
        return stated_seconds(request.path)


def first_frame(settings, kind: str, request: msgspec.Struct) -> msgspec.Struct:
    """The first message a worker sends back for `request`, read off a raw connection."""
    from app.workers.protocol import Accepted, encode_frame, read_frame
    from app.supervision.rundir import socket_path

    async def exchange() -> bytes | None:
        reader, writer = await asyncio.open_unix_connection(str(socket_path(settings, kind)))
        try:
            writer.write(encode_frame(request))
            await writer.drain()
            return await read_frame(reader)
        finally:
            writer.close()

    body = asyncio.run(exchange())
    assert body is not None
    return msgspec.msgpack.decode(body, type=Accepted | Failure)


def test_a_plain_engine_counts_queued_audio_and_refuses_past_the_audio_limit(workers, stub_settings, tmp_path) -> None:
    """Queued seconds come from the file's header, the real-time factor from finished jobs,
    and a recording past `REFLECTOR_GPU_QUEUE_AUDIO_SECONDS` gets 503 with a Retry-After."""
    recording = write_wav(tmp_path / "30s.wav", np.zeros(30 * 16000, dtype=np.float32))
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    assert stated_seconds(recording) == pytest.approx(30.0)
    assert stated_seconds(tmp_path / "junk.wav") == 0.0
    # A browser's live WebM states no length: its packets give it.
    live = write_tone(tmp_path / "live.webm", 12.0, 440, 48000, kind="webm-live")
    assert stated_seconds(live) == pytest.approx(12.0, abs=0.05)
    release = threading.Event()
    done = Diarization(diarization=[], duration=30.0)
    engine = AudioStubEngine("diarizer", (DiarizeRequest,), lambda request, cancel: done, release)
    workers.serve(engine, queue_audio_seconds=50)

    def diarize() -> Diarization:
        return asyncio.run(client.call(stub_settings, "diarizer", DiarizeRequest(path=str(recording)), Diarization))

    def pong() -> Pong:
        answer = asyncio.run(client.ping(stub_settings, "diarizer"))
        assert answer is not None
        return answer

    first = threading.Thread(target=diarize)
    first.start()
    assert engine.started.wait(5)
    assert pong().queued_seconds == pytest.approx(30.0) and pong().rtf is None
    with pytest.raises(Unavailable, match="30 s of audio queued") as refused:
        diarize()  # 30 s queued + 30 s > 50
    assert refused.value.retry_after == 5  # no speed measured yet
    assert isinstance(first_frame(stub_settings, "diarizer", DiarizeRequest(path=str(recording))), Failure)  # no Accepted
    time.sleep(0.3)
    release.set()
    first.join(10)
    measured = pong()
    assert measured.queued_seconds == 0 and measured.rtf is not None and 0.3 / 30 <= measured.rtf < 1
    assert diarize() == done  # alone in an empty queue, a job is taken whatever its length


def test_a_transcribe_request_without_a_language_asks_for_detection() -> None:
    """None means "detect" to the engine, so an omitted language must decode as None, not en."""
    sent = msgspec.msgpack.encode({"type": "transcribe", "path": "/x"})
    assert msgspec.msgpack.decode(sent, type=TranscribeRequest).language is None


def test_the_runner_runs_live_calls_first_and_keeps_a_thread_for_them() -> None:
    from app.workers.server import PriorityRunner

    gate, order = threading.Event(), []

    def call(name: str) -> str:
        order.append(name)
        if name.startswith("held"):
            gate.wait(10)
        return name

    runner = PriorityRunner(1, live_threads=1, name="t")
    held = runner.submit("recording", call, "held")
    while order != ["held"]:
        time.sleep(0.01)
    later = [runner.submit(kind, call, name) for kind, name in (("recording", "r1"), ("live", "l1"), ("recording", "r2"))]
    # The general thread is busy: the live-only thread takes the live call at once.
    assert later[1].result(5) == "l1" and order == ["held", "l1"] and not held.done()
    gate.set()
    assert [f.result(5) for f in (held, *later)] == ["held", "r1", "l1", "r2"]
    assert order == ["held", "l1", "r1", "r2"]

    one, order[:] = PriorityRunner(1, name="u"), []
    gate.clear()
    first = one.submit("recording", call, "held2")
    while order != ["held2"]:
        time.sleep(0.01)
    queued = [one.submit(kind, call, name) for kind, name in (("recording", "r1"), ("recording", "r2"), ("live", "l1"))]
    gate.set()
    for future in (first, *queued):
        future.result(5)
    assert order == ["held2", "l1", "r1", "r2"]


def test_a_live_diarization_goes_before_queued_recordings(workers, stub_settings) -> None:
    """The diarizer runs one job at a time: a live upload's diarization (diarize=true) waits
    for the running job only, not for recordings queued before it."""
    release = threading.Event()
    done = Diarization(diarization=[], duration=1.0)
    engine = StubEngine("diarizer", (DiarizeRequest,), lambda request, cancel: done, release)
    workers.serve(engine)

    def diarize(name: str, priority: str) -> None:
        request = DiarizeRequest(path=name, priority=priority)  # type: ignore[arg-type]
        asyncio.run(client.call(stub_settings, "diarizer", request, Diarization))

    threads = [threading.Thread(target=diarize, args=("running", "recording"))]
    threads[0].start()
    assert engine.started.wait(5)
    for name, priority in (("queued1", "recording"), ("queued2", "recording"), ("live", "live")):
        threads.append(threading.Thread(target=diarize, args=(name, priority)))
        threads[-1].start()
        time.sleep(0.2)  # arrive in this order
    release.set()
    for thread in threads:
        thread.join(10)
    assert [request.path for request in engine.requests] == ["running", "live", "queued1", "queued2"]
