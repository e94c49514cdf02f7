"""Audio for pyannote: decoded by PyAV, handed over in memory.

pyannote.audio reads files through torchcodec (FFmpeg libraries it links itself); this
service decodes with PyAV instead (`app.audio.decode`) and passes pyannote the
``{"waveform", "sample_rate"}`` mapping it accepts for preloaded audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.audio.decode import decode_mono

SAMPLE_RATE = 16000  # Hz: what segmentation-3.0, CAM++ and the hub pipelines expect


def load_waveform(path: str | Path, max_seconds: float | None = None) -> dict[str, Any]:
    """Decode `path` into ``{"waveform": (1, samples) float32 tensor, "sample_rate": 16000, "uri"}``.

    Mono, resampled to 16 kHz, samples in [-1, 1]. Raises `InvalidAudio` for undecodable
    input and `PayloadTooLarge` past `max_seconds` (see `app.audio.decode.decode_mono`).
    """
    import torch

    samples = decode_mono(path, SAMPLE_RATE, max_seconds)
    return {"waveform": torch.from_numpy(samples)[None], "sample_rate": SAMPLE_RATE, "uri": Path(path).stem}


def duration_seconds(audio: dict[str, Any]) -> float:
    """Length in seconds of a mapping made by `load_waveform`."""
    return audio["waveform"].shape[-1] / audio["sample_rate"]
