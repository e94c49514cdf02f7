"""The public API's shared types: what clients send and get back, apart from the worker wire.

The worker wire is `app.workers.messages`; where a wire struct is exactly the public shape
(`Turn`), it is used here rather than written twice. The types here are the contract
(shared/reflector-api.md) and the OpenAPI document. Request bounds are
`msgspec.Meta` constraints, so validation (400 naming the field) and the OpenAPI schema
come from one place. Times are seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

from msgspec import Meta

from app.audio.fetch import MAX_URL_CHARS
from app.audio.formats import MP3_RATES
from app.diarization.known import MAX_REFERENCES
from app.transcripts.speakers import SpeakerTurn
from app.workers.messages import Turn

# Where a transcript or diarization lands on the caller's timeline (``timestamp_offset``,
# ``timestamp``): 1e7 s (~115 days) bounds the shifted times without limiting real use.
MAX_TIMESTAMP_OFFSET_SECONDS = 10_000_000.0
# The contract's bound for a track's place in a recording (``/pad``'s
# ``start_time_seconds``, ``/mixdown``'s ``offsets_seconds``): 5 hours.
MAX_TRACK_START_SECONDS = 18000.0
LANGUAGE_CODE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$"

TimestampOffset = Annotated[
    float,
    Meta(ge=0, le=MAX_TIMESTAMP_OFFSET_SECONDS, description="seconds added to every returned time"),
]
SpokenLanguage = Annotated[
    str,
    Meta(
        pattern=rf"^(auto|{LANGUAGE_CODE_PATTERN[1:-1]})?$",  # LANGUAGE_CODE_PATTERN, auto, or empty
        description="the language spoken: a code such as en, yue or zh-TW; empty or auto: detected from the audio",
    ),
]
Url = Annotated[str, Meta(max_length=MAX_URL_CHARS, description="an absolute http:// or https:// URL")]
TrackStart = Annotated[
    float,
    Meta(gt=0, le=MAX_TRACK_START_SECONDS, description="seconds of silence before the track (0 < s <= 18000)"),
]
TrackOffset = Annotated[
    float, Meta(le=MAX_TRACK_START_SECONDS, description="the track's start in seconds (<= 18000; may be negative)")
]
Mp3Rate = Literal[MP3_RATES]  # type: ignore[valid-type] - the rates MP3 can carry, in Hz


class NamedTurn(Turn, frozen=True, omit_defaults=True):
    """A public speaker turn: the wire `Turn` (seconds, `speaker` an integer from 0) and
    `name`, the known speaker whose reference matched this speaker (absent otherwise)."""

    name: str | None = None


def public_turns(turns: Iterable[SpeakerTurn], names: Mapping[int, str] | None = None) -> list[NamedTurn]:
    """A worker's speaker turns as the public type, named from `names` (speaker -> name)."""
    names = names or {}
    return [NamedTurn(start=t.start, end=t.end, speaker=t.speaker, name=names.get(t.speaker)) for t in turns]


KnownSpeakerNames = Annotated[
    list[str],
    Meta(max_length=MAX_REFERENCES, description="OpenAI's known_speaker_names: one short name per reference"),
]
KnownSpeakerReferences = Annotated[
    list[str],
    Meta(
        max_length=MAX_REFERENCES,
        description="OpenAI's known_speaker_references: data URLs (data:audio/wav;base64,...) of 2-10 s of each "
        "known speaker's voice, in the order of the names",
    ),
]
