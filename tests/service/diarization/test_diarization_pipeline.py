"""The diarization engine without HTTP: pipeline sources, the embedded bundle, CAM++,
turn formatting, and the diarization settings."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from app import settings as settings_module
from app.errors import ModelNotFound, Unavailable
from testing.service import write_wav


@pytest.mark.slow  # imports torch and pyannote
def test_hub_pipeline_needs_a_token_and_unprepared_embedded_says_how(tmp_path: Path) -> None:
    from app.diarization.pipeline import Options, load_pipeline
    from app.models.diarization import Source

    with pytest.raises(ModelNotFound) as caught:
        load_pipeline(Source("hub", "pyannote/speaker-diarization-3.1"), Options(), hf_token=None, models_dir=tmp_path)
    assert "HF_TOKEN" in caught.value.detail
    with pytest.raises(ModelNotFound) as caught:
        load_pipeline(Source("embedded", str(tmp_path)), Options(), hf_token=None, models_dir=tmp_path)
    assert "make models" in caught.value.detail


def test_campplus_checkpoint_tells_speakers_apart(bundle: Path, sample_wav: Path) -> None:
    """CAM++ loads strictly from its pyannote checkpoint; two stretches of one speaker of the
    sample are closer than stretches of the two speakers."""
    import torch
    from pyannote.audio import Model

    from app.audio.decode import decode_mono
    from app.diarization.campplus import CAMPPlusEmbedding

    model = Model.from_pretrained(str(bundle / "embedding"), strict=True).eval()
    assert isinstance(model, CAMPPlusEmbedding) and model.dimension == 192
    audio = decode_mono(sample_wav)

    def embed(start: float, end: float) -> np.ndarray:
        with torch.inference_mode():
            vector = model(torch.from_numpy(audio[int(start * 16000) : int(end * 16000)])[None, None])[0].numpy()
        return vector / np.linalg.norm(vector)

    first_a, first_b, second = embed(10.8, 14.4), embed(18.6, 21.4), embed(22.0, 27.5)
    assert float(first_a @ first_b) > float(first_a @ second) + 0.2


def test_mounted_bundle_with_relative_paths(
    bundle: Path, sample_wav: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's directory: config.yaml naming files by relative path (one under a name
    containing "wespeaker", which pyannote would route to another loader if passed as text)."""
    # The engine blocks onnxruntime and the model hub for its process; undo that for this one.
    monkeypatch.setitem(sys.modules, "onnxruntime", sys.modules.get("onnxruntime"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from app.audio.decode import decode_mono
    from app.workers.diarizer import DiarizerEngine
    from app.workers.messages import DiarizeRequest

    mounted = tmp_path / "mounted"
    (mounted / "wespeaker-campplus").mkdir(parents=True)
    (mounted / "segmentation.bin").symlink_to(bundle / "segmentation" / "pytorch_model.bin")
    (mounted / "wespeaker-campplus" / "pytorch_model.bin").symlink_to(bundle / "embedding" / "pytorch_model.bin")
    (mounted / "plda").symlink_to(bundle / "plda")
    config = (bundle / "config.yaml").read_text()
    config = config.replace("$model/segmentation", "segmentation.bin").replace("$model/embedding", "wespeaker-campplus")
    (mounted / "config.yaml").write_text(config.replace("$model/plda", "plda"))

    settings = settings_module.load(
        {"REFLECTOR_GPU_DIARIZATION_MODEL": str(mounted), "REFLECTOR_GPU_DIARIZATION_STEP": "0.5"}
    )
    engine = DiarizerEngine(settings)
    assert engine.describe().info["source"] == "local"
    clip = write_wav(tmp_path / "clip.wav", decode_mono(sample_wav)[: 20 * 16000])
    result = engine.handle(DiarizeRequest(path=str(clip), timestamp=1.0), threading.Event())
    assert result.duration == 20.0
    assert {turn.speaker for turn in result.diarization} == {0, 1}
    assert all(1.0 <= turn.start < turn.end <= 21.0 for turn in result.diarization)

    cancelled = threading.Event()
    cancelled.set()  # the client went away: the job stops at pyannote's first progress report
    with pytest.raises(Unavailable, match="cancelled"):
        engine.handle(DiarizeRequest(path=str(clip)), cancelled)
