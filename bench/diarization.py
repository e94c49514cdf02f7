"""Benchmark: the `fast` diarization pipeline against the pyannote (`embedded`) one, in one run.

For each pipeline it starts the real diarizer worker (``python -m app.workers.server
diarizer`` with ``REFLECTOR_GPU_DIARIZATION_MODEL=<name>``) and prints:

- DER on pyannote's sample (30 s; collar 0, overlap scored, pyannote.metrics);
- DER and the share of conversations with the right speaker count on the generated
  espeak-ng conversations of scripts/tune_diarization.py (2, 3 and 4 speakers);
- seconds, real-time factor (wall seconds per audio second), the worker's peak RSS
  (VmHWM, which the worker resets at the start of each job), DER and speakers found on a
  10- and a 60-minute meeting of 4 generated voices (`make_long`; 4 speakers).

Then the 1-hour Reflector file pipeline: the whole service (``entrypoint.py``, default
settings, so the default diarization pipeline and Whisper model) gets
``/v1/audio/transcriptions-from-url`` and ``/diarize`` for the 60-minute file at the same
time, as Reflector's file pipeline sends them; both must answer inside Reflector's 600 s.

Generated files live under ``--data`` (default /tmp/rg-diar-bench) and are reused; the
service's own whisper setting (``REFLECTOR_GPU_WHISPER_MODEL``) applies to the last part.
Run with `make bench` or ``nice .venv/bin/python bench/diarization.py [--pipelines fast
embedded] [--skip-long] [--skip-reflector]``; the full run takes about 40 min on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from app import settings as settings_module  # noqa: E402
from app.workers import client  # noqa: E402
from app.workers.diarizer import peak_rss_mib
from app.workers.messages import Diarization, DiarizeRequest  # noqa: E402
from testing.service import pyannote_sample_dir  # noqa: E402

LONG_MINUTES = (10, 60)
REFLECTOR_TIMEOUT = 600.0  # s, Reflector's client time-out for each of the two calls


def error_rate(pairs) -> float:
    """Overall DER of (reference, hypothesis) Annotation pairs: collar 0, overlap scored."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    for reference, hypothesis in pairs:
        metric(reference, hypothesis)
    return abs(metric)


def annotation(turns):
    from pyannote.core import Annotation, Segment

    result = Annotation()
    for turn in turns:
        result[Segment(turn.start, turn.end)] = turn.speaker
    return result


def sample_reference():
    """The reference turns of pyannote's sample (sample.rttm)."""
    from tune_diarization import load_reference

    return load_reference(pyannote_sample_dir() / "sample.rttm")


def long_files(dataset: Path) -> list[tuple[str, Path, float, object]]:
    """(name, path, seconds, reference) for the 10- and 60-minute meetings of 4 generated
    voices (scripts/tune_diarization.py `make_long`), made once."""
    from tune_diarization import load_reference, make_long

    files = []
    for minutes in LONG_MINUTES:
        wav, rttm = make_long(dataset, minutes)
        files.append((f"{minutes}-minute meeting", wav, minutes * 60.0, load_reference(rttm)))
    return files


async def bench_pipeline(name: str, conversations, long: list, state: Path) -> dict:
    """Run one pipeline's worker over every file; returns the figures and prints them."""
    env = {**os.environ, "REFLECTOR_GPU_STATE_DIR": str(state), "REFLECTOR_GPU_DIARIZATION_MODEL": name}
    settings = settings_module.load(env)
    started = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "app.workers.server", "diarizer"], cwd=ROOT, env=env)
    figures: dict = {"pipeline": name}
    try:
        while await client.ping(settings, "diarizer") is None:
            if worker.poll() is not None:
                raise RuntimeError(f"the {name} diarizer worker exited with {worker.returncode}")
            await asyncio.sleep(0.2)
        print(f"\n== {name}: worker ready in {time.perf_counter() - started:.1f} s", flush=True)

        async def run(path: Path) -> tuple[Diarization, float, float]:
            begun = time.perf_counter()
            result = await client.call(settings, "diarizer", DiarizeRequest(path=str(path)), Diarization)
            return result, time.perf_counter() - begun, peak_rss_mib(worker.pid)

        result, seconds, _ = await run(pyannote_sample_dir() / "sample.wav")
        figures["sample_der"] = error_rate([(sample_reference(), annotation(result.diarization))])
        print(f"  sample (30 s): DER {figures['sample_der']:.4f}, {len({t.speaker for t in result.diarization})} "
              f"speakers, {seconds:.1f} s", flush=True)

        pairs, right, total = [], 0, 0.0
        for wav, reference in conversations:
            result, seconds, _ = await run(wav)
            hypothesis = annotation(result.diarization)
            pairs.append((reference, hypothesis))
            right += len(hypothesis.labels()) == len(reference.labels())
            total += seconds
        figures["conversations_der"] = error_rate(pairs)
        figures["count_right"] = right / max(1, len(conversations))
        print(f"  {len(conversations)} generated conversations: DER {figures['conversations_der']:.4f}, "
              f"speaker count right {right}/{len(conversations)}, {total:.1f} s", flush=True)

        for label, path, audio_seconds, reference in long:
            result, seconds, peak = await run(path)
            der = error_rate([(reference, annotation(result.diarization))])
            figures[label] = (seconds, peak)
            print(f"  {label}: {seconds:.1f} s, RTF {seconds / audio_seconds:.4f}, peak RSS {peak:.0f} MiB, "
                  f"DER {der:.4f}, {len({t.speaker for t in result.diarization})} speakers", flush=True)
    finally:
        worker.terminate()
        worker.wait(30)
    return figures


def reflector_pipeline(path: Path, seconds: float) -> None:
    """Transcription from URL and /diarize of `path` at once through the whole service."""
    import httpx

    from app import tls
    from testing.service import running_service, strict_context

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    with tempfile.TemporaryDirectory(prefix="rg-bc-", dir="/tmp") as certs:
        tls.make_cert(Path(certs), "localhost", "IP:127.0.0.1")
        with running_service(Path(certs)) as service:
            def call(route: str) -> tuple[str, float, int]:
                with httpx.Client(base_url=service.base_url, verify=strict_context(Path(certs) / "ca.crt"),
                                  headers={"Authorization": f"Bearer {service.api_key}"},
                                  timeout=REFLECTOR_TIMEOUT) as http_client:
                    begun = time.perf_counter()
                    try:
                        if route == "transcription":
                            response = http_client.post("/v1/audio/transcriptions-from-url",
                                                        json={"audio_file_url": url, "language": "en"})
                        else:
                            response = http_client.post("/diarize", params={"audio_file_url": url, "timestamp": 0})
                        status = response.status_code
                    except httpx.TimeoutException:
                        status = 504
                    return route, time.perf_counter() - begun, status

            print(f"\n== Reflector file pipeline on the {seconds / 60:.0f}-minute file "
                  "(transcription and diarization in parallel, default settings)", flush=True)
            with ThreadPoolExecutor(2) as pool:
                for route, took, status in pool.map(call, ["transcription", "diarization"]):
                    verdict = "inside" if status == 200 and took < REFLECTOR_TIMEOUT else "NOT inside"
                    print(f"  {route}: HTTP {status} in {took:.1f} s (RTF {took / seconds:.4f}), {verdict} "
                          f"Reflector's {REFLECTOR_TIMEOUT:.0f} s", flush=True)
    server.shutdown()


def main() -> None:
    warnings.filterwarnings("ignore", message="'uem' was approximated")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipelines", nargs="*", default=["fast", "embedded"])
    parser.add_argument("--data", type=Path, default=Path("/tmp/rg-diar-bench"))
    parser.add_argument("--skip-long", action="store_true", help="no 10- and 60-minute files")
    parser.add_argument("--skip-reflector", action="store_true", help="no 1-hour Reflector file pipeline")
    args = parser.parse_args()
    from tune_diarization import load_reference, make_dataset

    print(f"{os.cpu_count()} CPUs visible; REFLECTOR_GPU_DEVICE={os.environ.get('REFLECTOR_GPU_DEVICE', 'auto')}")
    args.data.mkdir(parents=True, exist_ok=True)
    conversations = [(wav, load_reference(rttm)) for wav, rttm in make_dataset(args.data / "conversations")]
    long = [] if args.skip_long else long_files(args.data / "conversations")
    results = []
    with tempfile.TemporaryDirectory(prefix="rg-bd-", dir="/tmp") as scratch:
        for name in args.pipelines:
            results.append(asyncio.run(bench_pipeline(name, conversations, long, Path(scratch) / name)))
    if long and len(results) == 2:
        label = long[-1][0]
        (fast, fast_peak), (other, _) = results[0][label], results[1][label]
        print(f"\n{results[0]['pipeline']} vs {results[1]['pipeline']} on the {label}: {other / fast:.1f}x faster "
              f"({fast:.1f} s vs {other:.1f} s); {results[0]['pipeline']} peak RSS {fast_peak:.0f} MiB")
    if long and not args.skip_reflector:
        reflector_pipeline(long[-1][1], long[-1][2])


if __name__ == "__main__":
    main()
