"""The choices the workers make from the device, on a mocked GPU: CTranslate2 or torch is
told it sees one (or several), and the real decision code runs (`app.workers.devices`, the
settings' per-device defaults, each engine's constructor). Model classes are replaced by
recorders where loading would need CUDA; nothing is loaded on a GPU here.

The paths those choices lead to run on the CPU in tests/service/workers/test_cuda_paths.py,
and on a GPU with scripts/device_check.py."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import ctranslate2
import pytest

from app import settings as settings_module
from app.settings import Settings
from app.workers import devices
from app.workers.whisper import recording_lanes
from testing.translation_models import m2m100_model  # noqa: F401 - fixture


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """Set how many GPUs CTranslate2 reports: ``gpus(2)``."""

    def see(count: int) -> None:
        monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: count)

    return see


@pytest.fixture(autouse=True)
def first_replica():
    yield
    devices.set_replica(0)


def test_auto_device_and_compute_types_follow_what_ctranslate2_sees(gpus) -> None:
    from app.workers.translator import CUDA_COMPUTE_TYPE

    settings = settings_module.load({})
    assert settings.device == "auto" and settings.compute_type == "auto"
    gpus(1)
    assert devices.ct2_device(settings) == "cuda"
    assert devices.ct2_compute_type(settings, "cuda") == "float16"  # Whisper
    assert devices.ct2_compute_type(settings, "cuda", cuda_default=CUDA_COMPUTE_TYPE) == "int8_float16"  # translator
    gpus(0)
    assert devices.ct2_device(settings) == "cpu"
    assert devices.ct2_compute_type(settings, "cpu") == "int8"
    assert devices.ct2_compute_type(settings, "cpu", cuda_default=CUDA_COMPUTE_TYPE) == "int8"
    # Explicit settings win over what the machine has.
    gpus(1)
    forced = settings_module.load({"REFLECTOR_GPU_DEVICE": "cpu", "REFLECTOR_GPU_COMPUTE_TYPE": "int8_float32"})
    assert devices.ct2_device(forced) == "cpu" and devices.ct2_compute_type(forced, "cuda") == "int8_float32"


def test_replicas_take_the_gpus_in_turn(gpus) -> None:
    gpus(2)
    settings = Settings()
    picked = []
    for replica in range(4):
        devices.set_replica(replica)
        picked.append(devices.cuda_device_index(settings))
    assert picked == [0, 1, 0, 1]
    listed = Settings(cuda_devices=(1, 3))
    picked = []
    for replica in range(3):
        devices.set_replica(replica)
        picked.append(devices.cuda_device_index(listed))
    assert picked == [1, 3, 1]
    gpus(0)
    devices.set_replica(1)
    assert devices.cuda_device_index(settings) == 0


def test_per_device_defaults() -> None:
    settings = Settings()
    assert (recording_lanes("cuda"), recording_lanes("cpu")) == (1, 2)
    assert (settings.whisper_batch("cuda"), settings.whisper_batch("cpu")) == (8, 2)
    assert (settings.queue_audio_limit("cuda"), settings.queue_audio_limit("cpu")) == (86400.0, 7200.0)
    tuned = settings_module.load({"REFLECTOR_GPU_WHISPER_BATCH_SIZE": "16", "REFLECTOR_GPU_QUEUE_AUDIO_SECONDS": "600"})
    assert tuned.whisper_batch("cuda") == 16 and tuned.queue_audio_limit("cuda") == 600.0


class _RecordedWhisperModel:
    """Stands in for faster-whisper's `WhisperModel`: records how it was built."""

    built: ClassVar[list[dict]] = []

    def __init__(self, path: str, **options) -> None:
        self.built.append({"path": path, **options})
        self.supported_languages = ["en"]
        self.model = type("Ct2Whisper", (), {"is_multilingual": False})()


def test_whisper_engine_on_a_gpu_builds_one_model_with_a_worker_per_lane(gpus, monkeypatch) -> None:
    import faster_whisper

    monkeypatch.setattr(faster_whisper, "WhisperModel", _RecordedWhisperModel)
    _RecordedWhisperModel.built = []
    from app.workers.whisper import WhisperEngine

    gpus(2)
    devices.set_replica(1)
    engine = WhisperEngine(Settings(whisper_model="tiny.en"))
    try:
        assert (engine.device, engine.compute_type, engine.layout, engine.lanes) == ("cuda", "float16", "cuda", 1)
        [built] = _RecordedWhisperModel.built  # one model: the live lane shares it
        assert built["device"] == "cuda" and built["device_index"] == 1 and built["compute_type"] == "float16"
        assert built["num_workers"] == 2  # one CTranslate2 worker for the recording lane, one for the live lane
        [model] = engine.models
        assert model.live is model.recording
        assert engine.scheduler.batch_size == 8 and engine.scheduler.lane_nice == 0
        assert sorted(thread.name for thread in engine.scheduler._threads) == ["whisper-bulk0", "whisper-live"]
    finally:
        engine.scheduler.stop()


def test_whisper_engine_on_the_cpu_or_with_the_cuda_layout_forced(gpus, monkeypatch) -> None:
    import faster_whisper

    from app.workers.registry import RECORDING_NICE
    from app.workers.whisper import WhisperEngine

    monkeypatch.setattr(faster_whisper, "WhisperModel", _RecordedWhisperModel)
    gpus(0)
    _RecordedWhisperModel.built = []
    engine = WhisperEngine(Settings(whisper_model="tiny.en"))
    engine.scheduler.stop()
    assert (engine.device, engine.compute_type, engine.lanes) == ("cpu", "int8", 2)
    # A live copy and a niced recording copy, each with a CTranslate2 worker per lane.
    assert [b["num_workers"] for b in _RecordedWhisperModel.built] == [2, 2]
    assert engine.scheduler.batch_size == 2 and engine.scheduler.lane_nice == RECORDING_NICE
    assert engine.live_packing and engine.scheduler.live_batch_size == 2 * 4  # 4 chunks a window
    assert sorted(thread.name for thread in engine.scheduler._threads) == [
        "whisper-bulk0", "whisper-bulk1", "whisper-live0", "whisper-live1"
    ]
    # The switch tests and the device check's rehearsal use: CUDA's layout, on the CPU.
    _RecordedWhisperModel.built = []
    forced = WhisperEngine(Settings(whisper_model="tiny.en"), layout="cuda")
    forced.scheduler.stop()
    assert (forced.device, forced.layout, forced.lanes, forced.scheduler.batch_size) == ("cpu", "cuda", 1, 8)
    assert [(b["device"], b["num_workers"]) for b in _RecordedWhisperModel.built] == [("cpu", 2)]
    assert forced.live_packing and forced.scheduler.live_batch_size == 8 * 4
    alone = WhisperEngine(Settings(whisper_model="tiny.en", whisper_live_packing="off"))
    alone.scheduler.stop()
    assert not alone.live_packing and alone.scheduler.live_batch_size == 2


def test_translator_on_a_gpu_asks_for_int8_float16(gpus, monkeypatch, m2m100_model: Path) -> None:  # noqa: F811
    from app.workers.translator import TranslatorEngine

    real = ctranslate2.Translator
    asked: list[dict] = []

    def translator(path: str, **options):
        asked.append(options)
        return real(path, **{**options, "device": "cpu", "compute_type": "int8"})  # no GPU here

    monkeypatch.setattr(ctranslate2, "Translator", translator)
    gpus(1)
    engine = TranslatorEngine(Settings(translation_model=str(m2m100_model)))
    assert (engine.device, engine.compute_type) == ("cuda", "int8_float16")
    assert [(a["device"], a["compute_type"]) for a in asked] == [("cuda", "int8_float16")]


def test_diarizer_on_a_gpu_runs_pytorch_with_the_cuda_step(monkeypatch, tmp_path: Path) -> None:
    """torch sees a GPU: the diarizer takes CUDA, CUDA's segmentation step, and the fast
    pipeline's PyTorch models (not ONNX Runtime, even with the ONNX files in the bundle)."""
    import torch

    from app.diarization import embedded, fast
    from app.workers import diarizer

    for name in ("segmentation/pytorch_model.bin", "embedding/pytorch_model.bin", fast.ONNX_NAME,
                 fast.SEGMENTATION_ONNX_NAME, "plda/xvec_transform.npz", "plda/plda.npz"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(embedded, "bundle_dir", lambda: tmp_path)
    loaded: list[tuple[str, str]] = []
    for cls in ("_TorchSegmentation", "_TorchCampplus"):
        monkeypatch.setattr(fast, cls, lambda checkpoint, device, cls=cls: loaded.append((cls, device)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    engine = diarizer.DiarizerEngine(Settings(cpu_threads=1))
    assert engine.device == "cuda" and engine.options.segmentation_step == diarizer.DEFAULT_STEP["cuda"]
    assert engine.fast.backend == "torch"
    assert loaded == [("_TorchSegmentation", "cuda"), ("_TorchCampplus", "cuda")]
    # REFLECTOR_GPU_DIARIZATION_DEVICE keeps the diarizer on the CPU while the rest uses the GPU.
    assert diarizer.torch_device(Settings(diarization_device="cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert diarizer.torch_device(Settings()) == "cpu"
