"""Who said each word and each segment: a transcript aligned with speaker turns.

A word's speaker is the one who talks most over the word's span (the sum of the overlaps
of that speaker's turns with ``[start, end]``); a word no turn overlaps (a gap in the
diarization, or a zero-length word) takes the speaker of the nearest turn. Segments are
split where the speaker of consecutive words changes. All times are seconds on the same
timeline (the transcript's words and the turns are shifted by the same offset).

Both inputs are sorted by start, so each function sweeps once: O(words + turns).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec


class Span(Protocol):
    """Anything with `start` and `end` in seconds (words, segments)."""

    start: float
    end: float


class SpeakerTurn(Protocol):
    """A speaker turn (`app.workers.diarizer.Turn`): seconds and an integer speaker."""

    start: float
    end: float
    speaker: int


def word_speakers(words: Sequence[Span], turns: Sequence[SpeakerTurn]) -> list[int | None]:
    """The speaker of each word, in order; None for every word when there is no turn.

    `words` and `turns` must each be sorted by start; turns may overlap (two people talking
    at once). Ties in talking time go to the lower speaker number.
    """
    if not turns:
        return [None] * len(words)
    speakers: list[int | None] = []
    active: list[SpeakerTurn] = []  # turns started before the current word ends, not ended before it starts
    added = 0
    last_ended: SpeakerTurn | None = None  # the turn that ended last among those dropped
    for word in words:
        while added < len(turns) and turns[added].start < word.end:
            active.append(turns[added])
            added += 1
        still = []
        for turn in active:
            if turn.end <= word.start:
                if last_ended is None or turn.end > last_ended.end:
                    last_ended = turn
            else:
                still.append(turn)
        active = still
        talk: dict[int, float] = {}
        for turn in active:
            overlap = min(turn.end, word.end) - max(turn.start, word.start)
            if overlap > 0:
                talk[turn.speaker] = talk.get(turn.speaker, 0.0) + overlap
        if talk:
            speakers.append(min(talk, key=lambda speaker: (-talk[speaker], speaker)))
            continue
        speakers.append(_nearest(word, active, last_ended, turns[added] if added < len(turns) else None))
    return speakers


def _nearest(word: Span, active: list[SpeakerTurn], before: SpeakerTurn | None, after: SpeakerTurn | None) -> int:
    """The speaker of the turn closest to `word` when none overlaps it (gaps, zero-length words)."""
    middle = (word.start + word.end) / 2
    candidates = [turn for turn in (*active, before, after) if turn is not None]
    best = min(
        candidates,
        key=lambda turn: (max(turn.start - middle, middle - turn.end, 0.0), turn.speaker),
    )
    return best.speaker


def segment_of_words(segments: Sequence[Span], words: Sequence[Span]) -> list[int]:
    """For each word, the index of the segment holding its middle (else the nearest one).

    Both sorted by start; `segments` must not be empty.
    """
    owners = []
    index = 0
    for word in words:
        middle = (word.start + word.end) / 2
        while index + 1 < len(segments) and segments[index + 1].start <= middle:
            index += 1
        owner = index
        if middle > segments[index].end and index + 1 < len(segments):
            # In the gap after segment `index`: take whichever segment is closer.
            if segments[index + 1].start - middle < middle - segments[index].end:
                owner = index + 1
        owners.append(owner)
    return owners


class SpeakerSegment(msgspec.Struct, frozen=True):
    """One part of a segment spoken by one speaker.

    `source`: index of the segment it comes from; `words`: indexes of its words (may be
    empty for a segment without words); `start`, `end` in seconds; `speaker` None when the
    diarization found no speech at all.
    """

    source: int
    start: float
    end: float
    words: list[int]
    speaker: int | None


def split_by_speaker(
    segments: Sequence[Span],
    words: Sequence[Span],
    speakers: Sequence[int | None],
    turns: Sequence[SpeakerTurn],
) -> list[SpeakerSegment]:
    """Cut every segment where the speaker of its consecutive words changes.

    `speakers` is `word_speakers(words, turns)`. A part starts at its first word's start
    (the segment's own start for the first part) and ends at its last word's end (the
    segment's own end for the last part). A segment with no word gets the speaker that
    talks most over its span.
    """
    if not segments:
        return []
    owners = segment_of_words(segments, words)
    by_segment: list[list[int]] = [[] for _ in segments]
    for word_index, owner in enumerate(owners):
        by_segment[owner].append(word_index)
    parts: list[SpeakerSegment] = []
    for index, segment in enumerate(segments):
        members = by_segment[index]
        if not members:
            [speaker] = word_speakers([segment], turns)
            parts.append(SpeakerSegment(index, segment.start, segment.end, [], speaker))
            continue
        groups: list[list[int]] = [[members[0]]]
        for word_index in members[1:]:
            if speakers[word_index] == speakers[groups[-1][-1]]:
                groups[-1].append(word_index)
            else:
                groups.append([word_index])
        for number, group in enumerate(groups):
            start = segment.start if number == 0 else words[group[0]].start
            end = segment.end if number == len(groups) - 1 else words[group[-1]].end
            parts.append(SpeakerSegment(index, min(start, end), max(start, end), group, speakers[group[0]]))
    return parts
