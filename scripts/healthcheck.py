"""The image's HEALTHCHECK: ``GET /health`` over the loopback, verifying TLS as a client would.

Exit status 0 when ``/health`` answers 200, else 1 with one line saying why (podman and
docker keep it in the container's health log). TLS verification is never turned off: the
trust is the system store plus every CA file the service knows of (``ca.crt`` of the TLS
directory, the self-signed CA under ``<state>/tls``, ``REFLECTOR_GPU_EXTRA_CA``), and the
name checked is one the served certificate claims (``localhost`` when it covers it, else its
first SAN), read from the copy Granian serves in ``<state>/run/tls-cert.pem``.

Usage (what the image runs)::

    python /opt/reflector-gpu/healthcheck.py
"""

from __future__ import annotations

import socket
import ssl
import sys

from cryptography import x509

from app import settings as settings_module

TIMEOUT_SECONDS = 5.0


def served_name(settings: settings_module.Settings) -> str:
    """A name the certificate Granian serves is valid for, preferring ``localhost``."""
    pem = (settings.run_dir / "tls-cert.pem").read_bytes()
    leaf = x509.load_pem_x509_certificates(pem)[0]
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


def trust(settings: settings_module.Settings) -> ssl.SSLContext:
    """The system store plus the CA files this service knows of (missing ones skipped)."""
    context = ssl.create_default_context()
    candidates = [settings.cert_dir / "ca.crt", *settings.extra_ca]
    if settings.tls_dir is not None:
        candidates.append(settings.tls_dir / "ca.crt")
    for path in candidates:
        if path.is_file():
            context.load_verify_locations(cafile=str(path))
    return context


def check() -> str:
    """Return ``/health``'s status line; raises OSError/ssl.SSLError/ValueError on failure."""
    settings = settings_module.load()
    address = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    name = address
    sock = socket.create_connection((address, settings.port), timeout=TIMEOUT_SECONDS)
    try:
        if settings.tls != "off":
            name = served_name(settings)
            sock = trust(settings).wrap_socket(sock, server_hostname=name)
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode("ascii"))
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
