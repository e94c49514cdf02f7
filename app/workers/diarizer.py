"""The diarization engine (pyannote.audio) and its messages.

One `DiarizeRequest` names an audio file on local disk; the reply is a `Diarization`:
speaker turns in time order, times in seconds rounded to 3 decimals and shifted by the
request's `timestamp`, speakers as integers (pyannote's ``SPEAKER_01`` becomes ``1``).
Audio is decoded with PyAV and handed to pyannote in memory (`app.diarization.audio`).
The pipeline comes from ``REFLECTOR_GPU_DIARIZATION_MODEL`` (`app.diarization.pipeline`).

Privacy: pyannote.audio's telemetry is switched off (``PYANNOTE_METRICS_ENABLED=false``)
before pyannote is imported, and for the embedded and local sources the model hub is
forbidden (``HF_HUB_OFFLINE=1``) before huggingface_hub is imported, so diarizing opens no
connection. Heavy imports happen in `DiarizerEngine.__init__` only.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterable

import msgspec

from app.errors import Unavailable
from app.settings import Settings
from app.workers.protocol import Pong

log = logging.getLogger("app.worker.diarizer")

# Segmentation step as a fraction of the 10 s window when REFLECTOR_GPU_DIARIZATION_STEP
# is unset. 0.1 is pyannote's own default (best accuracy); on the CPU a coarser step keeps
# long recordings inside Reflector's 600 s timeout (figures in bench/diarization.py).
DEFAULT_STEP = {"cuda": 0.1, "cpu": 0.2}


class DiarizeRequest(msgspec.Struct, tag="diarize", frozen=True):
    """Diarize `path` (any format FFmpeg decodes); shift every time by `timestamp` seconds."""

    path: str
    timestamp: float = 0.0


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
    """Loads one pyannote `SpeakerDiarization` pipeline and answers `DiarizeRequest`s."""

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
        # pyannote imports onnxruntime only for hub embeddings named "wespeaker" without
        # "pyannote", which no source here produces; loading its native library costs
        # start-up time and memory and writes a device-id file under ~/.cache.
        sys.modules.setdefault("onnxruntime", None)  # type: ignore[arg-type]

        import torch

        from app.diarization.pipeline import load_pipeline

        if settings.cpu_threads > 0:
            torch.set_num_threads(settings.cpu_threads)
        self.device = torch_device(settings)
        self.options = Options(
            device=self.device,
            segmentation_step=settings.diarization_step or DEFAULT_STEP[self.device],
            segmentation_batch_size=settings.diarization_segmentation_batch_size,
            embedding_batch_size=settings.diarization_embedding_batch_size,
        )
        started = time.monotonic()
        self.pipeline = load_pipeline(
            self.source, self.options, hf_token=settings.hf_token, models_dir=settings.models_dir
        )
        log.info(
            "loaded diarization pipeline %s (%s) on %s, step %.2f, in %.1f s",
            settings.diarization_model,
            self.source.kind,
            self.device,
            self.options.segmentation_step,
            time.monotonic() - started,
        )

    def describe(self) -> Pong:
        return Pong(
            kind=self.kind,
            model=self.settings.diarization_model,
            device=self.device,
            info={"source": self.source.kind, "segmentation_step": self.options.segmentation_step},
        )

    def handle(self, request: DiarizeRequest, cancel: threading.Event) -> Diarization:
        """Diarize one file. Raises `InvalidAudio`/`PayloadTooLarge` from decoding and
        `Unavailable` when cancelled."""
        from app.diarization.audio import duration_seconds, load_waveform

        audio = load_waveform(request.path, self.settings.max_audio_seconds)
        duration = duration_seconds(audio)
        if audio["waveform"].shape[-1] == 0 or not bool(audio["waveform"].abs().max() > 0):
            return Diarization(diarization=[], duration=round(duration, 3))

        def hook(*args, **kwargs) -> None:
            if cancel.is_set():
                raise _Cancelled

        try:
            output = self.pipeline(audio, hook=hook)
        except _Cancelled:
            raise Unavailable("cancelled: the client went away") from None
        annotation = getattr(output, "speaker_diarization", output)
        segments = ((segment.start, segment.end, label) for segment, _, label in annotation.itertracks(yield_label=True))
        return Diarization(diarization=to_turns(segments, request.timestamp, duration), duration=round(duration, 3))
