"""Downloading audio from a URL (often a presigned S3 URL) into a temporary file.

httpx streams the body to ``<state>/tmp``; redirects are followed (at most
`MAX_REDIRECTS`); the size limit is enforced from ``Content-Length`` and again while
streaming. Errors name the host, never the query string (presigned URLs carry credentials):
404 -> `SourceNotFound`; other HTTP errors, refused connections, DNS and TLS failures,
redirect loops -> `UpstreamError`; time-outs -> `UpstreamTimeout`; too big -> `PayloadTooLarge`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from app.audio.trust import ssl_context
from app.errors import BadRequest, PayloadTooLarge, SourceNotFound, UpstreamError, UpstreamTimeout
from app.settings import Settings

MAX_REDIRECTS = 10
CHUNK_BYTES = 1024 * 1024


def client(settings: Settings) -> httpx.AsyncClient:
    """An httpx client with this service's outbound trust, redirects and time-outs
    (`Settings.download_timeout` seconds per read, at most 10 s to connect)."""
    seconds = settings.download_timeout
    return httpx.AsyncClient(
        verify=ssl_context(settings),
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=httpx.Timeout(seconds, connect=min(10.0, seconds)),
        trust_env=False,
    )


MAX_URL_CHARS = 16384


def check_http_url(url: str, name: str = "the audio URL") -> str:
    """Raise `BadRequest` unless `url` is an absolute http(s) URL with a valid host and port,
    at most `MAX_URL_CHARS` long; returns its ``host[:port]`` for messages."""
    if len(url) > MAX_URL_CHARS:
        raise BadRequest(f"{name} is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number in 0-65535
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0
    except ValueError:
        valid = False
    if not valid or any(ord(c) < 33 for c in url):
        raise BadRequest(f"{name} must be an absolute http:// or https:// URL")
    return parts.hostname if port is None else f"{parts.hostname}:{port}"


async def download(settings: Settings, url: str) -> Path:
    """Download `url` into a new file under `settings.tmp_dir` and return its path.

    The caller owns the file and deletes it; on any error nothing is left behind. Raises
    the errors listed in the module docstring, and `BadRequest` for a URL that is not
    http(s).
    """
    check_http_url(url)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    limit = settings.max_download_bytes
    where = urlsplit(url).hostname
    fd, name = tempfile.mkstemp(prefix="download-", dir=settings.tmp_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            async with client(settings) as http, http.stream("GET", url) as response:
                if response.status_code == 404:
                    raise SourceNotFound(f"the audio URL on {where} answered 404 Not Found")
                if response.status_code >= 400:
                    raise UpstreamError(
                        f"the audio URL on {where} answered HTTP {response.status_code} {response.reason_phrase}"
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise PayloadTooLarge(_too_large(where, limit))
                received = 0
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    received += len(chunk)
                    if received > limit:
                        raise PayloadTooLarge(_too_large(where, limit))
                    out.write(chunk)
        return path
    except BaseException as exc:
        path.unlink(missing_ok=True)
        raise _translate(exc, where) from None


def _too_large(host: str | None, limit: int) -> str:
    return f"the audio from {host} is larger than the {limit}-byte limit (REFLECTOR_GPU_MAX_DOWNLOAD_BYTES)"


def _translate(exc: BaseException, host: str | None) -> BaseException:
    """Map an httpx failure to this service's errors; other exceptions pass through."""
    if isinstance(exc, httpx.TooManyRedirects):
        return UpstreamError(f"the audio URL on {host} redirected more than {MAX_REDIRECTS} times")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"the audio URL on {host} did not answer in time")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return UpstreamError(f"the audio URL on {host} redirected to a URL that is not http(s)")
    if isinstance(exc, httpx.InvalidURL):
        return BadRequest(f"the audio URL is not valid: {exc}")
    if isinstance(exc, httpx.ConnectError):
        reason = str(exc) or type(exc).__name__
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            return UpstreamError(
                f"TLS verification failed for {host}: trust its CA with REFLECTOR_GPU_EXTRA_CA"
            )
        if "SSL" in reason:
            return UpstreamError(f"TLS handshake with {host} failed (is it an https server?)")
        return UpstreamError(f"cannot connect to {host}: {reason}")
    if isinstance(exc, httpx.HTTPError):
        return UpstreamError(f"downloading from {host} failed: {type(exc).__name__}")
    return exc


@contextlib.asynccontextmanager
async def downloaded(settings: Settings, url: str) -> AsyncIterator[Path]:
    """`download()` as a context manager that deletes the file on exit."""
    path = await download(settings, url)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
