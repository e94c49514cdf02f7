"""Jobs of the recording routes (from-URL transcription, ``/diarize``, ``/pad``, ``/mixdown``):
computed once, kept for the client's retry.

`served` downloads the inputs (hashing them), builds the result key from their SHA-256,
the parameters that change the output and the identity of the worker's loaded model, and
then, through `app.results.ResultStore.claim`:
- answers a result the store holds at once (access log ``result=stored``);
- or waits for the job that is computing the same key, in any Granian worker process,
  and answers its result (``result=attached``; no second model run);
- or runs the job itself. Once the model work has started, a client that leaves does not
  cancel it: it goes on for up to ``REFLECTOR_GPU_ORPHAN_SECONDS`` and its result is kept.

An ``Idempotency-Key`` header names the result too: a request carrying a key whose job is
running or done is answered before anything is downloaded. With the store off
(``REFLECTOR_GPU_RESULT_TTL_SECONDS=0``) nobody could collect an orphaned result, so a
client that leaves cancels its job at once, as on the live upload route.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import msgspec
from litestar import Request

from app import results
from app.audio.fetch import download
from app.errors import ServiceError, Unavailable
from app.http.routes.disconnect import ClientWatch
from app.results import Entry, KeyLock, ResultStore
from app.settings import Settings
from app.workers.client import WorkerPool

log = logging.getLogger("app.http")

_T = TypeVar("_T", bound=msgspec.Struct)
IDEMPOTENCY_HEADER = "idempotency-key"

# Settings that change a worker's output, beyond what its Pong reports (model, device, info).
MODEL_SETTINGS: dict[str, Callable[[Settings], dict[str, Any]]] = {
    "whisper": lambda s: {
        "model": s.whisper_model,
        "beam_size": s.whisper_beam_size,
        "batch_size": s.whisper_batch_size,
        "compute_type": s.compute_type,
    },
    "diarizer": lambda s: {
        "model": s.diarization_model,
        "step": s.diarization_step,
        "segmentation_batch_size": s.diarization_segmentation_batch_size,
        "embedding_batch_size": s.diarization_embedding_batch_size,
    },
    "audio": lambda s: {},
}


class Outcome(NamedTuple, Generic[_T]):
    """A job's result and, for /pad and /mixdown, a private file holding its encoded output."""

    value: _T
    blob: Path | None


@dataclass
class Recording(Generic[_T]):
    """One recording route's job.

    `route`: the route's name; `kinds`: the workers whose model identity goes into the key;
    `params`: every parameter that changes the output (never a URL); `inputs`: the URLs to
    download, each with a label for error messages (None: no prefix); `compute(paths)`:
    runs the model on the downloaded files and returns the result and the output file it
    wrote (or None), which then belongs to the caller; `result_type`: the result's struct;
    `audio_seconds(result)`: for the access log.
    """

    route: str
    kinds: tuple[str, ...]
    params: dict[str, Any]
    inputs: list[tuple[str, str | None]]
    compute: Callable[[list[Path]], Awaitable[tuple[_T, Path | None]]]
    result_type: type[_T]
    audio_seconds: Callable[[_T], float]
    digests: list[str] = field(default_factory=list)


@asynccontextmanager
async def served(request: Request, workers: WorkerPool, job: Recording[_T]) -> AsyncIterator[Outcome[_T]]:
    """The job's `Outcome`, stored, attached to, or computed (see the module docstring).

    The outcome's file is deleted when the block exits; the access log gets the result's
    audio seconds. Raises what downloading and the worker raise, and `ClientGone` when the
    client leaves first.
    """
    outcome = await _serve(request, workers, job)
    request.state.audio_seconds = job.audio_seconds(outcome.value)
    try:
        yield outcome
    finally:
        if outcome.blob is not None:
            outcome.blob.unlink(missing_ok=True)


async def _serve(request: Request, workers: WorkerPool, job: Recording[_T]) -> Outcome[_T]:
    settings = workers.settings
    watch = ClientWatch(request)
    store = ResultStore.open(settings)
    locks: list[KeyLock] = []
    paths: list[Path] = []
    try:
        if store is None:
            return await watch.while_connected(_download_and_compute(settings, job))
        aliases: tuple[str, ...] = ()
        idempotency = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
        if idempotency:
            alias = results.key("idempotency", job.route, idempotency, job.params)
            how, got = await watch.while_connected(store.claim(alias))
            if isinstance(got, Entry):
                return await _found(request, settings, store, alias, how, got, job)
            locks.append(got)
            aliases = (alias,)
        paths = await watch.while_connected(_download_all(settings, job))
        identity = await _identity(workers, job.kinds)
        if identity is None:  # the worker is (re)starting: compute without the store
            return await watch.while_connected(_compute(job, paths))
        name = results.key(job.route, job.digests, job.params, identity)
        how, got = await watch.while_connected(store.claim(name))
        if isinstance(got, Entry):
            for alias in aliases:
                await asyncio.to_thread(store.alias, alias, name)  # flock and a write: off the event loop
            return await _found(request, settings, store, name, how, got, job)
        locks.append(got)
        task = asyncio.ensure_future(_compute_and_keep(store, job, name, aliases, paths, locks))
        paths, locks = [], []  # the task owns them now
        return await watch.keep_going(task, settings.orphan_seconds, _drop_output)
    finally:
        watch.close()
        for lock in locks:
            lock.release()
        for path in paths:
            path.unlink(missing_ok=True)


async def _found(
    request: Request, settings: Settings, store: ResultStore, name: str, how: str, entry: Entry, job: Recording[_T]
) -> Outcome[_T]:
    blob = None
    if entry.blob:
        blob = await asyncio.to_thread(store.checkout_blob, name, settings.tmp_dir)  # may copy a large file
        if blob is None:
            raise Unavailable("the stored result expired while it was being read; retry", retry_after=1)
    request.state.result = how
    return Outcome(msgspec.msgpack.decode(entry.value, type=job.result_type), blob)


async def _identity(workers: WorkerPool, kinds: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """What identifies the loaded models of the `kinds` workers and their settings; None
    when one of them does not answer a ping (then nothing is stored)."""
    identity = []
    for kind in kinds:
        pong = await workers.any_pong(kind)
        if pong is None:
            return None
        settings_part = MODEL_SETTINGS[kind](workers.settings)
        identity.append({"kind": kind, "model": pong.model, "device": pong.device, "info": pong.info, "settings": settings_part})
    return identity


async def _download_all(settings: Settings, job: Recording[_T]) -> list[Path]:
    """Download every input into ``<state>/tmp``, recording each one's SHA-256 in `job.digests`."""
    paths: list[Path] = []
    job.digests.clear()
    try:
        for url, label in job.inputs:
            digest = hashlib.sha256()
            try:
                paths.append(await download(settings, url, digest=digest))
            except ServiceError as exc:
                if label is None:
                    raise
                raise type(exc)(f"{label}: {exc.detail}", retry_after=exc.retry_after) from None
            job.digests.append(digest.hexdigest())
        return paths
    except BaseException:
        for path in paths:
            path.unlink(missing_ok=True)
        raise


async def _compute(job: Recording[_T], paths: list[Path]) -> Outcome[_T]:
    try:
        return Outcome(*await job.compute(paths))
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


async def _download_and_compute(settings: Settings, job: Recording[_T]) -> Outcome[_T]:
    return await _compute(job, await _download_all(settings, job))


async def _compute_and_keep(
    store: ResultStore, job: Recording[_T], name: str, aliases: tuple[str, ...], paths: list[Path], locks: list[KeyLock]
) -> Outcome[_T]:
    """Run the job, store its result, then let the waiting requests in."""
    try:
        outcome = await _compute(job, paths)
        entry = Entry(value=msgspec.msgpack.encode(outcome.value), audio_seconds=job.audio_seconds(outcome.value))
        try:
            # flock(2) on the store, writes and eviction: off the event loop, which serves the rest
            await asyncio.to_thread(store.put, name, entry, outcome.blob, aliases)
        except OSError as exc:
            log.warning("a %s result could not be kept (%s); a retry computes it again", job.route, exc.strerror)
        return outcome
    finally:
        for lock in locks:
            lock.release()


def _drop_output(task: asyncio.Future[Outcome[Any]]) -> None:
    """An orphaned job ended: nobody will upload its output file, so delete it."""
    if not task.cancelled() and task.exception() is None and task.result().blob is not None:
        task.result().blob.unlink(missing_ok=True)
