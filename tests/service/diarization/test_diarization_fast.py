"""The `fast` diarization pipeline without HTTP: clustering and speaker-count hints on
synthetic embeddings (no model), then the engine with real models on pyannote's sample, and
the setting that selects each pipeline."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from app import settings as settings_module
from app.errors import Unavailable
from testing.der import diarization_error_rate
from testing.service import pyannote_sample_dir, write_wav

pytest_plugins = ["testing.stub_workers"]

MAX_DER = 0.08  # issue #10: DER on pyannote's sample, collar 0, overlap scored


def sample_der(turns) -> float:
    return diarization_error_rate(pyannote_sample_dir() / "sample.rttm", ((t.start, t.end, t.speaker) for t in turns))


@pytest.fixture(scope="module")
def fast_engine():
    from app.workers.diarizer import DiarizerEngine

    return DiarizerEngine(settings_module.load({}))


def test_default_is_fast_and_meets_the_der_bar(fast_engine, sample_wav: Path) -> None:
    from app.workers.messages import DiarizeRequest

    assert settings_module.load({}).diarization_model == "fast"
    assert fast_engine.describe().info["source"] == "fast"
    result = fast_engine.handle(DiarizeRequest(path=str(sample_wav)), threading.Event())
    assert {turn.speaker for turn in result.diarization} == {0, 1}
    der = sample_der(result.diarization)
    print(f"fast pipeline DER on pyannote's sample: {der:.4f}")
    assert der <= MAX_DER
    # overlapped speech is kept: the sample has two people talking at once around 20 s
    spans = [(t.start, t.end) for t in result.diarization]
    assert any(a < d and c < b for i, (a, b) in enumerate(spans) for c, d in spans[i + 1:])


def test_hints_reach_the_fast_pipeline(fast_engine, sample_wav: Path) -> None:
    from app.workers.messages import DiarizeRequest

    def speakers(**hints) -> set[int]:
        result = fast_engine.handle(DiarizeRequest(path=str(sample_wav), **hints), threading.Event())
        return {turn.speaker for turn in result.diarization}

    assert speakers(num_speakers=1) == {0}
    assert speakers(max_speakers=1) == {0}
    # three clusters of a two-speaker sample: a cluster no local speaker maps to gets no turn
    assert 2 <= len(speakers(num_speakers=3)) <= 3


def test_fast_pipeline_on_silence_a_short_clip_and_cancel(fast_engine, sample_wav: Path, tmp_path: Path) -> None:
    from app.audio.decode import decode_mono
    from app.workers.messages import DiarizeRequest

    quiet = np.random.default_rng(1).normal(0, 10 ** (-70 / 20), 16000 * 5).astype(np.float32)
    silent = fast_engine.handle(DiarizeRequest(path=str(write_wav(tmp_path / "q.wav", quiet))), threading.Event())
    assert silent.diarization == [] and silent.duration == 5.0
    zeros = fast_engine.handle(DiarizeRequest(path=str(write_wav(tmp_path / "z.wav", np.zeros(8000)))), threading.Event())
    assert zeros.diarization == []

    audio = decode_mono(sample_wav)
    short = write_wav(tmp_path / "short.wav", audio[int(22.5 * 16000): int(23.5 * 16000)])
    result = fast_engine.handle(DiarizeRequest(path=str(short), timestamp=2.0), threading.Event())
    assert result.diarization and {turn.speaker for turn in result.diarization} == {0}
    assert all(2.0 <= turn.start < turn.end <= 3.0 for turn in result.diarization)

    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(Unavailable, match="cancelled"):
        fast_engine.handle(DiarizeRequest(path=str(sample_wav)), cancelled)


def test_embedded_selects_the_pyannote_pipeline(sample_wav: Path) -> None:
    from app.workers.diarizer import DiarizerEngine
    from app.workers.messages import DiarizeRequest

    engine = DiarizerEngine(settings_module.load({"REFLECTOR_GPU_DIARIZATION_MODEL": "embedded"}))
    assert engine.describe().info["source"] == "embedded" and engine.fast is None
    result = engine.handle(DiarizeRequest(path=str(sample_wav), num_speakers=1), threading.Event())
    assert {turn.speaker for turn in result.diarization} == {0}


@pytest.mark.slow  # imports torch and pyannote
def test_segmentation_constants_match_pyannote() -> None:
    """The powerset table and frame timing written in fast.py are pyannote's own."""
    from pyannote.audio import Model
    from pyannote.audio.utils.powerset import Powerset

    from app.diarization import embedded
    from app.diarization.fast import FRAME_DURATION_S, FRAME_STEP_S, POWERSET

    assert np.array_equal(Powerset(3, 2).mapping.numpy().astype(np.uint8), POWERSET)
    model = Model.from_pretrained(str(embedded.bundle_dir() / "segmentation" / "pytorch_model.bin"))
    frames = model.receptive_field
    assert (frames.start, frames.duration, frames.step) == pytest.approx((0.0, FRAME_DURATION_S, FRAME_STEP_S))
