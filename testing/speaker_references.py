"""Known-speaker references for the tests and bench/known_speakers.py.

Voices: the two real speakers of pyannote's sample (``speaker90``, ``speaker91`` in its
``sample.rttm``) and espeak-ng voices. References travel as OpenAI's SDK sends them: data
URLs of WAV bytes (``data:audio/wav;base64,...``).
"""

from __future__ import annotations

import base64
import io
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from testing.service import pyannote_sample_dir

SAMPLE_RATE = 16000
# Stretches of pyannote's sample where one person speaks alone (per sample.rttm), seconds.
SAMPLE_REFERENCES = {"speaker90": (11.03, 14.49), "speaker91": (21.78, 27.85)}


def rttm_turns(path: Path) -> list[tuple[float, float, str]]:
    """(start s, end s, label) of every turn in an RTTM file."""
    turns = []
    for line in path.read_text().splitlines():
        parts = line.split()
        start, duration = float(parts[3]), float(parts[4])
        turns.append((start, start + duration, parts[7]))
    return turns


def sample_samples() -> np.ndarray:
    """pyannote's sample as 16 kHz mono float32."""
    from app.audio.decode import decode_mono

    return decode_mono(pyannote_sample_dir() / "sample.wav", SAMPLE_RATE)


def cut(samples: np.ndarray, start: float, end: float) -> np.ndarray:
    """`samples[start s:end s]` (16 kHz)."""
    return samples[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]


def wav_bytes(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as a 16-bit mono 16 kHz WAV file's bytes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return buffer.getvalue()


def data_url(audio: bytes, media_type: str = "audio/wav") -> str:
    """A data URL of `audio`, as ``known_speaker_references[]`` carries it."""
    return f"data:{media_type};base64,{base64.b64encode(audio).decode()}"


def espeak(voice: str, text: str, pitch: int = 50, speed: int = 160) -> np.ndarray:
    """`text` spoken by espeak-ng `voice` as 16 kHz mono float32."""
    from app.audio.decode import decode_mono

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text],
                       check=True)
        return decode_mono(path, SAMPLE_RATE)
