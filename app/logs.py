"""Logging set-up shared by the entrypoint, the HTTP workers and the model workers.

Two formats (``REFLECTOR_GPU_LOG_FORMAT``), the same fields in both:
- ``text``: ``time level logger message`` plus `` request_id=...`` inside a request;
- ``json``: one JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
  ``message``, ``request_id`` (inside a request), the fields a caller passed as
  ``extra={"fields": {...}}`` (e.g. a job's progress), and ``exception`` (the traceback).

The request id lives in a context variable (`request_id`), set by
`app.http.request_id.RequestIdMiddleware` for the duration of one HTTP request, so every line
logged while handling it carries the id, whichever logger wrote it. Nothing here logs
transcript text, request bodies or query strings: callers pass only what an operator needs.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys
from typing import Any

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The id of the HTTP request being handled in this context (None outside a request)."""


class _RequestIdFilter(logging.Filter):
    """Copies the context's request id onto every record as ``record.request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """``time level logger message [key=value ...] [request_id=...]``; `fields` as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += "".join(f" {key}={value}" for key, value in fields.items())
        rid = getattr(record, "request_id", None)
        return line if rid is None else f"{line} request_id={rid}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            entry["request_id"] = rid
        fields = getattr(record, "fields", None)
        if fields:
            entry.update({key: value for key, value in fields.items() if key not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["exception"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send records of `level` and above to stderr, as `fmt` (``text`` or ``json``), in every process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # libraries' warnings become records in the same format
    for noisy in ("httpx", "httpcore", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def granian_log_config() -> dict[str, Any]:
    """A logging configuration for Granian's ``--log-config`` that writes its own lines
    (``Starting granian``, ``Listening at``, worker respawns) as `JsonFormatter` JSON on
    stderr, like every other line of the service with ``REFLECTOR_GPU_LOG_FORMAT=json``.
    Granian merges it over its defaults (the keys given replace its own)."""
    handler = {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    return {
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"console": handler, "access": handler},
    }
