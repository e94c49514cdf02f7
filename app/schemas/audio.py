"""The public requests and answers of ``/pad``, ``/mixdown`` and ``/v1/audio/mixdown``."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from app.schemas import Mp3Rate, TrackOffset, TrackStart, Url

MAX_TRACKS = 64  # a bound on one mixdown's inputs (a meeting's participants), not an FFmpeg limit


class PadBody(msgspec.Struct):
    """Body of ``/pad``: pad `track_url` with `start_time_seconds` (s) of silence, PUT to `output_url`.

    `track_index` is the track's position in Reflector's recording; it changes nothing and
    is logged with the job, so an operator can tell a recording's tracks apart.
    """

    track_url: Url
    output_url: Url
    start_time_seconds: TrackStart
    track_index: Annotated[int, Meta(ge=0)] | None = None


class PadResult(msgspec.Struct):
    """`size`: bytes uploaded. `cancelled` is always false (see above)."""

    size: int
    cancelled: bool = False


class MixdownBody(msgspec.Struct):
    """Body of ``/mixdown``: mix the non-empty `track_urls` and PUT an MP3 to `output_url`.

    `offsets_seconds[i]` (s) places track i; `target_sample_rate` (Hz) defaults to the
    first decodable track's rate.
    """

    track_urls: Annotated[list[Url], Meta(max_length=MAX_TRACKS)]
    output_url: Url
    target_sample_rate: Mp3Rate | None = None
    offsets_seconds: Annotated[list[TrackOffset], Meta(max_length=MAX_TRACKS)] | None = None


class MixdownResult(msgspec.Struct):
    """`size`: bytes uploaded; `duration_ms`: length of the encoded audio (ms); `cancelled`
    always false (see above)."""

    size: int
    duration_ms: float
    cancelled: bool = False


class MixdownV1Body(msgspec.Struct):
    """Body of ``/v1/audio/mixdown``: mix the non-empty `track_urls` from their starts into an
    MP3 at `target_sample_rate` (Hz) and PUT it to `output_url`. `expected_duration_sec`
    (s) is accepted and ignored: the mix is as long as its longest track."""

    track_urls: Annotated[list[Url], Meta(max_length=MAX_TRACKS)]
    output_url: Url
    target_sample_rate: Mp3Rate = 48000
    expected_duration_sec: Annotated[float, Meta(ge=0)] | None = None


class MixdownV1Result(msgspec.Struct):
    """`duration_ms`: length of the encoded mix (ms); `tracks_mixed`: tracks in the mix;
    `audio_uploaded`: true once the PUT succeeded (a failure is an error answer instead)."""

    duration_ms: float
    tracks_mixed: int
    audio_uploaded: bool
