"""The one settings object, read once from the environment.

Every environment variable the service reads is parsed here and nowhere else. `load()`
validates all of them and raises `SettingsError` listing every bad value with the
variable's name, so an operator fixes a start-up in one pass. Sizes are bytes, durations
seconds. The README's "Settings" table documents each variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

TlsMode = Literal["auto", "files", "self-signed", "off"]
Device = Literal["auto", "cpu", "cuda"]

GiB = 1024**3
IMAGE_CERTS_DIR = Path("/certs")  # the image's mount point, used when it holds server.pem
_T = TypeVar("_T")


class SettingsError(ValueError):
    """One or more environment variables are invalid; `problems` lists one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))
        self.problems = problems


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Typed, validated configuration of one service instance.

    Derived paths: `run_dir` (worker Unix sockets), `tmp_dir` (uploads and downloads in
    flight, deleted when their request ends), `cert_dir` (the generated self-signed pair).
    """

    apikey: str | None = None
    hf_token: str | None = None
    host: str = "0.0.0.0"
    port: int = 8443
    domains: tuple[str, ...] = ()
    tls: TlsMode = "auto"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_dir: Path | None = None
    state_dir: Path = Path("state")
    extra_ca: tuple[Path, ...] = ()
    open_routes: frozenset[str] = frozenset()
    http_workers: int = 1
    log_level: str = "INFO"

    max_upload_bytes: int = 1 * GiB
    max_download_bytes: int = 4 * GiB
    max_audio_seconds: float = 21600.0
    max_translate_chars: int = 20000
    queue_size: int = 32
    download_timeout: float = 60.0
    worker_start_timeout: float = 120.0

    models_dir: Path = Path("models")
    device: Device = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 0
    whisper_model: str = "tiny.en"
    whisper_beam_size: int = 5
    whisper_batch_size: int = 8
    diarization_model: str = "fast"
    diarization_device: Device | None = None
    diarization_step: float | None = None
    diarization_segmentation_batch_size: int | None = None  # None: the pipeline's own default
    diarization_embedding_batch_size: int | None = None
    translation_model: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def tmp_dir(self) -> Path:
        return self.state_dir / "tmp"

    @property
    def cert_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def is_loopback(self) -> bool:
        """True when the bind address only accepts local connections."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _int(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if number < minimum:
            raise ValueError(f"must be >= {minimum}")
        return number

    return parse


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    if not number > 0:
        raise ValueError("must be > 0")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError("must be > 0 and <= 1")
    return number


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return lowered

    return parse


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{path} is not a readable file")
    return path


def _existing_files(value: str) -> tuple[Path, ...]:
    return tuple(_existing_file(part) for part in _split(value))


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")
    return path


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every ``REFLECTOR_GPU_*`` variable (plus ``HF_TOKEN``).

    Unset or empty variables take the defaults of `Settings`. Raises `SettingsError`
    naming each variable whose value is invalid and why.
    """
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    problems: list[str] = []

    def take(name: str, field: str, parse: Callable[[str], _T] = str) -> None:  # type: ignore[assignment]
        raw = env.get(name, "").strip()
        if not raw:
            return
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            problems.append(f"{name}={raw!r}: {exc}")

    take("REFLECTOR_GPU_APIKEY", "apikey")
    take("HF_TOKEN", "hf_token")
    take("REFLECTOR_GPU_HOST", "host")
    take("REFLECTOR_GPU_PORT", "port", _int(1))
    take("REFLECTOR_GPU_DOMAIN", "domains", lambda v: tuple(_split(v)))
    take("REFLECTOR_GPU_TLS", "tls", _choice("auto", "files", "self-signed", "off"))
    take("REFLECTOR_GPU_TLS_CERT", "tls_cert", _existing_file)
    take("REFLECTOR_GPU_TLS_KEY", "tls_key", _existing_file)
    take("REFLECTOR_GPU_TLS_DIR", "tls_dir", _existing_dir)
    take("REFLECTOR_GPU_STATE_DIR", "state_dir", Path)
    take("REFLECTOR_GPU_EXTRA_CA", "extra_ca", _existing_files)
    take("REFLECTOR_GPU_OPEN_ROUTES", "open_routes", lambda v: frozenset(p.strip("/").lower() for p in _split(v)))
    take("REFLECTOR_GPU_HTTP_WORKERS", "http_workers", _int(1))
    take("REFLECTOR_GPU_LOG_LEVEL", "log_level", lambda v: _choice("debug", "info", "warning", "error")(v).upper())
    take("REFLECTOR_GPU_MAX_UPLOAD_BYTES", "max_upload_bytes", _int(1))
    take("REFLECTOR_GPU_MAX_DOWNLOAD_BYTES", "max_download_bytes", _int(1))
    take("REFLECTOR_GPU_MAX_AUDIO_SECONDS", "max_audio_seconds", _positive_float)
    take("REFLECTOR_GPU_MAX_TRANSLATE_CHARS", "max_translate_chars", _int(1))
    take("REFLECTOR_GPU_QUEUE_SIZE", "queue_size", _int(1))
    take("REFLECTOR_GPU_DOWNLOAD_TIMEOUT", "download_timeout", _positive_float)
    take("REFLECTOR_GPU_WORKER_START_TIMEOUT", "worker_start_timeout", _positive_float)
    take("REFLECTOR_GPU_MODELS_DIR", "models_dir", Path)
    take("REFLECTOR_GPU_DEVICE", "device", _choice("auto", "cpu", "cuda"))
    take("REFLECTOR_GPU_COMPUTE_TYPE", "compute_type", lambda v: v.lower())
    take("REFLECTOR_GPU_CPU_THREADS", "cpu_threads", _int(0))
    take("REFLECTOR_GPU_WHISPER_MODEL", "whisper_model")
    take("REFLECTOR_GPU_WHISPER_BEAM_SIZE", "whisper_beam_size", _int(1))
    take("REFLECTOR_GPU_WHISPER_BATCH_SIZE", "whisper_batch_size", _int(1))
    take("REFLECTOR_GPU_DIARIZATION_MODEL", "diarization_model")
    take("REFLECTOR_GPU_DIARIZATION_DEVICE", "diarization_device", _choice("auto", "cpu", "cuda"))
    take("REFLECTOR_GPU_DIARIZATION_STEP", "diarization_step", _fraction)
    take("REFLECTOR_GPU_DIARIZATION_SEGMENTATION_BATCH_SIZE", "diarization_segmentation_batch_size", _int(1))
    take("REFLECTOR_GPU_DIARIZATION_EMBEDDING_BATCH_SIZE", "diarization_embedding_batch_size", _int(1))
    take("REFLECTOR_GPU_TRANSLATION_MODEL", "translation_model")

    if "tls_dir" not in values and IMAGE_CERTS_DIR.joinpath("server.pem").is_file():
        values["tls_dir"] = IMAGE_CERTS_DIR
    tls = values.get("tls", "auto")
    has_cert, has_key = "tls_cert" in values, "tls_key" in values
    if has_cert != has_key:
        problems.append("REFLECTOR_GPU_TLS_CERT and REFLECTOR_GPU_TLS_KEY must be set together")
    if tls == "files" and not (has_cert or "tls_dir" in values):
        problems.append(
            "REFLECTOR_GPU_TLS=files needs REFLECTOR_GPU_TLS_CERT and REFLECTOR_GPU_TLS_KEY, "
            "or REFLECTOR_GPU_TLS_DIR"
        )
    if problems:
        raise SettingsError(problems)
    return Settings(**values)  # type: ignore[arg-type]
