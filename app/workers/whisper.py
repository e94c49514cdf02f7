"""The Whisper engine (faster-whisper on CTranslate2) and its messages.

One `TranscribeRequest` names an audio file on local disk; the reply is a `Transcript`.
Each request is *prepared* on its own (decoded, clips shorter than 0.5 s padded with
silence since short inputs make some Whisper models fail, cut by Silero VAD into speech
regions merged into pieces of at most 30 s, language detected when not given), then its
pieces join the worker's `app.workers.scheduler.Scheduler`, which decodes pieces of many
requests together in batches of up to `REFLECTOR_GPU_WHISPER_BATCH_SIZE` with
faster-whisper's batched calls (`BatchedInferencePipeline.forward`: one encoder pass and one
beam search, `REFLECTOR_GPU_WHISPER_BEAM_SIZE`, over the batch), live pieces first; short
live pieces of several requests share encoder passes (`batch_rows`,
`WhisperEngine._encode`) and are each decoded in a row of their own. When a request's last
piece is done, its words are mapped back to its own timeline, exactly as
`BatchedInferencePipeline.transcribe` does for one file. Heavy imports happen in
`WhisperEngine.__init__` only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from app import models
from app.errors import BadRequest, Cancelled, ModelNotFound
from app.models import hub
from app.settings import Settings
from app.workers import devices
from app.workers.messages import (
    VAD_WINDOW_SAMPLES,
    Segment,
    SpeechProbabilities,
    SpeechProbabilitiesRequest,
    TranscribePcmRequest,
    TranscribeRequest,
    Transcript,
    Word,
)
from app.workers.protocol import Pong
from app.workers.registry import RECORDING_NICE
from app.workers.scheduler import Job, Piece, Scheduler

log = logging.getLogger("app.worker.whisper")

SAMPLE_RATE = 16000  # Hz, what Whisper's feature extractor expects
MIN_CLIP_SECONDS = 0.5
PIECE_SECONDS = 30  # Whisper's window: the longest piece VAD regions are merged into
FRAMES_PER_SECOND = 100  # Whisper's feature frames per second (hop of 160 samples at 16 kHz)
# faster-whisper's batched defaults (BatchedInferencePipeline.transcribe): VAD regions cut at
# the piece length, 160 ms of silence ends a region.
VAD_MIN_SILENCE_MS = 160
LANGUAGE_DETECTION_THRESHOLD = 0.5
# A repetition guard for speech translation: no 4-token sequence may repeat within a piece.
# Whisper `base` fell into loops translating espeak-ng French on some CPUs ("the the the",
# a sentence over and over); sequential faster-whisper escapes them by decoding again hotter
# (compression ratio over 2.4), which one batched beam search cannot. Transcription is left
# as it is (its WER is measured without the guard).
TRANSLATE_NO_REPEAT_NGRAM = 4
# faster-whisper's temperature fallback (`generate_with_fallback`), after 0: a piece decoded
# at temperature 0 whose text repeats itself is sampled again at each in turn.
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
# Sharing an encoder pass among live pieces (`batch_rows`): silence between two requests'
# audio in one window, and the longest piece worth sharing. Whisper's encoder attends across
# the whole window, so each piece's encoding carries some of its neighbours': with 1 s
# between pieces that cost +0.02-0.03 WER on live chunks, with 3 s +0.006 (measured in
# bench/live_meetings.py, part 2).
PACK_GAP_SECONDS = 3.0
PACK_MAX_PIECE_SECONDS = 10.0
PIECES_PER_WINDOW = 4  # Reflector's 5.12-s chunks a window holds: 4 x 5.12 + 3 gaps of 3 s < 30 s


def recording_lanes(device: str) -> int:
    """Lanes that decode recording pieces (the live lane comes on top).

    On CUDA one lane with large batches keeps the GPU busy. On the CPU, batching saves no
    CPU time (measured on tiny.en int8: 8 pieces in one batch cost 0.86-1.0x the CPU time
    of 8 single pieces), but one beam search keeps only about one core busy, so two lanes
    decoding different pieces at once use a second core.
    """
    return 1 if device == "cuda" else 2




def clean_words(raw: list[tuple[str, float, float]], offset: float = 0.0) -> list[Word]:
    """Shift `(word, start, end)` triples by `offset` s, round to 2 decimals, fix overlaps.

    Returns words sorted by start, where each word's end is at most the next word's start
    and never before its own start (the contract Reflector relies on).
    """
    ordered = sorted(raw, key=lambda item: item[1])
    rounded = [(text, round(float(start) + offset, 2), round(float(end) + offset, 2)) for text, start, end in ordered]
    words = []
    for index, (text, start, end) in enumerate(rounded):
        if index + 1 < len(rounded):
            end = min(end, rounded[index + 1][1])
        words.append(Word(word=text, start=start, end=max(end, start)))
    return words


@dataclass(eq=False)
class _Timeline:
    """What a job needs to be finished: the request, the audio duration (s), the VAD speech
    regions (samples) to map piece times back, the model that decodes it, the tokenizer and
    decoding options shared by its pieces, and the word-timing state faster-whisper carries
    from piece to piece."""

    request: TranscribeRequest
    duration: float
    speech: list[dict]
    language: str
    model: "LoadedModel"
    tokenizer: Any
    options: Any
    last_speech_timestamp: float = 0.0


class _Carry:
    """The word-timing state of a row decoded from a shared window (nothing carries into it)."""

    last_speech_timestamp = 0.0


@dataclass(frozen=True)
class Span:
    """Where one piece lies in a shared window: `start` to `end` (s from the window's
    start), and the piece's own `offset` (s, its place on its request's speech timeline)."""

    start: float
    end: float
    offset: float


def plan_windows(durations: Sequence[float], window: float = PIECE_SECONDS, gap: float = PACK_GAP_SECONDS) -> list[list[int]]:
    """Group items of `durations` (s), in order, into windows of at most `window` s with
    `gap` s of silence between neighbours; returns the indices each window holds. An item
    longer than `window` gets a window of its own (greedy: order is kept, nothing moves
    back to an earlier window)."""
    windows: list[list[int]] = []
    used = 0.0
    for index, seconds in enumerate(durations):
        if windows and used + gap + seconds <= window:
            windows[-1].append(index)
            used += gap + seconds
        else:
            windows.append([index])
            used = seconds
    return windows


TIME_PRECISION = 0.02  # s per Whisper timestamp token
ENCODER_FRAMES_PER_SECOND = 50  # Whisper's encoder output: 1500 frames per 30-s window
# Encoder output a shared row's decoder sees beyond its own piece on each side (s), so a
# word's edge is never cut; more of the window's silence made it worse (0.5 s: +0.04 WER).
PACK_MARGIN_SECONDS = 0.25


def encoder_frames(span: Span, margin: float = PACK_MARGIN_SECONDS, frames: int = 1500) -> tuple[int, int]:
    """The encoder frames ``[first, stop)`` a shared row keeps of its window: its span,
    widened by `margin` s each side, at `ENCODER_FRAMES_PER_SECOND`, within `frames`."""
    first = max(0, math.floor((span.start - margin) * ENCODER_FRAMES_PER_SECOND))
    return first, min(frames, math.ceil((span.end + margin) * ENCODER_FRAMES_PER_SECOND))


def start_token(span: Span, tokenizer: Any) -> int:
    """The timestamp token (faster-whisper's tokenizer: ``timestamp_begin`` + 0.02-s steps)
    that starts a shared row's decoding at its piece, rounded down to the token before it."""
    return tokenizer.timestamp_begin + math.floor(span.start / TIME_PRECISION)


def from_window(segments: list[dict], span: Span) -> list[dict]:
    """Segments decoded from a shared window (times in s from the window's start), moved
    onto the piece's own speech timeline (``offset + t - start``), every time clipped to the
    piece's span first, so that they line up with a piece decoded alone
    (`BatchedInferencePipeline.forward`'s ``seek`` included)."""

    def moved(time: float) -> float:
        return round(span.offset + min(max(time, span.start), span.end) - span.start, 3)

    return [
        {
            **segment,
            "start": moved(segment["start"]),
            "end": moved(segment["end"]),
            "words": [dict(word, start=moved(word["start"]), end=moved(word["end"])) for word in segment.get("words") or ()],
            "seek": round(span.offset * FRAMES_PER_SECOND),
        }
        for segment in segments
    ]


@dataclass(eq=False)
class _Row:
    """One row of a batch: one piece, the audio (16 kHz float32) its encoder pass sees as
    one window, the chunk metadata `forward` takes for it, the piece's `span` when the
    window is shared with other pieces (None: the window is the piece's own), and whose
    word-timing state it carries. Rows of one shared window hold the same `audio` object."""

    audio: Any
    meta: dict
    piece: Piece
    span: Span | None
    carry: Any

    @property
    def seconds(self) -> float:
        """The piece's audio (s)."""
        return self.span.end - self.span.start if self.span else self.meta["duration"]


def batch_rows(pieces: Sequence[Piece], pack: Callable[[Piece], bool], gap: float = PACK_GAP_SECONDS) -> list[_Row]:
    """The rows of a batch, one per piece, in order: each piece in a window of its own,
    except that consecutive pieces for which `pack(piece)` holds share windows
    (`plan_windows`, `gap` s of silence between them). Piece data: ``(audio, chunk
    metadata)`` as `WhisperEngine.prepare` makes."""
    import numpy as np

    rows: list[_Row] = []
    run: list[Piece] = []

    def flush() -> None:
        for indices in plan_windows([piece.seconds for piece in run], gap=gap):
            if len(indices) == 1:
                rows.append(_alone(run[indices[0]]))
                continue
            parts, spans, at = [], [], 0.0
            silence = np.zeros(round(gap * SAMPLE_RATE), dtype=np.float32)
            for number, index in enumerate(indices):
                audio, meta = run[index].data
                if number:
                    parts.append(silence)
                    at += len(silence) / SAMPLE_RATE
                parts.append(audio)
                spans.append(Span(at, at + len(audio) / SAMPLE_RATE, meta["offset"]))
                at += len(audio) / SAMPLE_RATE
            window = np.concatenate(parts)
            meta = {"offset": 0.0, "duration": at, "segments": []}
            rows.extend(_Row(window, meta, run[index], span, _Carry()) for index, span in zip(indices, spans))
        run.clear()

    for piece in pieces:
        if pack(piece):
            run.append(piece)
            continue
        flush()
        rows.append(_alone(piece))
    flush()
    return rows


# New tokens per second of audio a live row may decode. Speech needs ~5-6 a second (fast
# speech: ~3.5 words/s, ~1.3 tokens a word, timestamp tokens), but the cap must sit well
# above that: near it the beam search returns a shorter finished hypothesis and drops the
# end of the speech (the 23.6-s sample lost its last sentence under a cap of 253 tokens,
# kept it from 300 on). More than this is a repetition loop.
TOKENS_PER_SECOND = 16
MAX_TOKENS = 448  # Whisper's decoder length, prompt included
PROMPT_TOKENS = 230  # room the prompt may take: 223 of its own tokens, the start sequence, a shared row's start


def _token_budget(rows: Sequence[_Row], options: Any) -> int:
    """New tokens a batch of live rows may decode: `TOKENS_PER_SECOND` per second of its
    longest row, within the decoder's length. A repetition loop ("Hello. Hello. ...") in a
    5-s chunk then ends after 98 steps instead of 440, which on a busy live lane is the difference
    between one slow answer and a queue that every meeting waits behind."""
    longest = max(row.seconds for row in rows)
    room = MAX_TOKENS - (PROMPT_TOKENS if options.initial_prompt else 8)
    return max(16, min(room, math.ceil(TOKENS_PER_SECOND * longest) + 16))


def _loops(text: str, options: Any) -> bool:
    """Whether `text` is too repetitive for Whisper (faster-whisper's zlib compression ratio
    over `compression_ratio_threshold`, 2.4): a repetition loop."""
    from faster_whisper.transcribe import get_compression_ratio

    return get_compression_ratio(text.strip()) > options.compression_ratio_threshold


def _failed(segments: list[dict], options: Any) -> bool:
    """Whether a shared row's decoding (its segment dicts) failed Whisper's own checks, so
    that its piece is decoded again in a window of its own: no word, although VAD found
    speech in the piece, or text too repetitive (zlib compression ratio over
    `compression_ratio_threshold`: a repetition loop, which a neighbour's audio in the
    encoder's context can set off, `_loops`)."""
    words = any(segment.get("words") for segment in segments)
    return not words or _loops("".join(segment["text"] for segment in segments), options)


def _alone(piece: Piece) -> _Row:
    audio, meta = piece.data
    return _Row(audio, meta, piece, None, piece.job.context)


class _PerJobWordTiming:
    """The WhisperModel as `BatchedInferencePipeline.forward` sees it for one mixed batch.

    faster-whisper aligns words for a whole batch in one call and carries one
    ``last_speech_timestamp`` from piece to piece, which is right for one file. A batch here
    holds consecutive pieces of several requests, so alignment runs per request, on that
    request's rows of the encoder output, with that request's own carried timestamp.
    Its `encode` answers with the batch's encoder output, made beforehand
    (`WhisperEngine._encode`: one pass per window, shared windows seen row by row).
    Everything else is the real model.
    """

    def __init__(self, model: Any, groups: list[tuple[int, int, _Timeline]], encoder_output: Any) -> None:
        self._model = model
        self._groups = groups  # (first row, row count, timeline), in batch order
        self._encoder_output = encoder_output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def encode(self, features: Any) -> Any:
        return self._encoder_output

    def add_word_timestamps(self, segments, tokenizer, encoder_output, num_frames, prepend, append, _last):
        for start, count, timeline in self._groups:
            rows = encoder_output if len(self._groups) == 1 else _rows(encoder_output, start, start + count)
            last = self._model.add_word_timestamps(
                segments[start : start + count], tokenizer, rows, num_frames[start : start + count],
                prepend, append, timeline.last_speech_timestamp,
            )
            if last is not None:
                timeline.last_speech_timestamp = last
        return 0.0


class _Decoder:
    """The CTranslate2 Whisper model as `generate_segment_batched` calls it, decoding the way
    faster-whisper's sequential `generate_with_fallback` does.

    The batched call passes ``sampling_temperature`` to a beam search, where CTranslate2
    ignores it (it samples only when ``sampling_topk`` is not 1): a temperature above 0
    changed nothing. Here a temperature above 0 samples `best_of` hypotheses and keeps the
    best. At temperature 0, a piece whose text is too repetitive (zlib compression ratio
    above `compression_ratio_threshold`, 2.4: a repetition loop, which ``base`` falls into
    when translating) is sampled again at each of `FALLBACK_TEMPERATURES` until one is not;
    when none is, the most probable try is kept, as faster-whisper does.

    A row of a shared window starts at its own piece: `starts` maps such rows to a
    timestamp token (`start_token`) that ends their prompt, and that token heads their
    result, as if Whisper had predicted it (unless Whisper's first token is a timestamp of
    its own, which then opens the first segment). Such a row keeps its temperature-0
    result: when it fails, its piece is decoded again in a window of its own (`_failed`),
    which costs one pass where sampling costs up to five, and leaves out the neighbours'
    audio that may have set the loop off.
    """

    def __init__(self, model: Any, tokenizer: Any, options: Any, starts: dict[int, int] | None = None) -> None:
        self._model = model  # ctranslate2.models.Whisper
        self._tokenizer = tokenizer
        self._options = options
        self._starts = starts or {}
        self.temperatures: list[float] = []  # the temperature each row's result was decoded at

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def generate(self, encoder_output: Any, prompts: list[list[int]], **kwargs: Any) -> list:
        prompts = [prompt + [self._starts[row]] if row in self._starts else prompt for row, prompt in enumerate(prompts)]
        results = self._with_fallback(encoder_output, prompts, kwargs)
        begin = self._tokenizer.timestamp_begin
        return [
            _Started(result, self._starts[row])
            if row in self._starts and not (result.sequences_ids[0][:1] and result.sequences_ids[0][0] >= begin)
            else result
            for row, result in enumerate(results)
        ]

    def _with_fallback(self, encoder_output: Any, prompts: list[list[int]], kwargs: dict) -> list:
        temperature = kwargs.pop("sampling_temperature")
        results = self._generate(encoder_output, prompts, temperature, kwargs)
        self.temperatures = [temperature] * len(results)
        if temperature > 0:
            return results
        for row in range(len(results)):
            if row in self._starts:
                continue
            tries = [(temperature, results[row])]
            for fallback in FALLBACK_TEMPERATURES:
                if not self._repeats(tries[-1][1]):
                    break
                rows = encoder_output if len(results) == 1 else _rows(encoder_output, row, row + 1)
                tries.append((fallback, self._generate(rows, prompts[row : row + 1], fallback, kwargs)[0]))
            if self._repeats(tries[-1][1]):  # every try did
                tries.append(max(tries, key=lambda pair: pair[1].scores[0]))
            if len(tries) > 1:
                log.info("a piece repeated itself at temperature 0; kept the try at %.1f", tries[-1][0])
            self.temperatures[row], results[row] = tries[-1]
        return results

    def _repeats(self, result: Any) -> bool:
        return _loops(self._tokenizer.decode(result.sequences_ids[0]), self._options)

    def _generate(self, encoder_output: Any, prompts: list, temperature: float, kwargs: dict) -> list:
        kwargs = {**kwargs, "sampling_temperature": temperature}
        if temperature > 0:  # faster-whisper's sampling arguments
            kwargs.update(beam_size=1, num_hypotheses=self._options.best_of, sampling_topk=0)
        return self._model.generate(encoder_output, prompts, **kwargs)


@dataclass(frozen=True)
class _Started:
    """A CTranslate2 generation result with the timestamp token a shared row's prompt ended
    in put back at the head of its tokens (what faster-whisper reads of a result)."""

    result: Any
    token: int

    @property
    def sequences_ids(self) -> list[list[int]]:
        return [[self.token, *self.result.sequences_ids[0]]]

    @property
    def scores(self) -> list[float]:
        return self.result.scores

    @property
    def no_speech_prob(self) -> float:
        return self.result.no_speech_prob


def _device_array(storage: Any) -> Any:
    """A CTranslate2 `StorageView` as an array on its device: numpy on the CPU, a torch
    tensor viewing the device memory on CUDA (no copy to the host)."""
    import numpy as np

    if storage.device == "cpu":
        return np.asarray(storage)
    import torch

    return torch.as_tensor(storage, device=f"cuda:{storage.device_index}")


def _storage(array: Any) -> Any:
    """A CTranslate2 `StorageView` of a numpy array or torch tensor, on its device."""
    import ctranslate2
    import numpy as np

    return ctranslate2.StorageView.from_array(
        np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array.contiguous()
    )


def _rows(storage: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a CTranslate2 `StorageView` (batch first), on its device."""
    return _storage(_device_array(storage)[start:stop])


@dataclass(eq=False)
class LoadedModel:
    """One loaded Whisper model: its `name` (``tiny.en``, ``large-v3-turbo``, a path), the
    faster-whisper model the live lane runs (`live`) and the one the recording lanes run
    (`recording`: the same object on CUDA, a niced copy on the CPU), its `languages`, and
    the tokenizers made for it, per (language, task)."""

    name: str
    live: Any
    recording: Any
    languages: tuple[str, ...]
    multilingual: bool
    tokenizers: dict[tuple[str, str], Any] = field(default_factory=dict)


class WhisperEngine:
    """Loads the CTranslate2 Whisper models `app.models.whisper_choice` names (one, or the
    embedded English-only + multilingual pair, which `pick` routes between) and answers
    `TranscribeRequest`s through a cross-request `Scheduler` (see the module docstring). A
    production model fetched in the background replaces them when ready.

    `submit(request, cancel)` returns a future; `handle(request, cancel)` waits for it.
    """

    kind = "whisper"
    request_types = (TranscribeRequest, TranscribePcmRequest, SpeechProbabilitiesRequest)

    def __init__(self, settings: Settings, layout: str | None = None) -> None:
        """`layout`: the device whose lane layout and batch size the engine takes (``cuda``:
        one model with a CTranslate2 worker per lane, the live lane's included, one recording
        lane, CUDA's batch size; ``cpu``: a niced model copy for two recording lanes), by
        default the device the model runs on. ``cuda`` on the CPU runs the CUDA path's
        scheduling there (tests; scripts/device_check.py's CPU rehearsal)."""
        from faster_whisper import BatchedInferencePipeline

        self.settings = settings
        self.device = devices.ct2_device(settings)
        self.compute_type = devices.ct2_compute_type(settings, self.device)
        self.layout = layout or self.device
        self.lanes = recording_lanes(self.layout)
        started = time.monotonic()
        choice = models.whisper_choice(settings, self.device)
        self.models = [self._load(name) for name in choice.serve]  # replaced whole by a switch
        self._pipeline_class = BatchedInferencePipeline
        self._cache_lock = threading.Lock()
        # `_empty_encoding` per faster-whisper model, dropped with a model a switch replaces
        self._empty: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self.live_packing = settings.whisper_live_packing == "on"  # docs/scheduling.md#live-capacity
        batch = settings.whisper_batch(self.layout)
        self.scheduler = Scheduler(
            lambda pieces: self._run_batch(pieces, live=False),
            self._finish,
            batch,
            lanes=self.lanes,
            live_run_batch=lambda pieces: self._run_batch(pieces, live=True),
            lane_nice=RECORDING_NICE if self.layout == "cpu" else 0,
            name="whisper",
            live_batch_size=batch * (PIECES_PER_WINDOW if self.live_packing else 1),
            live_lanes=1 if self.layout == "cuda" else self.lanes,
        )
        self.load_seconds = time.monotonic() - started
        log.info(
            "loaded whisper %s on %s (%s) in %.1f s",
            self.model_name, self.device, self.compute_type, self.load_seconds,
        )
        self.fetching = choice.fetch  # the production model fetched in the background, if any
        self.fetch_error: str | None = None
        self.progress = hub.Progress(choice.fetch or "")
        if choice.fetch:
            threading.Thread(target=self._fetch_and_switch, name="whisper-fetch", daemon=True).start()

    def _load(self, name: str) -> LoadedModel:
        """Load Whisper `name` (resolved by `app.models.whisper_model_path`) for this device."""
        from faster_whisper import WhisperModel

        path = models.whisper_model_path(self.settings, name)
        options = dict(
            device=self.device,
            device_index=devices.cuda_device_index(self.settings) if self.device == "cuda" else 0,
            compute_type=self.compute_type,
            cpu_threads=devices.cpu_threads(self.settings, self.settings.whisper_replicas),
            local_files_only=True,
        )
        if self.layout == "cuda":
            # One CTranslate2 model worker (inter_threads) per lane, the live lane included:
            # a live batch runs beside batches of recording pieces instead of waiting.
            live = recording = WhisperModel(path, num_workers=self.lanes + 1, **options)
        else:
            # On the CPU the cores are what live and recording pieces share: the recording
            # lanes get a model copy of their own whose threads run at `RECORDING_NICE`, so
            # a live piece takes the cores from them at once (on tiny.en, ~75 MB more).
            # Each lane gets its share of the cores (one beam search on tiny.en ran no faster
            # on 2 threads than on 1: 1.13 s against 1.01 s for the 30-s sample), and live
            # pieces get as many lanes as recordings: with one live lane the second core
            # idled while live chunks queued (bench/live_meetings.py).
            per_lane = {**options, "cpu_threads": max(1, options["cpu_threads"] // self.lanes)}
            live = WhisperModel(path, num_workers=self.lanes, **per_lane)
            recording = devices.in_niced_thread(
                RECORDING_NICE, lambda: WhisperModel(path, num_workers=self.lanes, **per_lane)
            )
        return LoadedModel(name, live, recording, tuple(live.supported_languages), live.model.is_multilingual)

    def _fetch_and_switch(self) -> None:
        """Fetch the production model, load it, then serve it instead of the embedded
        models (jobs already prepared finish on the model they started with). A failure is
        logged once; the embedded models serve on and `describe` says why."""
        name = self.fetching
        assert name is not None
        try:
            models.fetch_whisper(self.settings, name, self.progress)
            loaded = self._load(name)
        except ModelNotFound as exc:
            cause = exc.__cause__
            self.fetch_error = cause.reason if isinstance(cause, hub.FetchError) else exc.detail
            log.error("whisper serves %s instead of %s: %s", self.model_name, name, self.fetch_error)
            return
        except Exception as exc:  # noqa: BLE001 - a bad download must not end the worker
            self.fetch_error = f"{name} could not be loaded ({type(exc).__name__})"
            log.exception("whisper serves %s instead of %s", self.model_name, name)
            return
        previous = self.model_name
        # `describe` runs on another thread: clear the download first, so that no Pong
        # shows the new model still "downloading" (it may show the old models ready).
        self.fetching = None
        self.models = [loaded]
        log.info("whisper now serves %s (was %s)", name, previous)

    @property
    def model_name(self) -> str:
        """The names of the models served, ``+``-joined (``tiny.en+base``)."""
        return "+".join(model.name for model in self.models)

    @property
    def languages(self) -> tuple[str, ...]:
        """Every language a served model transcribes."""
        return tuple(dict.fromkeys(code for model in self.models for code in model.languages))

    def status(self) -> str:
        """``ready``, or what happens to the production model meanwhile (see `Pong.status`)."""
        if self.fetch_error is not None:
            return f"serving {self.model_name} instead of {self.fetching}: {self.fetch_error}"
        if self.fetching is not None:
            return f"{self.progress.describe()} ({self.fetching}; serving {self.model_name} meanwhile)"
        return "ready"

    def describe(self) -> Pong:
        return Pong(
            kind=self.kind,
            model=self.model_name,
            device=self.device,
            info={"languages": list(self.languages), "compute_type": self.compute_type},
            load_seconds=round(self.load_seconds, 3),
            status=self.status(),
        )

    def pick(self, language: str, task: str) -> LoadedModel:
        """The served model for a request: English transcription goes to the first model
        (the English-only one of the embedded pair), everything else to a multilingual one."""
        served = self.models
        if language == "en" and task == "transcribe":
            return served[0]
        return next((model for model in served if model.multilingual), served[0])

    def check(self, request: TranscribeRequest) -> None:
        """Raise `BadRequest` for a language or task the served models cannot do."""
        languages = self.languages
        if request.language is not None and request.language not in languages:
            raise BadRequest(
                f"language {request.language!r} is not supported by the loaded Whisper model "
                f"{self.model_name}; it supports: {', '.join(languages)}"
            )
        if request.task == "translate" and not any(model.multilingual for model in self.models):
            raise BadRequest(
                f"the loaded Whisper model {self.model_name} is English-only and cannot "
                "translate; set REFLECTOR_GPU_WHISPER_MODEL to a multilingual model (e.g. base)"
            )

    # -- the job's life: prepare, batches, finish ---------------------------------------
    def prepare(self, request: TranscribeRequest) -> Job:
        """Decode, pad, VAD-cut and (if needed) detect the language of one request.

        Returns the job with its pieces (audio arrays of at most 30 s), not yet submitted.
        Raises `BadRequest` for a language or task the model lacks, `InvalidAudio` /
        `PayloadTooLarge` from decoding. A `SpeechProbabilitiesRequest` is answered here at
        once (`speech_probabilities`): the reply, not a job.
        """
        if isinstance(request, SpeechProbabilitiesRequest):
            return self.speech_probabilities(request)  # type: ignore[return-value]
        self.check(request)  # before decoding: a language the model lacks costs no decode
        return self._cut(request, self._decode(request))

    def prepare_samples(self, request: TranscribeRequest, audio: Any) -> Job:
        """`prepare` for audio already decoded: `audio`, float32 mono samples at 16 kHz
        (`request.path` is not read). scripts/device_check.py feeds PCM this way on machines
        without PyAV."""
        self.check(request)
        return self._cut(request, audio)

    def _cut(self, request: TranscribeRequest, audio: Any) -> Job:
        """`prepare` after the request's check and decoding: pad, VAD-cut, detect the language."""
        import numpy as np
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        duration = audio.shape[0] / SAMPLE_RATE
        if audio.shape[0] < MIN_CLIP_SECONDS * SAMPLE_RATE:
            audio = np.pad(audio, (0, int(MIN_CLIP_SECONDS * SAMPLE_RATE) - audio.shape[0]))
        vad = VadOptions(max_speech_duration_s=PIECE_SECONDS, min_silence_duration_ms=VAD_MIN_SILENCE_MS)
        speech = get_speech_timestamps(audio, vad)
        chunks, metadata = collect_chunks(audio, speech, max_duration=PIECE_SECONDS) if speech else ([], [])
        del audio  # the pieces are copies; a long recording's full signal is freed here
        language = request.language or self._detect_language(chunks)
        model = self.pick(language, request.task)
        tokenizer = self._tokenizer(model, language, request.task)
        timeline = _Timeline(
            request=request, duration=duration, speech=speech, language=language, model=model,
            tokenizer=tokenizer, options=self._options(request, tokenizer),
        )
        job = Job(
            priority=request.priority,
            key=(model.name, language, request.task, request.prompt, request.temperature),
            context=timeline,
        )
        for chunk, meta in zip(chunks, metadata):
            job.add(meta["duration"], (chunk, meta))
        return job

    def _decode(self, request: TranscribeRequest) -> Any:
        """The request's audio as 16-kHz mono float32 samples: its file, or its inline PCM."""
        import io

        from app.audio.decode import decode_mono, pcm_wav

        source: Any = request.path
        if isinstance(request, TranscribePcmRequest):
            source = io.BytesIO(pcm_wav(request.pcm, request.encoding, request.sample_rate))
        return decode_mono(source, SAMPLE_RATE, self.settings.max_audio_seconds)

    def speech_probabilities(self, request: SpeechProbabilitiesRequest) -> SpeechProbabilities:
        """Silero VAD (faster-whisper's model, as `prepare` uses it) over each chunk of
        `request`, one probability per whole window after its context, rounded to 3 decimals."""
        import io

        import numpy as np
        from faster_whisper.vad import get_vad_model

        from app.audio.decode import WAV_FORMATS, decode_mono, pcm_wav

        sample_bytes = WAV_FORMATS[request.encoding][1] // 8
        probabilities: list[float] = []
        for chunk, context in zip(request.chunks, request.context):
            audio = decode_mono(io.BytesIO(pcm_wav(chunk, request.encoding, request.sample_rate)), SAMPLE_RATE)
            samples = len(chunk) // sample_bytes * SAMPLE_RATE // request.sample_rate  # the windows the caller counts
            audio = np.pad(audio[:samples], (0, max(0, samples - audio.shape[0])))
            windows = samples // VAD_WINDOW_SAMPLES
            if windows > context:
                scores = get_vad_model()(audio[: windows * VAD_WINDOW_SAMPLES]).reshape(-1)
                probabilities.extend(round(float(p), 3) for p in scores[context:])
        return SpeechProbabilities(probabilities=probabilities)

    def submit(self, request: TranscribeRequest, cancel: threading.Event) -> Future:
        """Prepare `request` and queue its pieces; the future resolves to its `Transcript`."""
        job = self.prepare(request)
        if cancel.is_set():
            raise Cancelled()
        return self.scheduler.submit(job)

    def audio_seconds(self, request: TranscribeRequest) -> None:
        """Not measured per request: the scheduler counts the pieces' audio."""
        return None

    def handle(self, request: TranscribeRequest, cancel: threading.Event) -> Transcript:
        """`submit` and wait (for callers without an event loop: tests, benchmarks)."""
        return self.submit(request, cancel).result()

    def _detect_language(self, chunks: list) -> str:
        """The language of the first 30 s of speech (faster-whisper's own detector, on a
        multilingual served model); ``en`` with English-only models and for audio without speech."""
        model = next((m.live for m in self.models if m.multilingual), None)
        if model is None or not chunks:
            return "en"
        features = model.feature_extractor(chunks[0])[..., :-1]
        language, probability, _ = model.detect_language(
            features=features, language_detection_segments=1,
            language_detection_threshold=LANGUAGE_DETECTION_THRESHOLD,
        )
        log.info("detected language %s (p=%.2f)", language, probability)
        return language if language in self.languages else "en"

    def _tokenizer(self, model: LoadedModel, language: str, task: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        with self._cache_lock:
            key = (language, task)
            if key not in model.tokenizers:
                model.tokenizers[key] = Tokenizer(
                    model.live.hf_tokenizer, model.multilingual, task=task, language=language
                )
            return model.tokenizers[key]

    def _options(self, request: TranscribeRequest, tokenizer: Any) -> Any:
        """faster-whisper's `TranscriptionOptions`, as its batched `transcribe` builds them
        (no conditioning on previous text, one temperature), with word timestamps on and
        timestamp tokens kept: they let Whisper split each piece into its own segments,
        which took tiny.en's WER on the pyannote sample from 0.185 to 0.160."""
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        return TranscriptionOptions(
            beam_size=self.settings.whisper_beam_size, best_of=5, patience=1, length_penalty=1,
            repetition_penalty=1, log_prob_threshold=-1.0,
            no_repeat_ngram_size=TRANSLATE_NO_REPEAT_NGRAM if request.task == "translate" else 0,
            no_speech_threshold=0.6, compression_ratio_threshold=2.4,
            temperatures=[request.temperature], initial_prompt=request.prompt, prefix=None,
            suppress_blank=True, suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            prepend_punctuations="\"'“¿([{-", append_punctuations="\"'.。,，!！?？:：”)]}、",
            max_new_tokens=None, hotwords=None, word_timestamps=True,
            hallucination_silence_threshold=None, condition_on_previous_text=False,
            clip_timestamps=[], prompt_reset_on_temperature=0.5, multilingual=False,
            without_timestamps=False, max_initial_timestamp=0.0,
        )

    def _run_batch(self, pieces: list[Piece], live: bool) -> list[list[dict]]:
        """Decode one batch (pieces grouped by job, in order; one key, so one model) on the
        job's model, its `live` copy or its recording one, with faster-whisper's batched
        forward pass; one list of segment dicts per piece.

        With `live_packing`, short live pieces share windows (`batch_rows`): up to
        `PIECES_PER_WINDOW` pieces of different requests go through the encoder as one 30-s window, and each is
        then decoded in a row of its own that sees only its own part of the encoder output
        (`_encode`) and starts at its own place (`start_token`), so no request's audio or
        text reaches another's decoder. Batches of live pieces decode at most
        `_token_budget` tokens a row."""
        started = time.monotonic()
        loaded: LoadedModel = pieces[0].job.context.model
        model = loaded.live if live else loaded.recording
        rows = batch_rows(pieces, self._packs if self.live_packing else lambda piece: False)
        first: _Timeline = pieces[0].job.context
        options = first.options
        if all(piece.job.priority == "live" for piece in pieces):
            options = dataclasses.replace(options, max_new_tokens=_token_budget(rows, options))
        outputs = self._forward(rows, model, first.tokenizer, options)
        again = [index for index, (row, segments) in enumerate(zip(rows, outputs)) if row.span and _failed(segments, options)]
        if again:
            alone = [_alone(rows[index].piece) for index in again]
            options = dataclasses.replace(options, max_new_tokens=_token_budget(alone, options))
            redone = self._forward(alone, model, first.tokenizer, options)
            for index, row, segments in zip(again, alone, redone):
                rows[index], outputs[index] = row, segments
        log.debug(
            "batch on %s: %d pieces, %d windows, %d decoded again alone, %.2f s",
            threading.current_thread().name, len(pieces), len({id(row.audio) for row in rows}), len(again),
            time.monotonic() - started,
        )
        return [from_window(segments, row.span) if row.span else segments for row, segments in zip(rows, outputs)]

    def _forward(self, rows: list[_Row], model: Any, tokenizer: Any, options: Any) -> list[list[dict]]:
        """faster-whisper's batched forward pass over `rows` (encoder output from `_encode`),
        words aligned per row group, decoded by `_Decoder` (sampling, the temperature
        fallback); each segment dict gets the temperature its row was decoded at."""
        features, encoder_output = self._encode(rows, model)
        groups: list[tuple[int, int, Any]] = []
        for index, row in enumerate(rows):
            if groups and groups[-1][2] is row.carry:
                start, count, carry = groups[-1]
                groups[-1] = (start, count + 1, carry)
            else:
                groups.append((index, 1, row.carry))
        timed = _PerJobWordTiming(model, groups, encoder_output)
        starts = {index: start_token(row.span, tokenizer) for index, row in enumerate(rows) if row.span}
        decoder = _Decoder(model.model, tokenizer, options, starts)
        timed.model = decoder  # what `forward` generates with
        outputs = self._pipeline_class(timed).forward(features, tokenizer, [row.meta for row in rows], options)
        for segments, temperature in zip(outputs, decoder.temperatures):
            for segment in segments:
                segment["temperature"] = temperature
        return outputs

    def _encode(self, rows: list[_Row], model: Any) -> tuple[Any, Any]:
        """Whisper's features (one array per row) and encoder output (a `StorageView`, one
        row per row) for a batch, with one encoder pass per window: rows of a shared window
        are encoded once, and each then keeps only its own frames (`encoder_frames`), the
        rest replaced by the encoding of an empty window (zero features: what follows a
        short piece decoded alone). Encoder output stays on its device (torch on CUDA)."""
        import numpy as np
        from faster_whisper.audio import pad_or_trim

        windows: dict[int, int] = {}
        unique: list[Any] = []
        for row in rows:
            if id(row.audio) not in windows:
                windows[id(row.audio)] = len(unique)
                unique.append(pad_or_trim(model.feature_extractor(row.audio)[..., :-1]))
        order = [windows[id(row.audio)] for row in rows]
        stacked = np.stack(unique)
        encoded = model.encode(stacked)
        if not any(row.span for row in rows):  # a window a row: the features are the rows'
            return stacked, encoded
        features = stacked[order]
        array = _device_array(encoded)
        empty = _device_array(self._empty_encoding(model))
        output = array[order]  # a copy (numpy and torch both copy on indexing by a list), one row per row
        for number, (row, index) in enumerate(zip(rows, order)):
            if row.span:
                first, stop = encoder_frames(row.span, frames=output.shape[1])
                output[number] = empty[0]
                output[number, first:stop] = array[index, first:stop]
        return features, _storage(output)

    def _empty_encoding(self, model: Any) -> Any:
        """The encoder output (1 x 1500 x width) of a window of zero features, once per model."""
        import numpy as np

        if model not in self._empty:
            mels = model.feature_extractor.mel_filters.shape[0]
            self._empty[model] = model.encode(np.zeros((1, mels, model.feature_extractor.nb_max_frames), dtype=np.float32))
        return self._empty[model]

    @staticmethod
    def _packs(piece: Piece) -> bool:
        """Whether `piece` may share a window: a live piece of at most `PACK_MAX_PIECE_SECONDS`."""
        return piece.job.priority == "live" and piece.seconds <= PACK_MAX_PIECE_SECONDS

    def _finish(self, job: Job) -> Transcript:
        """Map a job's decoded pieces back to its timeline (`restore_speech_timestamps`) and
        shape the `Transcript`: words cleaned by `clean_words`, segments numbered from 0."""
        from faster_whisper.transcribe import Segment as FwSegment
        from faster_whisper.transcribe import Word as FwWord
        from faster_whisper.transcribe import restore_speech_timestamps

        timeline: _Timeline = job.context
        decoded = (
            FwSegment(
                id=0, seek=s["seek"], start=round(s["start"], 3), end=round(s["end"], 3), text=s["text"],
                tokens=s["tokens"], avg_logprob=s["avg_logprob"], compression_ratio=s["compression_ratio"],
                no_speech_prob=s["no_speech_prob"], words=[FwWord(**w) for w in s.get("words", [])],
                temperature=s["temperature"],
            )
            for index in range(job.total)
            for s in job.outputs[index]
        )
        offset = timeline.request.timestamp_offset
        texts: list[str] = []
        raw: list[tuple[str, float, float]] = []
        segments: list[Segment] = []
        for segment in restore_speech_timestamps(decoded, timeline.speech, SAMPLE_RATE):
            texts.append(segment.text)
            raw.extend((w.word, w.start, w.end) for w in segment.words or ())
            segments.append(
                Segment(
                    id=len(segments),
                    start=round(float(segment.start) + offset, 2),
                    end=round(float(segment.end) + offset, 2),
                    text=segment.text,
                    tokens=list(segment.tokens),
                    temperature=float(segment.temperature or 0.0),
                    avg_logprob=float(segment.avg_logprob),
                    compression_ratio=float(segment.compression_ratio),
                    no_speech_prob=float(segment.no_speech_prob),
                )
            )
        return Transcript(
            text="".join(texts).strip(),
            words=clean_words(raw, offset),
            duration=round(timeline.duration, 3),
            language=timeline.language,
            segments=segments,
        )
