"""Benchmark: one 30-s transcription end to end over HTTPS vs the bare model call.

Prints, for the pyannote sample (30 s, two speakers): the bare faster-whisper call in this
process (decode + VAD + batched decoding), the same through the running service (upload,
TLS, worker hop), and the real-time factor of each. Run with `make bench`.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import settings as settings_module  # noqa: E402
from app.workers.messages import TranscribeRequest  # noqa: E402
from app.workers.whisper import WhisperEngine
from testing.service import pyannote_sample_dir, running_service, strict_context  # noqa: E402

RUNS = 5


def main() -> None:
    sample = pyannote_sample_dir() / "sample.wav"
    settings = settings_module.load({"REFLECTOR_GPU_MODELS_DIR": str(ROOT / "models")})
    engine = WhisperEngine(settings)
    engine.handle(TranscribeRequest(path=str(sample), language="en"), threading.Event())  # warm-up
    bare = []
    for _ in range(RUNS):
        started = time.perf_counter()
        engine.handle(TranscribeRequest(path=str(sample), language="en"), threading.Event())
        bare.append(time.perf_counter() - started)
    del engine

    import tempfile

    import httpx

    from app import tls

    with tempfile.TemporaryDirectory() as certs:
        tls.make_cert(Path(certs), "localhost", "IP:127.0.0.1")
        with running_service(Path(certs)) as service:
            client = httpx.Client(
                base_url=service.base_url, verify=strict_context(Path(certs) / "ca.crt"),
                headers={"Authorization": f"Bearer {service.api_key}"}, timeout=120,
            )
            data = sample.read_bytes()
            client.post("/v1/audio/transcriptions", files={"file": ("sample.wav", data)})  # warm-up
            served = []
            for _ in range(RUNS):
                started = time.perf_counter()
                response = client.post("/v1/audio/transcriptions", files={"file": ("sample.wav", data)})
                served.append(time.perf_counter() - started)
                response.raise_for_status()
            client.close()
    b, s = statistics.median(bare), statistics.median(served)
    print(f"bare model call (median of {RUNS}): {b:.3f} s  RTF {b / 30:.4f}")
    print(f"HTTPS end to end (median of {RUNS}): {s:.3f} s  RTF {s / 30:.4f}")
    print(f"service overhead: {s - b:+.3f} s ({(s / b - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
