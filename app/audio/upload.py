"""Uploading a result file to a presigned object-store URL with HTTP PUT.

Presigned S3 PUTs (AWS, Garage, MinIO) reject chunked bodies, so the body is streamed from
disk with an exact ``Content-Length`` and never ``Transfer-Encoding: chunked``. Transient
answers (HTTP 500, 502, 503, 504) and refused or reset connections are retried up to
`ATTEMPTS` times in all with a short back-off; anything else fails at once. Outbound trust
(system store, the TLS directory's ``ca.crt``, ``REFLECTOR_GPU_EXTRA_CA``) is the same as
for downloads (`app.audio.trust`). Errors name the PUT step and the host, never the query
string, which holds the signature.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx

from app.audio.fetch import check_http_url, client
from app.audio.trust import outbound_error
from app.errors import UpstreamError
from app.settings import Settings

ATTEMPTS = 3  # one try and two retries
BACKOFF_SECONDS = (0.5, 2.0)  # wait before the 2nd and the 3rd attempt
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
CHUNK_BYTES = 1024 * 1024
_S3_ERROR = re.compile(r"<Code>([^<]{1,100})</Code>(?:.*?<Message>([^<]{1,300})</Message>)?", re.DOTALL)


class _FileBody:
    """A file as an async byte stream that can be read again (for retries and 307/308)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self.path, "rb") as source:
            while chunk := await source.read(CHUNK_BYTES):
                yield chunk


def _store_says(response: httpx.Response) -> str:
    """The object store's error code and message (S3 XML), if the body has them."""
    match = _S3_ERROR.search(response.text[:4000])
    if not match:
        return ""
    code, message = match.group(1).strip(), (match.group(2) or "").strip()
    return f" ({code}: {message})" if message else f" ({code})"


def check_output_url(url: str) -> str:
    """Raise `BadRequest` unless `url` is absolute http(s); returns its ``host[:port]``."""
    return check_http_url(url, "output_url")


async def upload(settings: Settings, url: str, path: Path, content_type: str) -> int:
    """PUT the file at `path` to `url` (presigned); returns the bytes sent.

    Raises `BadRequest` for a URL that is not http(s), `UpstreamError` (502) when the store
    refuses (4xx, or 5xx after the retries), cannot be reached or fails TLS verification,
    and `UpstreamTimeout` (504) when it stops answering; every message starts with
    "uploading the result (PUT to <host>)".
    """
    step = f"uploading the result (PUT to {check_output_url(url)})"
    size = path.stat().st_size
    headers = {"Content-Length": str(size), "Content-Type": content_type}
    body = _FileBody(path)
    failure, attempts = "", 0
    async with client(settings) as http:
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(BACKOFF_SECONDS[attempt - 1])
            attempts += 1
            try:
                response = await http.put(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                error = outbound_error(exc, step)
                retryable = isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))
                if not retryable or "TLS" in error.detail:
                    raise error from None
                failure = error.detail.removeprefix(f"{step} failed: ")
                continue
            if response.status_code < 300:
                return size
            failure = f"HTTP {response.status_code} {response.reason_phrase}{_store_says(response)}"
            if response.status_code not in TRANSIENT_STATUSES:
                break
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    raise UpstreamError(f"{step} failed{tries}: {failure}")
