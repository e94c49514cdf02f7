"""The CA bundle trusted for outbound HTTPS (audio downloads, presigned uploads).

Trust = the system store (certifi's bundle where the system has none) + ``ca.crt`` in
`REFLECTOR_GPU_TLS_DIR` when present + every PEM file in `REFLECTOR_GPU_EXTRA_CA`.
Verification is never turned off.
"""

from __future__ import annotations

import functools
import ssl

from app.settings import Settings


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
