"""API-key authentication: ``Authorization: Bearer <key>``, several named keys.

Keys come from ``REFLECTOR_GPU_APIKEY`` (comma-separated; named ``env-1``, ``env-2``, ... in
the log) and from ``REFLECTOR_GPU_APIKEYS_FILE``, a file of ``name key`` lines (``#``
comments and blank lines ignored), re-read whenever its modification time, size or inode
changes, so a key is added or revoked without a restart. A line that does not parse is
skipped with a warning (the others still apply); a file that disappears or cannot be read
grants nothing until it is back. The presented key is compared with every known key in
constant time (`hmac.compare_digest` on SHA-256 digests, so lengths leak nothing either).

A Litestar guard applied to every route. Open without the key: the API docs and OpenAPI
schema (existing health checks poll ``/docs``), ``/health``, ``/ready`` (handlers marked
``opt={"open": True}``), and any route whose name is listed in `REFLECTOR_GPU_OPEN_ROUTES`.
With no key configured every route is open (the entrypoint logs that loudly). The matching
key's name goes to ``scope["state"]["key_name"]`` for the access log; the key itself is
never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from pathlib import Path

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from app import tls
from app.errors import Unauthorized
from app.settings import Settings

log = logging.getLogger("app.http.auth")

DOCS_PATH = "/docs"
# Reflector sends each route's key from its own setting; its `setup-selfhosted.sh --hosted`
# writes only TRANSCRIPT_MODAL_API_KEY, so these routes get 401 and Reflector then drops
# speakers (or padding, mixdown) without an error. The first 401 of each says where the key goes.
REFLECTOR_KEY_SETTINGS = {
    "diarize": "DIARIZATION_MODAL_API_KEY",
    "pad": "PADDING_MODAL_API_KEY (or MODAL_API_KEY)",
    "mixdown": "MIXDOWN_MODAL_API_KEY (or MODAL_API_KEY)",
}
_hinted: set[str] = set()
KEY_BEFORE_UPGRADE = "key_before_upgrade"  # handler opt: the WebSocket handler checks the key itself


def presented_key(authorization: str | None) -> str | None:
    """The token of a ``Bearer`` Authorization header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys_file(text: str, source: str = "keys file") -> tuple[dict[str, bytes], list[str]]:
    """``name key`` lines -> ({name: SHA-256 of key}, [problems]); a bad line is skipped.

    A line needs exactly two whitespace-separated fields; a repeated name keeps its first key.
    Problems name the line number, never the key.
    """
    keys: dict[str, bytes] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            problems.append(f"{source} line {number}: expected 'name key', skipped")
        elif fields[0] in keys:
            problems.append(f"{source} line {number}: the name {fields[0]!r} is used twice, skipped")
        else:
            keys[fields[0]] = _digest(fields[1])
    return keys, problems


class KeyRing:
    """The keys one process accepts: the environment's, plus the keys file's, reloaded
    when the file changes (checked with one ``stat`` per lookup). Thread-safe."""

    def __init__(self, env_keys: tuple[str, ...], path: Path | None) -> None:
        names = ["env"] if len(env_keys) == 1 else [f"env-{i}" for i in range(1, len(env_keys) + 1)]
        self._env = {name: _digest(key) for name, key in zip(names, env_keys)}
        self._path = path
        self._stamp: tuple[int, int, int] | None | str = "unread"
        self._file: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def _refresh(self) -> dict[str, bytes]:
        if self._path is None:
            return self._file
        stamp = tls.file_stamp(self._path)
        with self._lock:
            if stamp == self._stamp:
                return self._file
            self._stamp = stamp
            try:
                text = self._path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                log.error(
                    "cannot read REFLECTOR_GPU_APIKEYS_FILE %s (%s): its keys are refused until it is back",
                    self._path, exc,
                )
                self._file = {}
                return self._file
            keys, problems = parse_keys_file(text, str(self._path))
            for problem in problems:
                log.warning("%s", problem)
            log.info("API keys file %s loaded: %d key(s): %s", self._path, len(keys), ", ".join(keys) or "-")
            self._file = keys
            return self._file

    def match(self, token: str) -> str | None:
        """The name of the key equal to `token`, else None. Every key is compared."""
        wanted = _digest(token)
        found = None
        for name, digest in (*self._env.items(), *self._refresh().items()):
            if hmac.compare_digest(wanted, digest) and found is None:
                found = name
        return found


_rings: dict[tuple, KeyRing] = {}


def key_ring(settings: Settings) -> KeyRing:
    """The process's `KeyRing` for `settings` (one per distinct key configuration)."""
    ident = (settings.apikeys, settings.apikeys_file)
    ring = _rings.get(ident)
    if ring is None:
        ring = _rings[ident] = KeyRing(settings.apikeys, settings.apikeys_file)
    return ring


def require_api_key(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard: raises `Unauthorized` unless the route is open or the key matches (constant time).

    A WebSocket route marked ``opt={KEY_BEFORE_UPGRADE: True}`` calls `check_api_key`
    itself: a guard's refusal would close the handshake with 403, not answer 401."""
    if handler.opt.get(KEY_BEFORE_UPGRADE):
        return
    check_api_key(connection, handler)


def check_api_key(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Raises `Unauthorized` unless the route is open or the key matches (constant time)."""
    settings: Settings = connection.app.state.settings
    if not settings.auth_required:
        return
    if handler.opt.get("open") or connection.scope["path"].startswith(DOCS_PATH):
        return
    if handler.name and handler.name in settings.open_routes:
        return
    token = presented_key(connection.headers.get("authorization"))
    name = None if token is None else key_ring(settings).match(token)
    if name is None:
        setting = REFLECTOR_KEY_SETTINGS.get(handler.name or "")
        if setting is not None and handler.name not in _hinted:
            _hinted.add(handler.name)  # once per route and process
            log.warning(
                "401 on %s: a Reflector server sends this route's key from %s in its server/.env; "
                "TRANSCRIPT_MODAL_API_KEY alone does not cover it",
                connection.scope["path"], setting,
            )
        raise Unauthorized(
            "missing or wrong API key: send 'Authorization: Bearer <key>' with a key from "
            "REFLECTOR_GPU_APIKEY or REFLECTOR_GPU_APIKEYS_FILE"
        )
    connection.scope.setdefault("state", {})["key_name"] = name
