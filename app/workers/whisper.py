"""The Whisper engine (faster-whisper on CTranslate2) and its messages.

One `TranscribeRequest` names an audio file on local disk; the reply is a `Transcript`.
Each request is *prepared* on its own (decoded, clips shorter than 0.5 s padded with
silence since short inputs make some Whisper models fail, cut by Silero VAD into speech
regions merged into pieces of at most 30 s, language detected when not given), then its
pieces join the worker's `app.workers.scheduler.Scheduler`, which decodes pieces of many
requests together in batches of up to `REFLECTOR_GPU_WHISPER_BATCH_SIZE` with
faster-whisper's batched calls (`BatchedInferencePipeline.forward`: one encoder pass and one
beam search, `REFLECTOR_GPU_WHISPER_BEAM_SIZE`, over the batch), live pieces first. When a
request's last piece is done, its words are mapped back to its own timeline, exactly as
`BatchedInferencePipeline.transcribe` does for one file. Heavy imports happen in
`WhisperEngine.__init__` only.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from app.errors import BadRequest, Unavailable
from app.settings import Settings
from app.workers import devices
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
# Packing live pieces: silence between two requests' audio in one window (enough for Whisper
# to end a segment; measured in bench/live_meetings.py), and the longest piece worth packing.
PACK_GAP_SECONDS = 1.0
PACK_MAX_PIECE_SECONDS = 10.0
PIECES_PER_WINDOW = 5  # Reflector's 5.12-s chunks a window holds: 5 x 5.12 + 4 gaps < 30 s


def recording_lanes(device: str) -> int:
    """Lanes that decode recording pieces (the live lane comes on top).

    On CUDA one lane with large batches keeps the GPU busy. On the CPU, batching saves no
    CPU time (measured on tiny.en int8: 8 pieces in one batch cost 0.86-1.0x the CPU time
    of 8 single pieces), but one beam search keeps only about one core busy, so two lanes
    decoding different pieces at once use a second core.
    """
    return 1 if device == "cuda" else 2


Task = Literal["transcribe", "translate"]
Priority = Literal["live", "recording"]


class TranscribeRequest(msgspec.Struct, tag="transcribe", frozen=True):
    """Transcribe `path` (any format FFmpeg decodes); shift every time by `timestamp_offset` s.

    `language`: a code the model supports, or None to detect it from the audio (an
    English-only model answers ``en``). `task`: ``transcribe``, or ``translate`` (speech in
    any language to English text; multilingual models only). `prompt`: text conditioning
    every 30-s piece (Whisper's initial prompt). `temperature`: sampling temperature (0:
    beam search). `priority`: ``live`` pieces (uploads) are decoded before ``recording``
    pieces (whole recordings from a URL).
    """

    path: str
    language: str | None = "en"
    timestamp_offset: float = 0.0
    task: Task = "transcribe"
    prompt: str | None = None
    temperature: float = 0.0
    priority: Priority = "recording"


class Word(msgspec.Struct, frozen=True):
    """One word with its leading space as Whisper emits it; times in seconds, 2 decimals."""

    word: str
    start: float
    end: float


class Segment(msgspec.Struct, frozen=True):
    """One decoded segment (Whisper's own split of a 30-s piece), times in seconds (2 decimals).

    `tokens`: the token ids; `avg_logprob`, `compression_ratio`, `no_speech_prob`: Whisper's
    decoding statistics, as OpenAI's ``verbose_json`` reports them.
    """

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class Transcript(msgspec.Struct, tag="transcript", frozen=True):
    """The text, the words and segments in time order, the audio duration in seconds, and
    the language spoken (as given, or detected)."""

    text: str
    words: list[Word]
    duration: float
    language: str = "en"
    segments: list[Segment] = []


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
    regions (samples) to map piece times back, the tokenizer and decoding options shared by
    its pieces, and the word-timing state faster-whisper carries from piece to piece."""

    request: TranscribeRequest
    duration: float
    speech: list[dict]
    language: str
    tokenizer: Any
    options: Any
    last_speech_timestamp: float = 0.0


class _Carry:
    """The word-timing state of a packed window (no request's state carries into it)."""

    last_speech_timestamp = 0.0


@dataclass(frozen=True)
class Span:
    """Where one packed piece lies in its window: `start` to `end` (s from the window's
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


def _owner(time: float, spans: Sequence[Span]) -> int:
    """The span a time (s in the window) belongs to: the nearest one (gaps split in the middle)."""
    for index in range(len(spans) - 1):
        if time < (spans[index].end + spans[index + 1].start) / 2:
            return index
    return len(spans) - 1


TIME_PRECISION = 0.02  # s per Whisper timestamp token


def _extent(segment: dict, tokenizer: Any) -> tuple[float, float]:
    """Where Whisper put a segment (s in the window): its own timestamp tokens, which it
    predicts from the audio, else the segment's (word-adjusted) start and end."""
    tokens, begin = segment["tokens"], tokenizer.timestamp_begin
    start, end = segment["start"], segment["end"]
    if tokens and tokens[0] >= begin:
        start = (tokens[0] - begin) * TIME_PRECISION
    if tokens and tokens[-1] >= begin:
        end = (tokens[-1] - begin) * TIME_PRECISION
    return start, end


def _parts(segment: dict, spans: Sequence[Span], tokenizer: Any) -> list[tuple[int, list[dict]]]:
    """Which span each word of a packed window's segment goes to, as ``(span, words)`` parts.

    Whisper ends a segment at the silence between two pieces, so a segment that does not
    run over a whole gap belongs, with all its words, to the span it overlaps most (a word
    that alignment timed a little into the gap stays with its sentence). A segment that
    runs over a gap is cut by its words' middles, nearest span."""
    words = segment.get("words") or []
    start, end = _extent(segment, tokenizer)
    crosses = any(start < left.end and end > right.start for left, right in itertools.pairwise(spans))
    if not crosses:
        overlaps = [min(end, span.end) - max(start, span.start) for span in spans]
        best = max(range(len(spans)), key=overlaps.__getitem__)
        return [(best if overlaps[best] > 0 else _owner((start + end) / 2, spans), words)]
    parts: list[tuple[int, list[dict]]] = []
    for word in words:
        owner = _owner((word["start"] + word["end"]) / 2, spans)
        if parts and parts[-1][0] == owner:
            parts[-1][1].append(word)
        else:
            parts.append((owner, [word]))
    return parts or [(_owner((start + end) / 2, spans), [])]


def split_packed(segments: list[dict], spans: Sequence[Span], tokenizer: Any) -> list[list[dict]]:
    """Hand the segments decoded from one packed window back to its pieces.

    `segments`: faster-whisper's segment dicts for the window (times in s from the window's
    start, ``tokens`` with Whisper's timestamp tokens, ``words`` with
    ``word``/``start``/``end``/``probability``); `spans`: where each piece lies, in window
    order; `tokenizer`: faster-whisper's (``encode``, ``timestamp_begin``). Words go to
    pieces as `_parts` says and their times are clipped to their piece's span, so a word
    never crosses a boundary and a piece only gets words timed inside its own audio. A
    segment cut in parts gets its text and tokens from its words. Returns one list of
    segment dicts per span, timed on the piece's own speech timeline (``offset + t -
    start``), as `BatchedInferencePipeline.forward` times a piece decoded alone.
    """
    outputs: list[list[dict]] = [[] for _ in spans]
    for segment in segments:
        parts = _parts(segment, spans, tokenizer)
        for owner, words in parts:
            span = spans[owner]

            def moved(time: float, span: Span = span) -> float:
                return round(span.offset + min(max(time, span.start), span.end) - span.start, 3)

            words = [dict(word, start=moved(word["start"]), end=moved(word["end"])) for word in words]
            if len(parts) == 1:
                text = segment["text"]
                tokens = [token for token in segment["tokens"] if token < tokenizer.timestamp_begin]
            else:
                text = "".join(word["word"] for word in words)
                tokens = tokenizer.encode(text)
            outputs[owner].append({
                **segment, "text": text, "tokens": tokens, "words": words,
                "start": words[0]["start"] if words else moved(segment["start"]),
                "end": words[-1]["end"] if words else moved(segment["end"]),
                "seek": round(span.offset * FRAMES_PER_SECOND),
                "compression_ratio": _compression_ratio(text) if len(parts) > 1 else segment["compression_ratio"],
            })
    return outputs


def _compression_ratio(text: str) -> float:
    """Whisper's compression ratio of `text` (bytes / zlib-compressed bytes)."""
    import zlib

    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(eq=False)
class _Row:
    """One row of a batch: the audio (16 kHz float32) Whisper sees as one window, the chunk
    metadata `forward` takes for it, the pieces it holds, their spans when packed (None: one
    piece decoded alone), and whose word-timing state it carries."""

    audio: Any
    meta: dict
    pieces: list[Piece]
    spans: list[Span] | None
    carry: Any


def batch_rows(pieces: Sequence[Piece], pack: Callable[[Piece], bool], gap: float = PACK_GAP_SECONDS) -> list[_Row]:
    """The rows of a batch: each piece alone, except that consecutive pieces for which
    `pack(piece)` holds are packed into windows (`plan_windows`), `gap` s of silence
    between them. Piece data: ``(audio, chunk metadata)`` as `WhisperEngine.prepare` makes."""
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
            meta = {"offset": 0.0, "duration": at, "segments": []}
            rows.append(_Row(np.concatenate(parts), meta, [run[i] for i in indices], spans, _Carry()))
        run.clear()

    for piece in pieces:
        if pack(piece):
            run.append(piece)
            continue
        flush()
        rows.append(_alone(piece))
    flush()
    return rows


TOKENS_PER_SECOND = 10  # twice fast speech (~3.3 words/s, ~5 tokens/s); more is a loop
MAX_TOKENS = 448  # Whisper's decoder length, prompt included
PROMPT_TOKENS = 230  # room the prompt may take: 223 of its own tokens and the start sequence


def _token_budget(rows: Sequence[_Row], options: Any) -> int:
    """New tokens a batch of live rows may decode: `TOKENS_PER_SECOND` per second of its
    longest row, within the decoder's length. A repetition loop ("Hello. Hello. ...") then
    ends after that many steps instead of 448, which on a busy live lane is the difference
    between one slow answer and a queue that every meeting waits behind."""
    longest = max(row.meta["duration"] for row in rows)
    room = MAX_TOKENS - (PROMPT_TOKENS if options.initial_prompt else 8)
    return max(16, min(room, math.ceil(TOKENS_PER_SECOND * longest) + 16))


def _redo(parts: list[list[dict]], options: Any) -> list[int]:
    """Which pieces of a packed window to decode again alone (indices in window order):
    those with a segment over Whisper's compression-ratio threshold (a repetition loop),
    and those that got no word although VAD found speech in each (the decoder skipped
    them, or a loop used up the tokens before their turn)."""
    return [
        index for index, part in enumerate(parts)
        if not any(segment["words"] for segment in part)
        or any(segment["compression_ratio"] > options.compression_ratio_threshold for segment in part)
    ]


def _alone(piece: Piece) -> _Row:
    audio, meta = piece.data
    return _Row(audio, meta, [piece], None, piece.job.context)


class _PerJobWordTiming:
    """The WhisperModel as `BatchedInferencePipeline.forward` sees it for one mixed batch.

    faster-whisper aligns words for a whole batch in one call and carries one
    ``last_speech_timestamp`` from piece to piece, which is right for one file. A batch here
    holds consecutive pieces of several requests, so alignment runs per request, on that
    request's rows of the encoder output, with that request's own carried timestamp.
    Everything else is the real model.
    """

    def __init__(self, model: Any, groups: list[tuple[int, int, _Timeline]]) -> None:
        self._model = model
        self._groups = groups  # (first row, row count, timeline), in batch order

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

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


def _rows(storage: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of a CTranslate2 `StorageView` (batch first), on its device."""
    import ctranslate2
    import numpy as np

    if storage.device == "cpu":
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(storage)[start:stop]))
    import torch  # CUDA: view the device memory through torch, no copy to the host

    tensor = torch.as_tensor(storage, device=f"cuda:{storage.device_index}")
    return ctranslate2.StorageView.from_array(tensor[start:stop].contiguous())


class WhisperEngine:
    """Loads one CTranslate2 Whisper model and answers `TranscribeRequest`s through a
    cross-request `Scheduler` (see the module docstring).

    `submit(request, cancel)` returns a future; `handle(request, cancel)` waits for it.
    """

    kind = "whisper"
    request_types = (TranscribeRequest,)

    def __init__(self, settings: Settings) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        from app.models import whisper_model_path

        self.settings = settings
        self.device = devices.ct2_device(settings)
        self.compute_type = devices.ct2_compute_type(settings, self.device)
        self.model_path = whisper_model_path(settings)
        started = time.monotonic()
        lanes = recording_lanes(self.device)
        options = dict(
            device=self.device,
            device_index=devices.cuda_device_index(settings) if self.device == "cuda" else 0,
            compute_type=self.compute_type,
            cpu_threads=devices.cpu_threads(settings, settings.whisper_replicas),
            local_files_only=True,
        )
        if self.device == "cuda":
            # One CTranslate2 model worker (inter_threads) per lane, the live lane included:
            # a live batch runs beside batches of recording pieces instead of waiting.
            self.model = WhisperModel(self.model_path, num_workers=lanes + 1, **options)
            self.recording_model = self.model
        else:
            # On the CPU the cores are what live and recording pieces share: the recording
            # lanes get a model copy of their own whose threads run at `RECORDING_NICE`, so
            # a live piece takes the cores from them at once (on tiny.en, ~75 MB more).
            # Each lane gets its share of the cores (one beam search on tiny.en ran no faster
            # on 2 threads than on 1: 1.13 s against 1.01 s for the 30-s sample), and live
            # pieces get as many lanes as recordings (bench/live_meetings.py).
            per_lane = {**options, "cpu_threads": max(1, options["cpu_threads"] // lanes)}
            self.model = WhisperModel(self.model_path, num_workers=lanes, **per_lane)
            self.recording_model = devices.in_niced_thread(
                RECORDING_NICE, lambda: WhisperModel(self.model_path, num_workers=lanes, **per_lane)
            )
        self._pipeline_class = BatchedInferencePipeline
        self.languages = tuple(self.model.supported_languages)
        self._cache_lock = threading.Lock()
        self._tokenizers: dict[tuple[str, str], Any] = {}
        self.live_packing = settings.whisper_packs_live(self.device)
        batch = settings.whisper_batch(self.device)
        self.scheduler = Scheduler(
            lambda pieces: self._run_batch(pieces, self.recording_model),
            self._finish,
            batch,
            lanes=lanes,
            live_run_batch=lambda pieces: self._run_batch(pieces, self.model),
            lane_nice=RECORDING_NICE if self.device == "cpu" else 0,
            name="whisper",
            live_batch_size=batch * (PIECES_PER_WINDOW if self.live_packing else 1),
            live_lanes=1 if self.device == "cuda" else lanes,
        )
        self.load_seconds = time.monotonic() - started
        log.info(
            "loaded whisper %s on %s (%s) in %.1f s",
            settings.whisper_model,
            self.device,
            self.compute_type,
            self.load_seconds,
        )

    def describe(self) -> Pong:
        return Pong(
            kind=self.kind,
            model=self.settings.whisper_model,
            device=self.device,
            info={"languages": list(self.languages), "compute_type": self.compute_type},
            load_seconds=round(self.load_seconds, 3),
        )

    def check(self, request: TranscribeRequest) -> None:
        """Raise `BadRequest` for a language or task the loaded model cannot do."""
        if request.language is not None and request.language not in self.languages:
            raise BadRequest(
                f"language {request.language!r} is not supported by the loaded Whisper model "
                f"{self.settings.whisper_model}; it supports: {', '.join(self.languages)}"
            )
        if request.task == "translate" and not self.model.model.is_multilingual:
            raise BadRequest(
                f"the loaded Whisper model {self.settings.whisper_model} is English-only and cannot "
                "translate; set REFLECTOR_GPU_WHISPER_MODEL to a multilingual model (e.g. base)"
            )

    # -- the job's life: prepare, batches, finish ---------------------------------------
    def prepare(self, request: TranscribeRequest) -> Job:
        """Decode, pad, VAD-cut and (if needed) detect the language of one request.

        Returns the job with its pieces (audio arrays of at most 30 s), not yet submitted.
        Raises `BadRequest` for a language or task the model lacks, `InvalidAudio` /
        `PayloadTooLarge` from decoding.
        """
        import numpy as np
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        from app.audio.decode import decode_mono

        self.check(request)
        audio = decode_mono(request.path, SAMPLE_RATE, self.settings.max_audio_seconds)
        duration = audio.shape[0] / SAMPLE_RATE
        if audio.shape[0] < MIN_CLIP_SECONDS * SAMPLE_RATE:
            audio = np.pad(audio, (0, int(MIN_CLIP_SECONDS * SAMPLE_RATE) - audio.shape[0]))
        vad = VadOptions(max_speech_duration_s=PIECE_SECONDS, min_silence_duration_ms=VAD_MIN_SILENCE_MS)
        speech = get_speech_timestamps(audio, vad)
        chunks, metadata = collect_chunks(audio, speech, max_duration=PIECE_SECONDS) if speech else ([], [])
        del audio  # the pieces are copies; a long recording's full signal is freed here
        language = request.language or self._detect_language(chunks)
        timeline = _Timeline(
            request=request, duration=duration, speech=speech, language=language,
            tokenizer=self._tokenizer(language, request.task), options=self._options(request, language),
        )
        job = Job(
            priority=request.priority,
            key=(language, request.task, request.prompt, request.temperature),
            context=timeline,
        )
        for chunk, meta in zip(chunks, metadata):
            job.add(meta["duration"], (chunk, meta))
        return job

    def submit(self, request: TranscribeRequest, cancel: threading.Event) -> Future:
        """Prepare `request` and queue its pieces; the future resolves to its `Transcript`."""
        job = self.prepare(request)
        if cancel.is_set():
            raise Unavailable("cancelled: the client went away")
        return self.scheduler.submit(job)

    def handle(self, request: TranscribeRequest, cancel: threading.Event) -> Transcript:
        """`submit` and wait (for callers without an event loop: tests, benchmarks)."""
        return self.submit(request, cancel).result()

    def _detect_language(self, chunks: list) -> str:
        """The language of the first 30 s of speech (faster-whisper's own detector); ``en``
        for English-only models and for audio without speech."""
        if not self.model.model.is_multilingual or not chunks:
            return "en"
        features = self.model.feature_extractor(chunks[0])[..., :-1]
        language, probability, _ = self.model.detect_language(
            features=features, language_detection_segments=1,
            language_detection_threshold=LANGUAGE_DETECTION_THRESHOLD,
        )
        log.info("detected language %s (p=%.2f)", language, probability)
        return language if language in self.languages else "en"

    def _tokenizer(self, language: str, task: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        with self._cache_lock:
            key = (language, task)
            if key not in self._tokenizers:
                self._tokenizers[key] = Tokenizer(
                    self.model.hf_tokenizer, self.model.model.is_multilingual, task=task, language=language
                )
            return self._tokenizers[key]

    def _options(self, request: TranscribeRequest, language: str) -> Any:
        """faster-whisper's `TranscriptionOptions`, as its batched `transcribe` builds them
        (no conditioning on previous text, one temperature), with word timestamps on and
        timestamp tokens kept: they let Whisper split each piece into its own segments,
        which took tiny.en's WER on the pyannote sample from 0.185 to 0.160."""
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        tokenizer = self._tokenizer(language, request.task)
        return TranscriptionOptions(
            beam_size=self.settings.whisper_beam_size, best_of=5, patience=1, length_penalty=1,
            repetition_penalty=1, no_repeat_ngram_size=0, log_prob_threshold=-1.0,
            no_speech_threshold=0.6, compression_ratio_threshold=2.4,
            temperatures=[request.temperature], initial_prompt=request.prompt, prefix=None,
            suppress_blank=True, suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            prepend_punctuations="\"'“¿([{-", append_punctuations="\"'.。,，!！?？:：”)]}、",
            max_new_tokens=None, hotwords=None, word_timestamps=True,
            hallucination_silence_threshold=None, condition_on_previous_text=False,
            clip_timestamps=[], prompt_reset_on_temperature=0.5, multilingual=False,
            without_timestamps=False, max_initial_timestamp=0.0,
        )

    def _run_batch(self, pieces: list[Piece], model: Any) -> list[list[dict]]:
        """Decode one batch (pieces grouped by job, in order) on `model` with faster-whisper's
        batched forward pass; one list of segment dicts per piece.

        With `live_packing`, short live pieces share windows (`batch_rows`): one encoder
        pass and one beam search for several requests, each word handed back to its own
        piece by time (`split_packed`). A piece whose part of the window fails Whisper's
        own check (compression ratio over the threshold: a repetition loop) or got no word
        is decoded again alone (`_redo`), so one request's audio never costs another
        request its words. Batches of live pieces decode at most `_token_budget` tokens."""
        started = time.monotonic()
        rows = batch_rows(pieces, self._packs if self.live_packing else lambda piece: False)
        first: _Timeline = pieces[0].job.context
        options = first.options
        if all(piece.job.priority == "live" for piece in pieces):
            options = dataclasses.replace(options, max_new_tokens=_token_budget(rows, options))
        outputs: dict[int, list[dict]] = {}
        again: list[Piece] = []
        for row, segments in zip(rows, self._forward(rows, model, first.tokenizer, options)):
            if row.spans is None:
                outputs[id(row.pieces[0])] = segments
                continue
            parts = split_packed(segments, row.spans, first.tokenizer)
            redo = _redo(parts, options)
            for index, (piece, part) in enumerate(zip(row.pieces, parts)):
                if index in redo:
                    again.append(piece)
                else:
                    outputs[id(piece)] = part
        if again:
            log.info("packed windows failed their checks: %d pieces decoded again alone", len(again))
            rows = [_alone(piece) for piece in again]
            options = dataclasses.replace(options, max_new_tokens=_token_budget(rows, options))
            for row, segments in zip(rows, self._forward(rows, model, first.tokenizer, options)):
                outputs[id(row.pieces[0])] = segments
        log.debug(
            "batch on %s: %d pieces in %d rows, %d decoded again, %.2f s",
            threading.current_thread().name, len(pieces), len(rows), len(again), time.monotonic() - started,
        )
        return [outputs[id(piece)] for piece in pieces]

    def _forward(self, rows: list[_Row], model: Any, tokenizer: Any, options: Any) -> list[list[dict]]:
        """faster-whisper's batched forward pass over `rows`, words aligned per row group."""
        import numpy as np
        from faster_whisper.audio import pad_or_trim

        features = np.stack([pad_or_trim(model.feature_extractor(row.audio)[..., :-1]) for row in rows])
        groups: list[tuple[int, int, Any]] = []
        for index, row in enumerate(rows):
            if groups and groups[-1][2] is row.carry:
                start, count, carry = groups[-1]
                groups[-1] = (start, count + 1, carry)
            else:
                groups.append((index, 1, row.carry))
        pipeline = self._pipeline_class(_PerJobWordTiming(model, groups))
        return pipeline.forward(features, tokenizer, [row.meta for row in rows], options)

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
                temperature=timeline.options.temperatures[0],
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
