"""The translator worker as its own process, spoken to over its Unix socket by the HTTP side's client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from app import settings as settings_module
from app.errors import BadRequest, Unavailable
from app.supervision.rundir import socket_path
from app.workers import client
from app.workers.messages import TranslateRequest, Translation
from testing.translation_models import m2m100_model  # noqa: F401


@pytest.fixture(scope="module")
def worker(m2m100_model, tmp_path_factory):
    """A running translator worker on the tiny M2M100 model; yields its settings."""
    state = tmp_path_factory.mktemp("state")
    env = {
        **os.environ,
        "REFLECTOR_GPU_STATE_DIR": str(state),
        "REFLECTOR_GPU_TRANSLATION_MODEL": str(m2m100_model),
        "REFLECTOR_GPU_DEVICE": "cpu",
        "REFLECTOR_GPU_CPU_THREADS": "1",
    }
    settings = settings_module.load(env)
    process = subprocess.Popen([sys.executable, "-m", "app.workers.server", "translator"], env=env)
    deadline = time.monotonic() + 60
    while not socket_path(settings, "translator").exists():
        assert process.poll() is None, "the translator worker exited while loading"
        assert time.monotonic() < deadline, "the translator worker did not come up in 60 s"
        time.sleep(0.05)
    yield settings
    process.terminate()
    assert process.wait(timeout=10) == 0
    assert not socket_path(settings, "translator").exists()


def test_worker_translates_and_reports_languages(worker):
    pong = asyncio.run(client.ping(worker, "translator"))
    assert pong is not None and pong.kind == "translator"
    assert pong.info["family"] == "m2m100" and "fr" in pong.info["target_languages"]
    request = TranslateRequest("Kalo mine rusa to vize. Ne ru sa!", "en", "fr")
    first = asyncio.run(client.call(worker, "translator", request, Translation))
    second = asyncio.run(client.call(worker, "translator", request, Translation))
    assert first.text and first.text != request.text and first == second and first.pieces == 2


def test_worker_errors_come_back_as_service_errors(worker):
    with pytest.raises(BadRequest, match="cannot translate into Luo"):
        asyncio.run(client.call(worker, "translator", TranslateRequest("x", "en", "luo"), Translation))


def test_unconfigured_translator_is_unavailable_with_instructions(tmp_path):
    settings = settings_module.load({"REFLECTOR_GPU_MODELS_DIR": str(tmp_path), "REFLECTOR_GPU_STATE_DIR": str(tmp_path)})
    with pytest.raises(Unavailable, match="python -m app.models fetch translation"):
        asyncio.run(client.call(settings, "translator", TranslateRequest("x"), Translation))
