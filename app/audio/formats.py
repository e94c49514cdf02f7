"""Output formats of padding and mixdown: constants and checks that need no FFmpeg import.

The HTTP side validates requests with these before any download, and the audio worker
encodes with them.
"""

from __future__ import annotations

from app.errors import BadRequest

# Padding (fixed by the API contract): WebM with one Opus stream, 48 kHz stereo, 128 kbit/s.
PAD_RATE = 48000  # Hz
PAD_BIT_RATE = 128_000  # bits per second

# Mixdown: MP3, stereo, at the requested rate or the first track's.
MIX_BIT_RATE = 192_000  # bits per second; several voices summed, a little above speech-only rates
# Sample rates MPEG audio layer III can carry (MPEG-1, -2 and -2.5), in Hz.
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def check_mp3_rate(rate: int) -> None:
    """Raise `BadRequest` naming the allowed rates unless MP3 can be encoded at `rate` Hz."""
    if rate not in MP3_RATES:
        raise BadRequest(
            f"target_sample_rate {rate} Hz cannot be encoded as MP3; use one of "
            + ", ".join(str(r) for r in MP3_RATES)
        )


def nearest_mp3_rate(rate: int) -> int:
    """The MP3 sample rate closest to `rate` Hz (ties go to the higher rate)."""
    return min(MP3_RATES, key=lambda candidate: (abs(candidate - rate), -candidate))
