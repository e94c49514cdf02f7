"""The service's process entry, in the image and locally (``.venv/bin/python entrypoint.py``).

Reads the settings once, prepares the TLS material, then runs the supervisor, which starts
the model workers and Granian as children and stays alive as the root of the process tree
(see app/workers/supervisor.py). Exit status: 0 after a clean stop, 2 for invalid settings
or certificates, 3 when a model cannot be loaded, Granian's status when it fails.
"""

from __future__ import annotations

import logging
import sys

from app import models, settings as settings_module, tls
from app.logs import setup_logging
from app.workers.supervisor import Supervisor

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
    try:
        tls_files = tls.resolve(settings)
    except tls.CertificateError as exc:
        log.error("cannot serve TLS: %s", exc)
        return 2
    scheme = "http" if tls_files is None else "https"
    if not settings.apikey:
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
    sys.exit(main())
