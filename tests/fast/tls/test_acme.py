"""Built-in ACME certificates against a real ACME server (pebble), the plain-HTTP listener
(HTTP-01 answers, 308 to HTTPS) and client certificates (mTLS)."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from app import settings as settings_module
from app.tls.redirect import Challenges, RedirectServer, redirect_location
from testing.service import free_port, plain_request


# -- without the service --------------------------------------------------------------------
def test_acme_settings_refuse_ips_and_missing_names_and_tls_off_has_no_http_port(tmp_path: Path) -> None:
    with pytest.raises(settings_module.SettingsError) as caught:
        settings_module.load({"REFLECTOR_GPU_TLS": "acme", "REFLECTOR_GPU_DOMAIN": "gpu.example.com,192.168.1.5"})
    assert "192.168.1.5" in str(caught.value) and "not IP" in str(caught.value)
    with pytest.raises(settings_module.SettingsError, match="needs REFLECTOR_GPU_DOMAIN"):
        settings_module.load({"REFLECTOR_GPU_TLS": "acme"})
    with pytest.raises(settings_module.SettingsError, match="REFLECTOR_GPU_HTTP_PORT"):
        settings_module.load({"REFLECTOR_GPU_TLS": "acme", "REFLECTOR_GPU_DOMAIN": "a.example", "REFLECTOR_GPU_HTTP_PORT": "0"})
    acme = settings_module.load({"REFLECTOR_GPU_TLS": "acme", "REFLECTOR_GPU_DOMAIN": "a.example"})
    assert acme.http_port == 8080 and acme.acme_directory.startswith("https://acme-v02.api.letsencrypt.org")
    assert settings_module.load({}).http_port == 0
    off = settings_module.load({"REFLECTOR_GPU_TLS": "off", "REFLECTOR_GPU_HTTP_PORT": "8080"})
    assert off.http_port == 0
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(settings_module.SettingsError, match="REFLECTOR_GPU_TLS_CLIENT_CA needs TLS"):
        settings_module.load({"REFLECTOR_GPU_TLS": "off", "REFLECTOR_GPU_TLS_CLIENT_CA": str(ca)})


def test_plain_http_listener_answers_challenges_and_redirects_with_308(tmp_path: Path) -> None:
    http_port = free_port()
    settings = settings_module.load({
        "REFLECTOR_GPU_HOST": "127.0.0.1", "REFLECTOR_GPU_PORT": "8443", "REFLECTOR_GPU_HTTP_PORT": str(http_port),
        "REFLECTOR_GPU_STATE_DIR": str(tmp_path),
    })
    challenges = Challenges()
    challenges.add("tok-123", "tok-123.thumbprint")
    server = RedirectServer(settings, challenges)
    server.start()
    try:
        answer = plain_request(http_port, "GET", "/.well-known/acme-challenge/tok-123", "gpu.test")
        assert answer.status == 200
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
        conn.request("GET", "/.well-known/acme-challenge/tok-123", headers={"Host": "gpu.test"})
        assert conn.getresponse().read() == b"tok-123.thumbprint"
        conn.close()
        assert plain_request(http_port, "GET", "/.well-known/acme-challenge/other", "gpu.test").status == 404
        # through the standard port 80 (no port in Host): to the standard 443
        moved = plain_request(http_port, "POST", "/v1/audio/transcriptions?language=en", "gpu.test")
        assert moved.status == 308
        assert moved.getheader("Location") == "https://gpu.test/v1/audio/transcriptions?language=en"
        # a non-standard HTTP port in Host: to REFLECTOR_GPU_PORT
        moved = plain_request(http_port, "GET", "/ready", f"localhost:{http_port}")
        assert (moved.status, moved.getheader("Location")) == (308, "https://localhost:8443/ready")
        assert plain_request(http_port, "GET", "/", "bad host!").status == 400  # no domain to fall back on
    finally:
        server.shutdown()
        server.server_close()
    assert redirect_location("[::1]:80", "/x", 8443, None) == "https://[::1]:8443/x"
    assert redirect_location(None, "http://gpu.test/a?b", 443, "gpu.test") == "https://gpu.test/a?b"
