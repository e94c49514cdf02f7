"""Realtime transcription (``/v1/realtime``, a WebSocket) with the OpenAI Python SDK's own
realtime client, over real TLS (the pure turn and partial-text logic: tests/fast/http/test_realtime_logic.py).

Audio is the pyannote sample (real speech) resampled to the Realtime API's 24-kHz PCM16
and streamed in 20-ms frames: at real-time pace where the stream is what is tested (the
sample against the upload route), faster where only the audio positions matter (turn
detection works on audio time, not on the wall clock).
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app import settings as settings_module
from app.workers.client import ping
from testing.service import Service, running_service, strict_context
from testing.wer import word_error_rate

RATE = 24000  # Hz, the Realtime API's PCM rate
BYTES_PER_SECOND = RATE * 2
FRAME_BYTES = BYTES_PER_SECOND // 50  # 20 ms
MAX_WER = 0.05
# The deltas are the stable prefixes of partial decodes of audio cut mid-utterance, at cuts
# that depend on the machine's speed: a word at a cut can be sent before the final decode
# corrects it ("Th", "they they"). 0.027 here run alone, 0.053 once in the full suite.
MAX_DELTA_WER = 0.08
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
EVENT_TIMEOUT = 120.0  # seconds: generous, the machine is shared


# -- audio --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_pcm(sample_wav: Path) -> bytes:
    """The 30-s sample as 24-kHz 16-bit mono PCM."""
    from app.audio.decode import decode_mono

    audio = decode_mono(sample_wav, RATE)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


def ms_bytes(ms: int) -> int:
    return ms * BYTES_PER_SECOND // 1000


def wav_of(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(pcm)
    return out.getvalue()


def upload(service: Service, pcm: bytes) -> dict:
    """What ``/v1/audio/transcriptions`` answers for `pcm` as a 24-kHz WAV (auto language, as the session)."""
    response = service.client().post(
        "/v1/audio/transcriptions", files={"file": ("audio.wav", wav_of(pcm), "audio/wav")}
    )
    assert response.status_code == 200, response.text
    return response.json()


# -- the SDK's realtime client ------------------------------------------------------------
class Session:
    """An SDK realtime connection plus every server event it received, in order."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.events: list[Any] = []
        self.closed: ConnectionClosed | None = None
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.connection:
                self.events.append(event)
                self._arrived.set()
        except ConnectionClosed as exc:
            self.closed = exc
        finally:
            self._arrived.set()

    def of(self, kind: str) -> list[Any]:
        return [event for event in self.events if event.type == kind]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = EVENT_TIMEOUT) -> None:
        """Wait for events until `condition()` holds; fails on a close first."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.closed is None and not self._reader.done(), f"closed while waiting: {self.closed}"
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout} s; got {[e.type for e in self.events]}") from None

    async def wait_for(self, kind: str, count: int = 1, timeout: float = EVENT_TIMEOUT) -> list[Any]:
        """The first `count` events of `kind`, waiting for them; fails on a close first."""
        await self.wait_until(lambda: len(self.of(kind)) >= count, timeout)
        return self.of(kind)[:count]

    async def wait_closed(self, timeout: float = EVENT_TIMEOUT) -> ConnectionClosed:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        assert self.closed is not None
        return self.closed

    async def append(self, pcm: bytes, speed: float = 0.0) -> None:
        """Send `pcm` in 20-ms frames, at `speed` x real time (0: as fast as possible)."""
        started = time.monotonic()
        for offset in range(0, len(pcm), FRAME_BYTES):
            frame = pcm[offset : offset + FRAME_BYTES]
            await self.connection.input_audio_buffer.append(audio=base64.b64encode(frame).decode())
            if speed:
                due = started + (offset + len(frame)) / BYTES_PER_SECOND / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def update(self, **audio_input: Any) -> None:
        await self.connection.session.update(session={"type": "transcription", "audio": {"input": audio_input}})
        await self.wait_for("session.updated", len(self.of("session.updated")) + 1)


def sdk_for(service: Service, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=key or service.api_key or "unused",
        base_url=service.base_url + "/v1",
        http_client=httpx.AsyncClient(verify=strict_context(service.ca_file)),
        max_retries=0,
    )


class open_session:
    """``async with open_session(service) as session``: the SDK's connection, closed on exit."""

    def __init__(self, service: Service, key: str | None = None) -> None:
        self.manager = sdk_for(service, key).realtime.connect(
            extra_query={"intent": "transcription"},
            websocket_connection_options={"ssl": strict_context(service.ca_file)},
        )

    async def __aenter__(self) -> Session:
        session = Session(await self.manager.__aenter__())
        await session.wait_for("session.created")
        return session

    async def __aexit__(self, *exc: object) -> None:
        await self.manager.__aexit__(*exc)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def whisper_pong(service: Service):
    settings = settings_module.load({"REFLECTOR_GPU_STATE_DIR": str(service.state_dir)})
    return asyncio.run(ping(settings, "whisper"))


# -- the protocol with the SDK (slow: the real service) ------------------------------------
@pytest.mark.slow
def test_stream_at_real_time_pace_matches_the_upload(service: Service, sample_pcm: bytes) -> None:
    async def scenario() -> Session:
        async with open_session(service) as session:
            await session.update(turn_detection={"type": "server_vad"})
            await session.append(sample_pcm, speed=1.0)  # real-time pace: 30 s
            await session.append(silence(1.5), speed=1.0)
            await session.wait_until(
                lambda: any(e.audio_end_ms > 30000 for e in session.of("input_audio_buffer.speech_stopped"))
            )
            await session.wait_for(COMPLETED, len(session.of("input_audio_buffer.committed")))
            return session

    session = run(scenario())
    completed = session.of(COMPLETED)
    assert len(completed) == len(session.of("input_audio_buffer.committed")) >= 1
    assert session.of(DELTA), "no partial text while the speech went on"
    whole = upload(service, sample_pcm)["text"]
    streamed = " ".join(event.transcript for event in completed)
    deltas = " ".join("".join(e.delta for e in session.of(DELTA) if e.item_id == c.item_id) for c in completed)
    assert word_error_rate(whole, streamed) <= MAX_WER, (whole, streamed)
    assert word_error_rate(whole, deltas) <= MAX_DELTA_WER, (whole, deltas)
    # Each completed transcript is what an upload of exactly its audio gives.
    started = {e.item_id: e.audio_start_ms for e in session.of("input_audio_buffer.speech_started")}
    ended = {e.item_id: e.audio_end_ms for e in session.of("input_audio_buffer.speech_stopped")}
    stream = sample_pcm + silence(1.5)
    longest = max(completed, key=lambda e: len(e.transcript))
    piece = stream[ms_bytes(started[longest.item_id]) : ms_bytes(ended[longest.item_id])]
    answer = upload(service, piece)
    assert longest.transcript == answer["text"]
    words = longest.model_dump()["words"]  # the extension: word timestamps on the session's timeline
    offset = started[longest.item_id] / 1000
    assert [w["word"] for w in words] == [w["word"] for w in answer["words"]]
    assert [w["start"] for w in words] == pytest.approx([w["start"] + offset for w in answer["words"]], abs=0.011)


@pytest.mark.slow
def test_turn_detection_splits_utterances_separated_by_silence(service: Service, sample_pcm: bytes) -> None:
    first = sample_pcm[ms_bytes(8300) : ms_bytes(14300)]
    second = sample_pcm[ms_bytes(22000) : ms_bytes(27500)]

    async def scenario() -> Session:
        async with open_session(service) as session:
            await session.update(
                turn_detection={"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 700}
            )
            await session.append(silence(1.0) + first + silence(2.0) + second + silence(2.0), speed=4.0)
            await session.wait_for(COMPLETED, 2)
            return session

    session = run(scenario())
    starts = session.of("input_audio_buffer.speech_started")
    stops = session.of("input_audio_buffer.speech_stopped")
    committed = session.of("input_audio_buffer.committed")
    assert len(starts) == len(stops) == len(committed) == 2
    assert 500 <= starts[0].audio_start_ms <= 1000 and stops[0].audio_end_ms >= 7000 - 100
    assert 8500 <= starts[1].audio_start_ms <= 9000 and stops[1].audio_end_ms <= 16500
    assert committed[1].previous_item_id == committed[0].item_id
    completed = session.of(COMPLETED)
    assert [c.item_id for c in completed] == [c.item_id for c in committed]
    assert all(c.transcript for c in completed)


@pytest.mark.slow
def test_explicit_commit_with_turn_detection_off(service: Service, sample_pcm: bytes) -> None:
    piece = sample_pcm[ms_bytes(8000) : ms_bytes(18000)]

    async def scenario() -> Session:
        async with open_session(service) as session:
            await session.update(turn_detection=None, transcription={"model": "whisper-1", "language": "en"})
            await session.connection.input_audio_buffer.commit()
            await session.wait_for("error")
            await session.append(piece)
            await session.connection.input_audio_buffer.commit()
            await session.wait_for(COMPLETED)
            await session.append(piece[: ms_bytes(2000)])
            await session.connection.input_audio_buffer.clear()
            await session.wait_for("input_audio_buffer.cleared")
            return session

    session = run(scenario())
    [empty] = session.of("error")
    assert empty.error.code == "input_audio_buffer_commit_empty"
    assert not session.of("input_audio_buffer.speech_started")
    [completed] = session.of(COMPLETED)
    answer = upload(service, piece)
    assert completed.transcript == answer["text"] and completed.transcript
    assert completed.model_dump()["words"] == answer["words"]
    assert completed.usage.seconds == pytest.approx(10.0, abs=0.01)
    assert len(session.of("input_audio_buffer.committed")) == 1


@pytest.mark.slow
def test_no_key_gives_401_before_the_upgrade(service: Service) -> None:
    async def scenario() -> None:
        url = service.base_url.replace("https://", "wss://") + "/v1/realtime?intent=transcription"
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(url, ssl=strict_context(service.ca_file)):
                pass
        response = refused.value.response
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert "API key" in response.body.decode()
        with pytest.raises(InvalidStatus) as wrong:
            async with open_session(service, key="wrong-key"):
                pass
        assert wrong.value.response.status_code == 401

    run(scenario())


@pytest.mark.slow
def test_malformed_events_get_errors_and_the_session_goes_on(service: Service, sample_pcm: bytes) -> None:
    async def scenario() -> Session:
        async with open_session(service) as session:
            connection = session.connection
            await connection.send_raw("this is not json")
            await connection.send_raw('{"type": "response.create"}')
            await connection.send_raw('{"type": "input_audio_buffer.append", "audio": "***"}')
            await connection.send_raw('{"type": "input_audio_buffer.append", "audio": "AAAA"}')  # 1.5 samples
            await connection.send_raw(
                '{"type": "session.update", "event_id": "evt_1", "session": {"type": "transcription", '
                '"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 7}}}}}'
            )
            await connection.send_raw('{"type": "session.update", "session": {"type": "transcription", '
                                      '"audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}}}')
            await session.wait_for("error", 6)
            await session.update(turn_detection=None)
            await session.append(sample_pcm[ms_bytes(8000) : ms_bytes(12000)])
            await connection.input_audio_buffer.commit()
            await session.wait_for(COMPLETED)
            return session

    session = run(scenario())
    errors = [event.error for event in session.of("error")]
    assert [e.code for e in errors] == [
        "invalid_json", "unsupported_event", "invalid_value", "invalid_value", "invalid_value", "invalid_value"
    ]
    assert all(e.type == "invalid_request_error" and e.message for e in errors)
    assert errors[4].event_id == "evt_1" and errors[4].param == "session.audio.input.turn_detection.threshold"
    assert errors[5].param == "session.audio.input.format.rate"
    assert session.of(COMPLETED)[0].transcript


@pytest.mark.slow
def test_closing_mid_utterance_drops_the_queued_work(service: Service, sample_pcm: bytes) -> None:
    utterance = sample_pcm[ms_bytes(7000) : ms_bytes(29000)]  # 22 s each

    async def scenario() -> None:
        async with open_session(service) as session:
            await session.update(turn_detection=None)
            for _ in range(6):
                await session.append(utterance)
                await session.connection.input_audio_buffer.commit()
            await session.wait_for("input_audio_buffer.committed", 6)
            queued = 0.0
            deadline = time.monotonic() + 30
            while queued < 60 and time.monotonic() < deadline:
                pong = await asyncio.to_thread(whisper_pong, service)
                queued = pong.queued_seconds if pong else 0.0
            assert queued >= 60, "the committed utterances never queued"
            assert len(session.of(COMPLETED)) < 6
        # The socket is closed: its queued pieces go at once, only a running batch may finish.
        closed = time.monotonic()
        while True:
            pong = await asyncio.to_thread(whisper_pong, service)
            if pong.busy == 0 and pong.queued_seconds <= 2 * 22.0 + 1:
                break
            assert time.monotonic() - closed < 10, f"the worker still holds the work: {pong}"
            await asyncio.sleep(0.1)
        while (pong := await asyncio.to_thread(whisper_pong, service)).queued_seconds > 0:
            assert time.monotonic() - closed < 60
            await asyncio.sleep(0.2)

    run(scenario())


# -- limits: a service of its own ------------------------------------------------------------
@pytest.fixture(scope="module")
def limited(cert_dir: Path) -> Iterator[Service]:
    """One session at a time, a 2-s buffer, 3 s of idle time, and the route open without a key."""
    with running_service(
        cert_dir,
        REFLECTOR_GPU_REALTIME_SESSIONS="1",
        REFLECTOR_GPU_REALTIME_BUFFER_BYTES=str(2 * BYTES_PER_SECOND),
        REFLECTOR_GPU_REALTIME_IDLE_SECONDS="3",
        REFLECTOR_GPU_OPEN_ROUTES="realtime",
        REFLECTOR_GPU_METRICS="open",
    ) as running:
        yield running


@pytest.mark.slow
def test_limits_close_with_a_reason_and_refuse_with_503(limited: Service, sample_pcm: bytes) -> None:
    async def scenario() -> None:
        url = limited.base_url.replace("https://", "wss://") + "/v1/realtime"
        async with ws_connect(url, ssl=strict_context(limited.ca_file)) as raw:  # open route: no key needed
            assert b"session.created" in (await raw.recv()).encode()
            with pytest.raises(InvalidStatus) as busy:
                async with open_session(limited):
                    pass
            assert busy.value.response.status_code == 503
            assert int(busy.value.response.headers["retry-after"]) > 0
        async with open_session(limited) as session:  # the slot is free again
            await session.update(turn_detection=None)
            await session.append(sample_pcm[: 3 * BYTES_PER_SECOND])
            closed = await session.wait_closed()
            [error] = session.of("error")
            assert error.error.code == "input_audio_buffer_too_large"
            assert closed.rcvd.code == 1009 and "REFLECTOR_GPU_REALTIME_BUFFER_BYTES" in closed.rcvd.reason
        async with open_session(limited) as session:
            closed = await session.wait_closed(timeout=30)
            assert session.of("error")[0].error.code == "idle_timeout"
            assert closed.rcvd.code == 1008 and "no audio" in closed.rcvd.reason

    run(scenario())
    text = limited.client(key=None).get("/metrics").text
    assert 'reflector_gpu_realtime_sessions_total{end="buffer"} 1.0' in text
    assert 'reflector_gpu_realtime_sessions_total{end="idle"} 1.0' in text
    assert 'reflector_gpu_realtime_refused_total{status="503"} 1.0' in text
