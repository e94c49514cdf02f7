"""The service's process entry, in the image and locally (``.venv/bin/python entrypoint.py``).

Reads the settings once, prepares the TLS material, starts the plain-HTTP listener
(`app.tls.redirect`) and, with ``REFLECTOR_GPU_TLS=acme``, the certificate manager
(`app.tls.acme`) as threads, then runs the supervisor, which starts the model workers and
Granian as children and stays alive as the root of the process tree (see
app/supervision/supervisor.py). Exit status: 0 after a clean stop, 2 for invalid settings,
certificates or an unusable HTTP port, 3 when a model cannot be loaded, Granian's status
when it fails.

``entrypoint.py models ARGS`` runs ``python -m app.models ARGS`` instead (in the image:
``podman run --rm -v models:/models IMAGE models fetch --defaults --device cuda``).
"""

from __future__ import annotations

import logging
import sys

from app import models, settings as settings_module, tls
from app.tls import acme
from app.tls.redirect import Challenges, RedirectServer
from app.logs import setup_logging
from app.supervision.supervisor import Supervisor

log = logging.getLogger("app.entrypoint")


def main() -> int:
    setup_logging()
    try:
        settings = settings_module.load()
    except settings_module.SettingsError as exc:
        log.error("%s", exc)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    problems = models.check_paths(settings)
    if problems:
        log.error("invalid settings:\n  %s", "\n  ".join(problems))
        return 2
    challenges = Challenges()
    manager = acme.CertificateManager(settings, challenges) if settings.tls == "acme" else None
    try:
        tls_files = manager.files if manager is not None else tls.resolve(settings)
    except tls.CertificateError as exc:
        log.error("cannot serve TLS: %s", exc)
        return 2
    if settings.http_port:
        try:
            RedirectServer(settings, challenges).start()
        except OSError as exc:
            log.error("cannot listen on REFLECTOR_GPU_HTTP_PORT=%d: %s", settings.http_port, exc)
            return 2
    if manager is not None:
        manager.start()
    scheme = "http" if tls_files is None else "https"
    if settings.tls_client_ca is not None:
        log.info("clients must present a certificate signed by %s (mTLS)", settings.tls_client_ca)
    if not settings.auth_required:
        reach = "this machine" if settings.is_loopback else "the network"
        log.warning(
            "!!! REFLECTOR_GPU_APIKEY is not set: ANYONE on %s who can reach %s:%d can use this host. "
            "Set REFLECTOR_GPU_APIKEY to require 'Authorization: Bearer <key>'. !!!",
            reach, settings.host, settings.port,
        )
    if tls_files is not None and tls_files.ca is not None:
        log.info("clients should trust %s", tls_files.ca.resolve())
    log.info("serving %s://%s:%d", scheme, settings.host, settings.port)
    return Supervisor(settings, tls_files).run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["models"]:
        sys.exit(models.main(sys.argv[2:]))
    sys.exit(main())
