"""Built-in ACME certificates (``REFLECTOR_GPU_TLS=acme``): HTTP-01 only, with certbot's
`acme` library and `cryptography`; no certbot process.

A thread of the entrypoint keeps a certificate for every name in ``REFLECTOR_GPU_DOMAIN``
under ``<state>/acme/<directory>/`` (`store_dir`: one directory per ACME server, so switching
from Let's Encrypt's staging to production never serves a staging certificate):

- ``account-key.pem`` (ECDSA P-256, mode 600) and ``account.json`` (the account's URL at
  the directory it was made with): one account per key, reused at every start;
- ``key.pem`` (mode 600) and ``cert.pem`` (the full chain), what Granian serves. A stored
  certificate that is valid, covers the names and is not due is reused: no order at start
  (Let's Encrypt rate-limits orders).

Renewal is due when a third of the certificate's lifetime is left, or earlier when the
server's ACME Renewal Information (ARI, when its directory offers ``renewalInfo``) says so.
A failed order is retried after `FIRST_RETRY_SECONDS`, doubling up to `MAX_RETRY_SECONDS`;
meanwhile the old certificate keeps serving. A new pair is written key first, then chain,
each atomically; the supervisor notices the change, validates the pair and only then sends
Granian SIGHUP (`app.supervision.supervisor`). Until the first certificate exists the
supervisor does not start Granian, so HTTPS is never served with a wrong certificate.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import urllib.parse
from pathlib import Path

import josepy as jose
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from app import tls
from app.tls.redirect import Challenges
from app.settings import Settings

log = logging.getLogger("app.tls.acme")

RENEW_FRACTION = 1 / 3  # renew when this fraction of the lifetime is left (as certbot does)
FIRST_RETRY_SECONDS = 120.0  # Let's Encrypt allows 5 failed validations per name and hour
MAX_RETRY_SECONDS = 3600.0
RECHECK_SECONDS = 6 * 3600.0  # a valid certificate's due time (ARI) is looked at this often
ORDER_TIMEOUT_SECONDS = 120.0
NETWORK_TIMEOUT_SECONDS = 30
USER_AGENT = "reflector-gpu (acme-python)"


class AcmeError(RuntimeError):
    """An order cannot succeed as configured (e.g. the server offers no HTTP-01 challenge)."""


def store_dir(settings: Settings) -> Path:
    """Where the account and certificate for `settings.acme_directory` live: e.g.
    ``<state>/acme/acme-v02.api.letsencrypt.org-directory``."""
    url = urllib.parse.urlsplit(settings.acme_directory)
    return settings.acme_dir / re.sub(r"[^A-Za-z0-9.]+", "-", f"{url.netloc}{url.path}").strip("-")


def _offers_ari(directory: messages.Directory) -> bool:
    try:
        directory["renewalInfo"]
    except KeyError:
        return False
    return True


def describe(exc: BaseException) -> str:
    """One line for the log: the server's problem document when there is one."""
    if isinstance(exc, messages.Error):
        return f"{exc.typ or exc.code}: {exc.detail}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CertificateManager:
    """Obtains and renews the ACME certificate for `settings.domains`.

    `files` is what the supervisor serves (``cert.pem``, ``key.pem`` under `settings.acme_dir`).
    `challenges` is the store the plain-HTTP listener answers HTTP-01 from. `start` runs the
    loop in a daemon thread; `stop` ends it at its next wait.
    """

    def __init__(self, settings: Settings, challenge_store: Challenges) -> None:
        self.settings = settings
        self.challenges = challenge_store
        self.directory = store_dir(settings)
        self.files = tls.TlsFiles(self.directory / "cert.pem", self.directory / "key.pem", None)
        self.account_key_path = self.directory / "account-key.pem"
        self.account_path = self.directory / "account.json"
        self._client: client.ClientV2 | None = None
        self._stopped = threading.Event()

    # -- the stored certificate -------------------------------------------------------
    def current(self) -> x509.Certificate | None:
        """The stored leaf when the pair is usable now for every configured name, else None."""
        if not (self.files.cert.is_file() and self.files.key.is_file()):
            return None
        try:
            return tls.check_pair(self.files.cert, self.files.key, self.settings.domains)
        except tls.CertificateError as exc:
            log.warning("the stored ACME certificate cannot be used: %s", exc)
            return None

    def renewal_time(self, leaf: x509.Certificate) -> dt.datetime:
        """When `leaf` is due: a third of its lifetime before it expires, or the server's ARI
        suggestion when that is earlier (ARI failures are ignored)."""
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        due = leaf.not_valid_after_utc - lifetime * RENEW_FRACTION
        try:
            acme = self._client or self.connect()
            suggested = None
            if _offers_ari(acme.directory):
                suggested, _ = acme.renewal_time(self.files.cert.read_bytes())
        except (errors.Error, OSError) as exc:  # messages.Error and requests' errors included
            log.info(
                "ACME renewal information unavailable (%s): renewing a third of the lifetime before expiry",
                describe(exc),
            )
        else:
            if suggested is not None:
                suggested = suggested if suggested.tzinfo else suggested.replace(tzinfo=dt.timezone.utc)
                due = min(due, suggested)
        return due

    # -- talking to the ACME server ---------------------------------------------------
    def _account_key(self) -> jose.JWKEC:
        if self.account_key_path.is_file():
            key = serialization.load_pem_private_key(self.account_key_path.read_bytes(), password=None)
        else:
            key = tls.new_key()
            tls.write_private(self.account_key_path, tls.key_pem(key))
            log.info("made a new ACME account key %s", self.account_key_path)
        return jose.JWKEC(key=key)

    def connect(self) -> client.ClientV2:
        """A client for the configured directory, logged in to this host's account (found by
        its key, or registered with the optional e-mail contact, agreeing to the CA's terms)."""
        s = self.settings
        verify: bool | str = str(s.acme_ca) if s.acme_ca else True
        net = client.ClientNetwork(
            self._account_key(), alg=jose.ES256, verify_ssl=verify,  # type: ignore[arg-type]
            user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT_SECONDS,
        )
        acme = client.ClientV2(client.ClientV2.get_directory(s.acme_directory, net), net)
        stored = self._stored_account()
        try:
            regr = acme.query_registration(
                messages.RegistrationResource(uri=stored or "", body=messages.Registration())
            )
        except messages.Error as exc:
            if exc.code != "accountDoesNotExist":
                raise
            contact = {"email": s.acme_email} if s.acme_email else {}
            new = messages.NewRegistration.from_data(terms_of_service_agreed=True, **contact)
            regr = acme.new_account(new)
            terms = acme.directory.meta.terms_of_service
            log.info("registered ACME account %s (terms of service: %s)", regr.uri, terms or "none given")
        if regr.uri != stored:
            record = {"directory": s.acme_directory, "uri": regr.uri}
            tls.write_public(self.account_path, json.dumps(record).encode() + b"\n")
        self._client = acme
        return acme

    def _stored_account(self) -> str | None:
        try:
            stored = json.loads(self.account_path.read_text())
        except (OSError, ValueError):
            return None
        return stored.get("uri") if stored.get("directory") == self.settings.acme_directory else None

    def order(self) -> x509.Certificate:
        """Order a certificate for every configured name over HTTP-01 and store it.

        Returns the new leaf. Raises `AcmeError`, `acme.errors.Error` (validation failed,
        timeout), `acme.messages.Error` (the server's problem) or a `requests` error."""
        acme = self.connect()
        names = list(self.settings.domains)
        key = tls.new_key()
        key_pem = tls.key_pem(key)
        log.info(
            "ordering an ACME certificate for %s from %s", ", ".join(names), self.settings.acme_directory
        )
        order = acme.new_order(crypto_util.make_csr(key_pem, names))
        tokens = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                offers = [c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)]
                if not offers:
                    name = authz.body.identifier.value
                    raise AcmeError(f"the ACME server offers no HTTP-01 challenge for {name}")
                offer = offers[0]
                response, validation = offer.response_and_validation(acme.net.key)
                token = offer.chall.encode("token")
                self.challenges.add(token, validation)
                tokens.append(token)
                acme.answer_challenge(offer, response)
            # naive local time: what acme compares the deadline with
            deadline = dt.datetime.now() + dt.timedelta(seconds=ORDER_TIMEOUT_SECONDS)
            order = acme.poll_and_finalize(order, deadline=deadline)
        finally:
            for token in tokens:
                self.challenges.remove(token)
        chain = order.fullchain_pem.encode()
        leaf = x509.load_pem_x509_certificates(chain)[0]
        tls.write_private(self.files.key, key_pem)
        tls.write_public(self.files.cert, chain)
        log.warning(
            "ACME certificate issued for %s, valid until %s; SHA-256 %s",
            ", ".join(names), leaf.not_valid_after_utc, tls.fingerprint(leaf),
        )
        return leaf

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        """Keep a valid certificate until `stop`: reuse, order when missing or due, back off."""
        retry = FIRST_RETRY_SECONDS
        leaf = self.current()
        if leaf is None:
            log.warning(
                "no ACME certificate yet for %s: ordering one (HTTP-01 on port %d); "
                "HTTPS starts once it is issued",
                ", ".join(self.settings.domains), self.settings.http_port,
            )
        else:
            log.info(
                "reusing the ACME certificate in %s, valid until %s; SHA-256 %s",
                self.files.cert, leaf.not_valid_after_utc, tls.fingerprint(leaf),
            )
        while not self._stopped.is_set():
            if leaf is not None:
                wait = (self.renewal_time(leaf) - tls.now_utc()).total_seconds()
                if wait > 0:
                    log.info("ACME renewal due in %.0f s", wait)
                    self._stopped.wait(min(wait, RECHECK_SECONDS))
                    leaf = self.current()
                    continue
            try:
                leaf = self.order()
                retry = FIRST_RETRY_SECONDS
            except Exception as exc:  # noqa: BLE001 - any failure is retried; the old pair serves on
                leaf = self.current()
                if leaf is None:
                    state = "HTTPS is not served until a certificate is issued"
                else:
                    state = f"the current certificate (valid until {leaf.not_valid_after_utc}) keeps serving"
                log.error("ACME order failed: %s; %s; next try in %.0f s", describe(exc), state, retry)
                self._stopped.wait(retry)
                retry = min(retry * 2, MAX_RETRY_SECONDS)
                leaf = self.current()  # the loop's top orders again if it is still due (or missing)

    def start(self) -> None:
        threading.Thread(target=self.run, name="acme", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
