"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (uploads, OpenAI's audio
API) and ``/v1/audio/transcriptions-from-url`` (whole recordings).

The upload routes answer the OpenAI SDKs: multipart ``file`` (or repeated ``files``),
``response_format`` (``json``, ``text``, ``srt``, ``verbose_json``, ``vtt``,
``diarized_json``), ``timestamp_granularities[]``, ``language`` (omitted or ``auto``:
detected), ``prompt``, ``temperature``, and ``diarize`` (speakers on every word and
segment; implied by ``diarized_json``). Unknown fields are ignored. Reflector's shape
(``text``, ``words``, ``filename``) stays inside ``json`` and ``verbose_json``. With
speakers, the Whisper and diarizer workers process the same file at the same time.
The from-URL route downloads a whole recording. Every route hands the workers a file path;
the file is deleted when the request ends, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path, PurePath
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.errors import BadRequest, PayloadTooLarge, ServiceError
from app.http.routes import check_language
from app.http.routes.disconnect import while_connected
from app.http.routes.known_speakers import KNOWN_SPEAKERS_BODY_LIMIT_BYTES, KnownSpeakers, checked, known_key
from app.http.routes.models import check_model
from app.http.routes.recording import Recording, served
from app.schemas.openapi import multipart_operation
from app.schemas.transcription import (
    ACCEPTED_EXTENSIONS,
    BatchTranscription,
    DiarizedTranscription,
    JsonTranscription,
    TranslationForm,
    UploadForm,
    UrlTranscription,
    UrlTranscriptionRequest,
    VerboseTranscription,
)
from app.settings import Settings
from app.transcripts.formats import (
    TEXT_FORMATS,
    Attributed,
    attribute,
    json_body,
    out_segments,
    out_words,
    text_body,
)
from app.workers.client import WorkerPool
from app.workers.messages import Diarization, DiarizeRequest, Task, TranscribeRequest, Transcript

COPY_CHUNK_BYTES = 1024 * 1024
AUTO_LANGUAGE = "auto"
_F = TypeVar("_F", bound=msgspec.Struct)
ARRAY_FIELDS = ("timestamp_granularities", "known_speaker_names", "known_speaker_references")  # `decode_form`

class UrlResult(msgspec.Struct, frozen=True):
    """What a from-URL job computes and the result store keeps: the transcript and, with
    ``diarize``, its speakers."""

    transcript: Transcript
    speakers: Attributed | None = None
    matched: dict[int, int] = {}  # speaker -> index of the known speaker's reference


def decode_form(form: Any, form_type: type[_F]) -> _F:
    """The multipart `form`'s text fields as `form_type` (`app.schemas.UploadForm` or
    `TranslationForm`), converted and checked by msgspec against the struct's types and
    bounds. Empty fields take their defaults; a repeated field keeps its last non-empty value, except
    the arrays (`ARRAY_FIELDS`: ``timestamp_granularities[]``, ``known_speaker_names[]``,
    ``known_speaker_references[]``, also accepted without the brackets), which are lists;
    fields the struct does not name are ignored. Raises `BadRequest` naming the field."""
    data: dict[str, Any] = {}
    for name in sorted(set(form.keys()), key=lambda name: not name.endswith("[]")):  # bracketed ones first
        values = [v.strip() for v in form.getall(name, []) if isinstance(v, str)]
        if name.removesuffix("[]") in ARRAY_FIELDS:  # every entry, blank ones too: indexes pair names with references
            data.setdefault(name.removesuffix("[]") + "[]", []).extend(values)
        elif any(values):
            data[name] = [v for v in values if v][-1]
    try:
        return msgspec.convert(data, form_type, strict=False)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `$.")
        field = where.rstrip("`").split("[0", 1)[0] if where else ""
        hint = " (true or false)" if message.startswith("Expected `bool`") else ""
        raise BadRequest(f"{field}: {message}{hint}" if field else str(exc)) from None


def _copy_upload(upload: UploadFile, settings: Settings) -> Path:
    """Copy one upload (up to `max_upload_bytes`) into ``<state>/tmp`` keeping its
    extension; blocking file I/O, run on a thread. Raises `BadRequest` (extension, empty
    file) or `PayloadTooLarge`, leaving nothing behind."""
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
        return path
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextlib.asynccontextmanager
async def _spooled_to_disk(upload: UploadFile, settings: Settings) -> AsyncIterator[Path]:
    """The upload as a file under ``<state>/tmp`` (copied off the event loop, so a large
    upload does not hold up the worker's other requests); deleted on exit."""
    path = await asyncio.to_thread(_copy_upload, upload, settings)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _language(value: str | None) -> str | None:
    """A checked language code, or None (detect) for an empty value or ``auto``."""
    if value is None or not value.strip() or value.strip().lower() == AUTO_LANGUAGE:
        return None
    return check_language(value.strip())


async def _transcribe(
    workers: WorkerPool, request: TranscribeRequest, diarize: bool, known: KnownSpeakers = KnownSpeakers()
) -> UrlResult:
    """The Whisper worker's transcript of ``request.path``, with speakers from the diarizer
    worker (run on the same file at the same time) when `diarize` is set, and which of
    them the `known` speakers' references matched. A failure of either worker cancels the
    other."""
    whisper = workers.call("whisper", request, Transcript)
    if not diarize:
        return UrlResult(await whisper)
    diarize_request = DiarizeRequest(
        path=request.path, timestamp=request.timestamp_offset, references=list(known.references),
        priority=request.priority,
    )
    try:
        async with asyncio.TaskGroup() as group:
            transcript = group.create_task(whisper)
            diarization = group.create_task(workers.call("diarizer", diarize_request, Diarization))
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    turns = diarization.result()
    return UrlResult(transcript.result(), attribute(transcript.result(), turns.diarization), turns.matched)


async def _uploads(request: Request, settings: Settings, workers: WorkerPool, task: Task) -> Response | msgspec.Struct:
    """The shared body of the two upload routes: read the form, run every file, shape the answer."""
    try:
        form = await request.form()
    except UnicodeDecodeError:
        raise BadRequest("the multipart form has a field or file name that is not UTF-8") from None
    uploads = [u for u in form.getall("file", []) if isinstance(u, UploadFile)]
    many = [u for u in form.getall("files", []) if isinstance(u, UploadFile)]
    options = decode_form(form, UploadForm if task == "transcribe" else TranslationForm)
    if options.batch and not many:
        raise BadRequest("batch=true needs the audio in 'files'")
    uploads += many
    if not uploads:
        raise BadRequest("no audio: send the file as multipart field 'file' (or one or more 'files')")
    if options.stream:
        raise BadRequest("stream=true is not supported: ask without stream for the whole transcript")
    language = _language(options.language)
    check_model(settings, options.model)
    diarize = options.diarize or options.response_format == "diarized_json"
    known = checked(options.known_speaker_names, options.known_speaker_references, diarize, settings)
    if len(uploads) > 1 and options.response_format in TEXT_FORMATS:
        raise BadRequest(f"response_format={options.response_format} answers one file; use a JSON format for several")
    results = []
    audio_seconds = 0.0
    try:
        for upload in uploads:
            try:
                async with _spooled_to_disk(upload, settings) as path:
                    work = _transcribe(
                        workers,
                        TranscribeRequest(
                            path=str(path),
                            language=language,
                            task=task,
                            prompt=options.prompt,
                            temperature=options.temperature,
                            priority="live",
                        ),
                        diarize,
                        known,
                    )
                    result = await while_connected(request, work)
            except ServiceError as exc:
                if len(uploads) > 1 and not exc.detail.startswith(str(upload.filename)):
                    exc.detail = f"{upload.filename}: {exc.detail}"
                raise
            audio_seconds += result.transcript.duration
            results.append((upload.filename, result))
    finally:
        request.state.audio_seconds = audio_seconds
        for upload in uploads:
            await upload.close()
    if options.response_format in TEXT_FORMATS:
        [(_, result)] = results
        names = known.named(result.matched)
        body = text_body(result.transcript, options.response_format, result.speakers, names)
        return Response(body, media_type=TEXT_FORMATS[options.response_format], status_code=200)
    shaped = [
        json_body(
            result.transcript,
            options.response_format,
            task=task,
            filename=filename,
            granularities=tuple(options.timestamp_granularities),
            speakers=result.speakers,
            names=known.named(result.matched),
        )
        for filename, result in results
    ]
    if len(shaped) == 1:
        return shaped[0]
    return BatchTranscription(results=shaped)


@post(
    "/v1/audio/transcriptions",
    name="transcriptions",
    status_code=200,
    operation_class=multipart_operation(UploadForm, text_media_types=("text/plain", "text/vtt")),
)
async def transcriptions(
    request: Request, settings: NamedDependency[Settings], workers: NamedDependency[WorkerPool]
) -> JsonTranscription | VerboseTranscription | DiarizedTranscription | BatchTranscription:
    """Transcribe uploaded audio (OpenAI's ``POST /v1/audio/transcriptions``).

    One ``file`` (or ``files``) answers one object, in ``response_format``; two or more
    answer ``{"results": [...]}`` in upload order (JSON formats only). ``batch=true``
    requires ``files``. ``language`` omitted or ``auto`` is detected.
    """
    return await _uploads(request, settings, workers, "transcribe")  # type: ignore[return-value]


@post(
    "/v1/audio/translations",
    name="translations",
    status_code=200,
    operation_class=multipart_operation(TranslationForm, text_media_types=("text/plain", "text/vtt")),
)
async def translations(
    request: Request, settings: NamedDependency[Settings], workers: NamedDependency[WorkerPool]
) -> JsonTranscription | VerboseTranscription | BatchTranscription:
    """Translate uploaded speech in any language into English text (OpenAI's
    ``POST /v1/audio/translations``). Needs a multilingual Whisper model (400 otherwise)."""
    return await _uploads(request, settings, workers, "translate")  # type: ignore[return-value]


@post(
    "/v1/audio/transcriptions-from-url",
    name="transcriptions-from-url",
    status_code=200,
    request_max_body_size=KNOWN_SPEAKERS_BODY_LIMIT_BYTES,
)
async def transcriptions_from_url(
    request: Request, data: JSONBody[UrlTranscriptionRequest], settings: NamedDependency[Settings],
    workers: NamedDependency[WorkerPool],
) -> UrlTranscription:
    """Download ``audio_file_url`` and transcribe the whole recording.

    Speech regions found by VAD are merged into pieces of at most 30 s; every word's time is
    mapped back to the original timeline plus ``timestamp_offset`` seconds. ``language``
    omitted or ``auto`` is detected. ``diarize``: speakers on words, plus speaker segments.
    The job outlives a client's time-out and its result is kept for the retry
    (`app.http.routes.recording`).
    """
    if not data.audio_file_url.strip():
        raise BadRequest("audio_file_url is empty")
    language = _language(data.language)
    check_model(settings, data.model)
    known = checked(data.known_speaker_names, data.known_speaker_references, data.diarize, settings)

    async def compute(paths: list[Path]) -> tuple[UrlResult, None]:
        whisper_request = TranscribeRequest(
            path=str(paths[0]), language=language, timestamp_offset=data.timestamp_offset, priority="recording"
        )
        return await _transcribe(workers, whisper_request, data.diarize, known), None

    job = Recording(
        route="transcriptions-from-url",
        kinds=("whisper", "diarizer") if data.diarize else ("whisper",),
        params={"language": language, "timestamp_offset": data.timestamp_offset, "diarize": data.diarize,
                **known_key(known, settings)},
        inputs=[(data.audio_file_url.strip(), None)],
        compute=compute,
        result_type=UrlResult,
        audio_seconds=lambda result: result.transcript.duration,
    )
    async with served(request, workers, job) as (result, _):
        transcript, speakers, names = result.transcript, result.speakers, known.named(result.matched)
        return UrlTranscription(
            text=transcript.text,
            words=out_words(transcript, speakers, names),
            segments=None if speakers is None else out_segments(transcript, speakers, names),
        )
