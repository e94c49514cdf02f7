"""Built-in ACME certificates against a real ACME server (pebble), the plain-HTTP listener
(HTTP-01 answers, 308 to HTTPS) and client certificates (mTLS)."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import socket
import ssl
import stat
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app import settings as settings_module
from app import tls
from app.tls.acme import store_dir
from testing import pebble as pebble_module
from testing.pebble import DOMAIN, acme_env, https_get, pebble_context, port_of, wait_https
from testing.service import free_port, plain_request, start_service, stop_and_remove, strict_context


# -- the service against pebble -----------------------------------------------------------
def test_first_certificate_over_http01_then_restarts_reuse_certificate_and_account(tmp_path: Path) -> None:
    http_port = free_port()
    state = Path(tempfile.mkdtemp(prefix="rg-", dir="/tmp"))
    with pebble_module.running_pebble(http_port) as p:
        env = acme_env(p, REFLECTOR_GPU_STATE_DIR=str(state))
        store = store_dir(settings_module.load(env))
        service = start_service(None, wait=False, **env)
        try:
            context = pebble_context(p, tmp_path)
            seconds = wait_https(service, context)
            print(f"\nstart to first HTTPS answer against pebble: {seconds:.2f} s")
            log = service.log()
            assert "answered an ACME HTTP-01 challenge" in log  # pebble validated over our HTTP port
            assert log.index("no ACME certificate yet") < log.index("started granian")  # no HTTPS before it
            status, first = https_get(port_of(service), context)  # verified against pebble's root
            assert status == 200
            for private in ("key.pem", "account-key.pem"):
                assert stat.S_IMODE((store / private).stat().st_mode) == 0o600
            moved = plain_request(http_port, "GET", "/v1/audio/transcriptions?x=1", f"{DOMAIN}:{http_port}")
            assert moved.status == 308
            assert moved.getheader("Location") == f"https://{DOMAIN}:{port_of(service)}/v1/audio/transcriptions?x=1"
        finally:
            stop_and_remove(service)
        account = (store / "account.json").read_text()
        account_key = (store / "account-key.pem").read_bytes()

        service = start_service(None, wait=False, **env)  # same names: the stored certificate
        try:
            wait_https(service, context)
            assert https_get(port_of(service), context)[1] == first
            log = service.log()
            assert "reusing the ACME certificate" in log
            assert "ordering an ACME certificate" not in log and "registered ACME account" not in log
        finally:
            stop_and_remove(service)

        service = start_service(None, wait=False, **{**env, "REFLECTOR_GPU_DOMAIN": f"{DOMAIN},www.{DOMAIN}"})
        try:  # a name added: a new order, under the same account
            wait_https(service, context, name=f"www.{DOMAIN}")
            log = service.log()
            assert "ordering an ACME certificate for gpu.test, www.gpu.test" in log
            assert "registered ACME account" not in log
            assert https_get(port_of(service), context)[1] != first
        finally:
            stop_and_remove(service)
        assert (store / "account.json").read_text() == account
        assert (store / "account-key.pem").read_bytes() == account_key
    shutil.rmtree(state, ignore_errors=True)


def test_short_certificate_is_renewed_without_a_failed_connection_and_kept_when_acme_is_down(tmp_path: Path) -> None:
    http_port = free_port()
    with pebble_module.running_pebble(http_port, validity_seconds=60) as p:
        service = start_service(None, wait=False, **acme_env(p))
        try:
            context = pebble_context(p, tmp_path)
            wait_https(service, context)
            port = port_of(service)
            cert_file = store_dir(settings_module.load({**acme_env(p), "REFLECTOR_GPU_STATE_DIR": str(service.state_dir)})) / "cert.pem"
            leaf = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
            first = hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()
            assert https_get(port, context)[1] == first
            expires = time.monotonic() + (leaf.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds()

            # Fresh connections all along; for a moment after SIGHUP Granian's old worker
            # (old certificate) and its replacement (new one) both answer: keep going 5 s more.
            served, attempts, failures, renewed_at = first, 0, [], None
            while time.monotonic() < expires and (renewed_at is None or time.monotonic() < renewed_at + 5):
                try:
                    status, served = https_get(port, context)
                    assert status == 200
                    attempts += 1
                except (OSError, IndexError) as exc:
                    failures.append(repr(exc))
                if served != first and renewed_at is None:
                    renewed_at = time.monotonic()
                time.sleep(0.1)
            assert renewed_at is not None, service.log()
            assert served != first
            assert failures == [], failures
            assert attempts > 50
            log = service.log()
            assert "certificate renewed" in log and log.count("registered ACME account") == 1
            assert "new certificate files rejected" not in log

            p.stop()  # the ACME server is gone when the next renewal is due
            renewed = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
            due = (renewed.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds() - 20
            deadline = time.monotonic() + due + 30
            while "ACME order failed" not in service.log() and time.monotonic() < deadline:
                assert https_get(port, context) == (200, served), service.log()
                time.sleep(0.5)
            failed = [line for line in service.log().splitlines() if "ACME order failed" in line]
            assert failed and "keeps serving" in failed[0], service.log()
            assert https_get(port, context) == (200, served)
        finally:
            stop_and_remove(service)


# -- client certificates -------------------------------------------------------------------
def _client_certificate(directory: Path, ca_dir: Path) -> tuple[Path, Path]:
    """A client certificate (EKU clientAuth) signed by the CA in `ca_dir` (made if missing)."""
    ca_cert, ca_key = tls.load_or_make_ca(ca_dir, "test client CA")
    key = tls.new_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reflector-a")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "client.pem", directory / "client-key.pem"
    tls.write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    tls.write_private(key_path, tls.key_pem(key))
    return cert_path, key_path


def test_mtls_refuses_clients_without_a_certificate_and_combines_with_keys(cert_dir: Path, tmp_path: Path) -> None:
    good = _client_certificate(tmp_path / "good", tmp_path / "client-ca")
    stranger = _client_certificate(tmp_path / "stranger", tmp_path / "other-ca")
    service = start_service(
        cert_dir, api_key="mtls-key", wait=False, REFLECTOR_GPU_TLS_CLIENT_CA=str(tmp_path / "client-ca" / "ca.crt"),
    )
    try:
        with_cert = strict_context(cert_dir / "ca.crt")
        with_cert.load_cert_chain(*good)
        wait_https(service, with_cert, name="localhost")
        path = "/translate?text=hi&source_language=en&target_language=en"
        assert https_get(port_of(service), with_cert, "localhost", path, key="mtls-key")[0] == 405  # GET: past TLS and key
        with httpx.Client(base_url=service.base_url, verify=with_cert, timeout=10) as client:
            assert client.post(path, headers={"Authorization": "Bearer mtls-key"}).status_code == 200
            assert client.post(path).status_code == 401  # the certificate does not replace the key
        for context in (strict_context(cert_dir / "ca.crt"), _with_chain(cert_dir, stranger)):
            with httpx.Client(base_url=service.base_url, verify=context, timeout=10) as client:
                with pytest.raises(httpx.TransportError):
                    client.post(path, headers={"Authorization": "Bearer mtls-key"})
    finally:
        stop_and_remove(service)


def _with_chain(cert_dir: Path, pair: tuple[Path, Path]) -> ssl.SSLContext:
    context = strict_context(cert_dir / "ca.crt")
    context.load_cert_chain(*pair)
    return context


def test_no_https_until_the_first_certificate_and_a_clean_stop_while_waiting(tmp_path: Path) -> None:
    http_port, nowhere = free_port(), free_port()  # no ACME server listens on `nowhere`
    service = start_service(
        None, wait=False, REFLECTOR_GPU_TLS="acme", REFLECTOR_GPU_DOMAIN=DOMAIN,
        REFLECTOR_GPU_ACME_DIRECTORY=f"https://127.0.0.1:{nowhere}/dir", REFLECTOR_GPU_HTTP_PORT=str(http_port),
    )
    try:
        deadline = time.monotonic() + 60
        while "ACME order failed" not in service.log() and time.monotonic() < deadline:
            assert service.process.poll() is None, service.log()
            time.sleep(0.2)
        failed = [line for line in service.log().splitlines() if "ACME order failed" in line]
        assert failed and "HTTPS is not served until a certificate is issued" in failed[0], service.log()
        assert "no ACME certificate yet" in service.log() and "started granian" not in service.log()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port_of(service)), timeout=5).close()
        assert plain_request(http_port, "GET", "/health", DOMAIN).status == 308  # the HTTP side is up
        assert service.stop() == 0
    finally:
        stop_and_remove(service)
