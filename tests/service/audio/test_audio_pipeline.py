"""Padding and mixdown on local files, checked by decoding what was written."""

from __future__ import annotations

import pytest

from app.audio.pad import pad_file
from testing.audiogen import write_tone


def encoded_seconds(path) -> float:
    """Length of the first audio stream from its packets' durations (no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        total = sum(packet.duration or 0 for packet in container.demux(stream) if packet.size)
        return float(total * stream.time_base)


def test_pad_one_hour(tmp_path):
    """An hour of audio streams through (peak memory is measured by bench/audio.py)."""
    source = write_tone(tmp_path / "hour.wav", 3600.0, 440, 16000, channels=1, amp=0.3)
    outcome = pad_file(source, tmp_path / "hour.webm", 2.5)
    assert outcome.duration_ms == 3_602_500.0
    # Opus pads its last 20 ms packet; the container's pre-skip is not part of the length.
    assert encoded_seconds(tmp_path / "hour.webm") == pytest.approx(3602.5, abs=0.05)
