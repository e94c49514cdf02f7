"""Padding one track with leading silence: WebM/Opus, 48 kHz stereo, 128 kbit/s.

Reflector records one track per participant and pads each with silence so that every
track starts at the meeting's start. The graph is::

    abuffer (fltp stereo 48 kHz) -> adelay (N samples, all channels) -> aformat -> abuffersink

with the input converted to 48 kHz stereo by ``aresample`` first (see
`app.audio.pipeline.Track`), so the silence is counted in output samples: exactly
``round(start_time_seconds * 48000)`` samples, i.e. better than millisecond precision.
Streaming frame by frame: memory does not grow with the track's length.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av.filter

from app.audio import pipeline
from app.audio.formats import PAD_BIT_RATE, PAD_RATE

PAD_CODEC = "libopus"
PAD_FORMAT = "webm"


@dataclass(frozen=True, slots=True)
class PadOutcome:
    """What `pad_file` wrote: `size` (bytes), `duration_ms` (encoded audio, ms)."""

    size: int
    duration_ms: float


def pad_file(
    source: str | Path,
    output: str | Path,
    start_time_seconds: float,
    *,
    max_seconds: float | None = None,
    cancel: threading.Event | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> PadOutcome:
    """Write `source` preceded by `start_time_seconds` (s, > 0) of silence to `output`.

    The output is WebM with one Opus stream, 48 kHz stereo, 128 kbit/s. Raises
    `InvalidAudio` (no audio stream, undecodable: FFmpeg's reason), `PayloadTooLarge`
    (input longer than `max_seconds`), `Unavailable` (cancelled). The caller deletes
    `output` on failure. `progress(done_s, total_s)`: see `pipeline.run_graph`.
    """
    track = pipeline.Track(source, "the track", max_seconds)
    try:
        encoder = pipeline.Encoder(output, PAD_FORMAT, PAD_CODEC, PAD_RATE, PAD_BIT_RATE)
        try:
            graph = av.filter.Graph()
            abuffer = pipeline.buffer_source(graph, PAD_RATE, "in0")
            aformat, sink = pipeline.output_chain(graph, encoder)
            delay = pipeline.delay_filter(graph, round(start_time_seconds * PAD_RATE), "delay0")
            if delay is None:
                abuffer.link_to(aformat)
            else:
                abuffer.link_to(delay)
                delay.link_to(aformat)
            graph.configure()
            pipeline.run_graph(graph, [(abuffer, track, 0)], sink, encoder, PAD_RATE, cancel, progress)
            size = encoder.finish()
        except BaseException:
            encoder.abort()
            raise
    finally:
        track.close()
    return PadOutcome(size=size, duration_ms=encoder.duration_ms)
