"""The plain-HTTP listener (``REFLECTOR_GPU_HTTP_PORT``): ACME HTTP-01 answers, else 308 to HTTPS.

A thread of the entrypoint (the standard library's threading HTTP server; no root needed:
the image listens on 8080 and publishes it as 80). ``GET /.well-known/acme-challenge/<token>``
answers the key authorization `app.tls.acme` registered for that token (404 for any other
token); every other request, any method, gets ``308 Permanent Redirect`` to the same path
and query on HTTPS, which keeps the method and body.

The redirect's HTTPS port: a ``Host`` header without a port (the client came through the
standard port 80) goes to the standard 443; a ``Host`` with a port (a client that reached a
non-standard HTTP port, such as a checkout's 8080) goes to ``REFLECTOR_GPU_PORT``.
"""

from __future__ import annotations

import http.server
import logging
import re
import socket
import threading

from app.settings import Settings

log = logging.getLogger("app.tls.redirect")

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
REQUEST_TIMEOUT_SECONDS = 10.0  # a client that sends nothing is dropped after this
_HOST = re.compile(r"^(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?$")


class Challenges:
    """Pending HTTP-01 answers, token -> key authorization, shared by the ACME client and the
    listener. Thread-safe."""

    def __init__(self) -> None:
        self._answers: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._answers[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._lock:
            self._answers.pop(token, None)

    def get(self, token: str) -> str | None:
        with self._lock:
            return self._answers.get(token)


def redirect_location(
    host_header: str | None, target: str, https_port: int, fallback_host: str | None
) -> str | None:
    """The ``https://`` URL for request-target `target` that came with `host_header`.

    None when no usable host is known (no or malformed ``Host`` and no `fallback_host`)."""
    match = _HOST.match(host_header.strip()) if host_header else None
    if match:
        name, port = match["name"], match["port"]
    elif fallback_host:
        name, port = fallback_host, None
    else:
        return None
    if not target.startswith("/"):  # absolute-form or '*': keep only the path and query
        target = "/" + target.split("://", 1)[-1].partition("/")[2]
    authority = name if port is None or https_port == 443 else f"{name}:{https_port}"
    return f"https://{authority}{target}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: RedirectServer
    timeout = REQUEST_TIMEOUT_SECONDS
    server_version = "reflector-gpu"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass  # one line per request below, without the query string

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)), **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        log.debug("plain HTTP: method=%s path=%s status=%d", self.command, self.path.split("?", 1)[0], status)

    def _handle(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith(CHALLENGE_PREFIX) and self.command in ("GET", "HEAD"):
            answer = self.server.challenges.get(path[len(CHALLENGE_PREFIX):])
            if answer is None:
                self._send(404, b"no such ACME challenge\n", {})
            else:
                log.info("answered an ACME HTTP-01 challenge")
                self._send(200, answer.encode("ascii"), {})
            return
        settings = self.server.settings
        fallback = settings.domains[0] if settings.domains else None
        location = redirect_location(self.headers.get("Host"), self.path, settings.port, fallback)
        if location is None:
            self._send(400, b"a Host header is needed to redirect to HTTPS\n", {})
        else:
            self._send(308, f"use HTTPS: {location}\n".encode(), {"Location": location})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle  # noqa: N815


class RedirectServer(http.server.ThreadingHTTPServer):
    """The listener; `start` runs it in a daemon thread, `shutdown` stops it."""

    daemon_threads = True

    def __init__(self, settings: Settings, challenges: Challenges) -> None:
        self.settings = settings
        self.challenges = challenges
        self.address_family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        super().__init__((settings.host, settings.http_port), _Handler)

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="http-redirect", daemon=True).start()
        log.info(
            "plain HTTP on %s:%d: ACME HTTP-01 answers, everything else redirected to HTTPS (308)",
            self.settings.host, self.settings.http_port,
        )
