"""The audio engine (PyAV / FFmpeg): padding and mixdown, in a worker process of its own.

Decoding and encoding are CPU work that must not run on the HTTP side's event loop, and a
crash inside FFmpeg must not take the HTTP side down, so they run here like the model
workers. The HTTP side downloads the inputs and uploads the output; messages carry local
file paths only. The engine writes the output file it is given and deletes it when the
job fails; the inputs belong to the caller.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from app.errors import ServiceError
from app.settings import Settings
from app.workers.messages import Encoded, MixdownRequest, PadRequest
from app.workers.progress import ProgressLog
from app.workers.protocol import Pong

log = logging.getLogger("app.worker.audio")

REQUIRED_ENCODERS = ("libopus", "libmp3lame")


class AudioEngine:
    """Answers `PadRequest` and `MixdownRequest`; needs FFmpeg's Opus and LAME encoders."""

    kind = "audio"
    request_types = (PadRequest, MixdownRequest)
    scheduler = None  # a plain engine: one job at a time
    device = "cpu"  # FFmpeg through PyAV

    def __init__(self, settings: Settings) -> None:
        import av

        self.settings = settings
        missing = [name for name in REQUIRED_ENCODERS if name not in av.codecs_available]
        if missing:
            raise ServiceError(
                f"this PyAV build lacks the {', '.join(missing)} encoder(s); reinstall the 'av' wheel"
            )
        self.ffmpeg = str(av.ffmpeg_version_info)
        self.pyav = av.__version__
        log.info("audio worker ready: PyAV %s, FFmpeg %s", self.pyav, self.ffmpeg)

    def describe(self) -> Pong:
        return Pong(kind=self.kind, model=f"FFmpeg {self.ffmpeg}", device="cpu", info={"pyav": self.pyav})

    def audio_seconds(self, request: PadRequest | MixdownRequest) -> None:
        """Not measured: pad and mixdown jobs take seconds; the job count limits them."""
        return None

    def handle(self, request: PadRequest | MixdownRequest, cancel: threading.Event) -> Encoded:
        """Run one job. Raises `InvalidAudio`, `BadRequest`, `PayloadTooLarge`, or
        `Unavailable` when cancelled; the output file is removed on any failure."""
        from app.audio.formats import PAD_RATE
        from app.audio.mixdown import mix_files
        from app.audio.pad import pad_file

        output = Path(request.output)
        progress = ProgressLog(log, "pad" if isinstance(request, PadRequest) else "mixdown")
        try:
            if isinstance(request, PadRequest):
                padded = pad_file(
                    request.source,
                    output,
                    request.start_time_seconds,
                    max_seconds=self.settings.max_audio_seconds,
                    cancel=cancel,
                    progress=progress.update,
                )
                return Encoded(size=padded.size, duration_ms=padded.duration_ms, sample_rate=PAD_RATE)
            mixed = mix_files(
                request.sources,
                output,
                request.offsets_seconds,
                request.target_sample_rate,
                labels=request.labels,
                max_seconds=self.settings.max_audio_seconds,
                cancel=cancel,
                progress=progress.update,
            )
            return Encoded(size=mixed.size, duration_ms=mixed.duration_ms, sample_rate=mixed.sample_rate)
        except BaseException:
            output.unlink(missing_ok=True)
            raise
