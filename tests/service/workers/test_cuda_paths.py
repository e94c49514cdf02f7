"""The branches the CUDA path takes, run on the CPU through the same code with real models:
the Whisper engine's CUDA layout (one model, a CTranslate2 worker per lane, the live lane
among them; CUDA's batch size), forced with ``WhisperEngine(layout="cuda")``; and the fast
diarizer's PyTorch segmentation and CAM++, forced with ``FastDiarizer(backend="torch")``.
Which of them a machine takes is tested on a mocked GPU in tests/fast/workers/test_devices.py;
scripts/device_check.py runs them on a GPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from app.settings import Settings
from app.workers.messages import TranscribeRequest
from testing.batch_log import BatchLog
from testing.der import diarization_error_rate
from testing.service import pyannote_sample_dir
from testing.wer import word_error_rate

DER_TOLERANCE = 0.01  # PyTorch against ONNX Runtime: the same weights, float32 on both


@pytest.fixture(scope="module")
def sample_pcm(sample_wav: Path) -> np.ndarray:
    from app.audio.decode import decode_mono

    return decode_mono(sample_wav)


@pytest.fixture(scope="module")
def cuda_layout():
    """tiny.en on the CPU in CUDA's layout."""
    from app.workers.whisper import WhisperEngine

    engine = WhisperEngine(Settings(whisper_model="tiny.en", device="cpu"), layout="cuda")
    yield engine
    engine.scheduler.stop()


def test_cuda_layout_decodes_a_recording_in_one_batch_and_a_live_clip_beside_it(
    cuda_layout, sample_pcm: np.ndarray, sample_words: list[str]
) -> None:
    engine = cuda_layout
    assert (engine.layout, engine.lanes, engine.scheduler.batch_size) == ("cuda", 1, 8)
    [model] = engine.models
    assert model.live is model.recording and model.live.model.num_workers == 2
    log = BatchLog(engine)
    recording_job = engine.prepare_samples(TranscribeRequest(path="", priority="recording"), np.tile(sample_pcm, 4))
    pieces = recording_job.total
    assert 2 <= pieces <= engine.scheduler.batch_size
    recording = engine.scheduler.submit(recording_job)
    assert log.recording_started.wait(60), "the recording batch never started"
    clip = sample_pcm[int(6.5 * 16000) : int(8.5 * 16000)]
    live = engine.scheduler.submit(engine.prepare_samples(TranscribeRequest(path="", priority="live"), clip))
    live_text = live.result(timeout=120).text
    assert not recording.done(), "the live clip waited for the recording batch"
    transcript = recording.result(timeout=300)
    assert live_text.strip()
    # One batch held every piece of the recording (CUDA's batch size, one recording lane),
    # and the live clip's batch ran inside it, on the model's second CTranslate2 worker.
    [batch] = log.lane("recording")
    [live_batch] = log.lane("live")
    assert batch.pieces == pieces and log.live_beside_recording() == 1
    wer = word_error_rate(" ".join(sample_words * 4), transcript.text)
    print(f"CUDA layout on the CPU: {pieces} pieces in one batch, WER {wer:.3f}; "
          f"live clip {live_batch.end - live_batch.start:.1f} s inside a {batch.end - batch.start:.1f} s recording batch")
    assert wer <= 0.25


def test_gpu_batch_sizes_give_the_cpu_layouts_words(cuda_layout, sample_pcm: np.ndarray) -> None:
    """Batches of 1, 8 and 16 pieces (the sizes scripts/device_check.py measures on a GPU)
    decode the same words: batching changes the speed, not the transcript."""
    engine = cuda_layout
    audio = np.tile(sample_pcm, 3)
    texts = {}
    for size in (1, 8, 16):
        engine.scheduler.batch_size = size
        try:
            job = engine.prepare_samples(TranscribeRequest(path=""), audio)
            texts[size] = engine.scheduler.submit(job).result(timeout=600).text
        finally:
            engine.scheduler.batch_size = 8
    for size in (8, 16):
        difference = word_error_rate(texts[1], texts[size])
        print(f"batch {size} against batch 1: word difference {difference:.3f}")
        assert difference <= 0.02


def test_pytorch_diarizer_equals_onnx_runtime(sample_pcm: np.ndarray) -> None:
    """The fast pipeline's PyTorch models (what CUDA runs) and its ONNX Runtime ones (the
    CPU default) give the same DER on pyannote's sample, within `DER_TOLERANCE`."""
    from app.diarization import embedded
    from app.diarization.fast import FastDiarizer, FastOptions

    options = FastOptions(segmentation_step=0.1)  # CUDA's step (app.workers.diarizer.DEFAULT_STEP)
    rttm = pyannote_sample_dir() / "sample.rttm"
    results = {}
    for backend in ("auto", "torch"):
        diarizer = FastDiarizer(embedded.bundle_dir(), "cpu", options, threads=2, backend=backend)
        started = time.perf_counter()
        turns = diarizer(sample_pcm)
        results[diarizer.backend] = (diarization_error_rate(rttm, turns), time.perf_counter() - started)
    print("DER on pyannote's sample: " + ", ".join(f"{b} {d:.4f} ({s:.1f} s)" for b, (d, s) in results.items()))
    assert set(results) == {"onnxruntime", "torch"}
    assert abs(results["torch"][0] - results["onnxruntime"][0]) <= DER_TOLERANCE

