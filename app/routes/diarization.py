"""``POST /diarize?audio_file_url=URL&timestamp=0.0``: who spoke when.

Parameters come in the query string, as Reflector sends them. The audio is downloaded
into ``<state>/tmp`` (deleted when the request ends) and the diarizer worker gets its
path. Answer: ``{"diarization": [{"start", "end", "speaker"}, ...]}``, times in seconds
rounded to 3 decimals and shifted by `timestamp`, speakers as integers.
"""

from __future__ import annotations

import msgspec
from litestar import Request, post

from app.audio.fetch import downloaded
from app.errors import BadRequest
from app.routes.disconnect import while_connected
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

    async def work() -> Diarization:
        async with downloaded(settings, url) as path:
            return await client.call(settings, "diarizer", DiarizeRequest(path=str(path), timestamp=timestamp), Diarization)

    result = await while_connected(request, work())
    request.state.audio_seconds = result.duration
    return DiarizationResult(diarization=public_turns(result.diarization))
