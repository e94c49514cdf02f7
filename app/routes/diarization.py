"""``POST /diarize?audio_file_url=URL&timestamp=0.0``: who spoke when.

Parameters come in the query string, as Reflector sends them. The audio is downloaded
into ``<state>/tmp`` (deleted when the job ends) and the diarizer worker gets its
path. Answer: ``{"diarization": [{"start", "end", "speaker"}, ...]}``, times in seconds
rounded to 3 decimals and shifted by `timestamp`, speakers as integers. The job outlives a
client's time-out and its result is kept for the retry (`app.routes.recording`).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from litestar import Request, post

from app.errors import BadRequest
from app.routes.recording import Recording, served
from app.schemas import TimestampOffsetQuery, Turn, public_turns
from app.settings import Settings
from app.workers import client
from app.workers.diarizer import Diarization, DiarizeRequest


class DiarizationResult(msgspec.Struct):
    """Speaker turns sorted by start; seconds (3 decimals); `speaker` an integer from 0."""

    diarization: list[Turn]


@post("/diarize", name="diarize", status_code=200)
async def diarize(request: Request, settings: Settings, audio_file_url: str, timestamp: TimestampOffsetQuery = 0.0) -> DiarizationResult:
    """Download ``audio_file_url`` and diarize it; every time is shifted by ``timestamp`` seconds."""
    url = audio_file_url.strip()
    if not url:
        raise BadRequest("audio_file_url is empty")

    async def compute(paths: list[Path]) -> tuple[Diarization, None]:
        message = DiarizeRequest(path=str(paths[0]), timestamp=timestamp)
        return await client.call(settings, "diarizer", message, Diarization), None

    job = Recording(
        route="diarize",
        kinds=("diarizer",),
        params={"timestamp": timestamp},  # and every other parameter of DiarizeRequest
        inputs=[(url, None)],
        compute=compute,
        result_type=Diarization,
        audio_seconds=lambda result: result.duration,
    )
    async with served(request, settings, job) as (result, _):
        request.state.audio_seconds = result.duration
        return DiarizationResult(diarization=public_turns(result.diarization))
