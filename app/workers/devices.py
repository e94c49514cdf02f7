"""Choosing the device, GPU, thread count and compute type for a worker's engine.

`REFLECTOR_GPU_DEVICE=auto` picks CUDA when CTranslate2 sees a GPU, else the CPU.
`REFLECTOR_GPU_COMPUTE_TYPE=auto` picks ``float16`` on CUDA and ``int8`` on the CPU
(the faster-whisper project's recommended pairs). A worker process is one *replica* of its
kind (`set_replica`, called once at start by `app.workers.server`): replica ``i`` runs on
GPU ``REFLECTOR_GPU_CUDA_DEVICES[i % n]`` (default: every visible GPU in turn), and on the
CPU the replicas of a kind share the cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from app.settings import Settings

_T = TypeVar("_T")

_replica = 0


def set_replica(index: int) -> None:
    """Record which replica (0-based) of its kind this worker process is."""
    global _replica
    _replica = index


def cuda_device_index(settings: Settings) -> int:
    """The CUDA device this replica uses: ``REFLECTOR_GPU_CUDA_DEVICES[replica % n]``, else
    ``replica % <visible GPUs>`` (0 when CTranslate2 sees none)."""
    if settings.cuda_devices:
        return settings.cuda_devices[_replica % len(settings.cuda_devices)]
    import ctranslate2

    count = ctranslate2.get_cuda_device_count()
    return _replica % count if count else 0


def cpu_threads(settings: Settings, replicas: int) -> int:
    """Threads per model on the CPU: ``REFLECTOR_GPU_CPU_THREADS`` when set, else the
    machine's cores divided among the kind's `replicas` (at least 1)."""
    if settings.cpu_threads > 0:
        return settings.cpu_threads
    return max(1, (os.cpu_count() or 1) // max(1, replicas))


def ct2_device(settings: Settings) -> str:
    """``"cuda"`` or ``"cpu"`` for a CTranslate2 model under `settings.device`."""
    if settings.device != "auto":
        return settings.device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def ct2_compute_type(settings: Settings, device: str, cuda_default: str = "float16") -> str:
    """The CTranslate2 compute type under `settings.compute_type` for `device`."""
    if settings.compute_type != "auto":
        return settings.compute_type
    return cuda_default if device == "cuda" else "int8"


def nice_this_thread(increment: int) -> None:
    """Raise the nice value of the calling thread only (Linux: nice is per thread, and a
    thread's children, such as a library's worker threads, inherit it). No-op elsewhere."""
    if increment <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + increment)
    except (AttributeError, OSError):
        pass


def in_niced_thread(increment: int, build: Callable[[], _T]) -> _T:
    """Run `build()` in a short-lived thread niced by `increment` and return its result, so
    the threads it creates (CTranslate2's model workers) run at that nice value."""
    result: dict[str, Any] = {}

    def run() -> None:
        nice_this_thread(increment)
        try:
            result["value"] = build()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=run, name="niced-build")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
