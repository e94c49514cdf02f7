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

import logging
import threading
import time
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
# faster-whisper's batched defaults (BatchedInferencePipeline.transcribe): VAD regions cut at
# the piece length, 160 ms of silence ends a region.
VAD_MIN_SILENCE_MS = 160
VAD_WINDOW_SAMPLES = 512  # Silero VAD's window at 16 kHz
VAD_WINDOW_SECONDS = VAD_WINDOW_SAMPLES / SAMPLE_RATE  # 0.032 s
LANGUAGE_DETECTION_THRESHOLD = 0.5


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
PcmEncoding = Literal["pcm16", "mulaw", "alaw"]  # the keys of app.audio.decode.WAV_FORMATS


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


class TranscribePcmRequest(TranscribeRequest, tag="transcribe_pcm", frozen=True):
    """A `TranscribeRequest` whose audio travels inline: `pcm`, raw mono samples in
    `encoding` (16-bit little-endian PCM, or 8-bit G.711 mu-law / A-law) at `sample_rate`
    Hz, with `path` unused. The worker wraps them as a WAV (`app.audio.decode.pcm_wav`), so
    the transcript is the one an upload of that WAV gets. Realtime sessions send these: an
    utterance is at most a few MB (30 s of 24-kHz PCM16 is 1.4 MB), a frame the socket
    carries at once, and nothing is left on disk."""

    path: str = ""
    pcm: bytes = b""
    encoding: PcmEncoding = "pcm16"
    sample_rate: int = 24000


class SpeechProbabilitiesRequest(msgspec.Struct, tag="speech_probabilities", frozen=True):
    """Silero VAD's speech probability for each `VAD_WINDOW_SECONDS` window of each of
    `chunks` (raw mono audio, encoded as in `TranscribePcmRequest`), each decoded and
    resampled to 16 kHz on its own as an upload would be; the first `context[i]` windows
    of chunk ``i`` only warm the model up and get no probability. Chunks are independent,
    so a window's probability depends on its chunk alone, never on how audio was grouped
    into requests. Answered at once on the worker's preparation threads (a few ms per
    second of audio), never queued behind batches."""

    chunks: list[bytes]
    context: list[int]
    encoding: PcmEncoding = "pcm16"
    sample_rate: int = 24000


class SpeechProbabilities(msgspec.Struct, tag="speech_probabilities_reply", frozen=True):
    """One probability in [0, 1] per whole `VAD_WINDOW_SECONDS` window after the context
    of each chunk, the chunks' in order."""

    probabilities: list[float]


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
    request_types = (TranscribeRequest, TranscribePcmRequest, SpeechProbabilitiesRequest)

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
            # Each recording lane gets its share of the cores (one beam search on tiny.en ran
            # no faster on 2 threads than on 1: 1.13 s against 1.01 s for the 30-s sample).
            self.model = WhisperModel(self.model_path, num_workers=1, **options)
            per_lane = {**options, "cpu_threads": max(1, options["cpu_threads"] // lanes)}
            self.recording_model = devices.in_niced_thread(
                RECORDING_NICE, lambda: WhisperModel(self.model_path, num_workers=lanes, **per_lane)
            )
        self._pipeline_class = BatchedInferencePipeline
        self.languages = tuple(self.model.supported_languages)
        self._cache_lock = threading.Lock()
        self._tokenizers: dict[tuple[str, str], Any] = {}
        self.scheduler = Scheduler(
            lambda pieces: self._run_batch(pieces, self.recording_model),
            self._finish,
            settings.whisper_batch(self.device),
            lanes=lanes,
            live_run_batch=lambda pieces: self._run_batch(pieces, self.model),
            lane_nice=RECORDING_NICE if self.device == "cpu" else 0,
            name="whisper",
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
        `PayloadTooLarge` from decoding. A `SpeechProbabilitiesRequest` is answered here at
        once (`speech_probabilities`): the reply, not a job.
        """
        import numpy as np
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        if isinstance(request, SpeechProbabilitiesRequest):
            return self.speech_probabilities(request)  # type: ignore[return-value]
        self.check(request)
        audio = self._decode(request)
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
        batched forward pass; one list of segment dicts per piece."""
        import numpy as np
        from faster_whisper.audio import pad_or_trim

        features = np.stack(
            [pad_or_trim(model.feature_extractor(piece.data[0])[..., :-1]) for piece in pieces]
        )
        groups: list[tuple[int, int, _Timeline]] = []
        for row, piece in enumerate(pieces):
            if groups and groups[-1][2] is piece.job.context:
                start, count, timeline = groups[-1]
                groups[-1] = (start, count + 1, timeline)
            else:
                groups.append((row, 1, piece.job.context))
        first: _Timeline = pieces[0].job.context
        pipeline = self._pipeline_class(_PerJobWordTiming(model, groups))
        return pipeline.forward(features, first.tokenizer, [piece.data[1] for piece in pieces], first.options)

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
