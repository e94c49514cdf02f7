"""Downloading audio from a URL (often a presigned S3 URL) into a temporary file.

httpx streams the body to ``<state>/tmp``; redirects are followed (at most
`MAX_REDIRECTS`); the size limit is enforced from ``Content-Length`` and again while
streaming. Errors name the host, never the query string (presigned URLs carry credentials):
404 -> `SourceNotFound`; other HTTP errors, refused connections, DNS and TLS failures,
redirect loops -> `UpstreamError`; time-outs -> `UpstreamTimeout`; too big -> `PayloadTooLarge`.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.audio.trust import MAX_REDIRECTS, outbound_error, ssl_context
from app.errors import BadRequest, PayloadTooLarge, SourceNotFound, UpstreamError
from app.settings import Settings

CHUNK_BYTES = 1024 * 1024
DOWNLOAD_ATTEMPTS = 3  # for a server that closes the connection before answering
RETRY_SECONDS = 0.2  # times the attempt number


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


async def download(settings: Settings, url: str, digest: Any = None) -> Path:
    """Download `url` into a new file under `settings.tmp_dir` and return its path.

    `digest` (a `hashlib` object, e.g. ``hashlib.sha256()``) is fed every byte written, so
    the result store can key on the content without reading the file again.
    The caller owns the file and deletes it; on any error nothing is left behind. A server
    that accepts the connection and closes it before answering is asked again, up to
    `DOWNLOAD_ATTEMPTS` times in all (a GET is idempotent, and nothing was received yet).
    Raises the errors listed in the module docstring, and `BadRequest` for a URL that is
    not http(s).
    """
    check_http_url(url)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    where = urlsplit(url).hostname
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        fd, name = tempfile.mkstemp(prefix="download-", dir=settings.tmp_dir)
        path = Path(name)
        received = [0]
        try:
            with os.fdopen(fd, "wb") as out:
                await _get(settings, url, where, out, digest, received)
            return path
        except httpx.RemoteProtocolError as exc:
            path.unlink(missing_ok=True)
            if received[0] or attempt == DOWNLOAD_ATTEMPTS:
                raise outbound_error(exc, f"downloading from {where}") from None
            await asyncio.sleep(RETRY_SECONDS * attempt)
        except httpx.HTTPError as exc:
            path.unlink(missing_ok=True)
            raise outbound_error(exc, f"downloading from {where}") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    raise AssertionError("unreachable")  # the loop returns or raises


async def _get(settings: Settings, url: str, where: str | None, out: Any, digest: Any, received: list[int]) -> None:
    """One GET of `url` into the open file `out`; `received[0]` counts the body's bytes."""
    limit = settings.max_download_bytes
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
        async for chunk in response.aiter_bytes(CHUNK_BYTES):
            received[0] += len(chunk)
            if received[0] > limit:
                raise PayloadTooLarge(_too_large(where, limit))
            out.write(chunk)
            if digest is not None:
                digest.update(chunk)


def _too_large(host: str | None, limit: int) -> str:
    return f"the audio from {host} is larger than the {limit}-byte limit (REFLECTOR_GPU_MAX_DOWNLOAD_BYTES)"


