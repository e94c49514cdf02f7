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
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import JSONBody

from app.errors import BadRequest, PayloadTooLarge, ServiceError
from app.routes import JSON_BODY_LIMIT_BYTES, check_language
from app.routes.disconnect import while_connected
from app.routes.forms import BINARY, documented_operation, field
from app.routes.models import OPENAI_ALIAS, check_model
from app.routes.recording import Recording, served
from app.schemas import SpokenLanguage, TimestampOffset, Url
from app.settings import Settings
from app.transcripts.formats import (
    RESPONSE_FORMATS,
    TEXT_FORMATS,
    Attributed,
    DiarizedTranscription,
    Granularity,
    JsonTranscription,
    OutSegment,
    OutWord,
    VerboseTranscription,
    attribute,
    json_body,
    out_segments,
    out_words,
    text_body,
)
from app.workers import client
from app.workers.diarizer import Diarization, DiarizeRequest
from app.workers.whisper import Task, Transcript, TranscribeRequest

ACCEPTED_EXTENSIONS = ("mp3", "mp4", "mpeg", "mpga", "m4a", "wav", "webm")
COPY_CHUNK_BYTES = 1024 * 1024
AUTO_LANGUAGE = "auto"
GRANULARITIES: tuple[str, ...] = Granularity.__args__  # type: ignore[attr-defined]

class BatchTranscription(msgspec.Struct):
    """Several uploaded files' transcripts, in upload order, each in the asked JSON format
    (``JsonTranscription``, ``VerboseTranscription`` or ``DiarizedTranscription``)."""

    results: list[Any]


class UrlTranscriptionRequest(msgspec.Struct):
    """Body of ``/v1/audio/transcriptions-from-url``. `model` and `batch` are accepted and ignored.

    `language`: a code, or omitted / ``auto`` to detect it. `diarize`: give every word a
    `speaker` and add `segments` cut where the speaker changes.
    """

    audio_file_url: Url
    model: str | None = None
    language: SpokenLanguage | None = None
    timestamp_offset: TimestampOffset = 0.0
    batch: bool = False
    diarize: bool = False


class UrlTranscription(msgspec.Struct, omit_defaults=True):
    """A whole recording's transcript; times shifted by `timestamp_offset` seconds.

    With ``diarize``, each word has a `speaker` and `segments` (with `speaker`) are added.
    """

    text: str
    words: list[OutWord]
    segments: list[OutSegment] | None = None


class UrlResult(msgspec.Struct, frozen=True):
    """What a from-URL job computes and the result store keeps: the transcript and, with
    ``diarize``, its speakers."""

    transcript: Transcript
    speakers: Attributed | None = None


def _flag(form, name: str) -> bool:
    """The boolean form field `name` (absent or empty: false); BadRequest for another word."""
    value = form.get(name)
    if not isinstance(value, str) or value == "":
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


def _language(value: str | None) -> str | None:
    """A checked language code, or None (detect) for an empty value or ``auto``."""
    if value is None or not value.strip() or value.strip().lower() == AUTO_LANGUAGE:
        return None
    return check_language(value.strip())


async def _transcribe(
    settings: Settings, request: TranscribeRequest, diarize: bool
) -> tuple[Transcript, Attributed | None]:
    """The Whisper worker's transcript of ``request.path``, with speakers from the diarizer
    worker (run on the same file at the same time) when `diarize` is set. A failure of
    either worker cancels the other."""
    whisper = client.call(settings, "whisper", request, Transcript)
    if not diarize:
        return await whisper, None
    diarize_request = DiarizeRequest(path=request.path, timestamp=request.timestamp_offset, priority=request.priority)
    try:
        async with asyncio.TaskGroup() as group:
            transcript = group.create_task(whisper)
            diarization = group.create_task(client.call(settings, "diarizer", diarize_request, Diarization))
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return transcript.result(), attribute(transcript.result(), diarization.result().diarization)


class _UploadOptions(msgspec.Struct, frozen=True):
    """The OpenAI form fields of one upload request, checked."""

    response_format: str
    granularities: tuple[str, ...]
    language: str | None
    prompt: str | None
    temperature: float
    diarize: bool


def _upload_options(form, task: Task) -> _UploadOptions:
    """Read and check the OpenAI fields; BadRequest names the field that is wrong."""
    response_format = _text_field(form, "response_format", "json")
    if response_format not in RESPONSE_FORMATS or (task == "translate" and response_format == "diarized_json"):
        allowed = [f for f in RESPONSE_FORMATS if task == "transcribe" or f != "diarized_json"]
        raise BadRequest(f"response_format must be one of {', '.join(allowed)} (got {response_format[:30]!r})")
    granularities = []
    for name in ("timestamp_granularities[]", "timestamp_granularities"):
        for value in form.getall(name, []):
            if not isinstance(value, str) or value.strip() not in GRANULARITIES:
                raise BadRequest(f"timestamp_granularities[] values must be word or segment (got {str(value)[:30]!r})")
            granularities.append(value.strip())
    temperature_field = _text_field(form, "temperature", "0")
    try:
        temperature = float(temperature_field)
    except ValueError:
        temperature = math.nan
    if not 0.0 <= temperature <= 1.0:
        raise BadRequest(f"temperature must be a number between 0 and 1 (got {temperature_field[:30]!r})")
    if _flag(form, "stream"):
        raise BadRequest("stream=true is not supported: ask without stream for the whole transcript")
    diarize = _flag(form, "diarize")
    language, prompt = form.get("language"), form.get("prompt")
    return _UploadOptions(
        response_format=response_format,
        granularities=tuple(granularities),
        language=_language(language if isinstance(language, str) else None),
        prompt=(prompt.strip() or None) if isinstance(prompt, str) else None,
        temperature=temperature,
        diarize=diarize or response_format == "diarized_json",
    )


async def _uploads(request: Request, settings: Settings, task: Task) -> Response | msgspec.Struct:
    """The shared body of the two upload routes: read the form, run every file, shape the answer."""
    try:
        form = await request.form()
    except UnicodeDecodeError:
        raise BadRequest("the multipart form has a field or file name that is not UTF-8") from None
    uploads = [u for u in form.getall("file", []) if isinstance(u, UploadFile)]
    many = [u for u in form.getall("files", []) if isinstance(u, UploadFile)]
    batch = _flag(form, "batch")
    if batch and not many:
        raise BadRequest("batch=true needs the audio in 'files'")
    uploads += many
    if not uploads:
        raise BadRequest("no audio: send the file as multipart field 'file' (or one or more 'files')")
    options = _upload_options(form, task)
    model = form.get("model")
    check_model(settings, model if isinstance(model, str) else None)
    if len(uploads) > 1 and options.response_format in TEXT_FORMATS:
        raise BadRequest(f"response_format={options.response_format} answers one file; use a JSON format for several")
    results = []
    audio_seconds = 0.0
    try:
        for upload in uploads:
            try:
                with _spooled_to_disk(upload, settings) as path:
                    work = _transcribe(
                        settings,
                        TranscribeRequest(
                            path=str(path),
                            language=options.language,
                            task=task,
                            prompt=options.prompt,
                            temperature=options.temperature,
                            priority="live",
                        ),
                        options.diarize,
                    )
                    transcript, speakers = await while_connected(request, work)
            except ServiceError as exc:
                if len(uploads) > 1 and not exc.detail.startswith(str(upload.filename)):
                    exc.detail = f"{upload.filename}: {exc.detail}"
                raise
            audio_seconds += transcript.duration
            results.append((upload.filename, transcript, speakers))
    finally:
        request.state.audio_seconds = audio_seconds
        for upload in uploads:
            await upload.close()
    if options.response_format in TEXT_FORMATS:
        [(_, transcript, speakers)] = results
        body = text_body(transcript, options.response_format, speakers)
        return Response(body, media_type=TEXT_FORMATS[options.response_format], status_code=200)
    shaped = [
        json_body(
            transcript,
            options.response_format,
            task=task,
            filename=filename,
            granularities=options.granularities,
            speakers=speakers,
        )
        for filename, transcript, speakers in results
    ]
    if len(shaped) == 1:
        return shaped[0]
    return BatchTranscription(results=shaped)


_COMMON_FIELDS = {
    "file": field(BINARY, f"the audio; accepted extensions: {', '.join(ACCEPTED_EXTENSIONS)}"),
    "files": field(
        {"type": "array", "items": BINARY},
        "one or more audio files (the field repeated); two or more answer {\"results\": [...]}",
    ),
    "model": field(
        {"type": "string", "default": OPENAI_ALIAS},
        "a name from GET /v1/models; any other name is accepted and ignored",
    ),
    "prompt": field({"type": "string"}, "text to condition every 30-s piece on (Whisper's initial prompt)"),
    "temperature": field(
        {"type": "number", "minimum": 0, "maximum": 1, "default": 0}, "sampling temperature; 0 is beam search"
    ),
    "batch": field({"type": "boolean", "default": False}, "accepted for Reflector; needs 'files'"),
    "diarize": field(
        {"type": "boolean", "default": False},
        "give every word and segment a 'speaker' (an integer, as /diarize numbers them); "
        "segments are cut where the speaker changes",
    ),
}
_FORMAT_HELP = (
    "json: {text, words, filename}; verbose_json: OpenAI's task, language, duration, text, "
    "segments, words, plus filename; text: the text (text/plain); srt: SubRip (text/plain); "
    "vtt: WebVTT (text/vtt)"
)


@post(
    "/v1/audio/transcriptions",
    name="transcriptions",
    status_code=200,
    operation_class=documented_operation(
        {
            **_COMMON_FIELDS,
            "language": field(
                {"type": "string", "default": AUTO_LANGUAGE},
                "the language spoken, such as en or fr; omitted or 'auto': detected from the audio",
            ),
            "response_format": field(
                {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
                _FORMAT_HELP + "; diarized_json: OpenAI's {task, duration, text, segments: "
                "[{type, id, start, end, text, speaker}]} (implies diarize)",
            ),
            "timestamp_granularities[]": field(
                {"type": "array", "items": {"type": "string", "enum": list(GRANULARITIES)}},
                "verbose_json: 'segment' gives segments, 'word' gives words (neither: both)",
            ),
        },
        text_media_types=("text/plain", "text/vtt"),
    ),
)
async def transcriptions(
    request: Request, settings: NamedDependency[Settings]
) -> JsonTranscription | VerboseTranscription | DiarizedTranscription | BatchTranscription:
    """Transcribe uploaded audio (OpenAI's ``POST /v1/audio/transcriptions``).

    One ``file`` (or ``files``) answers one object, in ``response_format``; two or more
    answer ``{"results": [...]}`` in upload order (JSON formats only). ``batch=true``
    requires ``files``. ``language`` omitted or ``auto`` is detected.
    """
    return await _uploads(request, settings, "transcribe")  # type: ignore[return-value]


@post(
    "/v1/audio/translations",
    name="translations",
    status_code=200,
    operation_class=documented_operation(
        {
            **_COMMON_FIELDS,
            "language": field(
                {"type": "string"}, "the language spoken (optional; detected when omitted)"
            ),
            "response_format": field(
                {"type": "string", "enum": [f for f in RESPONSE_FORMATS if f != "diarized_json"], "default": "json"},
                _FORMAT_HELP,
            ),
        },
        text_media_types=("text/plain", "text/vtt"),
    ),
)
async def translations(
    request: Request, settings: NamedDependency[Settings]
) -> JsonTranscription | VerboseTranscription | BatchTranscription:
    """Translate uploaded speech in any language into English text (OpenAI's
    ``POST /v1/audio/translations``). Needs a multilingual Whisper model (400 otherwise)."""
    return await _uploads(request, settings, "translate")  # type: ignore[return-value]


@post(
    "/v1/audio/transcriptions-from-url",
    name="transcriptions-from-url",
    status_code=200,
    request_max_body_size=JSON_BODY_LIMIT_BYTES,
)
async def transcriptions_from_url(
    request: Request, data: JSONBody[UrlTranscriptionRequest], settings: NamedDependency[Settings]
) -> UrlTranscription:
    """Download ``audio_file_url`` and transcribe the whole recording.

    Speech regions found by VAD are merged into pieces of at most 30 s; every word's time is
    mapped back to the original timeline plus ``timestamp_offset`` seconds. ``language``
    omitted or ``auto`` is detected. ``diarize``: speakers on words, plus speaker segments.
    The job outlives a client's time-out and its result is kept for the retry
    (`app.routes.recording`).
    """
    if not data.audio_file_url.strip():
        raise BadRequest("audio_file_url is empty")
    language = _language(data.language)
    check_model(settings, data.model)

    async def compute(paths: list[Path]) -> tuple[UrlResult, None]:
        whisper_request = TranscribeRequest(
            path=str(paths[0]), language=language, timestamp_offset=data.timestamp_offset, priority="recording"
        )
        return UrlResult(*await _transcribe(settings, whisper_request, data.diarize)), None

    job = Recording(
        route="transcriptions-from-url",
        kinds=("whisper", "diarizer") if data.diarize else ("whisper",),
        params={"language": language, "timestamp_offset": data.timestamp_offset, "diarize": data.diarize},
        inputs=[(data.audio_file_url.strip(), None)],
        compute=compute,
        result_type=UrlResult,
        audio_seconds=lambda result: result.transcript.duration,
    )
    async with served(request, settings, job) as (result, _):
        transcript, speakers = result.transcript, result.speakers
        return UrlTranscription(
            text=transcript.text,
            words=out_words(transcript, speakers),
            segments=None if speakers is None else out_segments(transcript, speakers),
        )
