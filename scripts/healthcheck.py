"""The image's HEALTHCHECK: ``GET /health`` over the loopback, verifying TLS as a client would.

Exit status 0 when ``/health`` answers 200, else 1 with one line saying why (podman and
docker keep it in the container's health log). TLS verification is never turned off: the
trust is the system store plus every CA the service knows of (``ca.crt`` of the TLS
directory, the self-signed CA under ``<state>/tls``, ``REFLECTOR_GPU_EXTRA_CA``, and the CA
certificates that follow the leaf in the served chain, as `make cert` writes them), and the
name checked is one the served certificate claims (``localhost`` when it covers it, else its
first SAN). Both come from the copy Granian serves, ``<state>/run/tls-cert.pem``.

Usage (what the image runs)::

    python /opt/reflector-gpu/healthcheck.py
"""

from __future__ import annotations

import socket
import ssl
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from app import settings as settings_module

TIMEOUT_SECONDS = 5.0


def served_chain(settings: settings_module.Settings) -> list[x509.Certificate]:
    """The certificate chain Granian serves (leaf first)."""
    return x509.load_pem_x509_certificates((settings.run_dir / "tls-cert.pem").read_bytes())


def served_name(leaf: x509.Certificate) -> str:
    """A name `leaf` is valid for, preferring ``localhost``."""
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    for name in ("localhost", "127.0.0.1"):
        if name in dns or name in ips:
            return name
    names = [n for n in dns if not n.startswith("*.")] + ips
    if not names:
        raise ValueError("the served certificate names no host this check can use")
    return names[0]


def trust(settings: settings_module.Settings, chain: list[x509.Certificate]) -> ssl.SSLContext:
    """The system store plus the CAs this service knows of (missing files skipped)."""
    context = ssl.create_default_context()
    candidates = [settings.cert_dir / "ca.crt", *settings.extra_ca]
    if settings.tls_dir is not None:
        candidates.append(settings.tls_dir / "ca.crt")
    for path in candidates:
        if path.is_file():
            context.load_verify_locations(cafile=str(path))
    for cert in chain[1:]:
        context.load_verify_locations(cadata=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    return context


def check() -> str:
    """Return ``/health``'s status line; raises OSError/ssl.SSLError/ValueError on failure."""
    settings = settings_module.load()
    address = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    name = address
    sock = socket.create_connection((address, settings.port), timeout=TIMEOUT_SECONDS)
    try:
        if settings.tls != "off":
            chain = served_chain(settings)
            name = served_name(chain[0])
            sock = trust(settings, chain).wrap_socket(sock, server_hostname=name)
        host = f"[{name}]" if ":" in name else name
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("ascii"))
        status = sock.recv(1024).split(b"\r\n", 1)[0].decode("latin-1")
    finally:
        sock.close()
    if status.split(" ")[1:2] != ["200"]:
        raise ValueError(f"/health answered {status!r}")
    return status


def main() -> int:
    try:
        status = check()
    except (OSError, ValueError, x509.ExtensionNotFound, settings_module.SettingsError) as exc:
        print(f"unhealthy: {type(exc).__name__}: {exc}")
        return 1
    print(f"healthy: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
