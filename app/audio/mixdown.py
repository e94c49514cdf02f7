"""Mixing several tracks into one MP3, each delayed by its offset, without normalising.

The graph is::

    abuffer_i -> adelay_i (offset_i - min(offsets)) --\
    abuffer_j -> (no delay for the earliest track) ----> amix (normalize=0) -> aformat -> abuffersink

Every input is converted to the job's rate and to stereo by ``aresample`` before its
``abuffer`` (see `app.audio.pipeline.Track`), so tracks recorded at different rates are
resampled, never dropped. ``amix`` with ``normalize=0`` adds the inputs sample by sample;
the output is as long as the longest delayed input. Streaming frame by frame, in timeline
order: memory does not grow with the tracks' length or their offsets.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av.filter

from app.audio import pipeline
from app.audio.formats import MIX_BIT_RATE, check_mp3_rate, nearest_mp3_rate
from app.errors import BadRequest

MIX_CODEC = "libmp3lame"
MIX_FORMAT = "mp3"


@dataclass(frozen=True, slots=True)
class MixOutcome:
    """What `mix_files` wrote: `size` (bytes), `duration_ms` (encoded audio, ms), `sample_rate` (Hz)."""

    size: int
    duration_ms: float
    sample_rate: int


def mix_files(
    sources: list[str | Path],
    output: str | Path,
    offsets_seconds: list[float] | None = None,
    target_sample_rate: int | None = None,
    *,
    labels: list[str] | None = None,
    max_seconds: float | None = None,
    cancel: threading.Event | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> MixOutcome:
    """Mix `sources` into an MP3 at `output`; returns its size, duration and rate.

    `offsets_seconds[i]` (s) places source i on the timeline: it is delayed by its offset
    minus the smallest offset (to the nearest sample). Without offsets all start at 0.
    The rate is `target_sample_rate` (Hz, must be an MP3 rate) or else the first track's
    own rate (moved to the nearest MP3 rate when MP3 cannot carry it, e.g. 96 kHz).
    `labels[i]` names source i in errors (default ``"track i"``). Raises `BadRequest`
    (no source, an unusable rate, offsets of the wrong length), `InvalidAudio` (a source
    with no audio stream or undecodable: FFmpeg's reason), `PayloadTooLarge` (a source
    longer than `max_seconds`), `Unavailable` (cancelled). The caller deletes `output` on
    failure. How far apart the offsets may be is the HTTP route's check (before any
    download), not repeated here. `progress(done_s, total_s)`: see `pipeline.run_graph`.
    """
    if not sources:
        raise BadRequest("no track to mix")
    if offsets_seconds is not None and len(offsets_seconds) != len(sources):
        raise BadRequest(f"{len(offsets_seconds)} offsets for {len(sources)} tracks")
    if target_sample_rate is not None:
        check_mp3_rate(target_sample_rate)
    labels = labels or [f"track {index}" for index in range(len(sources))]
    tracks: list[pipeline.Track] = []
    try:
        for path, label in zip(sources, labels):
            tracks.append(pipeline.Track(path, label, max_seconds))
        rate = target_sample_rate or nearest_mp3_rate(tracks[0].native_rate)
        offsets = offsets_seconds or [0.0] * len(tracks)
        base = min(offsets)
        delays = [round((offset - base) * rate) for offset in offsets]
        encoder = pipeline.Encoder(output, MIX_FORMAT, MIX_CODEC, rate, MIX_BIT_RATE)
        try:
            graph = av.filter.Graph()
            aformat, sink = pipeline.output_chain(graph, encoder)
            amix = graph.add("amix", inputs=str(len(tracks)), normalize="0", duration="longest")
            amix.link_to(aformat)
            inputs = []
            for index, (track, delay_samples) in enumerate(zip(tracks, delays)):
                abuffer = pipeline.buffer_source(graph, rate, f"in{index}")
                delay = pipeline.delay_filter(graph, delay_samples, f"delay{index}")
                if delay is None:
                    abuffer.link_to(amix, 0, index)
                else:
                    abuffer.link_to(delay)
                    delay.link_to(amix, 0, index)
                inputs.append((abuffer, track, delay_samples))
            graph.configure()
            pipeline.run_graph(graph, inputs, sink, encoder, rate, cancel, progress)
            size = encoder.finish()
        except BaseException:
            encoder.abort()
            raise
    finally:
        for track in tracks:
            track.close()
    return MixOutcome(size=size, duration_ms=encoder.duration_ms, sample_rate=rate)
