"""Benchmark: many requests on one host, in one run on the embedded tiny.en.

Prints, in this order (the machine's speed varies from day to day, so every comparison is
made within this run and given as a ratio):

1. one 30-s request in-process: faster-whisper's own `BatchedInferencePipeline.transcribe`
   (what the worker ran before the scheduler) against the scheduler's engine, alternated;
2. throughput over HTTPS: 4 from-url requests of the 30-s pyannote sample one after
   another, then 4 and 8 at once (audio seconds per wall second, and the ratio to serial);
3. the WER of the sample transcribed alone and batched with other requests;
4. the latency of a 2-s live clip upload when idle, and while a 10-minute recording is
   being transcribed and diarized (as Reflector's file pipeline does: both at once);
5. the peak resident memory of the whole process tree (sampled every 0.2 s).

Run with `make bench` or ``.venv/bin/python bench/concurrency.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from app import settings as settings_module  # noqa: E402
from app import tls  # noqa: E402
from app.audio.decode import decode_mono  # noqa: E402
from testing.service import pyannote_sample_dir, running_service, serve_audio, write_wav  # noqa: E402

SAMPLE_SECONDS = 30.0


def normalise(text: str) -> list[str]:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text.lower())).split()


def wer(words: list[str], reference: list[str]) -> float:
    import jiwer

    return jiwer.wer(" ".join(reference), " ".join(words))


def reference_words() -> list[str]:
    lines = (pyannote_sample_dir() / "sample.stm").read_text().splitlines()
    return normalise(" ".join(line.split(None, 5)[5] for line in lines if line.strip()))


class TreeMemory:
    """Samples the summed VmRSS of a process and all its descendants; `peak_mib`."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mib, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            total = 0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                except OSError:
                    pass
            self.peak_mib = max(self.peak_mib, total / 1024)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


def in_process(sample: Path, runs: int) -> None:
    import threading as th

    from faster_whisper import BatchedInferencePipeline

    from app.workers.messages import TranscribeRequest
    from app.workers.whisper import WhisperEngine

    settings = settings_module.load({"REFLECTOR_GPU_MODELS_DIR": str(ROOT / "models"), "REFLECTOR_GPU_WHISPER_MODEL": "tiny.en"})
    engine = WhisperEngine(settings)
    pipeline = BatchedInferencePipeline(engine.models[0].live)
    audio = decode_mono(sample)

    def plain() -> None:
        segments, _ = pipeline.transcribe(
            audio, language="en", beam_size=settings.whisper_beam_size, batch_size=8,
            word_timestamps=True, vad_filter=True, without_timestamps=False,
        )
        list(segments)

    def scheduled() -> None:
        engine.handle(TranscribeRequest(path=str(sample), language="en"), th.Event())

    plain(), scheduled()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "scheduled": []}
    for _ in range(runs):
        for name, call in (("plain", plain), ("scheduled", scheduled)):
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    p, s = statistics.median(times["plain"]), statistics.median(times["scheduled"])
    print(f"1. one 30-s request in-process (median of {runs}): faster-whisper pipeline {p:.2f} s, "
          f"scheduler {s:.2f} s, ratio {s / p:.2f}")
    engine.scheduler.stop()


_offsets = iter(range(1, 1_000_000))


def from_url(client: httpx.Client, url: str) -> httpx.Response:
    """A from-URL request with an offset of its own, so the result store (which answers a
    repeated request from its first run) never stands in for the model."""
    body = {"audio_file_url": url, "timestamp_offset": float(next(_offsets))}
    response = client.post("/v1/audio/transcriptions-from-url", json=body)
    response.raise_for_status()
    return response


def upload(client: httpx.Client, data: bytes) -> float:
    started = time.perf_counter()
    response = client.post("/v1/audio/transcriptions", files={"file": ("clip.wav", data, "audio/wav")})
    response.raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repeats of the in-process comparison")
    parser.add_argument("--recording-minutes", type=float, default=10.0)
    args = parser.parse_args()
    sample = pyannote_sample_dir() / "sample.wav"
    reference = reference_words()
    in_process(sample, args.runs)

    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as stack:
        work_dir = Path(work)
        audio = decode_mono(sample)
        copies = max(1, round(args.recording_minutes * 60 / SAMPLE_SECONDS))
        recording = write_wav(work_dir / "recording.wav", np.tile(audio, copies))
        clip = write_wav(work_dir / "clip.wav", audio[int(6.5 * 16000): int(8.5 * 16000)]).read_bytes()
        source = stack.enter_context(serve_audio({"sample.wav": sample, "recording.wav": recording}))
        certs = work_dir / "certs"
        certs.mkdir()
        tls.make_cert(certs, "localhost", "IP:127.0.0.1")
        with running_service(certs) as service:
            memory = TreeMemory(service.process.pid)
            client = service.client(timeout=900)
            sample_url = f"{source.url}/sample.wav"
            from_url(client, sample_url)  # warm-up
            upload(client, clip)

            started = time.perf_counter()
            serial = [from_url(client, sample_url) for _ in range(4)]
            serial_rate = 4 * SAMPLE_SECONDS / (time.perf_counter() - started)
            print(f"2. serial, 4 requests one after another: {serial_rate:.1f} audio s per s")
            batched_words: list[list[str]] = []
            for count in (4, 8):
                with concurrent.futures.ThreadPoolExecutor(count) as pool:
                    started = time.perf_counter()
                    responses = list(pool.map(lambda _: from_url(service.client(timeout=900), sample_url), range(count)))
                    rate = count * SAMPLE_SECONDS / (time.perf_counter() - started)
                batched_words += [normalise(r.json()["text"]) for r in responses]
                print(f"   {count} at once: {rate:.1f} audio s per s, {rate / serial_rate:.2f}x serial")

            alone = wer(normalise(serial[0].json()["text"]), reference)
            batched = max(wer(words, reference) for words in batched_words)
            print(f"3. WER of the sample: alone {alone:.3f}, batched with others (worst of 12) {batched:.3f}, "
                  f"difference {batched - alone:+.3f}")

            idle = statistics.median(upload(client, clip) for _ in range(3))
            recording_url = f"{source.url}/recording.wav"
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                started = time.perf_counter()
                transcription = pool.submit(from_url, service.client(timeout=900), recording_url)
                diarization = pool.submit(
                    lambda: service.client(timeout=900).post(
                        "/diarize", params={"audio_file_url": recording_url, "timestamp": 0.5}
                    )
                )
                busy = []  # a clip every 4 s while either job runs, 12 at most
                while not (transcription.done() and diarization.done()) and len(busy) < 12:
                    time.sleep(4)
                    busy.append(upload(client, clip))
                transcribed = transcription.result().json()
                transcription_s = time.perf_counter() - started
                diarization.result().raise_for_status()
                diarization_s = time.perf_counter() - started
            worst = max(busy) if busy else float("nan")
            print(f"4. 2-s clip: idle {idle:.2f} s; during a {args.recording_minutes:g}-minute recording "
                  f"(transcription {transcription_s:.0f} s, diarization {diarization_s:.0f} s, "
                  f"{len(transcribed['words'])} words): clips {', '.join(f'{b:.2f}' for b in busy)} s, "
                  f"worst {worst:.2f} s = {worst / idle:.2f}x idle (bar: 2x idle + 1 s = {2 * idle + 1:.2f} s)")
            print(f"5. peak resident memory of the process tree: {memory.stop():.0f} MiB")


if __name__ == "__main__":
    main()
