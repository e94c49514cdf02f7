"""Decoding audio files into mono float32 sample arrays with PyAV (FFmpeg).

Used inside worker processes, never on the HTTP side. Every decoder failure becomes
`InvalidAudio` carrying FFmpeg's reason; audio longer than the configured limit becomes
`PayloadTooLarge` as soon as decoding passes the limit, so a huge file is never held whole.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from app.errors import InvalidAudio, PayloadTooLarge

# encoding -> (WAV format tag, bits per sample): PCM, ITU-T G.711 A-law and mu-law
WAV_FORMATS: dict[str, tuple[int, int]] = {"pcm16": (1, 16), "alaw": (6, 8), "mulaw": (7, 8)}


def pcm_wav(pcm: bytes, encoding: str, sample_rate: int) -> bytes:
    """Raw mono samples (`encoding`, a key of `WAV_FORMATS`: 16-bit little-endian PCM, or
    8-bit G.711 mu-law or A-law, at `sample_rate` Hz) as the bytes of a WAV file, so that
    `decode_mono` decodes them exactly as it decodes an uploaded WAV of the same audio."""
    tag, bits = WAV_FORMATS[encoding]
    block = bits // 8
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, tag, 1,
        sample_rate, sample_rate * block, block, bits, b"data", len(pcm),
    )
    return header + pcm


def decode_mono(
    path: str | Path | BinaryIO, sample_rate: int = 16000, max_seconds: float | None = None
) -> np.ndarray:
    """Decode the first audio stream of `path` (a file, or an open binary file object such
    as a `pcm_wav` in memory), resampled to `sample_rate` Hz, mixed to mono.

    Returns a float32 array in [-1, 1] of shape (samples,). Corrupt packets inside an
    otherwise valid stream are skipped, as FFmpeg does. Raises `InvalidAudio` when the file
    cannot be opened, holds no audio stream, or holds no decodable audio frame, and
    `PayloadTooLarge` when the audio is longer than `max_seconds`.
    """
    chunks = list(decode_chunks(path, sample_rate, max_seconds))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def decode_chunks(
    path: str | Path | BinaryIO, sample_rate: int = 16000, max_seconds: float | None = None
) -> Iterator[np.ndarray]:
    """`decode_mono`'s samples as FFmpeg hands them over: float32 mono arrays of one decoded
    frame each (milliseconds of audio), in order, so a caller can keep them in a form of
    its own without holding the whole recording twice. Same errors as `decode_mono`,
    raised while iterating (`PayloadTooLarge` as soon as decoding passes the limit)."""
    max_samples = None if max_seconds is None else int(max_seconds * sample_rate)
    total = 0
    try:
        source = path if hasattr(path, "read") else str(path)
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidAudio("the file has no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            decoded_any = False
            for frame in _frames(container, stream):
                decoded_any = True
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    total += chunk.shape[0]
                    yield chunk
                if max_samples is not None and total > max_samples:
                    raise PayloadTooLarge(
                        f"the audio is longer than the {max_seconds:g} s limit "
                        "(REFLECTOR_GPU_MAX_AUDIO_SECONDS)"
                    )
            if not decoded_any:
                raise InvalidAudio("no audio frame could be decoded")
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
    except av.FFmpegError as exc:
        raise InvalidAudio(f"cannot decode the audio: {exc.strerror or exc}") from None


def stated_seconds(path: str | Path) -> float:
    """The length of `path`'s first audio stream in seconds, without decoding: as its
    headers state it (the stream's, else the container's), else, for a file that states
    none (a WebM written live, as browsers record), the end of its last packet (demuxed,
    not decoded). 0.0 when it cannot be opened or has no audio stream. For queue
    accounting only: the decoders find the real length."""
    try:
        with av.open(str(path), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                return 0.0
            stream = container.streams.audio[0]
            stated = container_seconds(container, stream)
            if stated is not None:
                return stated
            end = 0
            for packet in container.demux(stream):
                if packet.pts is not None:
                    end = max(end, packet.pts + (packet.duration or 0))
            return float(end * stream.time_base) if stream.time_base is not None else 0.0
    except (av.FFmpegError, UnicodeDecodeError, OSError):
        return 0.0


def container_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    """The length (s) `stream`'s header states, else the container's; None when neither does."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _frames(container: av.container.InputContainer, stream: av.AudioStream):
    """Decoded frames of `stream`, skipping packets FFmpeg reports as invalid data."""
    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.InvalidDataError:
            continue
