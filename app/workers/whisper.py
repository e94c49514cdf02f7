"""The Whisper engine (faster-whisper on CTranslate2) and its messages.

One `TranscribeRequest` names an audio file on local disk; the reply is a `Transcript`.
Transcription uses faster-whisper's `BatchedInferencePipeline` (beam search,
`REFLECTOR_GPU_WHISPER_BEAM_SIZE`): Silero VAD cuts the audio
into speech regions, merges them into pieces of at most 30 s, decodes the pieces in
batches of `REFLECTOR_GPU_WHISPER_BATCH_SIZE`, and maps every word back to the original
timeline. Clips shorter than 0.5 s are padded with silence first (short inputs make some
Whisper models fail). Heavy imports happen in `WhisperEngine.__init__` only.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

import msgspec

from app.errors import BadRequest, Unavailable
from app.settings import Settings
from app.workers.protocol import Pong

log = logging.getLogger("app.worker.whisper")

SAMPLE_RATE = 16000  # Hz, what Whisper's feature extractor expects
MIN_CLIP_SECONDS = 0.5


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


class WhisperEngine:
    """Loads one CTranslate2 Whisper model and answers `TranscribeRequest`s."""

    kind = "whisper"
    request_types = (TranscribeRequest,)

    def __init__(self, settings: Settings) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        from app.models import whisper_model_path
        from app.workers.devices import ct2_compute_type, ct2_device

        self.settings = settings
        self.device = ct2_device(settings)
        self.compute_type = ct2_compute_type(settings, self.device)
        self.model_path = whisper_model_path(settings)
        started = time.monotonic()
        self.model = WhisperModel(
            self.model_path,
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=settings.cpu_threads,
            local_files_only=True,
        )
        self.pipeline = BatchedInferencePipeline(self.model)
        self.languages = tuple(self.model.supported_languages)
        log.info(
            "loaded whisper %s on %s (%s) in %.1f s",
            settings.whisper_model,
            self.device,
            self.compute_type,
            time.monotonic() - started,
        )

    def describe(self) -> Pong:
        return Pong(
            kind=self.kind,
            model=self.settings.whisper_model,
            device=self.device,
            info={"languages": list(self.languages), "compute_type": self.compute_type},
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

    def handle(self, request: TranscribeRequest, cancel: threading.Event) -> Transcript:
        """Transcribe one file. Raises `BadRequest` for a language or task the model lacks,
        `InvalidAudio`/`PayloadTooLarge` from decoding, `Unavailable` when cancelled."""
        import numpy as np

        from app.audio.decode import decode_mono

        self.check(request)
        audio = decode_mono(request.path, SAMPLE_RATE, self.settings.max_audio_seconds)
        duration = audio.shape[0] / SAMPLE_RATE
        if audio.shape[0] < MIN_CLIP_SECONDS * SAMPLE_RATE:
            audio = np.pad(audio, (0, int(MIN_CLIP_SECONDS * SAMPLE_RATE) - audio.shape[0]))
        segments, info = self.pipeline.transcribe(
            audio,
            language=request.language,
            task=request.task,
            initial_prompt=request.prompt,
            temperature=request.temperature,
            beam_size=self.settings.whisper_beam_size,
            batch_size=self.settings.whisper_batch_size,
            word_timestamps=True,
            vad_filter=True,
            # Timestamp tokens let Whisper split each 30-s piece into its own segments; on the
            # pyannote sample this took tiny.en's WER from 0.185 to 0.160 at the same speed.
            without_timestamps=False,
        )
        texts: list[str] = []
        raw: list[tuple[str, float, float]] = []
        out_segments: list[Segment] = []
        offset = request.timestamp_offset
        for segment in segments:
            if cancel.is_set():
                raise Unavailable("cancelled: the client went away")
            texts.append(segment.text)
            raw.extend((w.word, w.start, w.end) for w in segment.words or ())
            out_segments.append(
                Segment(
                    id=len(out_segments),
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
            duration=round(duration, 3),
            language=info.language,
            segments=out_segments,
        )
