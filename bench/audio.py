"""Benchmark: padding and mixdown of a 10-minute track pair, and an hour-long pad, with peak memory.

Prints, for two 10-minute WebM/Opus tracks recorded as a browser does (48 kHz mono, no
duration header):
- the audio worker alone (a real ``app.workers.server audio`` process reached through
  `app.workers.client`): seconds to pad each track, to mix the pair (offsets 0 s and
  90 s, MP3 at 16 kHz), and the worker's peak RSS (VmHWM) after those jobs;
- the same through the whole service over HTTPS with inputs and outputs on a real
  SeaweedFS (download + encode + presigned PUT);
- a fresh worker padding a 1-hour synthetic track (16 kHz mono WAV), its time and peak RSS,
  which must stay under 300 MB.

Run: ``.venv/bin/python bench/audio.py`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import settings as settings_module  # noqa: E402
from app.workers import client  # noqa: E402
from app.workers.messages import Encoded, MixdownRequest, PadRequest  # noqa: E402
from testing.audiogen import write_tone  # noqa: E402

TRACK_SECONDS = 600.0
HOUR_SECONDS = 3600.0
RSS_LIMIT_MB = 300


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


class Worker:
    """An audio worker process on its own state dir, as the supervisor starts it."""

    def __init__(self) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="rg-bench-", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFLECTOR_GPU_")}
        env["REFLECTOR_GPU_STATE_DIR"] = str(self.state)
        self.settings = settings_module.load(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.workers.server", "audio"], cwd=ROOT, env=env
        )

    def run(self, request) -> tuple[Encoded, float]:
        started = time.perf_counter()
        result = asyncio.run(client.call(self.settings, "audio", request, Encoded))
        return result, time.perf_counter() - started

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        subprocess.run(["rm", "-rf", str(self.state)], check=False)


def worker_figures(first: Path, second: Path, out: Path) -> None:
    worker = Worker()
    try:
        worker.run(PadRequest(source=str(first), output=str(out / "warm.webm"), start_time_seconds=0.1))
        for name, track in (("track A", first), ("track B", second)):
            result, seconds = worker.run(
                PadRequest(source=str(track), output=str(out / f"{name[-1]}.webm"), start_time_seconds=12.345)
            )
            print(
                f"worker pad {name} (10 min): {seconds:.2f} s  ({TRACK_SECONDS / seconds:.0f}x real time), "
                f"{result.size / 1e6:.1f} MB out"
            )
        result, seconds = worker.run(
            MixdownRequest(
                sources=[str(first), str(second)],
                output=str(out / "mix.mp3"),
                offsets_seconds=[0.0, 90.0],
                target_sample_rate=16000,
            )
        )
        print(
            f"worker mixdown of the pair (offsets 0/90 s, MP3 16 kHz): {seconds:.2f} s, "
            f"{result.duration_ms / 1000:.1f} s of audio, {result.size / 1e6:.1f} MB out"
        )
        print(f"worker peak RSS after these jobs: {peak_rss_mb(worker.process.pid):.0f} MB")
    finally:
        worker.stop()


def service_figures(first: Path, second: Path) -> None:
    import httpx

    from app import tls
    from testing.service import running_service, strict_context
    from testing.seaweedfs import SeaweedFS

    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        store = SeaweedFS(scratch_dir / "store")
        store.start()
        try:
            store.put("in/a.webm", first)
            store.put("in/b.webm", second)
            tls.make_cert(scratch_dir / "certs", "localhost", "IP:127.0.0.1")
            with running_service(scratch_dir / "certs") as service:
                http = httpx.Client(
                    base_url=service.base_url,
                    verify=strict_context(scratch_dir / "certs" / "ca.crt"),
                    headers={"Authorization": f"Bearer {service.api_key}"},
                    timeout=600,
                )
                for name in ("a", "b"):
                    started = time.perf_counter()
                    response = http.post(
                        "/pad",
                        json={
                            "track_url": store.presign_get(f"in/{name}.webm"),
                            "output_url": store.presign_put(f"out/{name}.webm"),
                            "start_time_seconds": 12.345,
                            "track_index": 0,
                        },
                    )
                    response.raise_for_status()
                    print(
                        f"HTTPS /pad track {name.upper()} (10 min, S3 in and out): "
                        f"{time.perf_counter() - started:.2f} s"
                    )
                started = time.perf_counter()
                response = http.post(
                    "/mixdown",
                    json={
                        "track_urls": [store.presign_get("in/a.webm"), store.presign_get("in/b.webm")],
                        "offsets_seconds": [0.0, 90.0],
                        "target_sample_rate": 16000,
                        "output_url": store.presign_put("out/mix.mp3"),
                    },
                )
                response.raise_for_status()
                print(
                    f"HTTPS /mixdown of the pair (S3 in and out): {time.perf_counter() - started:.2f} s, "
                    f"duration_ms {response.json()['duration_ms']}"
                )
                [pid] = service.child_pids("app.workers.server audio")
                print(f"service audio worker peak RSS: {peak_rss_mb(pid):.0f} MB")
                http.close()
        finally:
            store.stop()


def hour_figures(out: Path) -> None:
    hour = write_tone(out / "hour.wav", HOUR_SECONDS, 300, 16000, channels=1, amp=0.3)
    worker = Worker()
    try:
        result, seconds = worker.run(
            PadRequest(source=str(hour), output=str(out / "hour.webm"), start_time_seconds=30.0)
        )
        peak = peak_rss_mb(worker.process.pid)
    finally:
        worker.stop()
    verdict = "OK" if peak < RSS_LIMIT_MB else "OVER THE LIMIT"
    print(
        f"worker pad of a 1-hour track: {seconds:.1f} s ({HOUR_SECONDS / seconds:.0f}x real time), "
        f"{result.duration_ms / 1000:.1f} s out; peak RSS {peak:.0f} MB (limit {RSS_LIMIT_MB} MB: {verdict})"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        started = time.perf_counter()
        first = write_tone(out / "a.webm", TRACK_SECONDS, 220, 48000, channels=1, amp=0.3, kind="webm-live")
        second = write_tone(out / "b.webm", TRACK_SECONDS, 330, 48000, channels=1, amp=0.3, kind="webm-live")
        print(f"generated two 10-minute WebM/Opus tracks in {time.perf_counter() - started:.1f} s")
        worker_figures(first, second, out)
        service_figures(first, second)
        hour_figures(out)


if __name__ == "__main__":
    main()
