"""The public answer of ``POST /diarize``."""

from __future__ import annotations

import msgspec

from app.schemas import KnownSpeakerNames, KnownSpeakerReferences, NamedTurn


class DiarizationResult(msgspec.Struct):
    """Speaker turns sorted by start; seconds (3 decimals); `speaker` an integer from 0;
    `name` where a known speaker's reference matched."""

    diarization: list[NamedTurn]


class KnownSpeakersBody(msgspec.Struct):
    """``/diarize``'s optional JSON body: known speakers to name (the `fast` pipeline only)."""

    known_speaker_names: KnownSpeakerNames = []
    known_speaker_references: KnownSpeakerReferences = []
