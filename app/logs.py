"""Logging set-up shared by the entrypoint, the HTTP workers and the model workers.

One line per event, ``time level logger message``. Nothing here logs transcript text,
request bodies or query strings: callers pass only what an operator needs.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    """Send records of `level` and above to stderr in one format for every process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
