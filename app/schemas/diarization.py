"""The public answer of ``POST /diarize``."""

from __future__ import annotations

import msgspec

from app.workers.messages import Turn


class DiarizationResult(msgspec.Struct):
    """Speaker turns sorted by start; seconds (3 decimals); `speaker` an integer from 0."""

    diarization: list[Turn]
