"""TLS material: an internal CA and server certificates (cryptography), loading and checks.

The package also holds `acme` (certificates from an ACME CA over HTTP-01) and `redirect`
(the plain-HTTP listener: ACME challenges and redirects to HTTPS).

Everything made here verifies under Python's strict X.509 checks (`ssl.VERIFY_X509_STRICT`):
the CA has critical BasicConstraints(ca=True) and KeyUsage keyCertSign; a server certificate
has a SAN, ExtendedKeyUsage serverAuth, and Subject/Authority Key Identifiers. Keys are
ECDSA P-256 written as unencrypted PKCS#8 (Granian 2.8 cannot read encrypted keys), mode 600.

Files use the old setup script's layout: ``ca.key``, ``ca.crt``, ``server.pem``
(certificate then CA), ``server-key.pem``.

Command line (what `make cert` runs)::

    python -m app.tls make-cert --domain gpu.local --sans "IP:192.168.1.200" --out certs
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.settings import Settings

log = logging.getLogger("app.tls")

CA_DAYS = 3650
SERVER_DAYS = 397  # the CA/Browser Forum's ceiling for server certificates
RENEW_BEFORE_DAYS = 30
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

Name = x509.DNSName | x509.IPAddress


@dataclass(frozen=True)
class TlsFiles:
    """What Granian serves (`cert`, `key`) and the CA clients should trust (`ca`, may be None)."""

    cert: Path
    key: Path
    ca: Path | None


class CertificateError(ValueError):
    """A certificate or key file is unusable; the message says which and why."""


def parse_name(text: str) -> Name:
    """``DNS:host``, ``IP:addr`` or a bare host name / IP address as a SAN entry."""
    text = text.strip()
    kind, _, value = text.partition(":")
    if kind.upper() in ("DNS", "IP") and value:
        text = value
        if kind.upper() == "DNS":
            return x509.DNSName(text)
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text)


def now_utc() -> dt.datetime:
    """The current time, timezone-aware, in UTC (what certificate validity is compared with)."""
    return dt.datetime.now(dt.timezone.utc)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(mtime in ns, size in bytes, inode) of `path`, or None when it cannot be stat'ed: a
    changed stamp means the file was rewritten or replaced (the cheap check before re-reading)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def new_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 600, atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def write_public(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """digitalSignature (ECDSA handshakes), plus keyCertSign and cRLSign for a CA."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=signs_certificates,
        crl_sign=signs_certificates, encipher_only=False, decipher_only=False,
    )


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """`key` as unencrypted PKCS#8 PEM (what Granian reads)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_or_make_ca(directory: Path, common_name: str = "Reflector GPU host internal CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Reuse ``ca.crt``/``ca.key`` in `directory`, or make a new 10-year CA there."""
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.is_file() and key_path.is_file():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        return cert, key  # type: ignore[return-value]
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now_utc() - dt.timedelta(minutes=5))
        .not_valid_after(now_utc() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, key_pem(key))
    write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def issue_server_cert(
    directory: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: list[Name]
) -> TlsFiles:
    """Write ``server.pem`` (leaf then CA) and ``server-key.pem`` for `names`, signed by the CA."""
    if not names:
        raise CertificateError("a server certificate needs at least one DNS name or IP address")
    key = new_key()
    first = names[0].value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(first)[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now_utc() - dt.timedelta(minutes=5))
        .not_valid_after(min(now_utc() + dt.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "server.pem", directory / "server-key.pem", directory / "ca.crt")
    write_private(files.key, key_pem(key))
    write_public(
        files.cert,
        cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM),
    )
    return files


def make_cert(directory: Path, domain: str, sans: str = "") -> TlsFiles:
    """`make cert`: reuse or create the CA in `directory`, then issue a server certificate
    for `domain` plus the comma-separated `sans` (``DNS:name`` / ``IP:addr``)."""
    names = [parse_name(domain)] + [parse_name(s) for s in sans.split(",") if s.strip()]
    ca_cert, ca_key = load_or_make_ca(directory)
    return issue_server_cert(directory, ca_cert, ca_key, names)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated upper-case hex, as browsers show it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _load_chain(path: Path) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"{path}: not a PEM certificate ({exc})") from None
    return chain


def check_pair(cert_path: Path, key_path: Path, names: list[str] | tuple[str, ...] = ()) -> x509.Certificate:
    """Validate a certificate chain and key before serving them.

    Checks: both parse, the key matches the first certificate, it is valid now, and its SANs
    cover every name in `names`. Returns the leaf; raises `CertificateError` saying what is
    wrong.
    """
    leaf = _load_chain(cert_path)[0]
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise CertificateError(f"{key_path} does not match the certificate in {cert_path}")
    now = now_utc()
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise CertificateError(f"{cert_path} is not valid now (valid {leaf.not_valid_before_utc} to {leaf.not_valid_after_utc})")
    missing = [n for n in names if not covers(leaf, n)]
    if missing:
        raise CertificateError(f"{cert_path} does not cover {', '.join(missing)} in its SANs")
    return leaf


def covers(cert: x509.Certificate, name: str) -> bool:
    """True when `cert`'s SANs include `name` (an IP, an exact DNS name, or a ``*.`` wildcard match)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    wanted = parse_name(name)
    if isinstance(wanted, x509.IPAddress):
        return wanted.value in san.get_values_for_type(x509.IPAddress)
    host = wanted.value.lower()
    for dns in san.get_values_for_type(x509.DNSName):
        dns = dns.lower()
        if dns == host or (dns.startswith("*.") and host.split(".", 1)[-1] == dns[2:] and "." in host):
            return True
    return False


def self_signed(settings: Settings) -> TlsFiles:
    """The generated pair in ``<state>/tls``: an internal CA and a server certificate for the
    configured domains plus localhost, 127.0.0.1 and ::1.

    Reused across starts; re-issued when the names change or fewer than 30 days remain.
    """
    directory = settings.cert_dir
    names = list(dict.fromkeys([*settings.domains, *LOCAL_NAMES]))
    files = TlsFiles(directory / "server.pem", directory / "server-key.pem", directory / "ca.crt")
    ca_cert, ca_key = load_or_make_ca(directory, "Reflector GPU host self-signed CA")
    if files.cert.is_file() and files.key.is_file():
        try:
            leaf = check_pair(files.cert, files.key, names)
        except CertificateError as exc:
            log.info("re-issuing the self-signed certificate: %s", exc)
        else:
            if leaf.not_valid_after_utc - now_utc() > dt.timedelta(days=RENEW_BEFORE_DAYS):
                log.info(
                    "reusing the self-signed certificate for %s; SHA-256 fingerprint %s; clients should trust %s",
                    ", ".join(names), fingerprint(leaf), files.ca,
                )
                return files
            log.info("re-issuing the self-signed certificate: it expires %s", leaf.not_valid_after_utc)
    files = issue_server_cert(directory, ca_cert, ca_key, [parse_name(n) for n in names])
    leaf = _load_chain(files.cert)[0]
    log.warning(
        "generated a self-signed certificate for %s; SHA-256 fingerprint %s; clients should trust %s",
        ", ".join(names), fingerprint(leaf), files.ca,
    )
    return files


def resolve(settings: Settings) -> TlsFiles | None:
    """The certificate Granian should serve under `settings.tls`, or None for plain HTTP.

    ``auto``: certificate/key files if set, else the TLS directory if set, else self-signed.
    ``files``: the files or the directory, which must exist. Raises `CertificateError` when
    given files are unusable.
    """
    if settings.tls == "off":
        return None
    if settings.tls in ("auto", "files"):
        if settings.tls_cert and settings.tls_key:
            ca = settings.tls_dir / "ca.crt" if settings.tls_dir and (settings.tls_dir / "ca.crt").is_file() else None
            files = TlsFiles(settings.tls_cert, settings.tls_key, ca)
        elif settings.tls_dir:
            d = settings.tls_dir
            files = TlsFiles(d / "server.pem", d / "server-key.pem", d / "ca.crt" if (d / "ca.crt").is_file() else None)
        else:
            files = None
        if files is not None:
            leaf = check_pair(files.cert, files.key, settings.domains)
            log.info("serving %s (SHA-256 %s)", files.cert, fingerprint(leaf))
            return files
    return self_signed(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.tls")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-cert", help="make an internal CA (reused if present) and a server certificate")
    make.add_argument("--domain", required=True, help="the host's DNS name, e.g. gpu.local")
    make.add_argument("--sans", default="", help='extra names, comma-separated: "DNS:name,IP:addr"')
    make.add_argument("--out", default="certs", type=Path, help="output directory (default: certs)")
    args = parser.parse_args(argv)
    if not args.domain:
        parser.error("DOMAIN is required: make cert DOMAIN=gpu.local [SANS=IP:192.168.1.200]")
    files = make_cert(args.out, args.domain, args.sans)
    leaf = _load_chain(files.cert)[0]
    out = args.out.resolve()
    print(f"CA:          {out / 'ca.crt'}  (private key {out / 'ca.key'}: keep it off the server)")
    print(f"certificate: {files.cert}  SHA-256 {fingerprint(leaf)}")
    print(f"key:         {files.key}")
    print()
    print("Trust the CA on each client (Debian/Ubuntu):")
    print(f"  sudo cp {out / 'ca.crt'} /usr/local/share/ca-certificates/reflector-gpu-ca.crt && sudo update-ca-certificates")
    print("or point Reflector's Python at it: SSL_CERT_FILE / REQUESTS_CA_BUNDLE=<that file>.")
    print()
    print("Run the service with it: copy only the server files into a directory the container")
    print("user (gid 10001) can read, never ca.key, and mount the directory (renewals then show):")
    print("  mkdir -p /srv/reflector-gpu/certs")
    print(f"  install -m 0644 {files.cert} {out / 'ca.crt'} /srv/reflector-gpu/certs/")
    print(f"  install -m 0640 -g 10001 {files.key} /srv/reflector-gpu/certs/")
    print(
        f"  podman run -d -p 443:8443 -e REFLECTOR_GPU_APIKEY=<key> -e REFLECTOR_GPU_DOMAIN={args.domain} \\\n"
        "    -v /srv/reflector-gpu/certs:/certs:ro -v reflector-gpu-state:/state reflector-gpu"
    )
    print(f"Or without a container: REFLECTOR_GPU_TLS_DIR={out} make run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
