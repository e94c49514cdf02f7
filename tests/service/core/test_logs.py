"""Logs: the JSON format, request ids on every line of a request, progress lines of long jobs."""

from __future__ import annotations

import json
from pathlib import Path


def test_every_line_of_the_service_is_json_granians_own_included(cert_dir: Path) -> None:
    from testing.service import running_service

    with running_service(cert_dir, REFLECTOR_GPU_LOG_FORMAT="json", REFLECTOR_GPU_WHISPER_MODEL="tiny.en") as service:
        assert service.client().get("/v1/models").status_code == 200
        text = service.log()
    lines = [line for line in text.splitlines() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, not_json[:5]
    loggers = {json.loads(line)["logger"] for line in lines}
    assert "_granian" in loggers  # "Starting granian", "Listening at": Granian's own lines
