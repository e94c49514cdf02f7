"""The `fast` diarization pipeline without HTTP: clustering and speaker-count hints on
synthetic embeddings (no model), then the engine with real models on pyannote's sample, and
the setting that selects each pipeline."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from app import settings as settings_module
from app.diarization.fast import FastOptions, SpeakerHints, cluster
from app.errors import Unavailable
from testing.service import pyannote_sample_dir, write_wav

pytest_plugins = ["testing.stub_workers"]

MAX_DER = 0.08  # issue #10: DER on pyannote's sample, collar 0, overlap scored


def voices(counts: list[int], seed: int = 0, spread: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised 192-dim points around one random centre per voice; (points, truth)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), 192))
    points, truth = [], []
    for voice, count in enumerate(counts):
        cloud = centres[voice] / np.linalg.norm(centres[voice]) + rng.normal(scale=spread / np.sqrt(192), size=(count, 192))
        points.append(cloud)
        truth += [voice] * count
    points = np.concatenate(points)
    return points / np.linalg.norm(points, axis=1, keepdims=True), np.array(truth)


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    pairs = set(zip(labels.tolist(), truth.tolist()))
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


@pytest.mark.parametrize("counts", [[40], [30, 25], [30, 12, 20], [15, 20, 25, 18]])
def test_speaker_count_is_estimated(counts: list[int]) -> None:
    points, truth = voices(counts)
    labels = cluster(points, SpeakerHints(), FastOptions())
    assert same_partition(labels, truth)


def test_hints_bound_the_count() -> None:
    points, truth = voices([30, 25, 20])
    options = FastOptions()
    assert len(set(cluster(points, SpeakerHints(num_speakers=2), options))) == 2
    assert len(set(cluster(points, SpeakerHints(max_speakers=2), options))) == 2
    assert len(set(cluster(points, SpeakerHints(min_speakers=4), options))) >= 4
    assert len(set(cluster(points, SpeakerHints(num_speakers=1), options))) == 1
    assert same_partition(cluster(points, SpeakerHints(min_speakers=2, max_speakers=5), options), truth)


def test_many_windows_are_reduced_before_the_affinity_matrix() -> None:
    """Past max_affinity_windows rows, k-means centroids stand in for the rows."""
    points, truth = voices([400, 300, 350])
    labels = cluster(points, SpeakerHints(), FastOptions(max_affinity_windows=200))
    assert same_partition(labels, truth)


def test_one_or_no_window() -> None:
    points, _ = voices([1])
    assert cluster(points, SpeakerHints(), FastOptions()).tolist() == [0]
    assert cluster(points[:0], SpeakerHints(), FastOptions()).tolist() == []


def sample_der(turns) -> float:
    from pyannote.core import Annotation, Segment
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference = next(iter(load_rttm(pyannote_sample_dir() / "sample.rttm").values()))
    hypothesis = Annotation()
    for turn in turns:
        hypothesis[Segment(turn.start, turn.end)] = turn.speaker
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DiarizationErrorRate(collar=0.0, skip_overlap=False)(reference, hypothesis)


@pytest.fixture(scope="module")
def fast_engine():
    from app.workers.diarizer import DiarizerEngine

    return DiarizerEngine(settings_module.load({}))


@pytest.mark.slow
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


@pytest.mark.slow
def test_hints_reach_the_fast_pipeline(fast_engine, sample_wav: Path) -> None:
    from app.workers.messages import DiarizeRequest

    def speakers(**hints) -> set[int]:
        result = fast_engine.handle(DiarizeRequest(path=str(sample_wav), **hints), threading.Event())
        return {turn.speaker for turn in result.diarization}

    assert speakers(num_speakers=1) == {0}
    assert speakers(max_speakers=1) == {0}
    # three clusters of a two-speaker sample: a cluster no local speaker maps to gets no turn
    assert 2 <= len(speakers(num_speakers=3)) <= 3


@pytest.mark.slow
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


@pytest.mark.slow
def test_embedded_selects_the_pyannote_pipeline(sample_wav: Path) -> None:
    from app.workers.diarizer import DiarizerEngine
    from app.workers.messages import DiarizeRequest

    engine = DiarizerEngine(settings_module.load({"REFLECTOR_GPU_DIARIZATION_MODEL": "embedded"}))
    assert engine.describe().info["source"] == "embedded" and engine.fast is None
    result = engine.handle(DiarizeRequest(path=str(sample_wav), num_speakers=1), threading.Event())
    assert {turn.speaker for turn in result.diarization} == {0}


def test_fast_names_the_setting_when_unprepared(tmp_path: Path) -> None:
    from app.diarization.pipeline import Options
    from app.errors import ModelNotFound
    from app.workers.diarizer import _load_fast

    with pytest.raises(ModelNotFound) as caught:
        _load_fast(str(tmp_path), Options(), 0)
    assert "REFLECTOR_GPU_DIARIZATION_MODEL=fast" in caught.value.detail and "make models" in caught.value.detail


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


def test_compact_decoding_equals_decode_mono(sample_wav: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding frame by frame into one array gives decode_mono's samples (int16: within 1
    LSB), also when the stated length was short and the array had to grow."""
    from app.audio.decode import decode_mono
    from app.diarization import audio
    from app.errors import PayloadTooLarge

    monkeypatch.setattr("app.audio.decode.stated_seconds", lambda path: 5.0)  # grown from 6 s to 30 s
    whole = decode_mono(sample_wav)
    assert np.array_equal(audio.decode_compact(sample_wav), whole)
    compact = audio.decode_compact(sample_wav, dtype=np.int16)
    assert compact.dtype == np.int16 and len(compact) == len(whole)
    assert np.abs(compact / 32768.0 - whole).max() <= 1 / 32768
    with pytest.raises(PayloadTooLarge):
        audio.decode_compact(sample_wav, max_seconds=10.0)


def test_hints_travel_to_the_worker(app_client, workers, audio_server) -> None:
    """In-process HTTP side with a stub diarizer: the query's hints arrive in the request."""
    from app.workers.messages import Diarization, DiarizeRequest
    from testing.stub_workers import StubEngine

    seen: list[DiarizeRequest] = []

    def diarize(request: DiarizeRequest, cancel) -> Diarization:
        seen.append(request)
        return Diarization(diarization=[], duration=30.0)

    workers.serve(StubEngine("diarizer", (DiarizeRequest,), diarize))
    url = f"{audio_server.url}/sample.wav"
    assert app_client.post("/diarize", params={"audio_file_url": url}).status_code == 200
    answer = app_client.post("/diarize", params={"audio_file_url": url, "min_speakers": "2", "max_speakers": "5"})
    assert answer.status_code == 200, answer.text
    assert app_client.post("/diarize", params={"audio_file_url": url, "num_speakers": "3"}).status_code == 200
    assert [(r.num_speakers, r.min_speakers, r.max_speakers) for r in seen] == [
        (None, None, None), (None, 2, 5), (3, None, None)
    ]


@pytest.mark.parametrize(
    ("hints", "words"),
    [
        ({"num_speakers": "0"}, "num_speakers"),
        ({"max_speakers": "1000"}, "max_speakers"),
        ({"min_speakers": "two"}, "min_speakers"),
        ({"num_speakers": "2.5"}, "num_speakers"),
        ({"min_speakers": "4", "max_speakers": "2"}, "larger than max_speakers"),
        ({"num_speakers": "5", "max_speakers": "3"}, "outside"),
    ],
)
def test_bad_speaker_hints_are_400(app_client, hints: dict, words: str) -> None:
    response = app_client.post("/diarize", params={"audio_file_url": "http://127.0.0.1:9/a.wav", **hints})
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"]
