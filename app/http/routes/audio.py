"""``POST /pad``, ``POST /mixdown`` and ``POST /v1/audio/mixdown``: presigned object-store URLs
in, presigned PUT out. ``/v1/audio/mixdown`` is the shape Reflector's mixdown client (branch
``feature/modal-mixdown``) calls; it mixes on the same engine as ``/mixdown``.

Each request downloads its inputs into ``<state>/tmp`` (`app.audio.fetch`), has the audio
worker encode the output next to them (`app.workers.audio`), PUTs the output to
``output_url`` (`app.audio.upload`), and deletes every file it made, whatever happens. The
encoding outlives a client's time-out and the encoded file is kept, so a retry only PUTs it
to its own ``output_url`` (`app.http.routes.recording`).
Validation follows the API contract's 400 cases; an unreadable input is 400 with FFmpeg's
reason, a download failure keeps fetch's status (404, 502, 504, 413), an upload failure is
502 naming the PUT step.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.audio.upload import check_output_url, upload
from app.errors import BadRequest, PayloadTooLarge
from app.http.routes import JSON_BODY_LIMIT_BYTES
from app.http.routes.disconnect import while_connected
from app.http.routes.recording import Recording, served
from app.schemas.audio import (
    MixdownBody,
    MixdownResult,
    MixdownV1Body,
    MixdownV1Result,
    PadBody,
    PadResult,
)
from app.settings import Settings
from app.workers.client import WorkerPool
from app.workers.messages import Encoded, MixdownRequest, PadRequest

log = logging.getLogger("app.audio")

# `cancelled` in both answers: Reflector's client cancels its task when it reads
# ``cancelled: true``. This host cancels a job only when its client has left, and then no
# answer is sent, so every answer that arrives says false; the field stays for the contract.


def _output_path(settings: Settings, suffix: str) -> Path:
    """A new empty file in ``<state>/tmp`` for the worker's output."""
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="output-", suffix=suffix, dir=settings.tmp_dir)
    os.close(fd)
    return Path(name)


async def _encode(workers: WorkerPool, message: PadRequest | MixdownRequest, output: Path) -> Encoded:
    """Have the audio worker write `output`; the file is deleted if that fails."""
    try:
        return await workers.call("audio", message, Encoded)
    except BaseException:
        output.unlink(missing_ok=True)
        raise


@post("/pad", name="pad", status_code=200, request_max_body_size=JSON_BODY_LIMIT_BYTES)
async def pad(request: Request, data: JSONBody[PadBody], settings: NamedDependency[Settings], workers: NamedDependency[WorkerPool]) -> PadResult:
    """Prepend ``start_time_seconds`` of silence to the track; PUT WebM/Opus (48 kHz stereo, 128 kbit/s).

    400 when a URL is empty or ``start_time_seconds`` is not in (0, 18000].
    """
    track_url, output_url = data.track_url.strip(), data.output_url.strip()
    if not track_url:
        raise BadRequest("track_url is empty")
    if not output_url:
        raise BadRequest("output_url is empty")
    check_output_url(output_url)
    log.info("pad: track_index=%s start_time_seconds=%.3f", data.track_index, data.start_time_seconds)

    async def compute(paths: list[Path]) -> tuple[Encoded, Path]:
        output = _output_path(settings, ".webm")
        message = PadRequest(source=str(paths[0]), output=str(output), start_time_seconds=data.start_time_seconds)
        return await _encode(workers, message, output), output

    job = Recording(
        route="pad",
        kinds=("audio",),
        params={"start_time_seconds": data.start_time_seconds},
        inputs=[(track_url, "track_url")],
        compute=compute,
        result_type=Encoded,
        audio_seconds=lambda encoded: encoded.duration_ms / 1000,
    )
    async with served(request, workers, job) as (encoded, output):
        return PadResult(size=await while_connected(request, upload(settings, output_url, output, "audio/webm")))


@post("/mixdown", name="mixdown", status_code=200, request_max_body_size=JSON_BODY_LIMIT_BYTES)
async def mixdown(request: Request, data: JSONBody[MixdownBody], settings: NamedDependency[Settings], workers: NamedDependency[WorkerPool]) -> MixdownResult:
    """Mix the tracks, each delayed by its offset minus the smallest, into an MP3 (no normalising).

    Empty URLs are skipped. 400 when no URL is left, ``offsets_seconds`` has another length
    than ``track_urls``, an offset is over 18000, ``output_url`` is empty, or
    ``target_sample_rate`` is not a rate MP3 can carry; 413 when the offsets (negative ones
    are allowed) spread the tracks further apart than ``REFLECTOR_GPU_MAX_AUDIO_SECONDS``.
    """
    chosen, output_url = _tracks_and_output(data.track_urls, data.output_url)
    offsets = data.offsets_seconds
    if offsets is not None:
        if len(offsets) != len(data.track_urls):
            raise BadRequest(
                f"offsets_seconds has {len(offsets)} values but track_urls has {len(data.track_urls)}; "
                "give one offset per track"
            )
    used = [0.0] if offsets is None else [offsets[index] for index, _ in chosen]
    if max(used) - min(used) > settings.max_audio_seconds:
        raise PayloadTooLarge(
            f"the offsets place tracks {max(used) - min(used):g} s apart, more than the "
            f"{settings.max_audio_seconds:g} s limit (REFLECTOR_GPU_MAX_AUDIO_SECONDS)"
        )
    size, duration_ms = await _mix(
        request, workers, chosen, None if offsets is None else used, data.target_sample_rate, output_url
    )
    return MixdownResult(size=size, duration_ms=duration_ms)


def _tracks_and_output(track_urls: list[str], output_url: str) -> tuple[list[tuple[int, str]], str]:
    """The non-empty track URLs with their indexes, and the checked output URL (stripped).

    BadRequest when no track URL is left or `output_url` is empty or not http(s)."""
    chosen = [(index, url.strip()) for index, url in enumerate(track_urls) if url.strip()]
    if not chosen:
        raise BadRequest("track_urls holds no non-empty URL")
    output_url = output_url.strip()
    if not output_url:
        raise BadRequest("output_url is empty")
    check_output_url(output_url)
    return chosen, output_url


async def _mix(
    request: Request,
    workers: WorkerPool,
    chosen: list[tuple[int, str]],
    offsets: list[float] | None,
    target_sample_rate: int | None,
    output_url: str,
) -> tuple[int, float]:
    """Download the `chosen` (index, URL) tracks, mix them on the audio worker, PUT the MP3.

    Returns (bytes uploaded, duration in ms)."""
    labels = [f"track {index}" for index, _ in chosen]
    settings = workers.settings

    async def compute(paths: list[Path]) -> tuple[Encoded, Path]:
        output = _output_path(settings, ".mp3")
        message = MixdownRequest(
            sources=[str(path) for path in paths],
            output=str(output),
            offsets_seconds=offsets,
            target_sample_rate=target_sample_rate,
            labels=labels,
        )
        return await _encode(workers, message, output), output

    job = Recording(
        route="mixdown",
        kinds=("audio",),
        params={"offsets_seconds": offsets, "target_sample_rate": target_sample_rate},
        inputs=[(url, label) for (_, url), label in zip(chosen, labels)],
        compute=compute,
        result_type=Encoded,
        audio_seconds=lambda encoded: encoded.duration_ms / 1000,
    )
    async with served(request, workers, job) as (encoded, output):
        size = await while_connected(request, upload(settings, output_url, output, "audio/mpeg"))
        return size, encoded.duration_ms


@post("/v1/audio/mixdown", name="mixdown-v1", status_code=200, request_max_body_size=JSON_BODY_LIMIT_BYTES)
async def mixdown_v1(
    request: Request, data: JSONBody[MixdownV1Body], workers: NamedDependency[WorkerPool]
) -> MixdownV1Result:
    """Mix the tracks from their starts (summed, no normalising) into an MP3; PUT it to ``output_url``.

    Reflector's ``feature/modal-mixdown`` client shape. Empty URLs are skipped. 400 when no
    URL is left, ``output_url`` is empty, or ``target_sample_rate`` is not a rate MP3 can carry.
    """
    chosen, output_url = _tracks_and_output(data.track_urls, data.output_url)
    _, duration_ms = await _mix(request, workers, chosen, None, data.target_sample_rate, output_url)
    return MixdownV1Result(duration_ms=duration_ms, tracks_mixed=len(chosen), audio_uploaded=True)
