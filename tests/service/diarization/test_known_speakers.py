"""Known speakers by name (issue 22): the diarizer engine with the real models on pyannote's
sample: each voice named by a reference cut from the sample, an absent voice (espeak-ng)
named by none, bad references refused. The assignment and the HTTP side with stub workers: tests/fast/diarization/test_known_speakers.py;
the OpenAI SDK over real HTTPS: tests/service/http/test_openai_api.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from app.workers.messages import (
    Diarization,
    DiarizeRequest,
)
from testing.speaker_references import SAMPLE_REFERENCES, cut, espeak, sample_samples, wav_bytes

pytest_plugins = ["testing.stub_workers"]


# -- the HTTP side, stub workers -------------------------------------------------------------


# -- the engine with the real models -------------------------------------------------------
@pytest.fixture(scope="module")
def engine():
    from app import settings as settings_module
    from app.workers.diarizer import DiarizerEngine

    return DiarizerEngine(settings_module.load({}))


def speaker_of(result: Diarization, start: float, end: float) -> int:
    """The speaker who talks most inside [start, end]."""
    talk: dict[int, float] = {}
    for turn in result.diarization:
        talk[turn.speaker] = talk.get(turn.speaker, 0.0) + max(0.0, min(turn.end, end) - max(turn.start, start))
    return max(talk, key=talk.__getitem__)


def test_engine_names_the_sample_voices_and_not_an_absent_one(engine, sample_wav) -> None:
    sample = sample_samples()
    references = [wav_bytes(cut(sample, *span)) for span in SAMPLE_REFERENCES.values()]
    absent = wav_bytes(espeak("en-us+m3", "The quarterly report is finished and I will send it to everyone today."))
    result = engine.handle(DiarizeRequest(path=str(sample_wav), references=[absent, *references]), threading.Event())
    first, second = (speaker_of(result, *span) for span in SAMPLE_REFERENCES.values())
    assert first != second and result.matched == {first: 1, second: 2}
    alone = engine.handle(DiarizeRequest(path=str(sample_wav), references=[absent]), threading.Event())
    assert alone.matched == {} and [t.speaker for t in alone.diarization] == [t.speaker for t in result.diarization]


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda s: b"RIFF" + bytes(3000), "known_speaker_references[0]: cannot decode the audio"),
        (lambda s: wav_bytes(s[16000:32000]), "known_speaker_references[0]: a reference must hold 2 to 10 s"),
        (lambda s: wav_bytes(s[:16000 * 11]), "(this one is over 10 s)"),
        (lambda s: wav_bytes(np.zeros(16000 * 3, np.float32)), "no stretch of speech long enough"),
    ],
)
def test_engine_refuses_bad_references(engine, sample_wav, make, phrase) -> None:
    from app.errors import BadRequest

    with pytest.raises(BadRequest) as caught:
        engine.handle(DiarizeRequest(path=str(sample_wav), references=[make(sample_samples())]), threading.Event())
    assert phrase in caught.value.detail
