"""The `fast` diarization pipeline without HTTP: clustering and speaker-count hints on
synthetic embeddings (no model), then the engine with real models on pyannote's sample, and
the setting that selects each pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.diarization.fast import FastOptions, SpeakerHints, cluster

pytest_plugins = ["testing.stub_workers"]


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


def test_fast_names_the_setting_when_unprepared(tmp_path: Path) -> None:
    from app.diarization.pipeline import Options
    from app.errors import ModelNotFound
    from app.workers.diarizer import _load_fast

    with pytest.raises(ModelNotFound) as caught:
        _load_fast(str(tmp_path), Options(), 0)
    assert "REFLECTOR_GPU_DIARIZATION_MODEL=fast" in caught.value.detail and "make models" in caught.value.detail


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
