"""API keys: several from the environment, named keys from a file re-read on change (revocation
without a restart), the key's name (never the key) in the access log."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from litestar.testing import TestClient

from app.http import auth
from app import settings as settings_module
from app.http.main import create_app

SAME_LANGUAGE = "/translate?text=hi&source_language=en&target_language=en"  # keyed, answered without a model


def _client(tmp_path: Path, caplog: pytest.LogCaptureFixture | None = None, **env: str) -> TestClient:
    settings = settings_module.load({"REFLECTOR_GPU_STATE_DIR": str(tmp_path / "state"), **env})
    app = create_app(settings)
    if caplog is not None:  # the app's logging set-up replaced the root's handlers
        logging.getLogger().addHandler(caplog.handler)
        caplog.set_level(logging.INFO)
    return TestClient(app=app)


def _status(client: TestClient, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post(SAME_LANGUAGE, headers=headers).status_code


def _rewrite(path: Path, text: str) -> None:
    """Replace the file as an editor or `install` would, with a new mtime even within one tick."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_comma_separated_keys_each_work_and_are_named_in_the_access_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _client(tmp_path, caplog, REFLECTOR_GPU_APIKEY="alpha-key-1, beta-key-2") as client:
        assert _status(client, "alpha-key-1") == 200
        assert _status(client, "beta-key-2") == 200
        assert _status(client, "alpha-key-") == 401
        assert _status(client, None) == 401
        assert client.get("/health").status_code == 200  # open routes stay open
    lines = [r.getMessage() for r in caplog.records if r.name == "app.access"]
    assert "key=env-1" in lines[0] and "key=env-2" in lines[1] and "key=-" in lines[2]
    assert not any("alpha-key" in line or "beta-key" in line for line in lines)


def test_keys_file_is_reread_so_keys_are_added_and_revoked_without_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# name key\nreflector-a key-aaaa\nreflector-b key-bbbb\n")
    with _client(tmp_path, caplog, REFLECTOR_GPU_APIKEYS_FILE=str(keys), REFLECTOR_GPU_APIKEY="env-key") as client:
        assert _status(client, "key-aaaa") == 200
        assert _status(client, "key-bbbb") == 200
        assert _status(client, "env-key") == 200
        _rewrite(keys, "reflector-b key-bbbb\nreflector-c key-cccc\nbroken line with three\n")
        assert _status(client, "key-aaaa") == 401  # revoked
        assert _status(client, "key-cccc") == 200  # added
        assert _status(client, "key-bbbb") == 200
        keys.unlink()  # a missing file grants nothing, the environment's key still works
        assert _status(client, "key-bbbb") == 401
        assert _status(client, "env-key") == 200
        _rewrite(keys, "reflector-b key-bbbb\n")
        assert _status(client, "key-bbbb") == 200
    access = [r.getMessage() for r in caplog.records if r.name == "app.access"]
    assert "key=reflector-a" in access[0] and "key=env" in access[2]
    assert "key=reflector-c" in access[4]
    assert not any("key-aaaa" in r.getMessage() or "key-cccc" in r.getMessage() for r in caplog.records)
    assert any("line 3: expected 'name key'" in r.getMessage() for r in caplog.records)


def test_an_empty_keys_file_closes_the_host_rather_than_opening_it(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# everyone revoked\n")
    with _client(tmp_path, REFLECTOR_GPU_APIKEYS_FILE=str(keys)) as client:
        assert _status(client, "anything") == 401
        assert _status(client, None) == 401


def test_keys_file_parsing_skips_bad_lines_and_repeated_names() -> None:
    keys, problems = auth.parse_keys_file("a k1\n\n# c\nb\na k2\nc k3 extra\nd k4\n", "f")
    assert sorted(keys) == ["a", "d"]
    assert keys["a"] == auth._digest("k1")
    assert [p.split(":")[0] for p in problems] == ["f line 4", "f line 5", "f line 6"]
    assert not any("k2" in p or "k3" in p for p in problems)


def test_missing_keys_file_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(settings_module.SettingsError, match="REFLECTOR_GPU_APIKEYS_FILE"):
        settings_module.load({"REFLECTOR_GPU_APIKEYS_FILE": str(tmp_path / "nope")})


def test_a_401_on_a_reflector_route_names_the_reflector_setting_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Reflector's `--hosted` set-up writes only TRANSCRIPT_MODAL_API_KEY: /diarize, /pad and
    /mixdown then arrive without a key. The log says, once per route, where the key goes."""
    auth._hinted.clear()
    with _client(tmp_path, caplog, REFLECTOR_GPU_APIKEY="the-key") as client:
        for _ in range(2):
            assert client.post("/diarize?audio_file_url=https://example.invalid/a.mp3").status_code == 401
            assert client.post("/pad", json={}).status_code == 401
            assert client.post("/mixdown", json={}).status_code == 401
        assert client.post(SAME_LANGUAGE).status_code == 401
    hints = [r.getMessage() for r in caplog.records if "a Reflector server sends this route's key" in r.getMessage()]
    assert len(hints) == 3
    assert any("/diarize" in h and "DIARIZATION_MODAL_API_KEY" in h for h in hints)
    assert any("/pad" in h and "PADDING_MODAL_API_KEY" in h for h in hints)
    assert any("/mixdown" in h and "MIXDOWN_MODAL_API_KEY" in h for h in hints)
