"""A real ACME server on loopback for the tests: Debian's ``pebble`` with ``pebble-challtestsrv``.

`start_pebble(http_port)` writes pebble's own TLS certificate with our `app.tls` code (the
Debian package ships none), starts ``pebble-challtestsrv`` as a DNS server answering every
name with 127.0.0.1 (no IPv6 answer), and pebble validating HTTP-01 on `http_port` of
127.0.0.1, issuing certificates valid for `validity_seconds`. Pebble keeps everything in
memory: its root for issued certificates (`root_pem`) is new at every start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app import tls
from testing.service import Service, free_port, strict_context


def available() -> bool:
    return shutil.which("pebble") is not None and shutil.which("pebble-challtestsrv") is not None


@dataclass
class Pebble:
    """A running pebble: its directory URL, the CA of its own HTTPS, and its processes."""

    directory_url: str
    management_url: str
    tls_ca: Path  # trust this for pebble's HTTPS (REFLECTOR_GPU_ACME_CA)
    work_dir: Path
    http_port: int
    processes: list[subprocess.Popen]
    log_path: Path

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls_ca))

    def root_pem(self) -> bytes:
        """The root that signs the certificates pebble issues (``/roots/0``)."""
        with urllib.request.urlopen(f"{self.management_url}/roots/0", context=self._context(), timeout=5) as answer:
            return answer.read()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_pebble(http_port: int, validity_seconds: int = 3600, work_dir: Path | None = None) -> Pebble:
    """Start challtestsrv and pebble on free loopback ports; wait until the directory answers."""
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="rg-pebble-", dir="/tmp"))
    certs = work_dir / "tls"
    if not (certs / "server.pem").is_file():
        tls.make_cert(certs, "localhost", "IP:127.0.0.1")
    acme_port, management_port, dns_port, dns_management_port = (free_port() for _ in range(4))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{management_port}",
            "certificate": str(certs / "server.pem"),
            "privateKey": str(certs / "server-key.pem"),
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": validity_seconds,
        }
    }
    (work_dir / "pebble.json").write_text(json.dumps(config))
    log_path = work_dir / "pebble.log"
    log_file = log_path.open("a")
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
    dns = subprocess.Popen(
        ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "",
         "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_management_port}",
         "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
        stdout=log_file, stderr=subprocess.STDOUT,
    )
    acme = subprocess.Popen(
        ["pebble", "-config", str(work_dir / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}", "-strict=false"],
        stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=work_dir,
    )
    pebble = Pebble(
        f"https://127.0.0.1:{acme_port}/dir", f"https://127.0.0.1:{management_port}", certs / "ca.crt",
        work_dir, http_port, [acme, dns], log_path,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(pebble.directory_url, context=pebble._context(), timeout=2):
                return pebble
        except OSError:
            if time.monotonic() > deadline or acme.poll() is not None:
                pebble.stop()
                raise RuntimeError(f"pebble did not start:\n{pebble.log()}") from None
            time.sleep(0.1)


@contextlib.contextmanager
def running_pebble(http_port: int, validity_seconds: int = 3600) -> Iterator[Pebble]:
    pebble = start_pebble(http_port, validity_seconds)
    try:
        yield pebble
    finally:
        pebble.stop()
        shutil.rmtree(pebble.work_dir, ignore_errors=True)


# -- the service against pebble: shared by tests/service/tls and bench/acme_start.py ---------
DOMAIN = "gpu.test"  # pebble-challtestsrv resolves every name to 127.0.0.1


def acme_env(p: Pebble, **extra: str) -> dict[str, str]:
    return {
        "REFLECTOR_GPU_TLS": "acme",
        "REFLECTOR_GPU_DOMAIN": DOMAIN,
        "REFLECTOR_GPU_ACME_DIRECTORY": p.directory_url,
        "REFLECTOR_GPU_ACME_CA": str(p.tls_ca),
        "REFLECTOR_GPU_HTTP_PORT": str(p.http_port),
        **extra,
    }


def port_of(service: Service) -> int:
    return int(service.base_url.rsplit(":", 1)[1])


def https_get(port: int, context: ssl.SSLContext, name: str = DOMAIN, path: str = "/health",
              key: str | None = None) -> tuple[int, str]:
    """One fresh TLS connection verified as `name`: (HTTP status, SHA-256 of the served leaf)."""
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as conn:
            leaf = hashlib.sha256(conn.getpeercert(binary_form=True)).hexdigest()
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\n{auth}Connection: close\r\n\r\n".encode())
            head = conn.recv(64).split(b" ", 2)
    return int(head[1]), leaf


def wait_https(service: Service, context: ssl.SSLContext, name: str = DOMAIN, timeout: float = 90.0) -> float:
    """Seconds until ``/health`` answers 200 over verified HTTPS; fails if the service exits."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if service.process.poll() is not None:
            raise AssertionError(f"service exited with {service.process.returncode}:\n{service.log()}")
        try:
            if https_get(port_of(service), context, name)[0] == 200:
                return time.monotonic() - started
        except (OSError, IndexError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"no HTTPS answer in {timeout} s:\n{service.log()}")


def pebble_context(p: Pebble, directory: Path) -> ssl.SSLContext:
    """Trust only pebble's root for issued certificates (``/roots/0``), strict X.509 checks."""
    root = directory / "pebble-root.pem"
    root.write_bytes(p.root_pem())
    return strict_context(root)
