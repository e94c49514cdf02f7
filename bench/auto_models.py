"""What `REFLECTOR_GPU_WHISPER_MODEL=auto` serves on the CPU, measured: the embedded pair
(``tiny.en`` for English, ``base`` for every other language) against ``base`` alone.

Prints, in one run on this machine, for pyannote's 30-s English sample and a French clip
spoken by espeak-ng: seconds per request (median of `RUNS`, in-process, the service's own
`WhisperEngine` and scheduler), the ratio, and the WER against the reference text.

    .venv/bin/python bench/auto_models.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import settings as settings_module  # noqa: E402
from app.workers.messages import TranscribeRequest  # noqa: E402
from app.workers.whisper import WhisperEngine
from testing.service import pyannote_sample_dir  # noqa: E402

RUNS = 5
FRENCH = (
    "Bonjour à tous. La réunion commence maintenant. Aujourd'hui, nous allons parler du budget "
    "de l'équipe et du calendrier du prochain trimestre."
)


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    transform = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    return jiwer.wer(reference, hypothesis, reference_transform=transform, hypothesis_transform=transform)


def timed(engine: WhisperEngine, path: Path, language: str) -> tuple[float, str]:
    request = TranscribeRequest(path=str(path), language=language, priority="live")
    engine.handle(request, threading.Event())  # warm-up
    times, text = [], ""
    for _ in range(RUNS):
        started = time.perf_counter()
        text = engine.handle(request, threading.Event()).text
        times.append(time.perf_counter() - started)
    return statistics.median(times), text


def main() -> None:
    sample = pyannote_sample_dir() / "sample.wav"
    english = " ".join(line.split(None, 5)[5] for line in (sample.parent / "sample.stm").read_text().splitlines() if line.strip())
    with tempfile.TemporaryDirectory() as tmp:
        french = Path(tmp) / "fr.wav"
        subprocess.run(["espeak-ng", "-v", "fr", "-s", "140", "-w", str(french), FRENCH], check=True)
        figures = {}
        for name in ("auto", "base"):
            settings = settings_module.load({"REFLECTOR_GPU_WHISPER_MODEL": name, "REFLECTOR_GPU_DEVICE": "cpu"})
            engine = WhisperEngine(settings)
            figures[name] = {
                "en": timed(engine, sample, "en"),
                "fr": timed(engine, french, "fr"),
                "models": engine.model_name,
            }
            engine.scheduler.stop()
            del engine
    auto, base = figures["auto"], figures["base"]
    print(f"auto serves {auto['models']}; compared with base alone, median of {RUNS} in-process requests:")
    for language, reference, clip in (("en", english, "sample.wav, 30 s"), ("fr", FRENCH, "espeak-ng, fr")):
        (auto_s, auto_text), (base_s, base_text) = auto[language], base[language]
        print(
            f"  {language} ({clip}): auto {auto_s:.2f} s (WER {wer(reference, auto_text):.3f}), "
            f"base {base_s:.2f} s (WER {wer(reference, base_text):.3f}); auto/base time {auto_s / base_s:.2f}x"
        )


if __name__ == "__main__":
    main()
