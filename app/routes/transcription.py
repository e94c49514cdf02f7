"""``POST /v1/audio/transcriptions`` (uploads) and ``/v1/audio/transcriptions-from-url``.

The first answers the OpenAI SDK as Reflector calls it on the live path (multipart ``file``
or repeated ``files``; unknown fields such as ``response_format`` are ignored). The second
downloads a whole recording. Both hand the Whisper worker a file path; the file is deleted
when the request ends, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePath

import msgspec
from litestar import Request, post
from litestar.datastructures import UploadFile

from app.audio.fetch import downloaded
from app.errors import BadRequest, PayloadTooLarge, ServiceError
from app.routes import JSON_BODY_LIMIT_BYTES, check_language
from app.routes.disconnect import while_connected
from app.schemas import LanguageCode, TimestampOffset, Url, Word, public_words
from app.settings import Settings
from app.workers import client
from app.workers.whisper import Priority, Transcript, TranscribeRequest

ACCEPTED_EXTENSIONS = ("mp3", "mp4", "mpeg", "mpga", "m4a", "wav", "webm")
COPY_CHUNK_BYTES = 1024 * 1024


class FileTranscription(msgspec.Struct):
    """One uploaded file's transcript; times in seconds (2 decimals)."""

    text: str
    words: list[Word]
    filename: str


class BatchTranscription(msgspec.Struct):
    """Several uploaded files' transcripts, in upload order."""

    results: list[FileTranscription]


class UrlTranscriptionRequest(msgspec.Struct):
    """Body of ``/v1/audio/transcriptions-from-url``. `model` and `batch` are accepted and ignored."""

    audio_file_url: Url
    model: str | None = None
    language: LanguageCode = "en"
    timestamp_offset: TimestampOffset = 0.0
    batch: bool = False


class UrlTranscription(msgspec.Struct):
    """A whole recording's transcript; word times shifted by `timestamp_offset` seconds."""

    text: str
    words: list[Word]


def _flag(value: str | None, name: str) -> bool:
    if value is None or value == "":
        return False
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false")


def _text_field(form, name: str, default: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) and value.strip() else default


@contextlib.contextmanager
def _spooled_to_disk(upload: UploadFile, settings: Settings) -> Iterator[Path]:
    """Copy one upload into ``<state>/tmp`` keeping its extension; deleted on exit."""
    extension = PurePath(upload.filename or "").suffix.lower().lstrip(".")
    if extension not in ACCEPTED_EXTENSIONS:
        raise BadRequest(
            f"unsupported file type {upload.filename!r}: accepted extensions are {', '.join(ACCEPTED_EXTENSIONS)}"
        )
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="upload-", suffix="." + extension, dir=settings.tmp_dir)
    path = Path(name)
    try:
        size = 0
        source = upload.file
        source.seek(0)
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(COPY_CHUNK_BYTES):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise PayloadTooLarge(
                        f"{upload.filename} is larger than the {settings.max_upload_bytes}-byte limit "
                        "(REFLECTOR_GPU_MAX_UPLOAD_BYTES)"
                    )
                out.write(chunk)
        if size == 0:
            raise BadRequest(f"{upload.filename} is empty")
        yield path
    finally:
        path.unlink(missing_ok=True)


async def _transcribe(
    settings: Settings, path: Path, language: str, offset: float = 0.0, priority: Priority = "recording"
) -> Transcript:
    request = TranscribeRequest(path=str(path), language=language, timestamp_offset=offset, priority=priority)
    return await client.call(settings, "whisper", request, Transcript)


@post("/v1/audio/transcriptions", name="transcriptions", status_code=200)
async def transcriptions(request: Request, settings: Settings) -> FileTranscription | BatchTranscription:
    """Transcribe uploaded audio: one ``file``, or one or more ``files`` (multipart).

    One file answers one object; two or more answer ``{"results": [...]}`` in upload order.
    ``language`` defaults to ``en``; ``batch=true`` requires ``files``.
    """
    try:
        form = await request.form()
    except UnicodeDecodeError:
        raise BadRequest("the multipart form has a field or file name that is not UTF-8") from None
    uploads = [u for u in form.getall("file", []) if isinstance(u, UploadFile)]
    many = [u for u in form.getall("files", []) if isinstance(u, UploadFile)]
    batch_field = form.get("batch")
    batch = _flag(batch_field if isinstance(batch_field, str) else None, "batch")
    if batch and not many:
        raise BadRequest("batch=true needs the audio in 'files'")
    uploads += many
    if not uploads:
        raise BadRequest("no audio: send the file as multipart field 'file' (or one or more 'files')")
    language = check_language(_text_field(form, "language", "en"))
    results = []
    audio_seconds = 0.0
    try:
        for upload in uploads:
            try:
                with _spooled_to_disk(upload, settings) as path:
                    transcript = await while_connected(request, _transcribe(settings, path, language, priority="live"))
            except ServiceError as exc:
                if len(uploads) > 1 and not exc.detail.startswith(str(upload.filename)):
                    exc.detail = f"{upload.filename}: {exc.detail}"
                raise
            audio_seconds += transcript.duration
            results.append(
                FileTranscription(text=transcript.text, words=public_words(transcript.words), filename=upload.filename)
            )
    finally:
        request.state.audio_seconds = audio_seconds
        for upload in uploads:
            await upload.close()
    if len(results) == 1:
        return results[0]
    return BatchTranscription(results=results)


@post(
    "/v1/audio/transcriptions-from-url",
    name="transcriptions-from-url",
    status_code=200,
    request_max_body_size=JSON_BODY_LIMIT_BYTES,
)
async def transcriptions_from_url(
    request: Request, data: UrlTranscriptionRequest, settings: Settings
) -> UrlTranscription:
    """Download ``audio_file_url`` and transcribe the whole recording.

    Speech regions found by VAD are merged into pieces of at most 30 s; every word's time is
    mapped back to the original timeline plus ``timestamp_offset`` seconds.
    """
    if not data.audio_file_url.strip():
        raise BadRequest("audio_file_url is empty")
    language = data.language or "en"

    async def work() -> Transcript:
        async with downloaded(settings, data.audio_file_url.strip()) as path:
            return await _transcribe(settings, path, language, data.timestamp_offset)

    transcript = await while_connected(request, work())
    request.state.audio_seconds = transcript.duration
    return UrlTranscription(text=transcript.text, words=public_words(transcript.words))
