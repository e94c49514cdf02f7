"""Outbound HTTPS (audio downloads, presigned uploads): the CA bundle trusted, and what an
httpx failure means to the client (`outbound_error`, the one translation both use).

Trust = the system store (certifi's bundle where the system has none) + ``ca.crt`` in
`REFLECTOR_GPU_TLS_DIR` when present + every PEM file in `REFLECTOR_GPU_EXTRA_CA`.
Verification is never turned off.
"""

from __future__ import annotations

import functools
import ssl

import httpx

from app.errors import BadRequest, ServiceError, UpstreamError, UpstreamTimeout
from app.settings import Settings

MAX_REDIRECTS = 10  # httpx's default, named for the message


def outbound_error(exc: httpx.HTTPError, step: str) -> ServiceError:
    """The `ServiceError` for an httpx failure during `step` (``"downloading from HOST"``,
    ``"uploading the result (PUT to HOST)"``; never a query string): `UpstreamTimeout` (504)
    for a time-out, `BadRequest` for an invalid URL, else `UpstreamError` (502) saying
    which: a redirect loop, a redirect off http(s), TLS verification (and how to trust the
    CA), a TLS handshake, a refused connection, a connection that broke."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"{step} failed: no answer in time")
    if isinstance(exc, httpx.InvalidURL):
        return BadRequest(f"{step} failed: the URL is not valid: {exc}")
    if isinstance(exc, httpx.TooManyRedirects):
        return UpstreamError(f"{step} failed: redirected more than {MAX_REDIRECTS} times")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return UpstreamError(f"{step} failed: redirected to a URL that is not http(s)")
    if "CERTIFICATE_VERIFY_FAILED" in reason:
        return UpstreamError(
            f"{step} failed: TLS verification failed; trust its CA with REFLECTOR_GPU_EXTRA_CA or "
            "<REFLECTOR_GPU_TLS_DIR>/ca.crt"
        )
    if isinstance(exc, httpx.ConnectError):
        if "SSL" in reason:
            return UpstreamError(f"{step} failed: the TLS handshake failed (is it an https server?)")
        return UpstreamError(f"{step} failed: cannot connect: {reason}")
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return UpstreamError(f"{step} failed: the connection broke: {reason}")
    return UpstreamError(f"{step} failed: {type(exc).__name__}")


@functools.lru_cache(maxsize=8)
def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client `ssl.SSLContext` with the trust described above (cached per settings)."""
    context = ssl.create_default_context()
    if not context.get_ca_certs():
        import certifi

        context.load_verify_locations(cafile=certifi.where())
    if settings.tls_dir is not None and (settings.tls_dir / "ca.crt").is_file():
        context.load_verify_locations(cafile=str(settings.tls_dir / "ca.crt"))
    for path in settings.extra_ca:
        context.load_verify_locations(cafile=str(path))
    return context
