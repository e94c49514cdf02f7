"""The pure parts of a realtime session: turn detection over speech probabilities, and the
stable prefix of partial transcripts. No I/O, no clock; positions are byte offsets into
the session's audio (every window is the same number of bytes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.http.realtime.events import TurnOptions

NEGATIVE_MARGIN = 0.15  # silence is below threshold - this (faster-whisper's and Silero's rule)
_NOT_WORD = re.compile(r"[^\w']+")


@dataclass(frozen=True)
class Turn:
    """What one window changed: ``started`` (speech began in the window starting at
    `position`), ``stopped`` (the utterance ends at `position`, after the silence), or
    ``split`` (an utterance reached the longest one and was cut at `position`, speech
    going on)."""

    kind: str
    position: int


class TurnDetector:
    """Server VAD, window by window: speech starts at the first window whose probability
    reaches the threshold; it stops once the windows since the last one below the
    negative threshold (``threshold - 0.15``) span `silence_duration_ms`, a window at or
    over the threshold resetting that count, as in faster-whisper's VAD. An utterance
    longer than `max_bytes` is cut at the window of lowest probability in its last
    `split_search_bytes`, so no utterance outgrows what one partial decode covers."""

    def __init__(self, options: TurnOptions, bytes_per_second: int, max_bytes: int, split_search_bytes: int) -> None:
        self.options = options
        self.threshold = options.threshold
        self.negative = max(options.threshold - NEGATIVE_MARGIN, 0.01)
        self.silence_bytes = options.silence_duration_ms * bytes_per_second // 1000
        self.max_bytes = max_bytes
        self.split_search_bytes = split_search_bytes
        self.speaking = False
        self.start = 0  # where the current speech began (its first speech window)
        self._silence_since: int | None = None
        self._recent: list[tuple[int, float]] = []  # (window end, probability) of the utterance's tail

    def reset(self) -> None:
        """Forget any speech in progress (after a commit or a clear)."""
        self.speaking = False
        self._silence_since = None
        self._recent.clear()

    def window(self, start: int, end: int, probability: float) -> Turn | None:
        """Feed the window of bytes ``[start, end)``; the turn it completes, if any."""
        if not self.speaking:
            if probability >= self.threshold:
                self.speaking, self.start, self._silence_since = True, start, None
                self._recent = [(end, probability)]
                return Turn("started", start)
            return None
        self._recent.append((end, probability))
        while self._recent and self._recent[0][0] <= end - self.split_search_bytes:
            self._recent.pop(0)
        if probability >= self.threshold:
            self._silence_since = None
        elif probability < self.negative and self._silence_since is None:
            self._silence_since = start
        if self._silence_since is not None and end - self._silence_since >= self.silence_bytes:
            self.reset()
            return Turn("stopped", end)
        if end - self.start >= self.max_bytes:
            cut = min(self._recent, key=lambda item: item[1])[0]
            self.start, self._silence_since = cut, None
            self._recent = [item for item in self._recent if item[0] > cut]
            return Turn("split", cut)
        return None


def _norm(word: str) -> str:
    return _NOT_WORD.sub("", word.lower())


class StablePrefix:
    """Partial text of one utterance: each decode of the growing audio is compared with
    the previous one, and only the words both agree on (the common prefix, compared
    without case and punctuation) are released, once each. `sent` is the text released
    so far; the first word loses its leading space, as the transcript's does."""

    def __init__(self) -> None:
        self._previous: list[str] = []
        self._released = 0
        self.sent = ""

    def update(self, words: list[str]) -> str:
        """The new stable text given this decode's `words` (Whisper's, with leading spaces)."""
        agreed = 0
        for old, new in zip(self._previous, words):
            if _norm(old) != _norm(new):
                break
            agreed += 1
        self._previous = words
        if agreed <= self._released:
            return ""
        delta = "".join(words[self._released:agreed])
        if not self.sent:
            delta = delta.lstrip()
        self._released = agreed
        self.sent += delta
        return delta

    def rest(self, words: list[str]) -> str:
        """The final decode's `words` after as many as were released: the last delta, so
        that the deltas add up to the transcript, word for word, except where a released
        word was decoded differently in the end (the completed event has the whole text)."""
        rest = "".join(words[self._released:])
        self._released = len(words)
        if not self.sent:
            rest = rest.lstrip()
        self.sent += rest
        return rest
