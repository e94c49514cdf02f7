"""``POST /diarize?audio_file_url=URL&timestamp=0.0``: who spoke when.

Parameters come in the query string, as Reflector sends them; an optional JSON body names
known speakers (`app.http.routes.known_speakers`), whose turns then carry a ``name``. The audio is downloaded
into ``<state>/tmp`` (deleted when the job ends) and the diarizer worker gets its
path. Answer: ``{"diarization": [{"start", "end", "speaker"}, ...]}``, times in seconds
rounded to 3 decimals and shifted by `timestamp`, speakers as integers. Optional
speaker-count hints (Reflector sends none): `num_speakers`, or `min_speakers` and/or
`max_speakers`, integers from 1 to `MAX_SPEAKERS`. The job outlives a client's time-out
and its result is kept for the retry (`app.http.routes.recording`).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import FromQuery, JSONBody

from app.errors import BadRequest
from app.http.routes.known_speakers import KNOWN_SPEAKERS_BODY_LIMIT_BYTES, checked, known_key
from app.http.routes.recording import Recording, served
from app.schemas import public_turns
from app.schemas.openapi import TimestampOffsetQuery, UrlQuery
from app.schemas.diarization import DiarizationResult, KnownSpeakersBody
from app.workers.client import WorkerPool
from app.workers.messages import Diarization, DiarizeRequest

MAX_SPEAKERS = 64  # a bound on hints, far above what a meeting recording holds


def check_speaker_hints(num_speakers: int | None, min_speakers: int | None, max_speakers: int | None) -> None:
    """Raise `BadRequest` unless every given hint is in [1, MAX_SPEAKERS], `min_speakers` <=
    `max_speakers`, and `num_speakers` lies within the bounds given with it."""
    for name, value in (("num_speakers", num_speakers), ("min_speakers", min_speakers), ("max_speakers", max_speakers)):
        if value is not None and not 1 <= value <= MAX_SPEAKERS:
            raise BadRequest(f"{name} must be an integer from 1 to {MAX_SPEAKERS}, got {value}")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise BadRequest(f"min_speakers ({min_speakers}) is larger than max_speakers ({max_speakers})")
    if num_speakers is not None and not (min_speakers or 1) <= num_speakers <= (max_speakers or MAX_SPEAKERS):
        raise BadRequest(f"num_speakers ({num_speakers}) is outside min_speakers..max_speakers")


@post("/diarize", name="diarize", status_code=200, request_max_body_size=KNOWN_SPEAKERS_BODY_LIMIT_BYTES)
async def diarize(
    request: Request,
    workers: NamedDependency[WorkerPool],
    audio_file_url: UrlQuery,
    timestamp: TimestampOffsetQuery = 0.0,
    num_speakers: FromQuery[int | None] = None,
    min_speakers: FromQuery[int | None] = None,
    max_speakers: FromQuery[int | None] = None,
    data: JSONBody[KnownSpeakersBody | None] = None,
) -> DiarizationResult:
    """Download ``audio_file_url`` and diarize it; every time is shifted by ``timestamp`` seconds.

    ``num_speakers`` fixes the number of speakers; ``min_speakers`` / ``max_speakers``
    bound it (all optional; without them the count is estimated). An optional JSON body
    names known speakers (``known_speaker_names``, ``known_speaker_references``): a turn
    whose speaker matches a reference carries its ``name``.
    """
    url = audio_file_url.strip()
    if not url:
        raise BadRequest("audio_file_url is empty")
    check_speaker_hints(num_speakers, min_speakers, max_speakers)
    body = data or KnownSpeakersBody()
    known = checked(body.known_speaker_names, body.known_speaker_references, True, workers.settings)
    job = DiarizeRequest(path="", timestamp=timestamp, num_speakers=num_speakers, min_speakers=min_speakers,
                         max_speakers=max_speakers, references=list(known.references))

    async def compute(paths: list[Path]) -> tuple[Diarization, None]:
        message = msgspec.structs.replace(job, path=str(paths[0]))
        return await workers.call("diarizer", message, Diarization), None

    recording = Recording(
        route="diarize",
        kinds=("diarizer",),
        params={"timestamp": timestamp, "num_speakers": num_speakers, "min_speakers": min_speakers,
                "max_speakers": max_speakers, **known_key(known, workers.settings)},
        inputs=[(url, None)],
        compute=compute,
        result_type=Diarization,
        audio_seconds=lambda result: result.duration,
    )
    async with served(request, workers, recording) as (result, _):
        return DiarizationResult(diarization=public_turns(result.diarization, known.named(result.matched)))
