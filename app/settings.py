"""The one settings object, read once from the environment.

Every environment variable the service reads is parsed here and nowhere else. `load()`
validates all of them and raises `SettingsError` listing every bad value with the
variable's name, so an operator fixes a start-up in one pass. Sizes are bytes, durations
seconds. docs/settings.md documents each variable.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

TlsMode = Literal["auto", "files", "self-signed", "acme", "off"]
Device = Literal["auto", "cpu", "cuda"]
MetricsAccess = Literal["key", "open", "off"]
LogFormat = Literal["text", "json"]

GiB = 1024**3
DEFAULT_QUEUE_AUDIO_SECONDS = {"cpu": 7200.0, "cuda": 86400.0}
DEFAULT_WHISPER_BATCH = {"cpu": 2, "cuda": 8}
MAX_PORT = 65535  # TCP ports are 16-bit
IMAGE_CERTS_DIR = Path("/certs")  # the image's mount point, used when it holds server.pem
# Let's Encrypt's production directory (https://letsencrypt.org/docs/acme-protocol-updates/);
# staging, for trials: https://acme-staging-v02.api.letsencrypt.org/directory
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
REALTIME_BUFFER_BYTES = 120 * 24000 * 2  # 120 s of the Realtime API's 24-kHz 16-bit PCM
ACME_HTTP_PORT = 8080  # the plain-HTTP port's default with TLS=acme (the image publishes it as 80)
_T = TypeVar("_T")


class SettingsError(ValueError):
    """One or more environment variables are invalid; `problems` lists one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))
        self.problems = problems


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Typed, validated configuration of one service instance.

    Derived paths: `run_dir` (worker Unix sockets), `tmp_dir` (uploads and downloads in
    flight, deleted when their request ends), `process_tmp_dir` (the children's ``TMPDIR``),
    `cert_dir` (the generated self-signed pair), `acme_dir` (the ACME account key,
    certificate and key).

    API keys: `apikeys` from ``REFLECTOR_GPU_APIKEY`` (comma-separated) and the ``name key``
    lines of `apikeys_file`, re-read when it changes (`app.http.auth`). `http_port` 0 means no
    plain-HTTP listener.
    `orphan_seconds`: how long a recording's job goes on after its client left;
    `result_ttl_seconds` / `result_store_bytes`: the result store's bounds (`app.results`).
    Realtime sessions (`app.routes.realtime`): at most `realtime_sessions` open at once,
    each at most `realtime_max_seconds` long and closed after `realtime_idle_seconds`
    without audio, holding at most `realtime_buffer_bytes` of audio not yet committed.
    """

    apikeys: tuple[str, ...] = ()
    apikeys_file: Path | None = None
    hf_token: str | None = None
    host: str = "0.0.0.0"
    port: int = 8443
    domains: tuple[str, ...] = ()
    tls: TlsMode = "auto"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_dir: Path | None = None
    tls_client_ca: Path | None = None
    http_port: int = 0
    acme_directory: str = LETS_ENCRYPT_DIRECTORY
    acme_email: str | None = None
    acme_ca: Path | None = None
    state_dir: Path = Path("state")
    extra_ca: tuple[Path, ...] = ()
    open_routes: frozenset[str] = frozenset()
    http_workers: int = 1
    log_level: str = "INFO"
    log_format: LogFormat = "text"
    metrics: MetricsAccess = "key"

    max_upload_bytes: int = 1 * GiB
    max_download_bytes: int = 4 * GiB
    max_audio_seconds: float = 21600.0
    max_translate_chars: int = 20000
    queue_size: int = 32
    queue_audio_seconds: float | None = None
    download_timeout: float = 60.0
    worker_start_timeout: float = 30.0
    worker_hang_seconds: float = 300.0

    models_dir: Path = Path("models")
    device: Device = "auto"
    compute_type: str = "auto"
    cpu_threads: int = 0
    whisper_model: str = "auto"
    whisper_auto_fetch: str | None = None  # None: large-v3-turbo on CUDA, nothing on the CPU
    whisper_beam_size: int = 5
    whisper_batch_size: int | None = None
    whisper_live_packing: Literal["on", "off"] = "on"
    whisper_replicas: int = 1
    diarization_replicas: int = 1
    cuda_devices: tuple[int, ...] = ()
    diarization_model: str = "fast"
    diarization_device: Device | None = None
    diarization_step: float | None = None
    diarization_segmentation_batch_size: int | None = None  # None: the pipeline's own default
    diarization_embedding_batch_size: int | None = None
    known_speaker_threshold: float = 0.65  # cosine similarity; measured in bench/known_speakers.py
    translation_model: str = "auto"

    orphan_seconds: float = 1800.0
    result_ttl_seconds: float = 3600.0
    result_store_bytes: int = 2 * GiB

    realtime_sessions: int = 16
    realtime_max_seconds: float = 3600.0
    realtime_idle_seconds: float = 60.0
    realtime_buffer_bytes: int = REALTIME_BUFFER_BYTES

    def queue_audio_limit(self, device: str) -> float:
        """Seconds of queued audio a worker accepts before answering 503:
        ``REFLECTOR_GPU_QUEUE_AUDIO_SECONDS``, else 2 hours on the CPU and 24 on CUDA
        (what one replica of the default models gets through in about 10 minutes)."""
        if self.queue_audio_seconds is not None:
            return self.queue_audio_seconds
        return DEFAULT_QUEUE_AUDIO_SECONDS[device]

    def whisper_batch(self, device: str) -> int:
        """30-s pieces per Whisper batch: ``REFLECTOR_GPU_WHISPER_BATCH_SIZE``, else 8 on CUDA
        and 2 on the CPU (where batching saves no time and short batches let live pieces in
        sooner; see `app.workers.whisper.recording_lanes`)."""
        if self.whisper_batch_size is not None:
            return self.whisper_batch_size
        return DEFAULT_WHISPER_BATCH[device]

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def tmp_dir(self) -> Path:
        return self.state_dir / "tmp"

    @property
    def process_tmp_dir(self) -> Path:
        """Every child process's ``TMPDIR`` (onnxruntime's files, spooled uploads): under `tmp_dir`."""
        return self.tmp_dir / "processes"

    @property
    def cert_dir(self) -> Path:
        return self.state_dir / "tls"

    @property
    def acme_dir(self) -> Path:
        return self.state_dir / "acme"

    @property
    def auth_required(self) -> bool:
        """True when any API key is configured (keys from the environment or a keys file)."""
        return bool(self.apikeys) or self.apikeys_file is not None

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


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ValueError("must be a whole number") from None
        if number < minimum:
            raise ValueError(f"must be >= {minimum}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be <= {maximum}")
        return number

    return parse


def _finite_float(value: str) -> float:
    """A float that is a real number (``inf`` and ``nan`` parse as floats but are no limit)."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number


def _positive_float(value: str) -> float:
    number = _finite_float(value)
    if not number > 0:
        raise ValueError("must be > 0")
    return number


def _non_negative_float(value: str) -> float:
    number = _finite_float(value)
    if not number >= 0:
        raise ValueError("must be >= 0")
    return number


def _device_list(value: str) -> tuple[int, ...]:
    parts = _split(value)
    if not parts or not all(part.isdigit() for part in parts):
        raise ValueError("must be comma-separated GPU indexes such as 0,1")
    return tuple(int(part) for part in parts)


def _fraction(value: str) -> float:
    number = _finite_float(value)
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


def _https_url(value: str) -> str:
    if not value.startswith("https://") or len(value) <= len("https://"):
        raise ValueError("must be an https:// URL (an ACME directory)")
    return value


def _email(value: str) -> str:
    if "@" not in value or any(c.isspace() or c == "," for c in value):
        raise ValueError("must be one e-mail address")
    return value


def _acme_problems(values: dict[str, object]) -> list[str]:
    """What stops ``REFLECTOR_GPU_TLS=acme``: no names, IPs or wildcards (HTTP-01 can prove
    neither), no plain-HTTP port. Sets the plain-HTTP port's default for ACME."""
    problems = []
    domains = values.get("domains", ())
    if not domains:
        problems.append("REFLECTOR_GPU_TLS=acme needs REFLECTOR_GPU_DOMAIN (the DNS names to certify)")
    for name in domains:  # type: ignore[union-attr]
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if name.startswith("*") or "." not in name.strip("."):
                problems.append(
                    f"REFLECTOR_GPU_DOMAIN={name!r}: ACME over HTTP-01 needs a fully qualified DNS name, "
                    "no wildcard"
                )
        else:
            problems.append(
                f"REFLECTOR_GPU_DOMAIN={name!r}: REFLECTOR_GPU_TLS=acme certifies DNS names only, not IP "
                "addresses (use the self-signed certificate or `make cert` for an IP)"
            )
    values.setdefault("http_port", ACME_HTTP_PORT)
    if values["http_port"] == 0:
        problems.append("REFLECTOR_GPU_TLS=acme needs REFLECTOR_GPU_HTTP_PORT (HTTP-01 validation), not 0")
    return problems


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

    take("REFLECTOR_GPU_APIKEY", "apikeys", lambda v: tuple(_split(v)))
    take("REFLECTOR_GPU_APIKEYS_FILE", "apikeys_file", _existing_file)
    take("HF_TOKEN", "hf_token")
    take("REFLECTOR_GPU_HOST", "host")
    take("REFLECTOR_GPU_PORT", "port", _int(1, MAX_PORT))
    take("REFLECTOR_GPU_DOMAIN", "domains", lambda v: tuple(_split(v)))
    take("REFLECTOR_GPU_TLS", "tls", _choice("auto", "files", "self-signed", "acme", "off"))
    take("REFLECTOR_GPU_TLS_CERT", "tls_cert", _existing_file)
    take("REFLECTOR_GPU_TLS_KEY", "tls_key", _existing_file)
    take("REFLECTOR_GPU_TLS_DIR", "tls_dir", _existing_dir)
    take("REFLECTOR_GPU_TLS_CLIENT_CA", "tls_client_ca", _existing_file)
    take("REFLECTOR_GPU_HTTP_PORT", "http_port", _int(0, MAX_PORT))
    take("REFLECTOR_GPU_ACME_DIRECTORY", "acme_directory", _https_url)
    take("REFLECTOR_GPU_ACME_EMAIL", "acme_email", _email)
    take("REFLECTOR_GPU_ACME_CA", "acme_ca", _existing_file)
    take("REFLECTOR_GPU_STATE_DIR", "state_dir", Path)
    take("REFLECTOR_GPU_EXTRA_CA", "extra_ca", _existing_files)
    take("REFLECTOR_GPU_OPEN_ROUTES", "open_routes", lambda v: frozenset(p.strip("/").lower() for p in _split(v)))
    take("REFLECTOR_GPU_HTTP_WORKERS", "http_workers", _int(1))
    take("REFLECTOR_GPU_LOG_LEVEL", "log_level", lambda v: _choice("debug", "info", "warning", "error")(v).upper())
    take("REFLECTOR_GPU_LOG_FORMAT", "log_format", _choice("text", "json"))
    take("REFLECTOR_GPU_METRICS", "metrics", _choice("key", "open", "off"))
    take("REFLECTOR_GPU_MAX_UPLOAD_BYTES", "max_upload_bytes", _int(1))
    take("REFLECTOR_GPU_MAX_DOWNLOAD_BYTES", "max_download_bytes", _int(1))
    take("REFLECTOR_GPU_MAX_AUDIO_SECONDS", "max_audio_seconds", _positive_float)
    take("REFLECTOR_GPU_MAX_TRANSLATE_CHARS", "max_translate_chars", _int(1))
    take("REFLECTOR_GPU_QUEUE_SIZE", "queue_size", _int(1))
    take("REFLECTOR_GPU_QUEUE_AUDIO_SECONDS", "queue_audio_seconds", _positive_float)
    take("REFLECTOR_GPU_DOWNLOAD_TIMEOUT", "download_timeout", _positive_float)
    take("REFLECTOR_GPU_WORKER_START_TIMEOUT", "worker_start_timeout", _positive_float)
    take("REFLECTOR_GPU_WORKER_HANG_SECONDS", "worker_hang_seconds", _positive_float)
    take("REFLECTOR_GPU_MODELS_DIR", "models_dir", Path)
    take("REFLECTOR_GPU_DEVICE", "device", _choice("auto", "cpu", "cuda"))
    take("REFLECTOR_GPU_COMPUTE_TYPE", "compute_type", lambda v: v.lower())
    take("REFLECTOR_GPU_CPU_THREADS", "cpu_threads", _int(0))
    take("REFLECTOR_GPU_WHISPER_MODEL", "whisper_model")
    take("REFLECTOR_GPU_WHISPER_AUTO_FETCH", "whisper_auto_fetch", lambda v: "none" if v.lower() in ("none", "off") else v)
    take("REFLECTOR_GPU_WHISPER_BEAM_SIZE", "whisper_beam_size", _int(1))
    take("REFLECTOR_GPU_WHISPER_BATCH_SIZE", "whisper_batch_size", _int(1))
    take("REFLECTOR_GPU_WHISPER_LIVE_PACKING", "whisper_live_packing", _choice("on", "off"))
    take("REFLECTOR_GPU_WHISPER_REPLICAS", "whisper_replicas", _int(1))
    take("REFLECTOR_GPU_DIARIZATION_REPLICAS", "diarization_replicas", _int(1))
    take("REFLECTOR_GPU_CUDA_DEVICES", "cuda_devices", _device_list)
    take("REFLECTOR_GPU_DIARIZATION_MODEL", "diarization_model")
    take("REFLECTOR_GPU_DIARIZATION_DEVICE", "diarization_device", _choice("auto", "cpu", "cuda"))
    take("REFLECTOR_GPU_DIARIZATION_STEP", "diarization_step", _fraction)
    take("REFLECTOR_GPU_DIARIZATION_SEGMENTATION_BATCH_SIZE", "diarization_segmentation_batch_size", _int(1))
    take("REFLECTOR_GPU_DIARIZATION_EMBEDDING_BATCH_SIZE", "diarization_embedding_batch_size", _int(1))
    take("REFLECTOR_GPU_KNOWN_SPEAKER_THRESHOLD", "known_speaker_threshold", _fraction)
    take("REFLECTOR_GPU_TRANSLATION_MODEL", "translation_model", lambda v: "none" if v.lower() in ("none", "off") else v)
    take("REFLECTOR_GPU_ORPHAN_SECONDS", "orphan_seconds", _non_negative_float)
    take("REFLECTOR_GPU_RESULT_TTL_SECONDS", "result_ttl_seconds", _non_negative_float)
    take("REFLECTOR_GPU_RESULT_STORE_BYTES", "result_store_bytes", _int(0))
    take("REFLECTOR_GPU_REALTIME_SESSIONS", "realtime_sessions", _int(0))
    take("REFLECTOR_GPU_REALTIME_MAX_SECONDS", "realtime_max_seconds", _positive_float)
    take("REFLECTOR_GPU_REALTIME_IDLE_SECONDS", "realtime_idle_seconds", _positive_float)
    take("REFLECTOR_GPU_REALTIME_BUFFER_BYTES", "realtime_buffer_bytes", _int(48000))

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
    if tls == "off" and "tls_client_ca" in values:
        problems.append("REFLECTOR_GPU_TLS_CLIENT_CA needs TLS: it cannot be used with REFLECTOR_GPU_TLS=off")
    if tls == "off":
        values.pop("http_port", None)  # the main port is plain HTTP: no redirect listener
    elif tls == "acme":
        problems += _acme_problems(values)
    if values.get("http_port") and values.get("http_port") == values.get("port", Settings.port):
        problems.append("REFLECTOR_GPU_HTTP_PORT must differ from REFLECTOR_GPU_PORT")
    if problems:
        raise SettingsError(problems)
    return Settings(**values)  # type: ignore[arg-type]
