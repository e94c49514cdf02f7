"""Settings are read once from the environment and every bad value is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app import settings as settings_module
from testing.service import ROOT


def test_defaults_follow_the_decisions() -> None:
    s = settings_module.load({})
    assert (s.host, s.port, s.tls) == ("0.0.0.0", 8443, "auto")
    assert s.max_upload_bytes == 1024**3 and s.max_download_bytes == 4 * 1024**3
    assert s.max_audio_seconds == 21600 and s.max_translate_chars == 20000 and s.queue_size == 32
    assert s.apikeys == () and not s.auth_required and not s.is_loopback and s.http_port == 0


def test_every_bad_value_is_reported_by_name(tmp_path: Path) -> None:
    with pytest.raises(settings_module.SettingsError) as caught:
        settings_module.load(
            {
                "REFLECTOR_GPU_PORT": "http",
                "REFLECTOR_GPU_TLS": "maybe",
                "REFLECTOR_GPU_TLS_CERT": str(tmp_path / "missing.pem"),
                "REFLECTOR_GPU_DEVICE": "tpu",
                "REFLECTOR_GPU_QUEUE_SIZE": "0",
            }
        )
    text = str(caught.value)
    for name in ("REFLECTOR_GPU_PORT", "REFLECTOR_GPU_TLS=", "REFLECTOR_GPU_TLS_CERT", "REFLECTOR_GPU_DEVICE", "REFLECTOR_GPU_QUEUE_SIZE"):
        assert name in text


def test_lists_and_open_routes_are_parsed() -> None:
    s = settings_module.load({"REFLECTOR_GPU_DOMAIN": "gpu.local, 10.0.0.2", "REFLECTOR_GPU_OPEN_ROUTES": "/translate"})
    assert s.domains == ("gpu.local", "10.0.0.2")
    assert s.open_routes == frozenset({"translate"})


def test_entrypoint_refuses_bad_settings_and_missing_model(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin", "REFLECTOR_GPU_STATE_DIR": str(tmp_path)}
    bad = subprocess.run([sys.executable, "entrypoint.py"], cwd=ROOT, env={**base, "REFLECTOR_GPU_PORT": "-1"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "REFLECTOR_GPU_PORT" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "entrypoint.py"], cwd=ROOT, env={**base, "REFLECTOR_GPU_WHISPER_MODEL": "/nonexistent/model"},
        capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == 2 and "REFLECTOR_GPU_WHISPER_MODEL" in missing.stderr


def test_http_side_imports_no_model_library() -> None:
    code = (
        "import sys, app.http.main; app.http.main.create_app(); "
        "print(sorted(m for m in ('torch', 'faster_whisper', 'ctranslate2', 'pyannote', 'transformers', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("name", "value", "phrase"),
    [
        ("REFLECTOR_GPU_PORT", "65536", "must be <= 65535"),
        ("REFLECTOR_GPU_PORT", "0", "must be >= 1"),
        ("REFLECTOR_GPU_MAX_AUDIO_SECONDS", "inf", "finite"),
        ("REFLECTOR_GPU_DOWNLOAD_TIMEOUT", "nan", "finite"),
        ("REFLECTOR_GPU_WORKER_START_TIMEOUT", "-inf", "finite"),
        ("REFLECTOR_GPU_DIARIZATION_STEP", "inf", "finite"),
        ("REFLECTOR_GPU_DIARIZATION_STEP", "half", "must be a number"),
    ],
)
def test_numbers_out_of_range_are_refused(name: str, value: str, phrase: str) -> None:
    with pytest.raises(settings_module.SettingsError) as caught:
        settings_module.load({name: value})
    [problem] = caught.value.problems
    assert problem.startswith(f"{name}={value!r}") and phrase in problem
    assert settings_module.load({"REFLECTOR_GPU_PORT": "65535"}).port == 65535


def test_an_alias_wins_over_a_stray_directory_of_that_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app import models

    (tmp_path / "base").mkdir()  # an unrelated directory in the working directory, no model.bin
    (tmp_path / "tiny.en").mkdir()
    monkeypatch.chdir(tmp_path)
    tiny = settings_module.load({"REFLECTOR_GPU_WHISPER_MODEL": "tiny.en", "REFLECTOR_GPU_MODELS_DIR": str(tmp_path / "m")})
    assert models.check_paths(tiny) == []
    assert Path(models.whisper_model_path(tiny), "model.bin").is_file()
    assert not Path(models.whisper_model_path(tiny)).samefile(tmp_path / "tiny.en")
    stray = settings_module.load({"REFLECTOR_GPU_WHISPER_MODEL": "./base"})
    assert "REFLECTOR_GPU_WHISPER_MODEL=./base" in models.check_paths(stray)[0]


def test_every_model_path_is_checked_before_start(tmp_path: Path) -> None:
    from app import models

    settings = settings_module.load(
        {
            "REFLECTOR_GPU_WHISPER_MODEL": str(tmp_path / "no-whisper"),
            "REFLECTOR_GPU_DIARIZATION_MODEL": str(tmp_path / "no-pipeline"),
            "REFLECTOR_GPU_TRANSLATION_MODEL": str(tmp_path / "no-translation"),
        }
    )
    problems = models.check_paths(settings)
    assert len(problems) == 3
    for name, problem in zip(("WHISPER", "DIARIZATION", "TRANSLATION"), problems):
        assert f"REFLECTOR_GPU_{name}_MODEL=" in problem
