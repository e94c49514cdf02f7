"""Benchmark: how many live meetings one host carries, as Reflector's live pipeline sends them.

Reflector cuts every running meeting into chunks of 256 WebRTC frames (5.12 s) and posts
each one, as it completes, to ``/v1/audio/transcriptions`` with the OpenAI SDK
(``verbose_json``, word timestamps, a 90-s time-out). Here N simulated meetings do the same
with real speech (the pyannote sample, 30 s, read in a loop from a different place by each
meeting, so chunks in flight at once hold different speech), starts staggered over one chunk
period, for `--step-seconds` (30) per step, on a ladder of N. A step *holds* when every
chunk answers 200 and the 95th percentile of latency is at most 3 s. Prints, in order:

1. per step: median, p95 and max latency (s), non-200 answers, held or not; the largest N
   that held;
2. the WER of live chunks: 16 tilings of the sample into chunks (cut at different offsets,
   each tiling covering the whole sample, so the sample's reference text scores it),
   decoded in-process by this checkout's engine alone, batched 4 at a time (separate
   windows) and packed 4 to a window (`PIECES_PER_WINDOW`: one encoder pass, a decoder
   row each), 4 chunks of different speech at a time; mean and
   median over tilings, and the difference to alone;
3. while a `--recording-minutes` (10) recording is transcribed from a URL at the same time
   as each step: the same ladder, and the recording's time against its time alone.

``--compare PATH`` also starts the service of another checkout (e.g. a worktree of the
base branch), ``--variant NAME:VAR=VALUE`` this checkout with other settings (e.g.
``batched:REFLECTOR_GPU_WHISPER_LIVE_PACKING=off``), and every step runs on each of them
right before this one, so all are measured in the same minute; figures print side by side. The machine's other load distorts timings: the
load average is printed with every step.

Run with `make bench` or ``.venv/bin/python bench/live_meetings.py [--compare PATH]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx
import numpy as np
import openai
from concurrency import from_url, normalise, reference_words, wer

from app import tls
from app.audio.decode import decode_mono
from app.workers.whisper import PIECES_PER_WINDOW
from testing.service import (
    Service,
    pyannote_sample_dir,
    running_service,
    serve_audio,
    strict_context,
    write_wav,
)

SAMPLE_RATE = 16000
CHUNK_SECONDS = 5.12  # Reflector's AudioChunkerFramesProcessor: 256 frames of 20 ms
P95_BAR_SECONDS = 3.0
CLIENT_TIMEOUT_SECONDS = 90.0  # Reflector's live client
TILINGS = 16


def wav_bytes(samples: np.ndarray, work: Path) -> bytes:
    """16-bit PCM WAV bytes of mono float `samples` (16 kHz)."""
    path = write_wav(work / f"chunk-{threading.get_ident()}.wav", samples)
    return path.read_bytes()


def looped(audio: np.ndarray, start: float, seconds: float) -> np.ndarray:
    """`seconds` of `audio` from `start` s, reading it in a loop."""
    first = round(start * SAMPLE_RATE) % len(audio)
    count = round(seconds * SAMPLE_RATE)
    return np.take(audio, np.arange(first, first + count), mode="wrap")


def sdk_for(service: Service) -> openai.OpenAI:
    """The OpenAI SDK as Reflector configures it, without its retries (so failures count)."""
    http_client = httpx.Client(
        verify=strict_context(service.ca_file), timeout=CLIENT_TIMEOUT_SECONDS,
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
    )
    return openai.OpenAI(api_key=service.api_key, base_url=service.base_url + "/v1", http_client=http_client, max_retries=0)


@dataclass
class Answer:
    status: int | str  # HTTP status, or the failure's name
    seconds: float
    text: str = ""


def post(sdk: openai.OpenAI, data: bytes) -> Answer:
    """One live chunk, as Reflector posts it."""
    started = time.perf_counter()
    try:
        result = sdk.audio.transcriptions.create(
            file=("chunk.wav", data, "audio/wav"), model="whisper-1", response_format="verbose_json",
            language="en", timestamp_granularities=["word"],
        )
    except openai.APIStatusError as exc:
        return Answer(exc.status_code, time.perf_counter() - started)
    except openai.APIError as exc:
        return Answer(type(exc).__name__, time.perf_counter() - started)
    return Answer(200, time.perf_counter() - started, " ".join(word.word for word in result.words or []))


@dataclass
class Step:
    meetings: int
    answers: list[Answer] = field(default_factory=list)
    load: float = 0.0
    recording_seconds: float | None = None

    @property
    def latencies(self) -> list[float]:
        return sorted(answer.seconds for answer in self.answers)

    @property
    def failures(self) -> int:
        return sum(answer.status != 200 for answer in self.answers)

    @property
    def p95(self) -> float:
        values = self.latencies
        return values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]

    @property
    def held(self) -> bool:
        return self.failures == 0 and self.p95 <= P95_BAR_SECONDS

    def line(self) -> str:
        values = self.latencies
        return (f"median {statistics.median(values):5.2f}  p95 {self.p95:5.2f}  max {values[-1]:5.2f}  "
                f"non-200 {self.failures:2d}/{len(values):3d}  {'held' if self.held else 'FAILED'}")


class Meetings:
    """Meetings posting chunks of `audio` to one service on a fixed clock (open loop: a
    chunk is posted when it is complete, whether or not the previous one was answered)."""

    def __init__(self, service: Service, audio: np.ndarray, work: Path) -> None:
        self.sdk = sdk_for(service)
        self.audio = audio
        self.work = work

    def chunk(self, meetings: int, meeting: int, index: int) -> bytes:
        """Chunk `index` of `meeting` out of `meetings`: meeting m reads the sample from
        m/meetings of its length on, so meetings at once hold different speech."""
        start = meeting * len(self.audio) / SAMPLE_RATE / meetings + index * CHUNK_SECONDS
        return wav_bytes(looped(self.audio, start, CHUNK_SECONDS), self.work)

    def run(self, meetings: int, seconds: float, busy=lambda: False, longest: float = 240.0) -> Step:
        """Run `meetings` meetings, starts staggered over one chunk period, for `seconds`
        and as long as `busy()` holds (`longest` s at most), then wait for every answer."""
        step = Step(meetings, load=os.getloadavg()[0])
        futures = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=256) as pool:
            started = time.perf_counter()
            for index in itertools.count():
                begins = [meeting * CHUNK_SECONDS / meetings + index * CHUNK_SECONDS for meeting in range(meetings)]
                if begins[0] >= seconds and (not busy() or begins[0] >= longest):
                    break
                for meeting, begin in enumerate(begins):
                    data = self.chunk(meetings, meeting, index)
                    time.sleep(max(0.0, started + begin + CHUNK_SECONDS - time.perf_counter()))
                    futures.append(pool.submit(post, self.sdk, data))
            step.answers = [future.result() for future in futures]
        return step


@dataclass
class Host:
    """One service under test: its name, its meetings, the recording's URL and idle time."""

    name: str
    service: Service
    meetings: Meetings
    recording_alone: float = 0.0
    steps: list[Step] = field(default_factory=list)
    loaded_steps: list[Step] = field(default_factory=list)


def recording_time(service: Service, url: str) -> float:
    started = time.perf_counter()
    from_url(service.client(timeout=1800), url)
    return time.perf_counter() - started


def ladder(hosts: list[Host], rungs: list[int], seconds: float, recording_url: str | None, every: bool) -> None:
    """Each rung on every host still holding, one host right after the other; a host
    leaves the ladder at its first failed rung (unless `every`)."""
    label = "with the recording" if recording_url else "live only"
    climbing = list(hosts)
    for meetings in rungs:
        for host in list(climbing):
            recording: concurrent.futures.Future | None = None
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                if recording_url:
                    recording = pool.submit(recording_time, host.service, recording_url)
                # With a recording, meetings go on until it is done, so it runs under load throughout.
                step = host.meetings.run(meetings, seconds, busy=lambda job=recording: job is not None and not job.done())
                if recording is not None:
                    step.recording_seconds = recording.result()
            (host.loaded_steps if recording_url else host.steps).append(step)
            extra = ""
            if step.recording_seconds is not None:
                extra = (f"  recording {step.recording_seconds:5.1f} s = "
                         f"{step.recording_seconds / host.recording_alone:.2f}x alone")
            print(f"   [{label}] {host.name:>5} N={meetings:2d}: {step.line()}  (load {step.load:.1f}){extra}", flush=True)
            if not step.held and not every:
                climbing.remove(host)
            time.sleep(2.0)  # let queues drain
        if not climbing:
            break


def largest_held(steps: list[Step]) -> int:
    held = [step.meetings for step in steps if step.held]
    return max(held) if held else 0


def tilings(audio: np.ndarray) -> list[list[np.ndarray]]:
    """`TILINGS` cuttings of the whole sample into chunks of `CHUNK_SECONDS`, the t-th
    starting with a first chunk of t/TILINGS of a chunk (none for t = 0)."""
    total = len(audio) / SAMPLE_RATE
    result = []
    for t in range(TILINGS):
        cuts = [0.0] + ([t * CHUNK_SECONDS / TILINGS] if t else [])
        while cuts[-1] + CHUNK_SECONDS < total:
            cuts.append(cuts[-1] + CHUNK_SECONDS)
        cuts.append(total)
        result.append([audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] for a, b in itertools.pairwise(cuts)])
    return result


def live_wer(audio: np.ndarray, work: Path, together: int) -> dict[str, list[float]]:
    """Per tiling, the WER of its chunks' joined transcripts, decoded by this checkout's
    engine in-process three ways: each chunk alone, `together` chunks of different tilings
    in one batch of separate windows (batched), and the same sharing windows (packed). The
    chunks decoded together hold different speech (tiling t gives its chunk (k + t) mod K
    in round k), as different meetings' chunks do."""
    from app import settings as settings_module
    from app.workers.messages import TranscribeRequest
    from app.workers.whisper import WhisperEngine

    settings = settings_module.load({"REFLECTOR_GPU_MODELS_DIR": str(ROOT / "models"), "REFLECTOR_GPU_DEVICE": "cpu"})
    engine = WhisperEngine(settings)
    paths = [[write_wav(work / f"tiling{t}-{i}.wav", chunk) for i, chunk in enumerate(chunks)]
             for t, chunks in enumerate(tilings(audio))]
    reference = reference_words()
    scores: dict[str, list[float]] = {}
    for mode in ("alone", "batched", "packed"):
        engine.live_packing = mode == "packed"
        jobs = [[engine.prepare(TranscribeRequest(path=str(path), language="en", priority="live")) for path in row]
                for row in paths]
        groups = [[(t, i) for t in range(len(jobs)) for i in range(len(jobs[t]))]] if mode == "alone" else []
        if mode != "alone":
            for first in range(0, len(jobs), together):
                members = range(first, min(first + together, len(jobs)))
                for k in range(max(len(jobs[t]) for t in members)):
                    groups.append([(t, (k + t) % len(jobs[t])) for t in members])
        for group in groups:
            pieces = [piece for t, i in group for piece in jobs[t][i].pieces]
            batches = [[piece] for piece in pieces] if mode == "alone" else [pieces]
            for batch in filter(None, batches):
                for piece, output in zip(batch, engine._run_batch(batch, live=True)):
                    piece.job.outputs[piece.index] = output
        scores[mode] = [
            wer(normalise(" ".join(engine._finish(job).text for job in row)), reference) for row in jobs
        ]
    engine.scheduler.stop()
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ladder", default="2,4,6,8,10,12,14,16", help="meeting counts, comma-separated")
    parser.add_argument("--step-seconds", type=float, default=30.0)
    parser.add_argument("--recording-minutes", type=float, default=10.0, help="0: skip part 3")
    parser.add_argument("--no-wer", action="store_true", help="skip part 2")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another checkout to measure in the same run (repeatable)")
    parser.add_argument("--all-rungs", action="store_true", help="climb every rung, past a failure")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE[,VAR=VALUE]",
                        help="also this checkout with these settings, e.g. batched:REFLECTOR_GPU_WHISPER_LIVE_PACKING=off")
    args = parser.parse_args()
    rungs = [int(n) for n in args.ladder.split(",")]
    sample = pyannote_sample_dir() / "sample.wav"
    audio = decode_mono(sample)

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        copies = max(1, round(args.recording_minutes * 60 / (len(audio) / SAMPLE_RATE)))
        recording = write_wav(work / "recording.wav", np.tile(audio, copies))
        source = stack.enter_context(serve_audio({"recording.wav": recording}))
        certs = work / "certs"
        certs.mkdir()
        tls.make_cert(certs, "localhost", "IP:127.0.0.1")
        roots = [(path.resolve().name, path.resolve(), {}) for path in args.compare]
        for variant in args.variant:
            name, _, settings = variant.partition(":")
            roots.append((name, ROOT, dict(item.split("=", 1) for item in settings.split(",") if item)))
        roots.append(("new", ROOT, {}))
        hosts = []
        for name, root, env in roots:
            service = stack.enter_context(running_service(certs, root=root, **env))
            host = Host(name, service, Meetings(service, audio, work))
            post(host.meetings.sdk, host.meetings.chunk(1, 0, 1))  # warm-up
            hosts.append(host)
        print(f"live meetings: chunks of {CHUNK_SECONDS} s every {CHUNK_SECONDS} s per meeting, "
              f"{args.step_seconds:g} s a step; held = every answer 200 and p95 <= {P95_BAR_SECONDS:g} s; "
              f"hosts: {', '.join(f'{name} ({root} {env})' for name, root, env in roots)}; {os.cpu_count()} CPUs")

        print("1. live meetings alone on the host")
        ladder(hosts, rungs, args.step_seconds, None, args.all_rungs)
        for host in hosts:
            print(f"   {host.name}: largest N that held: {largest_held(host.steps)}")

        if not args.no_wer:
            scores = live_wer(audio, work, PIECES_PER_WINDOW)
            alone = statistics.mean(scores["alone"])
            print(f"2. WER of live chunks ({TILINGS} tilings of the sample, this checkout in-process, "
                  f"{PIECES_PER_WINDOW} chunks of different speech at a time), mean (median) over tilings: "
                  + "; ".join(f"{mode} {statistics.mean(v):.3f} ({statistics.median(v):.3f})" for mode, v in scores.items())
                  + "; difference to alone: "
                  + ", ".join(f"{mode} {statistics.mean(v) - alone:+.3f}" for mode, v in scores.items() if mode != "alone"))

        if args.recording_minutes > 0:
            url = f"{source.url}/recording.wav"
            for host in hosts:
                host.recording_alone = recording_time(host.service, url)
                print(f"3. {host.name}: a {args.recording_minutes:g}-minute recording alone: {host.recording_alone:.1f} s")
            ladder(hosts, rungs, args.step_seconds, url, args.all_rungs)
            for host in hosts:
                held = [s for s in host.loaded_steps if s.held]
                slowdown = f", recording {held[-1].recording_seconds / host.recording_alone:.2f}x alone there" if held else ""
                print(f"   {host.name}: largest N that held with the recording: {largest_held(host.loaded_steps)}{slowdown}")

        print("summary: largest N held (live only / with a recording): "
              + "; ".join(f"{h.name} {largest_held(h.steps)} / {largest_held(h.loaded_steps)}" for h in hosts))


if __name__ == "__main__":
    main()
