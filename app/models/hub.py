"""Fetching a model repository from a model hub into the models directory: verified,
resumable, atomic, shared, and done once.

The hub's protocol is `huggingface_hub`'s (it honours ``HF_ENDPOINT``, ``HF_TOKEN`` and
``HF_HUB_OFFLINE``): `HfApi.model_info` pins the revision to a commit, `HfApi.list_repo_tree`
lists the files with their sizes and published hashes, and `file_download.http_get` moves
the bytes (it sends ``Range: bytes=N-`` for a resumed transfer and retries transient
errors). What the library does not do, this module does:

- **resumable across tries**: each file is written to ``<file>.part`` in a staging directory
  under ``<models>/.fetch/`` that outlives the process; the next try (a restart, another
  replica) continues from the part's size. (`hf_hub_download` deletes its partial file
  when a transfer fails.)
- **verified**: every file is checked against the hash the hub publishes for it (SHA-256 of
  an LFS file, the git blob SHA-1 of a small one). A file that does not match is deleted
  and fetched once more; a second mismatch fails the fetch. Nothing unverified is loaded.
- **atomic**: the staging directory is renamed to the model directory only when every file
  is verified, so a crash leaves nothing a later start mistakes for a model.
- **shared**: an exclusive ``flock`` on ``<models>/.fetch/<name>.lock`` makes replicas (and a
  ``fetch`` command) that start together download once; the others wait, then find it done.
- **once**: callers look for the finished directory first, so a later start makes no
  request at all; with ``HF_HUB_OFFLINE=1`` this module refuses before any request.
- **progress**: `Progress` is updated as bytes arrive, and a log line goes out at least
  every `PROGRESS_LOG_SECONDS` (model, bytes done / total, rate, ETA).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("app.models.hub")

PROGRESS_LOG_SECONDS = 10.0
FETCH_DIR = ".fetch"  # under the models directory: staging directories and locks
MANIFEST = ".verified.json"  # written into a finished model directory: repo, commit, file hashes
MAX_TRIES_PER_FILE = 2  # a file whose hash does not match is fetched once more, then the fetch fails
_HASH_CHUNK = 8 * 1024 * 1024


class FetchError(Exception):
    """A model could not be fetched; `reason` is one line an operator can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def human_bytes(size: float) -> str:
    """``1.6 GB``, ``41 MB``, ``900 B`` (decimal units, as hubs and disks state sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}" if size < 10 * scale else f"{size / scale:.0f} {unit}"
    return f"{int(size)} B"


@dataclass
class Progress:
    """How far a fetch is: bytes `done` of `total` (0 until the file list is known), the
    `label` it is logged under, and `waiting` while another process holds the lock."""

    label: str
    total: int = 0
    done: int = 0
    waiting: bool = False
    started: float = field(default_factory=time.monotonic)

    def describe(self) -> str:
        """``downloading 41% of 1.6 GB``, ``waiting for another process to download X``, ..."""
        if self.waiting:
            return f"waiting for another process to download {self.label}"
        if not self.total:
            return f"looking up {self.label} on the model hub"
        return f"downloading {100 * self.done // self.total}% of {human_bytes(self.total)}"

    def line(self, resumed_from: int = 0) -> str:
        """One log line: bytes done / total, the rate since the start, and the ETA."""
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = max(0, self.done - resumed_from) / elapsed
        eta = f"{(self.total - self.done) / rate:.0f} s" if rate > 0 else "unknown"
        return (
            f"fetching {self.label}: {human_bytes(self.done)} of {human_bytes(self.total)} "
            f"({100 * self.done // max(1, self.total)}%), {human_bytes(rate)}/s, ETA {eta}"
        )


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository at a pinned commit: its path, size (bytes) and published
    hash: `sha256` for LFS files, else the git blob id `blob_id` (SHA-1 of the git blob)."""

    path: str
    size: int
    sha256: str | None
    blob_id: str


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` forbids every request to the hub."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    """The hub's base URL (``HF_ENDPOINT``, else huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _git_blob_sha1(path: Path) -> str:
    """Git's object id of a file: SHA-1 of ``blob <size>\\0`` and the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # noqa: S324 - git's own id, not security
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, remote: RemoteFile) -> bool:
    """Whether `path` holds exactly the bytes the hub published for `remote`."""
    if path.stat().st_size != remote.size:
        return False
    if remote.sha256:
        return _sha256(path) == remote.sha256
    return _git_blob_sha1(path) == remote.blob_id


def _translate(exc: BaseException, repo_id: str) -> FetchError:
    """One line for what went wrong talking to the hub (auth, missing repo, network, disk)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    where = endpoint()
    if isinstance(exc, OfflineModeIsEnabled):
        return FetchError("HF_HUB_OFFLINE is set: no request is made to the model hub")
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            return FetchError(
                f"the model hub {where} refused {repo_id} ({status}): set HF_TOKEN to a token that "
                "may read it (and accept the model's terms on the hub if it is gated)"
            )
        if status == 404:
            return FetchError(f"the model hub {where} has no {repo_id} (404): check the model name")
        return FetchError(f"the model hub {where} answered {status} for {repo_id}")
    # huggingface_hub talks through httpx (or its own fork, httpx2): tell them by their classes.
    transport = {cls.__name__ for cls in type(exc).__mro__ if cls.__module__.split(".")[0] in ("httpx", "httpx2")}
    if "TimeoutException" in transport:
        return FetchError(f"the model hub {where} timed out")
    if "HTTPError" in transport:
        return FetchError(f"the model hub {where} cannot be reached ({type(exc).__name__})")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return FetchError(f"the disk holding the models directory is full while fetching {repo_id}")
    if isinstance(exc, OSError):
        return FetchError(f"fetching {repo_id} failed: {exc.strerror or exc}")
    return FetchError(f"fetching {repo_id} failed ({type(exc).__name__})")


def list_files(repo_id: str, patterns: Sequence[str] | None, token: str | None, revision: str | None = None) -> tuple[str, list[RemoteFile]]:
    """The commit `revision` (default: the main branch) resolves to, and the repository's
    files there matching any of `patterns` (fnmatch; None: all) with their published hashes.

    Raises `FetchError` (offline, unreachable, 401/403, 404).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    if is_offline():
        raise FetchError("HF_HUB_OFFLINE is set: no request is made to the model hub")
    api = HfApi(token=token or None)
    try:
        commit = api.model_info(repo_id, revision=revision).sha
        assert commit, "the hub named no commit"
        entries = api.list_repo_tree(repo_id, revision=commit, recursive=True)
        files = [
            RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None, e.blob_id)
            for e in entries
            if isinstance(e, RepoFile) and (patterns is None or any(fnmatch.fnmatch(e.path, p) for p in patterns))
        ]
    except Exception as exc:  # noqa: BLE001 - every failure becomes one operator-readable line
        raise _translate(exc, repo_id) from None
    if not files:
        raise FetchError(f"{repo_id} on {endpoint()} has none of the files needed ({', '.join(patterns or [])})")
    return commit, files


@contextlib.contextmanager
def fetch_lock(models_dir: Path, name: str, progress: Progress | None = None) -> Iterator[None]:
    """Hold the exclusive lock for fetching `name` into `models_dir` (an ``flock`` that the
    kernel releases if the holder dies); `progress.waiting` is set while another holds it."""
    directory = models_dir / FETCH_DIR
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"{name}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is fetching %s; waiting for it", name)
            if progress is not None:
                progress.waiting = True
            fcntl.flock(lock, fcntl.LOCK_EX)
            if progress is not None:
                progress.waiting = False
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download(url: str, part: Path, remote: RemoteFile, headers: dict[str, str], progress: Progress) -> None:
    """Append the rest of `remote` to `part` (resuming from its size) with `http_get`."""
    from huggingface_hub.file_download import http_get

    have = part.stat().st_size if part.exists() else 0
    if have > remote.size:  # not a prefix of this file: start over
        part.unlink()
        have = 0
    progress.done += have

    class Counter:  # the progress bar `http_get` drives; it only counts here
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def update(self, n: int) -> None:
            progress.done += n

    with part.open("ab") as out:
        http_get(url, out, resume_size=have, headers=headers, expected_size=remote.size, tqdm_class=Counter)  # type: ignore[arg-type]


def _reporter(progress: Progress, stop: threading.Event, resumed_from: int) -> None:
    while not stop.wait(PROGRESS_LOG_SECONDS):
        log.info("%s", progress.line(resumed_from))


def fetch_repo(
    repo_id: str,
    models_dir: Path,
    name: str,
    *,
    patterns: Sequence[str] | None = None,
    token: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Fetch the files of hub repository `repo_id` matching `patterns` into
    ``<models_dir>/<name>`` and return that directory (see the module docstring).

    Returns at once, with no request, when the directory is already complete. Raises
    `FetchError` with one line naming the cause (offline, unreachable, 401/403 naming
    ``HF_TOKEN``, 404, disk full, a file that twice failed its hash).
    """
    target = models_dir / name
    progress = progress or Progress(repo_id)
    if (target / MANIFEST).is_file():
        return target
    with fetch_lock(models_dir, name, progress):
        if (target / MANIFEST).is_file():  # another process finished it while we waited
            return target
        commit, files = list_files(repo_id, patterns, token)
        staging = models_dir / FETCH_DIR / name
        staging.mkdir(parents=True, exist_ok=True)
        progress.total = sum(f.size for f in files)
        progress.done = 0
        from huggingface_hub import constants, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=token or None)
        already = sum(f.size for f in files if (staging / f.path).is_file())
        log.info(
            "fetching %s (%s at %s) from %s into %s: %d files, %s",
            repo_id, name, commit[:12], constants.ENDPOINT, target, len(files), human_bytes(progress.total),
        )
        stop = threading.Event()
        reporter = threading.Thread(target=_reporter, args=(progress, stop, already), daemon=True, name="fetch-progress")
        reporter.start()
        try:
            for remote in files:
                _fetch_file(repo_id, commit, remote, staging, headers, progress, hf_hub_url)
        except FetchError:
            raise
        except Exception as exc:  # noqa: BLE001 - network, auth, disk: one line each
            raise _translate(exc, repo_id) from None
        finally:
            stop.set()
        manifest = {"repo": repo_id, "commit": commit, "files": {f.path: f.sha256 or f.blob_id for f in files}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(target, ignore_errors=True)  # an old, unmarked directory of that name
        os.replace(staging, target)
        log.info("fetched %s into %s (%s, every file verified)", repo_id, target, human_bytes(progress.total))
        return target


def _fetch_file(repo_id, commit, remote: RemoteFile, staging: Path, headers, progress: Progress, hf_hub_url) -> None:
    """Download one file into `staging` (resumed from its ``.part``), verify it, keep it."""
    final = staging / remote.path
    if final.is_file():  # verified by an earlier, interrupted try
        progress.done += remote.size
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    url = hf_hub_url(repo_id, remote.path, revision=commit)
    for attempt in range(1, MAX_TRIES_PER_FILE + 1):
        before = progress.done
        _download(url, part, remote, headers, progress)
        if verify(part, remote):
            os.replace(part, final)
            return
        part.unlink(missing_ok=True)
        progress.done = before
        log.warning(
            "%s of %s does not match the hash the hub publishes for it; deleted (try %d of %d)",
            remote.path, repo_id, attempt, MAX_TRIES_PER_FILE,
        )
    raise FetchError(
        f"{remote.path} of {repo_id} did not match its published hash after {MAX_TRIES_PER_FILE} downloads; "
        "nothing was loaded"
    )
