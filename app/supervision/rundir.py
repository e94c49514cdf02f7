"""The run directory (``<state>/run``): every file the supervisor, the model workers and the
HTTP side share, named in one place.

- ``<kind>-<i>.sock``: replica ``i`` of a worker kind listens here (bound once its model loaded);
- ``<kind>-<i>.failed``: written by the supervisor while that replica is down after a crash;
- ``<kind>-<i>.restarts``: how often the supervisor restarted it (read by ``/metrics``);
- ``tls-cert.pem`` / ``tls-key.pem``: the validated pair Granian serves (copies the
  supervisor makes, so Granian never reads a half-written file);
- ``metrics/``: prometheus-client's multiprocess files of the Granian workers;
- ``granian-logging.json``: Granian's ``--log-config`` with ``REFLECTOR_GPU_LOG_FORMAT=json``.

Imports nothing but the settings, so any process may import it cheaply.
"""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings

RESTARTS_SUFFIX = ".restarts"


def socket_path(settings: Settings, kind: str, replica: int = 0) -> Path:
    """Where replica `replica` of the `kind` worker listens: ``<run>/<kind>-<replica>.sock``."""
    return settings.run_dir / f"{kind}-{replica}.sock"


def failed_marker(settings: Settings, kind: str, replica: int = 0) -> Path:
    """The file the supervisor writes while that replica is down after a crash."""
    return settings.run_dir / f"{kind}-{replica}.failed"


def write_restarts(settings: Settings, kind: str, replica: int, count: int) -> None:
    """Record that replica `replica` of `kind` was restarted `count` times (atomically)."""
    path = settings.run_dir / f"{kind}-{replica}{RESTARTS_SUFFIX}"
    path.with_suffix(".tmp").write_text(f"{count}\n")
    path.with_suffix(".tmp").replace(path)


def restart_counts(settings: Settings) -> dict[str, int]:
    """Restarts per worker kind, summed over its replicas' ``.restarts`` files."""
    counts: dict[str, int] = {}
    for path in settings.run_dir.glob(f"*{RESTARTS_SUFFIX}"):
        kind, _, number = path.name.removesuffix(RESTARTS_SUFFIX).rpartition("-")
        if not number.isdigit():
            continue
        try:
            counts[kind] = counts.get(kind, 0) + int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            continue
    return counts


def serving_cert(settings: Settings) -> Path:
    """The certificate chain Granian serves (the supervisor's validated copy)."""
    return settings.run_dir / "tls-cert.pem"


def serving_key(settings: Settings) -> Path:
    """The private key Granian serves (mode 0600)."""
    return settings.run_dir / "tls-key.pem"


def metrics_dir(settings: Settings) -> Path:
    """``<run>/metrics``: prometheus-client's multiprocess files, one set per Granian worker
    process (``PROMETHEUS_MULTIPROC_DIR``), made empty at each start."""
    return settings.run_dir / "metrics"


def granian_log_config(settings: Settings) -> Path:
    """Granian's logging configuration file (JSON lines), written by the supervisor."""
    return settings.run_dir / "granian-logging.json"
