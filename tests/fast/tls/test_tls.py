"""Certificates we make verify under strict X.509 checks; pairs are validated before use."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509

from app import settings as settings_module
from app import tls
from testing.service import ROOT, strict_context


def _handshake(ca_file: Path, cert: Path, key: Path, server_name: str) -> None:
    """Serve one TLS handshake with `cert`/`key` and connect to it as `server_name`."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with strict_context(ca_file).wrap_socket(raw, server_hostname=server_name) as conn:
                conn.sendall(b"x")
    finally:
        thread.join(5)
        listener.close()


def test_make_cert_verifies_strictly_and_reuses_the_ca(tmp_path: Path) -> None:
    first = tls.make_cert(tmp_path, "gpu.local", "IP:127.0.0.1,DNS:localhost")
    for name in ("gpu.local", "localhost", "127.0.0.1"):
        leaf = tls.check_pair(first.cert, first.key, [name])
        assert tls.covers(leaf, name)
    _handshake(tmp_path / "ca.crt", first.cert, first.key, "localhost")
    for private in ("ca.key", "server-key.pem"):
        assert stat.S_IMODE((tmp_path / private).stat().st_mode) == 0o600
    ca_before = (tmp_path / "ca.crt").read_bytes()
    tls.make_cert(tmp_path, "other.local")
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert b"PRIVATE KEY" in (tmp_path / "server-key.pem").read_bytes()
    assert b"ENCRYPTED" not in (tmp_path / "server-key.pem").read_bytes()


def test_make_cert_command_prints_trust_and_run_lines(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.tls", "make-cert", "--domain", "gpu.local", "--sans", "IP:192.168.1.200", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert "update-ca-certificates" in out and "podman run" in out
    leaf = x509.load_pem_x509_certificates((tmp_path / "server.pem").read_bytes())[0]
    assert tls.covers(leaf, "192.168.1.200") and tls.covers(leaf, "gpu.local")
    assert {p.name for p in tmp_path.iterdir()} == {"ca.key", "ca.crt", "server.pem", "server-key.pem"}


def test_check_pair_rejects_mismatch_and_missing_names(tmp_path: Path) -> None:
    a = tls.make_cert(tmp_path / "a", "a.local")
    b = tls.make_cert(tmp_path / "b", "b.local")
    with pytest.raises(tls.CertificateError, match="does not match"):
        tls.check_pair(a.cert, b.key)
    with pytest.raises(tls.CertificateError, match="does not cover b.local"):
        tls.check_pair(a.cert, a.key, ["b.local"])
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(tls.CertificateError):
        tls.check_pair(broken, a.key)


def test_self_signed_is_reused_and_reissued_when_names_change(tmp_path: Path) -> None:
    env = {"REFLECTOR_GPU_STATE_DIR": str(tmp_path)}
    first = tls.self_signed(settings_module.load(env))
    fingerprint = tls.fingerprint(x509.load_pem_x509_certificates(first.cert.read_bytes())[0])
    again = tls.self_signed(settings_module.load(env))
    assert tls.fingerprint(x509.load_pem_x509_certificates(again.cert.read_bytes())[0]) == fingerprint
    renamed = tls.self_signed(settings_module.load({**env, "REFLECTOR_GPU_DOMAIN": "gpu.example,10.0.0.5"}))
    leaf = tls.check_pair(renamed.cert, renamed.key, ["gpu.example", "10.0.0.5", "localhost", "127.0.0.1"])
    assert tls.fingerprint(leaf) != fingerprint
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=300)
    _handshake(renamed.ca, renamed.cert, renamed.key, "gpu.example")
