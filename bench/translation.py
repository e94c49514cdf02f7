"""Benchmark: latency of translating one 20-word English sentence into French.

Prints the median of `RUNS` calls to the translator engine in this process (tokenize, one
CTranslate2 batch, decode) and through the running service over HTTPS (TLS, auth, worker
hop), with the model's family, device and compute type. Without an argument it uses the
tiny random M2M100 model the tests build (a lower bound: the model is 1 layer, 32 wide);
give a CTranslate2 translation directory to measure a real one:

    .venv/bin/python bench/translation.py [MODEL_DIR]
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import settings as settings_module  # noqa: E402
from app.workers.messages import TranslateRequest  # noqa: E402
from app.workers.translator import TranslatorEngine
from testing.service import running_service, strict_context  # noqa: E402
from testing.translation_models import build_m2m100  # noqa: E402

RUNS = 20
SENTENCE = (
    "The quarterly planning meeting will start in five minutes, so please join the call "
    "and share your updates with everyone."
)  # 20 words


def main() -> None:
    assert len(SENTENCE.split()) == 20
    work = Path(tempfile.mkdtemp(prefix="bench-translation-"))
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else build_m2m100(work / "m2m100")
    env = {"REFLECTOR_GPU_TRANSLATION_MODEL": str(model)}
    engine = TranslatorEngine(settings_module.load(env))
    request = TranslateRequest(SENTENCE, "en", "fr")
    engine.handle(request, threading.Event())  # warm-up
    bare = []
    for _ in range(RUNS):
        started = time.perf_counter()
        engine.handle(request, threading.Event())
        bare.append(time.perf_counter() - started)
    info = engine.describe()
    del engine

    import httpx

    from app import tls

    certs = work / "certs"
    tls.make_cert(certs, "localhost", "IP:127.0.0.1")
    with running_service(certs, **env) as service:
        client = httpx.Client(
            base_url=service.base_url, verify=strict_context(certs / "ca.crt"),
            headers={"Authorization": f"Bearer {service.api_key}"}, timeout=120,
        )
        params = {"text": SENTENCE, "source_language": "en", "target_language": "fr"}
        client.post("/translate", params=params).raise_for_status()  # warm-up
        served = []
        for _ in range(RUNS):
            started = time.perf_counter()
            client.post("/translate", params=params).raise_for_status()
            served.append(time.perf_counter() - started)
        client.close()
    shutil.rmtree(work, ignore_errors=True)
    print(f"model: {model} ({info.info['family']}, {info.device}, {info.info['compute_type']})")
    print(f"20-word sentence en->fr, median of {RUNS}:")
    print(f"  engine call:     {statistics.median(bare) * 1000:7.1f} ms")
    print(f"  POST /translate: {statistics.median(served) * 1000:7.1f} ms (HTTPS, auth, worker hop)")


if __name__ == "__main__":
    main()
