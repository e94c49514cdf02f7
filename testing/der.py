"""Diarization error rate against an RTTM reference (pyannote.metrics): collar 0, overlapped
speech scored. Shared by the diarization tests and scripts/device_check.py."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path


def diarization_error_rate(rttm: Path, turns: Iterable[tuple[float, float, object]], offset: float = 0.0) -> float:
    """DER of `turns` ((start s, end s, speaker), shifted back by `offset` s) against the
    first recording of `rttm`: collar 0, overlap scored, 0.0 = perfect."""
    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference = next(iter(load_rttm(rttm).values()))
    hypothesis = Annotation(uri=reference.uri)
    for start, end, speaker in turns:
        hypothesis[Segment(start - offset, end - offset)] = speaker
    with warnings.catch_warnings():  # "'uem' was approximated by the union of ... extents"
        warnings.simplefilter("ignore")
        return DiarizationErrorRate(collar=0.0, skip_overlap=False)(reference, hypothesis)
