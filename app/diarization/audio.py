"""Audio for pyannote: decoded by PyAV, handed over in memory.

pyannote.audio reads files through torchcodec (FFmpeg libraries it links itself); this
service decodes with PyAV instead (`app.audio.decode`) and passes pyannote the
``{"waveform", "sample_rate"}`` mapping it accepts for preloaded audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000  # Hz: what segmentation-3.0, CAM++ and the hub pipelines expect


def load_waveform(path: str | Path, max_seconds: float | None = None) -> dict[str, Any]:
    """Decode `path` into ``{"waveform": (1, samples) float32 tensor, "sample_rate": 16000, "uri"}``.

    Mono, resampled to 16 kHz, samples in [-1, 1]. Raises `InvalidAudio` for undecodable
    input and `PayloadTooLarge` past `max_seconds` (see `app.audio.decode.decode_mono`).
    """
    import torch

    samples = decode_compact(path, max_seconds)
    return {"waveform": torch.from_numpy(samples)[None], "sample_rate": SAMPLE_RATE, "uri": Path(path).stem}


def decode_compact(path: str | Path, max_seconds: float | None = None, dtype: type = np.float32) -> np.ndarray:
    """`decode_mono` at 16 kHz without its transient second copy of the whole recording.

    `dtype` float32 (samples in [-1, 1]) or int16 (samples times 32768, half the memory:
    2 bytes per sample, 115 MB per hour).

    Decodes in one pass (`decode_chunks`), copying each decoded frame into a result array
    sized from the file's stated length (`stated_seconds`: its header, else its packets'
    timestamps, as for a browser's live WebM) and grown if that was short, so besides the
    result only one frame is held at a time. Same errors as `decode_mono`.
    """
    from app.audio.decode import decode_chunks, stated_seconds

    expected = stated_seconds(path)
    if max_seconds is not None:
        expected = min(expected, max_seconds)
    result = np.zeros(int(expected * SAMPLE_RATE) + SAMPLE_RATE, dtype=dtype)
    filled = 0
    for chunk in decode_chunks(path, SAMPLE_RATE, max_seconds):
        if filled + len(chunk) > len(result):
            result = np.concatenate([result[:filled], np.zeros(max(len(chunk), len(result) // 2), dtype)])
        result[filled:filled + len(chunk)] = _convert(chunk, dtype)
        filled += len(chunk)
    return result[:filled]


def _convert(samples: np.ndarray, dtype: type) -> np.ndarray:
    if dtype == np.int16:
        return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)
    return samples.astype(dtype, copy=False)


def duration_seconds(audio: dict[str, Any]) -> float:
    """Length in seconds of a mapping made by `load_waveform`."""
    return audio["waveform"].shape[-1] / audio["sample_rate"]
