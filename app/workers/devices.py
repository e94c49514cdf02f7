"""Choosing the device and compute type for CTranslate2 engines (Whisper, translation).

`REFLECTOR_GPU_DEVICE=auto` picks CUDA when CTranslate2 sees a GPU, else the CPU.
`REFLECTOR_GPU_COMPUTE_TYPE=auto` picks ``float16`` on CUDA and ``int8`` on the CPU
(the faster-whisper project's recommended pairs).
"""

from __future__ import annotations

from app.settings import Settings


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
