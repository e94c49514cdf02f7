"""Benchmark: a recording whose job outlives the client's time-out, and the client's retry.

For a 10-minute recording (the pyannote sample 20 times in a row, made with sox) and each of
from-URL transcription and ``/diarize``, prints: the time of the whole job for a patient
client; the time the first, impatient client waited (its time-out, a third of the job, as
Reflector's 600 s is for a recording too long for this host); the time its retry took
(another query string, so another presigned URL); the time of one more retry answered from
the store; and the model work done (jobs the worker ran, each counted once from start to
end), against what cancel-on-disconnect would do (every try cut off at the time-out, no
result). Run: ``.venv/bin/python bench/retries.py [transcription|diarize ...]``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import tls  # noqa: E402
from testing.service import (  # noqa: E402
    WorkerWatch,  # noqa: E402
    pyannote_sample_dir,
    running_service,
    serve_audio,
)

REPEATS = 20  # 20 x 30 s = 10 minutes
TRIES = 4  # Reflector's first try and 3 retries


def main(routes: list[str]) -> None:
    directory = Path(tempfile.mkdtemp(prefix="rg-bench-"))
    recording = directory / "ten-minutes.wav"
    subprocess.run(["sox", *[str(pyannote_sample_dir() / "sample.wav")] * REPEATS, str(recording)], check=True)
    kinds = {"transcription": "whisper", "diarize": "diarizer"}

    def send(client: httpx.Client, route: str, query: str, offset: float) -> httpx.Response:
        if route == "transcription":
            return client.post(
                "/v1/audio/transcriptions-from-url", json={"audio_file_url": f"{url}?{query}", "timestamp_offset": offset}
            )
        return client.post("/diarize", params={"audio_file_url": f"{url}?{query}", "timestamp": offset})

    certs = directory / "certs"
    certs.mkdir()
    tls.make_cert(certs, "localhost", "IP:127.0.0.1")
    with serve_audio({"ten-minutes.wav": recording}) as audio, running_service(certs) as service:
        url = f"{audio.url}/ten-minutes.wav"
        patient = service.client(timeout=3600)
        for route in routes:
            with WorkerWatch(service, kinds[route]) as watch:
                started = time.monotonic()
                assert send(patient, route, "sig=full", 1.0).status_code == 200
                full = time.monotonic() - started
                full_runs = watch.model_runs()

                impatient = service.client(timeout=httpx.Timeout(60.0, read=full / 3))
                started = time.monotonic()
                try:
                    send(impatient, route, "sig=first", 2.0)
                    raise SystemExit("the first request did not time out")
                except httpx.ReadTimeout:
                    first = time.monotonic() - started
                started = time.monotonic()
                retry_response = send(patient, route, "sig=retry", 2.0)
                retry = time.monotonic() - started
                assert retry_response.status_code == 200, retry_response.text
                started = time.monotonic()
                assert send(patient, route, "sig=again", 2.0).status_code == 200
                stored = time.monotonic() - started
                runs = watch.model_runs() - full_runs
            print(f"{route}, {REPEATS * 30 / 60:.0f}-minute recording:")
            print(f"  whole job, patient client        {full:7.1f} s  (model runs: {full_runs})")
            print(f"  first request, timed out         {first:7.1f} s")
            print(f"  its retry (attached to the job)  {retry:7.1f} s  -> first + retry = {first + retry:.1f} s")
            print(f"  another retry (from the store)   {stored:7.2f} s")
            print(f"  model runs for time-out + retries: {runs} (one job, {full:.0f} s of work, one result)")
            print(
                f"  cancel-on-disconnect instead: {TRIES} runs cut off at {first:.0f} s = "
                f"{TRIES * first:.0f} s of model work, no result"
            )
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["transcription", "diarize"])
