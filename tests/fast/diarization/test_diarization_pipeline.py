"""The diarization engine without HTTP: pipeline sources, the embedded bundle, CAM++,
turn formatting, and the diarization settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import settings as settings_module
from app.errors import ModelNotFound
from app.workers.diarizer import speaker_numbers, to_turns
from app.workers.messages import Turn


def test_labels_become_their_numbers() -> None:
    assert speaker_numbers(["SPEAKER_01", "SPEAKER_00", "SPEAKER_03"]) == {"SPEAKER_00": 0, "SPEAKER_01": 1, "SPEAKER_03": 3}
    assert speaker_numbers(["alice", "bob"]) == {"alice": 0, "bob": 1}


def test_turns_are_shifted_rounded_clipped_and_sorted() -> None:
    segments = [(2.00049, 3.5, "SPEAKER_01"), (-0.01, 1.2344, "SPEAKER_00"), (4.0, 4.0004, "SPEAKER_00"), (9.0, 10.4, "SPEAKER_01")]
    assert to_turns(segments, offset=10.0, duration=10.0) == [
        Turn(start=10.0, end=11.234, speaker=0),
        Turn(start=12.0, end=13.5, speaker=1),
        Turn(start=19.0, end=20.0, speaker=1),
    ]


def test_diarization_settings_are_validated() -> None:
    loaded = settings_module.load(
        {"REFLECTOR_GPU_DIARIZATION_STEP": "0.25", "REFLECTOR_GPU_DIARIZATION_DEVICE": "CPU",
         "REFLECTOR_GPU_DIARIZATION_EMBEDDING_BATCH_SIZE": "8"}
    )
    assert (loaded.diarization_step, loaded.diarization_device, loaded.diarization_embedding_batch_size) == (0.25, "cpu", 8)
    with pytest.raises(settings_module.SettingsError) as caught:
        settings_module.load({"REFLECTOR_GPU_DIARIZATION_STEP": "1.5", "REFLECTOR_GPU_DIARIZATION_SEGMENTATION_BATCH_SIZE": "0"})
    assert "REFLECTOR_GPU_DIARIZATION_STEP" in str(caught.value)
    assert "REFLECTOR_GPU_DIARIZATION_SEGMENTATION_BATCH_SIZE" in str(caught.value)


def test_sources_are_named_in_errors(tmp_path: Path) -> None:
    from app.models.diarization import resolve_source

    assert resolve_source("embedded", tmp_path).kind == "embedded"
    assert resolve_source("pyannote/speaker-diarization-3.1", tmp_path).kind == "hub"
    (tmp_path / "bundle").mkdir()
    for name, words in [
        (str(tmp_path / "missing"), "no such directory"),
        (str(tmp_path / "bundle"), "config.yaml"),
        ("speaker-diarization", "not understood"),
    ]:
        with pytest.raises(ModelNotFound) as caught:
            resolve_source(name, tmp_path)
        assert "REFLECTOR_GPU_DIARIZATION_MODEL" in caught.value.detail and words in caught.value.detail
