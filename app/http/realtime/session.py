"""One realtime transcription session on an accepted WebSocket.

The HTTP side keeps the session's audio (bytes as the client sent them, in its input
format) and its state; the Whisper worker does all the listening:

- **Turn detection** (server VAD): each block of `VAD_BLOCK_WINDOWS` windows of new
  audio goes to the worker with up to `VAD_CONTEXT_WINDOWS` windows before it as one chunk
  of a `SpeechProbabilitiesRequest` (Silero VAD, answered at once, a few ms per second of
  audio; a window's probability depends on its chunk alone, so turns do not depend on the
  pace the audio came at), and `app.realtime.turns.TurnDetector` turns the probabilities into speech
  started / stopped. An utterance is committed when speech stops; one that reaches
  `MAX_UTTERANCE_SECONDS` is cut at its quietest window of the last
  `SPLIT_SEARCH_SECONDS` and goes on as a new item. With turn detection off the client
  commits; the buffer is the utterance.
- **Partial text**: while an utterance grows, it is decoded again through the live lane
  (`TranscribePcmRequest`, priority ``live``) each time `PARTIAL_STEP_SECONDS` of new audio
  arrived and the previous decode returned, and only words two consecutive decodes agree
  on are sent as ``...transcription.delta`` (`app.realtime.turns.StablePrefix`).
- **Completed**: a committed utterance is decoded once more, whole, with the upload
  route's path (the worker wraps the bytes as a WAV), so its transcript is what an upload
  of the same audio as a WAV gets; ``...transcription.completed`` carries it with its
  words (an extension: ``words``, seconds on the session's audio timeline), in commit order.

When the socket closes, every call still out to the worker is cancelled, which closes its
worker connection: the worker drops the queued pieces at once. Nothing is written to
disk; audio and text are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from litestar import WebSocket

from app.http import metrics
from app.errors import ServiceError
from app.http.realtime.events import (
    EventError,
    SessionConfig,
    TurnOptions,
    appended_audio,
    encode,
    error_event,
    new_id,
    read_event,
    session_object,
    updated,
    user_item,
)
from app.http.realtime.turns import StablePrefix, Turn, TurnDetector
from app.settings import Settings
from app.workers.client import WorkerPool
from app.workers.messages import (
    VAD_WINDOW_SECONDS,
    SpeechProbabilities,
    SpeechProbabilitiesRequest,
    TranscribePcmRequest,
    Transcript,
)

log = logging.getLogger("app.realtime")

VAD_BLOCK_WINDOWS = 4  # turn detection steps by 4 windows (128 ms) of audio
VAD_CONTEXT_WINDOWS = 16  # 512 ms before each block sent along: Silero's state warms up on it
VAD_MAX_BLOCKS = 80  # blocks per request (10 s of audio, for a client far ahead of real time)
PARTIAL_STEP_SECONDS = 1.0  # new audio between two partial decodes of an utterance
PARTIAL_MIN_SECONDS = 1.0  # no partial decode of less audio than this
MAX_UTTERANCE_SECONDS = 30.0  # Whisper's window: server VAD cuts longer utterances; no partials beyond
SPLIT_SEARCH_SECONDS = 3.0  # where a long utterance may be cut: its quietest window in this tail
MIN_COMMIT_SECONDS = 0.1  # the API's smallest commit
FLUSH_SECONDS = 10.0  # at a limit, how long the session waits for transcripts already committed
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR = 1000, 1008, 1009, 1011  # RFC 6455 codes
CLOSE_REASON_BYTES = 123  # RFC 6455: a close reason fits in 123 bytes
CLOSE_GRACE_SECONDS = 0.5  # before closing, how long the error event has to reach the client
CLOSE_POLL_SECONDS = 0.05  # while draining, how long one read waits


@dataclass
class Closing(Exception):
    """End the session: an ``error`` event with `code` and `message`, then a close with
    `close_code` and `reason`; with `flush`, transcripts already committed are sent first.
    `end` names the outcome for the log and metrics."""

    end: str
    code: str
    message: str
    close_code: int
    reason: str
    flush: bool = False


class RealtimeSession:
    """The state and tasks of one session; `run()` serves it until it ends."""

    def __init__(
        self, socket: WebSocket, settings: Settings, workers: WorkerPool, languages: tuple[str, ...] | None
    ) -> None:
        self.socket = socket
        self.settings = settings
        self.workers = workers
        self.languages = languages
        self.id = new_id("sess")
        self.config = SessionConfig()
        self.beta = False  # the client speaks the beta protocol (transcription_session.update)
        self.started = time.monotonic()
        self.expires_at = int(time.time() + settings.realtime_max_seconds)
        self.last_audio = self.started
        # The audio: bytes [buffer_start, received) of everything appended this session.
        self.buffer = bytearray()
        self.buffer_start = 0
        self.received = 0
        self.epoch = 0  # bumped by commit and clear: speech probabilities asked before are stale
        self.vad_done = 0  # audio up to here went through the turn detector
        self.detector: TurnDetector | None = None
        self._new_detector()
        # The utterance being spoken (server VAD) or buffered (no turn detection).
        self.item_id: str | None = None
        self.item_start = 0
        self.item_seen = 0.0  # when its speech was detected (monotonic), for the first delta's latency
        self.partial = StablePrefix()
        self.partial_end = 0
        self.previous_item_id: str | None = None
        self._vad_task: asyncio.Task | None = None
        self._partial_task: asyncio.Task | None = None
        self._finals: list[asyncio.Task] = []
        self._send_lock = asyncio.Lock()
        self._closed = False
        self.items = 0
        self.audio_seconds = 0.0

    # -- sizes ----------------------------------------------------------------------------
    def _bytes(self, seconds: float) -> int:
        """Whole samples' bytes in `seconds` of the input format."""
        config = self.config
        return int(seconds * config.sample_rate) * config.sample_bytes

    def _ms(self, position: int) -> int:
        return position * 1000 // self.config.bytes_per_second

    @property
    def _window(self) -> int:
        return self._bytes(VAD_WINDOW_SECONDS)

    @property
    def max_message_bytes(self) -> int:
        """The largest client message read: a base64 append of the whole buffer limit, plus room."""
        return self.settings.realtime_buffer_bytes * 4 // 3 + 64 * 1024

    def _new_detector(self) -> None:
        turn: TurnOptions | None = self.config.turn
        self.detector = None if turn is None else TurnDetector(
            turn, self.config.bytes_per_second, self._bytes(MAX_UTTERANCE_SECONDS), self._bytes(SPLIT_SEARCH_SECONDS)
        )

    def _slice(self, start: int, end: int) -> bytes:
        return bytes(self.buffer[start - self.buffer_start : end - self.buffer_start])

    def _drop_before(self, position: int) -> None:
        if position > self.buffer_start:
            del self.buffer[: position - self.buffer_start]
            self.buffer_start = position

    # -- sending ----------------------------------------------------------------------------
    async def _send(self, message: bytes) -> None:
        if self._closed:
            return
        async with self._send_lock:
            try:
                await self.socket.send_text(message.decode())
            except Exception:  # the client went away; the reader notices
                self._closed = True

    async def _error(self, message: str, code: str, param: str | None = None, event_id: str | None = None,
                     kind: str = "invalid_request_error") -> None:
        await self._send(error_event(message, code, param, event_id, kind))

    def _session_event(self, kind: str) -> bytes:
        return encode(kind, session=session_object(self.config, self.id, self.expires_at, self.beta))

    # -- the session's life -----------------------------------------------------------------
    async def run(self) -> str:
        """Serve the session until the client leaves or a limit ends it; returns how it
        ended (``client``, ``idle``, ``expired``, ``buffer``, ``error``)."""
        await self._send(self._session_event("session.created"))
        reader = asyncio.ensure_future(self._read())
        limits = asyncio.ensure_future(self._limits())
        try:
            await asyncio.wait({reader, limits}, return_when=asyncio.FIRST_COMPLETED)
            closing = limits.result() if limits.done() else None
            if reader.done():
                try:
                    reader.result()
                except Closing as exc:
                    closing = exc
                except Exception:  # logged; the client gets a clean close
                    log.exception("realtime session failed")
                    closing = Closing("error", "server_error", "internal error; see the service log",
                                      CLOSE_ERROR, "internal error")
            if closing is None:
                return "client"
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await self._close(closing)
            return closing.end
        finally:
            for task in (reader, limits):
                task.cancel()
            self._stop_work()

    async def _close(self, closing: Closing) -> None:
        """Send the error event, keep reading (and dropping) what the client still sends
        for `CLOSE_GRACE_SECONDS` (and, with `flush`, until the committed transcripts are
        out), then close. Granian closes the connection as soon as the close frame is
        sent, without waiting for the client's: closing with the client's audio unread
        would reset the connection and could destroy the error event and the close frame
        before the client reads them, so the socket is drained first."""
        await self._error(closing.message, closing.code, kind="invalid_request_error")
        grace = time.monotonic() + CLOSE_GRACE_SECONDS
        flush_until = grace + (FLUSH_SECONDS if closing.flush else 0.0)
        while time.monotonic() < grace or (self._finals and time.monotonic() < flush_until):
            try:
                message = await asyncio.wait_for(self.socket.receive(), CLOSE_POLL_SECONDS)
            except TimeoutError:
                continue
            except Exception:  # the client is gone
                return
            if message["type"] == "websocket.disconnect":
                return
        self._closed = True
        reason = closing.reason.encode()[:CLOSE_REASON_BYTES].decode(errors="ignore")
        try:
            await self.socket.close(code=closing.close_code, reason=reason)
        except Exception:  # already gone
            pass

    def _stop_work(self) -> None:
        """Cancel every call out to the worker: their connections close, the worker drops the jobs."""
        for task in (self._vad_task, self._partial_task, *self._finals):
            if task is not None:
                task.cancel()

    async def _limits(self) -> Closing:
        """Sleeps until the session's length or its idle time runs out, and says which."""
        settings = self.settings
        while True:
            now = time.monotonic()
            session_left = self.started + settings.realtime_max_seconds - now
            idle_left = self.last_audio + settings.realtime_idle_seconds - now
            if session_left <= 0:
                return Closing(
                    "expired", "session_expired",
                    f"the session reached its longest allowed length, {settings.realtime_max_seconds:g} s "
                    "(REFLECTOR_GPU_REALTIME_MAX_SECONDS): open a new one",
                    CLOSE_POLICY, f"session over {settings.realtime_max_seconds:g} s (REFLECTOR_GPU_REALTIME_MAX_SECONDS)",
                    flush=True,
                )
            if idle_left <= 0:
                return Closing(
                    "idle", "idle_timeout",
                    f"no audio for {settings.realtime_idle_seconds:g} s (REFLECTOR_GPU_REALTIME_IDLE_SECONDS): "
                    "the session is closed",
                    CLOSE_POLICY, f"no audio for {settings.realtime_idle_seconds:g} s (REFLECTOR_GPU_REALTIME_IDLE_SECONDS)",
                    flush=True,
                )
            await asyncio.sleep(min(session_left, idle_left) + 0.01)

    async def _read(self) -> None:
        """Read and apply client events until the client closes; raises `Closing`."""
        while True:
            message = await self.socket.receive()
            if message["type"] == "websocket.disconnect":
                self._closed = True
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if len(data) > self.max_message_bytes:
                await self._error(
                    f"the message has {len(data)} bytes, over the {self.max_message_bytes}-byte limit "
                    "(REFLECTOR_GPU_REALTIME_BUFFER_BYTES of audio, base64): send audio in smaller appends",
                    "message_too_large",
                )
                continue
            await self._apply(data)

    async def _apply(self, data: str | bytes) -> None:
        event_id = None
        try:
            kind, event_id, event = read_event(data)
            if kind == "input_audio_buffer.append":
                self._append(appended_audio(event, self.config))
            elif kind == "input_audio_buffer.commit":
                await self._commit_buffer()
            elif kind == "input_audio_buffer.clear":
                await self._clear()
            elif kind in ("session.update", "transcription_session.update"):
                await self._update(kind, event)
            else:
                raise EventError(
                    f"unsupported event {kind[:60]!r}: a transcription session takes session.update, "
                    "input_audio_buffer.append, input_audio_buffer.commit and input_audio_buffer.clear",
                    "unsupported_event", "type",
                )
        except EventError as exc:
            await self._error(exc.message, exc.code, exc.param, event_id)

    async def _update(self, kind: str, event: dict[str, Any]) -> None:
        config = updated(self.config, kind, event.get("session"), self.languages, self.received > 0)
        self.beta = kind == "transcription_session.update"
        previous, self.config = self.config, config
        if (config.turn, config.format, config.sample_rate) != (previous.turn, previous.format, previous.sample_rate):
            self._new_detector()
            self._restart_detection()
            if config.turn is not None:
                self.item_id = None  # buffered audio waits for speech (or a commit) again
        reply = "transcription_session.updated" if self.beta else "session.updated"
        await self._send(self._session_event(reply))

    # -- audio in -----------------------------------------------------------------------------
    def _append(self, data: bytes) -> None:
        self.last_audio = time.monotonic()
        if not data:
            return
        limit = self.settings.realtime_buffer_bytes
        if len(self.buffer) + len(data) > limit:
            raise Closing(
                "buffer", "input_audio_buffer_too_large",
                f"the input audio buffer would hold {len(self.buffer) + len(data)} bytes, over the {limit}-byte limit "
                "(REFLECTOR_GPU_REALTIME_BUFFER_BYTES): commit more often, or turn server VAD on",
                CLOSE_TOO_BIG, f"input audio buffer over {limit} bytes (REFLECTOR_GPU_REALTIME_BUFFER_BYTES)",
            )
        self.buffer += data
        self.received += len(data)
        if self.detector is None:
            if self.item_id is None:
                self._begin_item(self.buffer_start)
            self._maybe_partial()
        elif self._vad_task is None and self.received - self.vad_done >= VAD_BLOCK_WINDOWS * self._window:
            self._vad_task = asyncio.ensure_future(self._vad())

    def _begin_item(self, start: int) -> None:
        self.item_id = new_id("item")
        self.item_start = start
        self.item_seen = time.monotonic()
        self.partial = StablePrefix()
        self.partial_end = start

    async def _commit_buffer(self) -> None:
        """The client's commit: the buffer (from the utterance's start when speech was
        detected) becomes an item."""
        if self.received - self.buffer_start < self._bytes(MIN_COMMIT_SECONDS):
            held = self._ms(self.received - self.buffer_start)
            raise EventError(
                f"buffer too small: a commit needs at least {MIN_COMMIT_SECONDS * 1000:.0f} ms of audio, "
                f"the buffer holds {held} ms", "input_audio_buffer_commit_empty",
            )
        if self.item_id is None:
            self._begin_item(self.buffer_start)
        await self._commit(self.received)
        self._restart_detection()

    async def _clear(self) -> None:
        self._drop_before(self.received)
        self.item_id = None
        self._cancel_partial()
        self._restart_detection()
        await self._send(encode("input_audio_buffer.cleared"))

    def _restart_detection(self) -> None:
        self.epoch += 1
        self.vad_done = self.received
        if self.detector is not None:
            self.detector.reset()

    # -- turn detection -------------------------------------------------------------------------
    async def _vad(self) -> None:
        """Run the turn detector over new audio, block by block, until it has caught up.

        Block ``k`` after `vad_done` is `VAD_BLOCK_WINDOWS` windows, sent with up to
        `VAD_CONTEXT_WINDOWS` windows before it as its own chunk: its probabilities depend
        on the audio alone, not on how fast it arrived, so the same audio gives the same
        turns (and so the same transcripts) at any pace."""
        window = self._window
        block = VAD_BLOCK_WINDOWS * window
        try:
            while self.detector is not None and self.received - self.vad_done >= block:
                epoch, start = self.epoch, self.vad_done
                count = min((self.received - start) // block, VAD_MAX_BLOCKS)
                chunks, context = [], []
                for index in range(count):
                    begin = start + index * block
                    lead = min(VAD_CONTEXT_WINDOWS, (begin - self.buffer_start) // window)
                    chunks.append(self._slice(begin - lead * window, begin + block))
                    context.append(lead)
                request = SpeechProbabilitiesRequest(
                    chunks=chunks, context=context, encoding=self.config.encoding, sample_rate=self.config.sample_rate
                )
                try:
                    reply = await self.workers.call("whisper", request, SpeechProbabilities)
                except ServiceError as exc:
                    await self._error(f"speech detection failed: {exc.detail}", "turn_detection_failed",
                                      kind="server_error")
                    return
                if epoch != self.epoch:
                    continue  # committed or cleared meanwhile
                probabilities = reply.probabilities
                for index in range(count * VAD_BLOCK_WINDOWS):
                    probability = probabilities[min(index, len(probabilities) - 1)] if probabilities else 0.0
                    turn = self.detector.window(start + index * window, start + (index + 1) * window, probability)
                    if turn is not None:
                        await self._on_turn(turn)
                self.vad_done = start + count * block
                self._trim()
                self._maybe_partial()
        finally:
            if self._vad_task is asyncio.current_task():
                self._vad_task = None

    async def _on_turn(self, turn: Turn) -> None:
        if turn.kind == "started":
            padding = self._bytes(self.config.turn.prefix_padding_ms / 1000) if self.config.turn else 0
            self._begin_item(max(self.buffer_start, turn.position - padding))
            await self._send(encode("input_audio_buffer.speech_started", audio_start_ms=self._ms(self.item_start),
                                    item_id=self.item_id))
            return
        await self._send(encode("input_audio_buffer.speech_stopped", audio_end_ms=self._ms(turn.position),
                                item_id=self.item_id))
        await self._commit(turn.position)
        if turn.kind == "split":
            self._begin_item(turn.position)
            await self._send(encode("input_audio_buffer.speech_started", audio_start_ms=self._ms(turn.position),
                                    item_id=self.item_id))

    def _trim(self) -> None:
        """Keep only the audio turn detection may still need: its context and the prefix
        padding before the next speech, or the utterance being spoken."""
        if self.detector is None:
            return
        keep = max(VAD_CONTEXT_WINDOWS * self._window, self._bytes(self.detector.options.prefix_padding_ms / 1000))
        floor = self.vad_done - keep
        if self.item_id is not None:
            floor = min(floor, self.item_start)
        self._drop_before(floor)

    # -- transcripts ----------------------------------------------------------------------------
    def _request(self, pcm: bytes, offset: float = 0.0) -> TranscribePcmRequest:
        config = self.config
        return TranscribePcmRequest(
            pcm=pcm, encoding=config.encoding, sample_rate=config.sample_rate, language=config.language,
            prompt=config.prompt, timestamp_offset=offset, priority="live",
        )

    def _maybe_partial(self) -> None:
        """Start a partial decode of the utterance when enough new audio came since the last."""
        if self._partial_task is not None or self.item_id is None:
            return
        length = self.received - self.item_start
        if not self._bytes(PARTIAL_MIN_SECONDS) <= length <= self._bytes(MAX_UTTERANCE_SECONDS):
            return
        if self.received - self.partial_end < self._bytes(PARTIAL_STEP_SECONDS):
            return
        self.partial_end = self.received
        request = self._request(self._slice(self.item_start, self.received))
        self._partial_task = asyncio.ensure_future(self._partial(self.item_id, request))

    def _cancel_partial(self) -> None:
        if self._partial_task is not None:
            self._partial_task.cancel()
            self._partial_task = None

    async def _partial(self, item_id: str, request: TranscribePcmRequest) -> None:
        try:
            transcript = await self.workers.call("whisper", request, Transcript)
        except ServiceError as exc:
            log.debug("a partial decode failed: %s", exc.detail)
            return
        finally:
            if self._partial_task is asyncio.current_task():
                self._partial_task = None
        if item_id != self.item_id:
            return
        delta = self.partial.update([word.word for word in transcript.words])
        if delta:
            if len(self.partial.sent) == len(delta):
                metrics.REALTIME_FIRST_DELTA.observe(time.monotonic() - self.item_seen)
            await self._send(encode("conversation.item.input_audio_transcription.delta", item_id=item_id,
                                    content_index=0, delta=delta))
        self._maybe_partial()

    async def _commit(self, end: int) -> None:
        """The utterance ``[item_start, end)`` becomes an item: committed now, transcribed
        in the background (completed events go out in commit order)."""
        item_id, start = self.item_id or new_id("item"), self.item_start
        pcm = self._slice(start, end)
        self._drop_before(end)
        self.item_id = None
        self._cancel_partial()
        await self._send(encode("input_audio_buffer.committed", item_id=item_id, previous_item_id=self.previous_item_id))
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        await self._send(encode(added, previous_item_id=self.previous_item_id, item=user_item(item_id)))
        self.previous_item_id = item_id
        self.items += 1
        seconds = len(pcm) / self.config.bytes_per_second
        self.audio_seconds += seconds
        metrics.AUDIO.labels(route="realtime").inc(seconds)
        previous = self._finals[-1] if self._finals else None
        final = asyncio.ensure_future(
            self._final(item_id, self._request(pcm, round(start / self.config.bytes_per_second, 3)), self.partial, previous)
        )
        self._finals.append(final)
        final.add_done_callback(lambda task: self._finals.remove(task) if task in self._finals else None)

    async def _final(self, item_id: str, request: TranscribePcmRequest, partial: StablePrefix,
                     previous: asyncio.Task | None) -> None:
        committed = time.monotonic()
        failure: ServiceError | None = None
        try:
            transcript = await self.workers.call("whisper", request, Transcript)
        except ServiceError as exc:
            failure = exc
        if previous is not None:
            await asyncio.wait({previous})
        if failure is not None:
            kind = "invalid_request_error" if failure.status < 500 else "server_error"
            await self._send(encode(
                "conversation.item.input_audio_transcription.failed", item_id=item_id, content_index=0,
                error={"type": kind, "code": type(failure).__name__, "message": failure.detail, "param": None},
            ))
            return
        rest = partial.rest([word.word for word in transcript.words])
        if rest:
            await self._send(encode("conversation.item.input_audio_transcription.delta", item_id=item_id,
                                    content_index=0, delta=rest))
        await self._send(encode(
            "conversation.item.input_audio_transcription.completed", item_id=item_id, content_index=0,
            transcript=transcript.text, usage={"type": "duration", "seconds": transcript.duration},
            language=transcript.language,
            words=[{"word": w.word, "start": w.start, "end": w.end} for w in transcript.words],
        ))
        metrics.REALTIME_TRANSCRIPT.observe(time.monotonic() - committed)
