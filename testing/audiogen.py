"""Real audio for the audio tests and benchmarks: tones written by PyAV in several formats.

Everything is generated block by block, so an hour of audio never sits in memory.
Arrays are float32 of shape (channels, samples); rates in Hz; times in seconds.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BLOCK = 4096  # samples per generated frame

# kind -> (container format, codec, sample format the encoder takes, container options)
KINDS = {
    "wav": ("wav", "pcm_s16le", "s16", {}),
    "mp3": ("mp3", "libmp3lame", "fltp", {}),
    "m4a": ("ipod", "aac", "fltp", {}),
    # What a browser's MediaRecorder writes: live WebM, no duration and no cues.
    "webm-live": ("webm", "libopus", "flt", {"live": "1"}),
}


def tone(
    seconds: float, freq: float, rate: int, channels: int = 2, amp: float = 0.5, start: int = 0
) -> np.ndarray:
    """A sine of `freq` Hz and peak `amp`, samples `start`.. of it, shape (channels, n)."""
    n = round(seconds * rate)
    t = (np.arange(n) + start) / rate
    mono = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.tile(mono, (channels, 1))


def write_tone(
    path: str | Path,
    seconds: float,
    freq: float,
    rate: int,
    channels: int = 2,
    amp: float = 0.5,
    kind: str = "wav",
) -> Path:
    """Write a tone (see `tone`) as `kind` (a key of `KINDS`) at `path`, block by block."""
    container_format, codec, sample_format, options = KINDS[kind]
    layout = "stereo" if channels == 2 else "mono"
    total = round(seconds * rate)
    with av.open(str(path), "w", format=container_format, container_options=options) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        pts = 0
        for begin in range(0, total, BLOCK):
            block = tone(min(BLOCK, total - begin) / rate, freq, rate, channels, amp, start=begin)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate = rate
            if sample_format != "fltp":
                frame = av.AudioResampler(format=sample_format, layout=layout, rate=rate).resample(frame)[0]
            frame.pts = pts
            frame.time_base = Fraction(1, rate)
            pts += frame.samples
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return Path(path)


def write_video_only(path: str | Path) -> Path:
    """A short Matroska file holding one video stream and no audio."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return Path(path)


def decode(path: str | Path | bytes) -> tuple[dict, np.ndarray]:
    """Decode a file (or bytes) to fltp stereo at its own rate.

    Returns ``(info, samples)``: info has ``codec``, ``rate``, ``layout``, ``format``
    (container), ``header_duration`` (s or None); samples has shape (2, n).
    """
    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    with av.open(source) as container:
        stream = container.streams.audio[0]
        info = {
            "codec": stream.codec_context.name,
            "rate": stream.codec_context.sample_rate,
            "layout": stream.codec_context.layout.name,
            "format": container.format.name,
            "bit_rate": stream.codec_context.bit_rate,
            "header_duration": None if container.duration is None else container.duration / 1e6,
        }
        resampler = av.AudioResampler(format="fltp", layout="stereo")
        chunks = [out.to_ndarray() for frame in container.decode(stream) for out in resampler.resample(frame)]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
    return info, np.concatenate(chunks, axis=1)


def rms(samples: np.ndarray) -> float:
    """Root mean square over all channels and samples."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
