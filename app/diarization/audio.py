"""Audio for pyannote: decoded by PyAV, handed over in memory.

pyannote.audio reads files through torchcodec (FFmpeg libraries it links itself); this
service decodes with PyAV instead (`app.audio.decode`) and passes pyannote the
``{"waveform", "sample_rate"}`` mapping it accepts for preloaded audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.audio.decode import decode_mono

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

    Decodes in one pass, copying every `PIECE_SECONDS` of samples into a result array
    sized from the container's duration (grown if the estimate was short), so besides the
    result only one piece is held at a time.
    Same errors as `decode_mono`. Files whose duration is unknown are decoded whole.
    """
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            duration = container.duration / 1_000_000 if container.duration else None
    except av.FFmpegError:
        duration = None
    if duration is None or duration <= PIECE_SECONDS:
        return _convert(decode_mono(path, SAMPLE_RATE, max_seconds), dtype)
    if max_seconds is not None and duration > max_seconds + 1:
        decode_mono(path, SAMPLE_RATE, max_seconds)  # raises PayloadTooLarge as it passes the limit
    return _decode_pieces(path, duration, max_seconds, dtype)


def _convert(samples: np.ndarray, dtype: type) -> np.ndarray:
    if dtype == np.int16:
        return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)
    return samples.astype(dtype, copy=False)


PIECE_SECONDS = 600.0  # seconds of audio decoded at a time by `decode_compact`


def _decode_pieces(path: str | Path, duration: float, max_seconds: float | None, dtype: type) -> np.ndarray:
    result = np.zeros(int(duration * SAMPLE_RATE) + SAMPLE_RATE, dtype=dtype)
    filled = 0
    for piece in _pieces(path):
        if filled + len(piece) > len(result):
            result = np.concatenate([result[:filled], np.zeros(len(piece) + SAMPLE_RATE * 60, dtype)])
        result[filled:filled + len(piece)] = _convert(piece, dtype)
        filled += len(piece)
        if max_seconds is not None and filled > max_seconds * SAMPLE_RATE:
            decode_mono(path, SAMPLE_RATE, max_seconds)  # raises PayloadTooLarge with its message
    if filled == 0:
        from app.errors import InvalidAudio

        raise InvalidAudio("no audio frame could be decoded")
    return result[:filled]


def _pieces(path: str | Path):
    """Mono 16-kHz float32 arrays of about `PIECE_SECONDS` each, in order (PyAV)."""
    import av

    from app.errors import InvalidAudio

    pending: list[np.ndarray] = []
    held = 0
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidAudio("the file has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.InvalidDataError:
                    continue
                for frame in frames:
                    for out in resampler.resample(frame):
                        pending.append(out.to_ndarray().reshape(-1))
                        held += pending[-1].shape[0]
                if held >= PIECE_SECONDS * SAMPLE_RATE:
                    yield np.concatenate(pending)
                    pending, held = [], 0
            for out in resampler.resample(None):
                pending.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        raise InvalidAudio(f"cannot decode the audio: {exc.strerror or exc}") from None
    if pending:
        yield np.concatenate(pending)


def duration_seconds(audio: dict[str, Any]) -> float:
    """Length in seconds of a mapping made by `load_waveform`."""
    return audio["waveform"].shape[-1] / audio["sample_rate"]
