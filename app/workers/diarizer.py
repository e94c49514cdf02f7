"""The diarization engine and its messages.

One `DiarizeRequest` names an audio file on local disk (and optional speaker-count
hints); the reply is a `Diarization`: speaker turns in time order, times in seconds
rounded to 3 decimals and shifted by the request's `timestamp`, speakers as integers
(pyannote's ``SPEAKER_01`` becomes ``1``). Audio is decoded with PyAV and handed over in
memory (`app.diarization.audio`). ``REFLECTOR_GPU_DIARIZATION_MODEL`` picks the pipeline
(`app.diarization.pipeline.resolve_source`): ``fast`` (`app.diarization.fast`), or a
pyannote.audio `SpeakerDiarization` (``embedded``, a mounted bundle, a hub pipeline).
The peak resident memory of each job is logged (Linux: VmHWM, reset before the job).

Privacy: pyannote.audio's telemetry is switched off (``PYANNOTE_METRICS_ENABLED=false``)
before pyannote is imported, and for the embedded and local sources the model hub is
forbidden (``HF_HUB_OFFLINE=1``) before huggingface_hub is imported, so diarizing opens no
connection. Heavy imports happen in `DiarizerEngine.__init__` only.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from pathlib import Path

import msgspec

from app.errors import Unavailable
from app.settings import Settings
from app.workers.protocol import Pong
from app.workers.scheduler import Priority

log = logging.getLogger("app.worker.diarizer")

# Segmentation step as a fraction of the 10 s window when REFLECTOR_GPU_DIARIZATION_STEP
# is unset. 0.1 is pyannote's own default (best accuracy); on the CPU a coarser step keeps
# long recordings inside Reflector's 600 s timeout (figures in bench/diarization.py).
DEFAULT_STEP = {"cuda": 0.1, "cpu": 0.2}


class DiarizeRequest(msgspec.Struct, tag="diarize", frozen=True):
    """Diarize `path` (any format FFmpeg decodes); shift every time by `timestamp` seconds.

    Optional speaker-count hints (integers >= 1, checked by the HTTP side):
    `num_speakers` fixes the count; `min_speakers` / `max_speakers` bound it.
    `priority`: ``live`` jobs (uploads with ``diarize=true``) run before queued
    ``recording`` ones (`/diarize`), as in the Whisper worker.
    """

    path: str
    timestamp: float = 0.0
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    priority: Priority = "recording"


class Turn(msgspec.Struct, frozen=True):
    """One speaker turn: seconds (3 decimals), `speaker` an integer from 0."""

    start: float
    end: float
    speaker: int


class Diarization(msgspec.Struct, tag="diarization", frozen=True):
    """Turns sorted by start (then end, speaker); `duration` of the audio in seconds."""

    diarization: list[Turn]
    duration: float


class _Cancelled(Exception):
    """Raised from pyannote's progress hook when the client went away."""


_NUMBER = re.compile(r"(\d+)$")


def speaker_numbers(labels: Iterable[str]) -> dict[str, int]:
    """Map pyannote labels to ints: the trailing number (``SPEAKER_01`` -> 1) when every
    label has a distinct one, else 0, 1, ... in sorted label order."""
    labels = sorted(set(labels))
    numbers = [_NUMBER.search(str(label)) for label in labels]
    if all(numbers) and len({int(m.group(1)) for m in numbers}) == len(labels):  # type: ignore[union-attr]
        return {label: int(m.group(1)) for label, m in zip(labels, numbers)}  # type: ignore[union-attr]
    return {label: index for index, label in enumerate(labels)}


def to_turns(
    segments: Iterable[tuple[float, float, str]], offset: float = 0.0, duration: float | None = None
) -> list[Turn]:
    """`(start, end, label)` triples (seconds) -> sorted `Turn`s shifted by `offset` seconds.

    Turns are first clipped to ``[0, duration]`` (pyannote pads the last window, so a turn
    can run past the end of the audio); times are rounded to 3 decimals after the shift;
    turns that round to zero length are dropped.
    """
    segments = list(segments)
    numbers = speaker_numbers(label for _, _, label in segments)
    turns = []
    for start, end, label in segments:
        start, end = max(start, 0.0), end if duration is None else min(end, duration)
        start, end = round(start + offset, 3), round(end + offset, 3)
        if end > start:
            turns.append(Turn(start=start, end=end, speaker=numbers[label]))
    turns.sort(key=lambda turn: (turn.start, turn.end, turn.speaker))
    return turns


def torch_device(settings: Settings) -> str:
    """``cuda`` or ``cpu`` for diarization: REFLECTOR_GPU_DIARIZATION_DEVICE, else
    REFLECTOR_GPU_DEVICE; ``auto`` picks CUDA when torch sees a GPU."""
    wanted = settings.diarization_device or settings.device
    if wanted != "auto":
        return wanted
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class DiarizerEngine:
    """Loads the configured pipeline (`fast` or a pyannote `SpeakerDiarization`) and
    answers `DiarizeRequest`s."""

    kind = "diarizer"
    request_types = (DiarizeRequest,)

    def __init__(self, settings: Settings) -> None:
        from app.diarization import embedded  # sets PYANNOTE_METRICS_ENABLED=false
        from app.diarization.pipeline import Options, resolve_source

        self.settings = settings
        self.source = resolve_source(settings.diarization_model, embedded.bundle_dir())
        if self.source.kind != "hub":
            os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is first imported
        warnings.filterwarnings("ignore", module=r"pyannote\..*")
        if self.source.kind != "fast":
            # pyannote imports onnxruntime only for hub embeddings named "wespeaker" without
            # "pyannote", which no source here produces; loading its native library costs
            # start-up time and memory and writes a device-id file under ~/.cache.
            sys.modules.setdefault("onnxruntime", None)  # type: ignore[arg-type]

        import torch

        from app.workers import devices

        threads = devices.cpu_threads(settings, settings.diarization_replicas)
        torch.set_num_threads(threads)
        self.device = torch_device(settings)
        batch_sizes = {
            name: value for name, value in (
                ("segmentation_batch_size", settings.diarization_segmentation_batch_size),
                ("embedding_batch_size", settings.diarization_embedding_batch_size),
            ) if value is not None
        }
        self.options = Options(
            device=self.device, segmentation_step=settings.diarization_step or DEFAULT_STEP[self.device], **batch_sizes
        )
        started = time.monotonic()
        self.pipeline = self.fast = None
        if self.source.kind == "fast":
            self.fast = _load_fast(self.source.location, self.options, threads, batch_sizes)
            backend = f", CAM++ on {self.fast.backend}"
        else:
            from app.diarization.pipeline import load_pipeline

            self.pipeline = load_pipeline(
                self.source, self.options, hf_token=settings.hf_token, models_dir=settings.models_dir
            )
            backend = ""
        self.load_seconds = time.monotonic() - started
        log.info(
            "loaded diarization pipeline %s (%s) on %s, step %.2f%s, in %.1f s",
            settings.diarization_model,
            self.source.kind,
            self.device,
            self.options.segmentation_step,
            backend,
            self.load_seconds,
        )

    def describe(self) -> Pong:
        return Pong(
            kind=self.kind,
            model=self.settings.diarization_model,
            device=self.device,
            info={"source": self.source.kind, "segmentation_step": self.options.segmentation_step},
            load_seconds=round(self.load_seconds, 3),
        )

    def audio_seconds(self, request: DiarizeRequest) -> float:
        """Seconds of audio `request` holds, as its file's header states (0 when it states
        none); the worker server's queue accounting (see `app.workers.server`)."""
        from app.audio.decode import stated_seconds

        return stated_seconds(request.path)

    def handle(self, request: DiarizeRequest, cancel: threading.Event) -> Diarization:
        """Diarize one file. Raises `InvalidAudio`/`PayloadTooLarge` from decoding and
        `Unavailable` when cancelled. Logs the job's seconds and peak resident memory."""
        started = time.monotonic()
        _reset_peak_rss()
        try:
            return self._diarize(request, cancel)
        finally:
            log.info("diarization job: %.1f s, peak RSS %.0f MiB", time.monotonic() - started, peak_rss_mib())
            _trim_heap()

    def _diarize(self, request: DiarizeRequest, cancel: threading.Event) -> Diarization:
        from app.diarization.audio import SAMPLE_RATE, decode_compact, duration_seconds, load_waveform

        if self.fast is not None:
            import numpy as np

            from app.diarization.fast import Cancelled, SpeakerHints

            samples = decode_compact(request.path, self.settings.max_audio_seconds, np.int16)  # 2 bytes/sample
            duration = len(samples) / SAMPLE_RATE
            if not samples.any():  # empty or digital silence
                return Diarization(diarization=[], duration=round(duration, 3))
            hints = SpeakerHints(request.num_speakers, request.min_speakers, request.max_speakers)
            try:
                turns = self.fast(samples, hints, cancel.is_set)
            except Cancelled:
                raise Unavailable("cancelled: the client went away") from None
            segments = ((start, end, f"SPEAKER_{speaker:02d}") for start, end, speaker in turns)
            return Diarization(diarization=to_turns(segments, request.timestamp, duration), duration=round(duration, 3))

        audio = load_waveform(request.path, self.settings.max_audio_seconds)
        duration = duration_seconds(audio)
        if not bool(audio["waveform"].any()):  # empty or digital silence
            return Diarization(diarization=[], duration=round(duration, 3))

        def hook(*args, **kwargs) -> None:
            if cancel.is_set():
                raise _Cancelled

        hints = {name: getattr(request, name) for name in ("num_speakers", "min_speakers", "max_speakers")
                 if getattr(request, name) is not None}
        try:
            output = self.pipeline(audio, hook=hook, **hints)
        except _Cancelled:
            raise Unavailable("cancelled: the client went away") from None
        annotation = getattr(output, "speaker_diarization", output)
        segments = ((segment.start, segment.end, label) for segment, _, label in annotation.itertracks(yield_label=True))
        return Diarization(diarization=to_turns(segments, request.timestamp, duration), duration=round(duration, 3))


def _load_fast(bundle: str, options, threads: int, batch_sizes: dict[str, int] | None = None):
    """The `fast` pipeline on the embedded bundle; `ModelNotFound` when it is not prepared.
    `batch_sizes`: `FastOptions` batch-size overrides from the settings."""
    from app.diarization import embedded
    from app.diarization.fast import FastDiarizer, FastOptions
    from app.diarization.pipeline import SETTING

    embedded.require_prepared(Path(bundle), f"{SETTING}=fast")
    return FastDiarizer(Path(bundle), options.device, FastOptions(segmentation_step=options.segmentation_step,
                                                                  **(batch_sizes or {})), threads)


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process, where Linux allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once (`find_library` runs ``ldconfig``); None elsewhere."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc ``malloc_trim``), so the memory a
    long job used does not stay resident while the worker waits."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def peak_rss_mib(pid: int | str = "self") -> float:
    """Peak resident memory of process `pid` (default: this one) in MiB: VmHWM since the
    last reset on Linux, else (this process only) `resource.getrusage`'s lifetime maximum."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
