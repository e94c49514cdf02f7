"""Models from a model hub: `auto`'s choice by device, and fetching against a loopback hub
(testing/hub.py) that serves the embedded weights under the hub names the service asks for.

The fetch tests run the real command (``python -m app.models fetch ...``) or the whole
service, each a process of its own that reads ``HF_ENDPOINT`` as a deployment would.
"""

from __future__ import annotations

import subprocess
import sys


from app import models, settings as settings_module
from app.models import hub as hub_module
from testing.service import ROOT
from testing.translation_models import marian_model  # noqa: F401 - fixture


def fetch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``entrypoint.py models fetch ARGS``, as the image runs it (`python -m app.models`)."""
    return subprocess.run(
        [sys.executable, "entrypoint.py", "models", "fetch", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )


# -- the decision ------------------------------------------------------------------------
def test_auto_serves_the_embedded_pair_on_the_cpu_and_fetches_large_v3_turbo_on_cuda(tmp_path, monkeypatch):
    from app.workers import devices

    settings = settings_module.load({"REFLECTOR_GPU_MODELS_DIR": str(tmp_path)})
    monkeypatch.setattr(models, "_has_base", lambda settings: True)
    assert settings.whisper_model == "auto" and settings.translation_model == "auto"
    # The device decision itself, with CTranslate2 reporting one GPU, then none.
    import ctranslate2

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    assert devices.ct2_device(settings) == "cuda" and devices.ct2_compute_type(settings, "cuda") == "float16"
    cuda = models.whisper_choice(settings, devices.ct2_device(settings))
    assert cuda == models.WhisperChoice(("tiny.en", "base"), "large-v3-turbo")
    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    assert models.whisper_choice(settings, devices.ct2_device(settings)) == models.WhisperChoice(("tiny.en", "base"), None)
    # Once fetched and verified, CUDA serves it from the first start on, with no fetch.
    fetched = tmp_path / "whisper-large-v3-turbo"
    fetched.mkdir()
    assert models.whisper_choice(settings, "cuda") == cuda  # no manifest yet: not a model
    (fetched / hub_module.MANIFEST).write_text("{}")
    assert models.whisper_choice(settings, "cuda") == models.WhisperChoice(("large-v3-turbo",))
    # A named model is served alone; REFLECTOR_GPU_WHISPER_AUTO_FETCH sets what auto fetches.
    assert models.whisper_choice(settings_module.load({"REFLECTOR_GPU_WHISPER_MODEL": "tiny.en"}), "cuda").serve == ("tiny.en",)
    small = settings_module.load({"REFLECTOR_GPU_MODELS_DIR": str(tmp_path), "REFLECTOR_GPU_WHISPER_AUTO_FETCH": "small"})
    assert models.whisper_choice(small, "cpu").fetch == "small"
    off = settings_module.load({"REFLECTOR_GPU_MODELS_DIR": str(tmp_path), "REFLECTOR_GPU_WHISPER_AUTO_FETCH": "none"})
    assert models.whisper_choice(off, "cuda").fetch is None


def test_translation_auto_runs_only_where_it_can_fetch_or_has_its_model(tmp_path, monkeypatch):
    settings = settings_module.load({"REFLECTOR_GPU_MODELS_DIR": str(tmp_path)})
    monkeypatch.setattr(hub_module, "is_offline", lambda: True)
    assert not models.translation_is_configured(settings)
    monkeypatch.setattr(hub_module, "is_offline", lambda: False)
    assert models.translation_is_configured(settings)
    assert not models.translation_is_configured(settings_module.load({"REFLECTOR_GPU_TRANSLATION_MODEL": "none"}))
