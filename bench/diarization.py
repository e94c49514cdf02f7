"""Benchmark: the diarizer worker with the embedded default pipeline on this machine.

Starts the real worker process (``python -m app.workers.server diarizer``) once per
segmentation step, sends it the pyannote sample (30 s) and a 5-minute file (the sample
ten times over), and prints per step: the DER on the sample (collar 0, overlap scored),
the real-time factor (wall seconds per audio second) of each file, the worker's resident
memory after loading and its peak. Run with `make bench` or
``.venv/bin/python bench/diarization.py [--steps 0.1 0.2 0.5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import settings as settings_module  # noqa: E402
from app.audio.decode import decode_mono  # noqa: E402
from app.workers import client  # noqa: E402
from app.workers.diarizer import Diarization, DiarizeRequest  # noqa: E402
from tests.conftest import pyannote_sample_dir, write_wav  # noqa: E402
from tests.test_diarization import diarization_error_rate  # noqa: E402

REPEATS = 10  # the long file is the sample this many times over


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def run_step(step: float, files: list[tuple[str, Path, float]], state: Path) -> None:
    env = {**os.environ, "REFLECTOR_GPU_STATE_DIR": str(state), "REFLECTOR_GPU_DIARIZATION_STEP": str(step)}
    settings = settings_module.load(env)
    started = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-m", "app.workers.server", "diarizer"], cwd=ROOT, env=env)
    try:
        while await client.ping(settings, "diarizer") is None:
            if worker.poll() is not None:
                raise RuntimeError(f"the diarizer worker exited with {worker.returncode}")
            await asyncio.sleep(0.2)
        load_seconds = time.perf_counter() - started
        loaded_rss, _ = memory_mib(worker.pid)
        print(f"step {step}: worker ready in {load_seconds:.1f} s, RSS {loaded_rss:.0f} MiB")
        for name, path, seconds in files:
            started = time.perf_counter()
            result = await client.call(settings, "diarizer", DiarizeRequest(path=str(path)), Diarization)
            elapsed = time.perf_counter() - started
            turns = [{"start": t.start, "end": t.end, "speaker": t.speaker} for t in result.diarization]
            der = f", DER {diarization_error_rate(turns):.4f}" if name == "sample" else ""
            speakers = len({t["speaker"] for t in turns})
            print(f"  {name} ({seconds:.0f} s): {elapsed:.2f} s, RTF {elapsed / seconds:.4f}, {speakers} speakers{der}")
        rss, peak = memory_mib(worker.pid)
        print(f"  worker RSS {rss:.0f} MiB, peak {peak:.0f} MiB")
    finally:
        worker.terminate()
        worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=float, nargs="*", default=[0.1, 0.2, 0.5])
    args = parser.parse_args()
    sample = pyannote_sample_dir() / "sample.wav"
    print(f"{os.cpu_count()} CPUs visible; REFLECTOR_GPU_DEVICE={os.environ.get('REFLECTOR_GPU_DEVICE', 'auto')}")
    with tempfile.TemporaryDirectory(prefix="rg-bench-", dir="/tmp") as scratch:
        audio = decode_mono(sample)
        long_file = write_wav(Path(scratch) / "long.wav", np.tile(audio, REPEATS))
        files = [("sample", sample, len(audio) / 16000), ("5-minute file", long_file, REPEATS * len(audio) / 16000)]
        for step in args.steps:
            asyncio.run(run_step(step, files, Path(scratch) / f"state-{step}"))


if __name__ == "__main__":
    main()
