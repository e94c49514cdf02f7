"""The result store: finished recording results, kept on disk so a client's retry collects them.

Reflector gives a recording 600 s (720 s for padding) and then retries with a freshly
presigned URL, so the URL does not identify the work. A result is keyed by what determines
it: the SHA-256 of every downloaded input, every parameter that changes the output, and the
identity of the loaded model and its settings (`key`). An ``Idempotency-Key`` header gives a
second key that points at the same result (an alias).

Layout, under ``<state>/results/`` (mode 0700; every file 0600)::

    <key>.entry   msgpack `Entry`: the encoded result (or an alias to another key)
    <key>.blob    the encoded output file of /pad and /mixdown, PUT again on a retry
    <key>.lock    flock(2) held by the one job computing that key, in whichever process
    .store.lock   flock(2) around writes, expiry and eviction

A job that computes a key holds ``<key>.lock`` from before it starts until its result is
written, so another request (in any Granian worker process) that finds the lock taken waits
for it and then reads the result: it *attaches* instead of running the model again. A lock
dies with its process, so a crashed job frees its waiters, and the first of them computes
the result itself. Entries expire `Settings.result_ttl_seconds` after they were written
(`sweep`, run by the supervisor and at every write); the store's files never exceed
`Settings.result_store_bytes` (oldest out first); `clear` deletes it all at a clean stop.
Nothing here logs a key, a result or a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from app.settings import Settings

POLL_SECONDS = 0.2  # how often a waiting request tries the running job's lock
SWEEP_SECONDS = 30.0  # how often the supervisor deletes expired entries
STALE_TEMP_SECONDS = 3600.0  # half-written files of a crashed process are deleted after this
FILE_MODE = 0o600
DIR_MODE = 0o700


class Entry(msgspec.Struct, frozen=True):
    """One stored result: `value` (msgpack of the route's result struct), `audio_seconds`
    (for the access log), `blob` (True when ``<key>.blob`` holds the encoded output), or
    `alias` (the key that holds the result; ``Idempotency-Key`` entries)."""

    value: bytes = b""
    audio_seconds: float | None = None
    blob: bool = False
    alias: str | None = None


def key(*parts: Any) -> str:
    """The hex SHA-256 of `parts` as canonical JSON (dict keys sorted): a store key.

    Every part must be JSON-encodable (str, numbers, None, lists, dicts, msgspec structs).
    """
    return hashlib.sha256(msgspec.json.encode(parts, order="sorted")).hexdigest()


def results_dir(settings: Settings) -> Path:
    """``<state>/results``: where the store lives."""
    return settings.state_dir / "results"


def clear(settings: Settings) -> None:
    """Delete every stored result (a clean stop, or a start after an unclean one)."""
    shutil.rmtree(results_dir(settings), ignore_errors=True)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temp file renamed over it), mode 0600."""
    fd, name = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)  # mkstemp: 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


class KeyLock:
    """The flock(2) on ``<key>.lock``: held by the one job computing that key.

    flock locks belong to an open file, so two requests in one process exclude each other
    as two processes do; the kernel drops the lock when its holder dies.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never blocks); True when this object now holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)  # `sweep` deleted the file we locked: lock the new one

    def release(self) -> None:
        """Let the next request in (idempotent)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ResultStore:
    """The store under `root`: entries live `ttl` seconds; all files fit in `max_bytes`."""

    def __init__(self, root: Path, ttl: float, max_bytes: int) -> None:
        self.root = root
        self.ttl = ttl
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, DIR_MODE)

    @classmethod
    def open(cls, settings: Settings) -> ResultStore | None:
        """The store of `settings`, or None when ``REFLECTOR_GPU_RESULT_TTL_SECONDS=0``."""
        if settings.result_ttl_seconds <= 0:
            return None
        return cls(results_dir(settings), settings.result_ttl_seconds, settings.result_store_bytes)

    def _path(self, name: str, suffix: str) -> Path:
        return self.root / f"{name}{suffix}"

    # -- reading ------------------------------------------------------------------------
    def get(self, name: str) -> Entry | None:
        """The live entry stored under key `name` (an alias followed once), or None."""
        entry = self._read(name)
        if entry is not None and entry.alias is not None:
            entry = self._read(entry.alias)
        return entry

    def _read(self, name: str) -> Entry | None:
        path = self._path(name, ".entry")
        try:
            with open(path, "rb") as source:
                if time.time() - os.fstat(source.fileno()).st_mtime >= self.ttl:
                    return None
                data = source.read()
            return msgspec.msgpack.decode(data, type=Entry)
        except (FileNotFoundError, msgspec.DecodeError):
            return None

    def checkout_blob(self, name: str, into: Path) -> Path | None:
        """A private link (or copy) of the blob stored under key `name` (alias followed),
        made in the directory `into`; the caller deletes it. None when it is gone."""
        entry = self._read(name)
        if entry is not None and entry.alias is not None:
            name = entry.alias
        into.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix="stored-", suffix=".blob", dir=into)
        os.close(fd)
        os.unlink(temp)
        try:
            _link_or_copy(self._path(name, ".blob"), Path(temp))
        except FileNotFoundError:
            return None
        return Path(temp)

    # -- writing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".store.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def put(self, name: str, entry: Entry, blob: Path | None = None, aliases: tuple[str, ...] = ()) -> bool:
        """Store `entry` under key `name` (and `blob` as its output file, linked or copied),
        plus an alias entry for each of `aliases`. Older entries are evicted, oldest first,
        until everything fits in `max_bytes`; an entry larger than that is not stored
        (returns False). Raises `OSError` when the disk refuses."""
        entry = msgspec.structs.replace(entry, blob=blob is not None)
        data = msgspec.msgpack.encode(entry)
        alias_data = [(alias, _alias(name)) for alias in aliases if alias != name]
        need = len(data) + sum(len(d) for _, d in alias_data) + (blob.stat().st_size if blob else 0)
        if need > self.max_bytes:
            return False
        with self._locked():
            items = sorted(self._sweep(time.time()).items(), key=lambda item: item[1][0])
            total = sum(size for _, (_, size) in items)
            for old, (_, size) in items:
                if total + need <= self.max_bytes:
                    break
                self._remove(old)
                total -= size
            if blob is not None:
                temp = self._path(f".{name}", ".tmp")
                temp.unlink(missing_ok=True)
                _link_or_copy(blob, temp)
                os.chmod(temp, FILE_MODE)
                os.replace(temp, self._path(name, ".blob"))
            _write_private(self._path(name, ".entry"), data)
            for alias, encoded in alias_data:
                _write_private(self._path(alias, ".entry"), encoded)
        return True

    def alias(self, alias: str, name: str) -> None:
        """Make key `alias` point at the result stored under key `name`."""
        with self._locked():
            _write_private(self._path(alias, ".entry"), _alias(name))

    def _sizes(self) -> dict[str, tuple[float, int]]:
        """Every stored key -> (written at, bytes of its entry and blob)."""
        sizes: dict[str, tuple[float, int]] = {}
        for path in self.root.glob("*.entry"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            try:
                blob_bytes = path.with_suffix(".blob").stat().st_size
            except FileNotFoundError:
                blob_bytes = 0
            sizes[path.stem] = (stat.st_mtime, stat.st_size + blob_bytes)
        return sizes

    def used_bytes(self) -> int:
        """Bytes held by entries and blobs."""
        return sum(size for _, size in self._sizes().values())

    def _remove(self, name: str) -> None:
        self._path(name, ".entry").unlink(missing_ok=True)
        self._path(name, ".blob").unlink(missing_ok=True)

    # -- expiry -------------------------------------------------------------------------
    def sweep(self) -> None:
        """Delete expired entries, their blobs, free lock files and stale temp files."""
        with self._locked():
            self._sweep(time.time())

    def _sweep(self, now: float) -> dict[str, tuple[float, int]]:
        """`sweep` with the lock held; returns `_sizes` of the entries that are left."""
        sizes = self._sizes()
        for name, (written, _) in list(sizes.items()):
            if now - written >= self.ttl:
                self._remove(name)
                del sizes[name]
        for path in self.root.glob("*.blob"):
            if not path.with_suffix(".entry").exists():
                path.unlink(missing_ok=True)
        for path in self.root.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                    path.unlink()
        for path in self.root.glob("*.lock"):
            if path.with_suffix(".entry").exists():
                continue
            lock = KeyLock(path)
            with contextlib.suppress(FileNotFoundError):
                if lock.try_acquire():  # nobody computes this key: the file can go
                    path.unlink(missing_ok=True)
                    lock.release()
        return sizes

    # -- running jobs -------------------------------------------------------------------
    def lock(self, name: str) -> KeyLock:
        """The (not yet taken) lock of key `name`."""
        return KeyLock(self._path(name, ".lock"))

    async def claim(self, name: str) -> tuple[str, Entry | KeyLock]:
        """Find key `name`'s result or the right to compute it.

        Returns ``("stored", entry)`` for a finished result; ``("attached", entry)`` after
        waiting for the job that was computing it; ``("owner", lock)`` when this caller must
        compute it (nobody was, or the job it waited for failed) and now holds `lock` (it
        must `release` it after `put`). Cancelling the wait leaves no lock held.
        """
        entry = self.get(name)
        if entry is not None:
            return "stored", entry
        lock = self.lock(name)
        waited = False
        while not lock.try_acquire():
            waited = True
            await asyncio.sleep(POLL_SECONDS)
        entry = self.get(name)
        if entry is None:
            return "owner", lock
        lock.release()
        return ("attached" if waited else "stored"), entry


def _alias(name: str) -> bytes:
    return msgspec.msgpack.encode(Entry(alias=name))


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` at `target` (same inode, no bytes copied), else copy it (0600)."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
