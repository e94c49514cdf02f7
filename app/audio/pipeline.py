"""Streaming building blocks shared by padding and mixdown (PyAV / FFmpeg filter graphs).

Nothing here holds a whole track: inputs are decoded one frame at a time, pushed through a
filter graph, and each output frame is encoded and written to disk before the next input
frame is read. Memory is bounded by a few frames per input plus FFmpeg's codec state,
whatever the length of the audio.

- `Track` opens one input file and yields its audio as frames in one fixed format
  (planar float, stereo, the job's sample rate), whatever the input's own format, layout or
  rate, even when those change in the middle of the stream (a new `av.AudioResampler`, i.e.
  an ``aresample`` filter, is built for each run of frames with the same properties).
- `Encoder` owns the output container and stream and counts the samples it encoded, which
  is where `duration_ms` comes from.
- `run_graph` feeds several tracks into a configured graph (``abuffer`` -> optional
  ``adelay`` -> ``amix``/...-> ``abuffersink``) in timeline order, so a track delayed by an
  hour is not read (and buffered) an hour ahead of the others.

Used inside the audio worker process only, never on the HTTP side.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.filter

from app.audio.decode import container_seconds
from app.errors import Cancelled, InvalidAudio, PayloadTooLarge

LAYOUT = "stereo"  # every job works and encodes in stereo, as the old service did
GRAPH_FORMAT = "fltp"  # planar float between filters: sums above 1.0 survive until encoding
_CANCEL_CHECK_FRAMES = 50  # look at the cancel flag every this many frames in, and out


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words for a PyAV error, without the file path it may carry."""
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


class Track:
    """One input file, decoded frame by frame into ``fltp`` stereo at the job's rate.

    `label` names the input in error messages (e.g. ``"track 2"``). Opening reads the
    first decodable frame, so a `Track` that constructs is known to hold audio;
    `native_rate` (Hz) is that frame's sample rate. Call `start(rate)` once the job's rate
    is known, then iterate `frames()`. Raises `InvalidAudio` with FFmpeg's reason when the
    file cannot be opened, has no audio stream, or yields no decodable frame, and
    `PayloadTooLarge` while iterating when the track is longer than `max_seconds`.
    """

    def __init__(self, path: str | Path, label: str, max_seconds: float | None = None) -> None:
        self.label = label
        self.max_seconds = max_seconds
        self._rate = 0
        try:
            self._container = av.open(str(path), mode="r", metadata_errors="ignore")
        except (av.FFmpegError, UnicodeDecodeError) as exc:
            raise InvalidAudio(f"{label} cannot be decoded: {_reason(exc)}") from None
        try:
            if not self._container.streams.audio:
                raise InvalidAudio(f"{label} has no audio stream")
            self._stream = self._container.streams.audio[0]
            self._decoded = self._decode()
            try:
                self._first: av.AudioFrame | None = next(self._decoded)
            except StopIteration:
                raise InvalidAudio(f"{label} holds no decodable audio frame") from None
        except BaseException:
            self._container.close()
            raise
        self.native_rate = self._first.sample_rate

    @property
    def duration_seconds(self) -> float | None:
        """The length the file states (s; its stream's, else its container's), or None
        when it states none, as a live WebM recording may. Only for progress estimates."""
        return container_seconds(self._container, self._stream)

    def _decode(self) -> Iterator[av.AudioFrame]:
        """Decoded frames of the first audio stream; packets FFmpeg reports as corrupt are skipped."""
        try:
            for packet in self._container.demux(self._stream):
                try:
                    yield from packet.decode()
                except av.InvalidDataError:
                    continue
        except av.FFmpegError as exc:
            raise InvalidAudio(f"{self.label} cannot be decoded: {_reason(exc)}") from None

    def frames(self, rate: int) -> Iterator[av.AudioFrame]:
        """All of the track's audio as ``fltp`` stereo frames at `rate` Hz, pts unset.

        Frames come out in decoding order without gaps: timestamps in the input are not
        honoured, only its samples.
        """
        resampler: av.AudioResampler | None = None
        properties: tuple | None = None
        limit = None if self.max_seconds is None else self.max_seconds * rate
        total = 0
        pending = self._first
        self._first = None
        source = self._decoded
        while True:
            frame = pending if pending is not None else next(source, None)
            pending = None
            if frame is None:
                break
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if key != properties:
                if resampler is not None:
                    yield from resampler.resample(None)
                resampler = av.AudioResampler(format=GRAPH_FORMAT, layout=LAYOUT, rate=rate)
                properties = key
            frame.pts = None
            for out in resampler.resample(frame):
                total += out.samples
                yield out
            if limit is not None and total > limit:
                raise PayloadTooLarge(
                    f"{self.label} is longer than the {self.max_seconds:g} s limit "
                    "(REFLECTOR_GPU_MAX_AUDIO_SECONDS)"
                )
        if resampler is not None:
            yield from resampler.resample(None)

    def close(self) -> None:
        self._container.close()


class Encoder:
    """An output file with one audio stream; counts what it encodes.

    `codec` is an FFmpeg encoder name (``libopus``, ``libmp3lame``), `container_format` a
    muxer name (``webm``, ``mp3``), `rate` Hz, `bit_rate` bits per second. `frame_size`
    (samples) is what the encoder wants per frame (0: any). `sample_format` is the
    encoder's input format (a float one when it offers one), which the graph's final
    ``aformat`` must produce.
    """

    def __init__(self, path: str | Path, container_format: str, codec: str, rate: int, bit_rate: int) -> None:
        self.path = Path(path)
        self.rate = rate
        self.samples = 0
        self._container = av.open(str(path), mode="w", format=container_format)
        try:
            self._stream = self._container.add_stream(codec, rate=rate, layout=LAYOUT, bit_rate=bit_rate)
            context = self._stream.codec_context
            context.time_base = Fraction(1, rate)
            offered = [f.name for f in context.codec.audio_formats or ()]
            floats = [name for name in ("fltp", "flt") if name in offered]
            if floats:  # hand the encoder floats: no 16-bit rounding, sums over 1.0 left to the codec
                context.format = floats[0]
            context.open()
        except BaseException:
            self._container.close()
            raise
        self.frame_size = context.frame_size
        self.sample_format = context.format.name

    def encode(self, frame: av.AudioFrame | None) -> None:
        """Encode one frame (None flushes the encoder) and write its packets."""
        if frame is not None:
            frame.pts = self.samples
            frame.time_base = Fraction(1, self.rate)
            self.samples += frame.samples
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    @property
    def duration_ms(self) -> float:
        """Milliseconds of audio encoded so far (samples / rate), to 0.01 ms."""
        return round(self.samples * 1000 / self.rate, 2)

    def finish(self) -> int:
        """Flush, write the trailer, close; returns the file's size in bytes."""
        self.encode(None)
        self._container.close()
        return self.path.stat().st_size

    def abort(self) -> None:
        """Close without caring about the file's state (the caller deletes it)."""
        try:
            self._container.close()
        except av.FFmpegError:
            pass


def buffer_source(graph: av.filter.Graph, rate: int, name: str) -> av.filter.context.FilterContext:
    """An ``abuffer`` for `Track.frames(rate)` output (fltp stereo at `rate` Hz)."""
    return graph.add(
        "abuffer",
        name=name,
        sample_rate=str(rate),
        sample_fmt=GRAPH_FORMAT,
        channel_layout=LAYOUT,
        time_base=f"1/{rate}",
    )


def output_chain(graph: av.filter.Graph, encoder: Encoder) -> tuple:
    """``aformat`` (the encoder's sample format, stereo, its rate) -> ``abuffersink``.

    Returns ``(aformat, abuffersink)``; link the mix or delay into the first.
    """
    aformat = graph.add(
        "aformat",
        sample_fmts=encoder.sample_format,
        channel_layouts=LAYOUT,
        sample_rates=str(encoder.rate),
    )
    sink = graph.add("abuffersink")
    aformat.link_to(sink)
    return aformat, sink


def delay_filter(graph: av.filter.Graph, samples: int, name: str):
    """An ``adelay`` that prepends `samples` of silence to every channel, or None for 0."""
    if samples <= 0:
        return None
    return graph.add("adelay", name=name, delays=f"{samples}S", all="1")


def run_graph(
    graph: av.filter.Graph,
    inputs: list[tuple[av.filter.context.FilterContext, Track, int]],
    sink: av.filter.context.FilterContext,
    encoder: Encoder,
    rate: int,
    cancel: threading.Event | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> None:
    """Stream every input through the configured `graph` into `encoder`.

    `inputs`: ``(abuffer, track, delay_samples)`` triples. The next frame always comes
    from the track whose timeline position (its delay plus what it has pushed) is
    smallest, so no input runs ahead of the mix and the graph's queues stay a few frames
    long. Raises `Unavailable` as soon as `cancel` is set (checked every few frames).
    `progress(done_s, total_s)`, when given and every input states its length, hears how far
    the output timeline got (s) as often as the cancel flag is checked.
    Errors from FFmpeg inside the graph or encoder propagate as `av.FFmpegError`.
    """
    if encoder.frame_size:
        graph.set_audio_frame_size(encoder.frame_size)
    streams = [track.frames(rate) for _, track, _ in inputs]
    position = [delay for _, _, delay in inputs]
    pushed = [0] * len(inputs)
    active = set(range(len(inputs)))
    lengths = [track.duration_seconds for _, track, _ in inputs]
    total = None if None in lengths else max(d / rate + n for (_, _, d), n in zip(inputs, lengths))
    count = 0

    def check(output: av.AudioFrame | None = None) -> None:
        """Every few frames in, and out: stop when cancelled; report progress on the input
        timeline. One input frame can yield hours of output (a long pad before it), so the
        output side looks at the cancel flag too."""
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        if output is None and progress is not None and total and active:
            progress(min(position[i] for i in active) / rate, total)

    while active:
        index = min(active, key=position.__getitem__)
        source = inputs[index][0]
        frame = next(streams[index], None)
        if frame is None:
            source.push(None)
            active.discard(index)
        else:
            frame.pts = pushed[index]
            frame.time_base = Fraction(1, rate)
            source.push(frame)
            pushed[index] += frame.samples
            position[index] += frame.samples
        _drain(sink, encoder.encode, check=check)
        count += 1
        if count % _CANCEL_CHECK_FRAMES == 0:
            check()
    _drain(sink, encoder.encode, until_eof=True, check=check)


def _drain(
    sink,
    emit: Callable[[av.AudioFrame], None],
    until_eof: bool = False,
    check: Callable[[av.AudioFrame], None] | None = None,
) -> None:
    pulled = 0
    while True:
        try:
            frame = sink.pull()
        except av.EOFError:
            return
        except av.BlockingIOError:
            if until_eof:
                raise RuntimeError("the filter graph stopped before its end of stream") from None
            return
        emit(frame)
        pulled += 1
        if check is not None and pulled % _CANCEL_CHECK_FRAMES == 0:
            check(frame)
