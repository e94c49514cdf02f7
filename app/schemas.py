"""The public API's shared types: what clients send and get back, apart from the worker wire.

The worker wire is `app.workers.messages`; where a wire struct is exactly the public shape
(`Turn`), it is used here rather than written twice. The types here are the contract
(shared/reflector-api.md) and the OpenAPI document. Request bounds are
`msgspec.Meta` constraints, so validation (400 naming the field) and the OpenAPI schema
come from one place. Times are seconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

from dataclasses import dataclass

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.params import Parameter
from msgspec import Meta

from app.audio.fetch import MAX_URL_CHARS
from app.audio.formats import MP3_RATES
from app.transcripts.formats import Granularity, ResponseFormat
from app.transcripts.speakers import SpeakerTurn
from app.workers.messages import Turn

# Where a transcript or diarization lands on the caller's timeline (``timestamp_offset``,
# ``timestamp``): 1e7 s (~115 days) bounds the shifted times without limiting real use.
MAX_TIMESTAMP_OFFSET_SECONDS = 10_000_000.0
# The contract's bound for a track's place in a recording (``/pad``'s
# ``start_time_seconds``, ``/mixdown``'s ``offsets_seconds``): 5 hours.
MAX_TRACK_START_SECONDS = 18000.0
LANGUAGE_CODE_PATTERN = r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$"

TimestampOffset = Annotated[
    float,
    Meta(ge=0, le=MAX_TIMESTAMP_OFFSET_SECONDS, description="seconds added to every returned time"),
]
# The same bound for a query parameter (Litestar reads a query parameter's bounds from
# `Parameter`, not from `Meta`).
TimestampOffsetQuery = Annotated[
    float,
    Parameter(ge=0, le=MAX_TIMESTAMP_OFFSET_SECONDS, description="seconds added to every returned time"),
]
SpokenLanguage = Annotated[
    str,
    Meta(
        pattern=rf"^(auto|{LANGUAGE_CODE_PATTERN[1:-1]})?$",  # LANGUAGE_CODE_PATTERN, auto, or empty
        description="the language spoken: a code such as en, yue or zh-TW; empty or auto: detected from the audio",
    ),
]
Url = Annotated[str, Meta(max_length=MAX_URL_CHARS, description="an absolute http:// or https:// URL")]
# The same bound for a query parameter (/diarize's audio_file_url).
UrlQuery = Annotated[str, Parameter(max_length=MAX_URL_CHARS, description="an absolute http:// or https:// URL")]
TrackStart = Annotated[
    float,
    Meta(gt=0, le=MAX_TRACK_START_SECONDS, description="seconds of silence before the track (0 < s <= 18000)"),
]
TrackOffset = Annotated[
    float, Meta(le=MAX_TRACK_START_SECONDS, description="the track's start in seconds (<= 18000; may be negative)")
]
Mp3Rate = Literal[MP3_RATES]  # type: ignore[valid-type] - the rates MP3 can carry, in Hz


def public_turns(turns: Iterable[SpeakerTurn]) -> list[Turn]:
    """A worker's speaker turns as the public `Turn` type."""
    return [Turn(start=t.start, end=t.end, speaker=t.speaker) for t in turns]


# -- the upload forms (multipart) of /v1/audio/transcriptions and /v1/audio/translations ----
OPENAI_MODEL_ALIAS = "whisper-1"  # the name OpenAI's SDKs send; GET /v1/models lists it
# Whisper conditions on at most the last 223 tokens of a prompt (half its 448-token text
# context, less one); 4096 characters is ten times that in any script, and bounds the
# tokenizer's work per request.
MAX_PROMPT_CHARS = 4096
TranslationFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]  # `ResponseFormat` less diarized_json
_FORMAT_HELP = (
    "json: {text, words, filename}; verbose_json: OpenAI's task, language, duration, text, "
    "segments, words, plus filename; text: the text (text/plain); srt: SubRip (text/plain); "
    "vtt: WebVTT (text/vtt)"
)


class UploadForm(msgspec.Struct, kw_only=True):
    """The fields of ``POST /v1/audio/transcriptions`` beside the audio (``file``, or one or
    more ``files``), as OpenAI's SDKs send them; other fields are ignored. Decoded from the
    multipart form by `app.http.routes.transcription.decode_form`, which also makes the
    OpenAPI description from this struct (`multipart_operation`)."""

    model: Annotated[str, Meta(description="a name from GET /v1/models; any other name is accepted and ignored")] = OPENAI_MODEL_ALIAS
    language: SpokenLanguage | None = None
    prompt: Annotated[
        str, Meta(max_length=MAX_PROMPT_CHARS, description="text to condition every 30-s piece on (Whisper's initial prompt)")
    ] | None = None
    temperature: Annotated[float, Meta(ge=0, le=1, description="sampling temperature; 0 is beam search")] = 0.0
    response_format: Annotated[
        ResponseFormat,
        Meta(description=_FORMAT_HELP + "; diarized_json: OpenAI's {task, duration, text, segments: "
             "[{type, id, start, end, text, speaker}]} (implies diarize)"),
    ] = "json"
    timestamp_granularities: Annotated[
        list[Granularity], Meta(description="verbose_json: 'segment' gives segments, 'word' gives words (neither: both)")
    ] = msgspec.field(default_factory=list, name="timestamp_granularities[]")
    diarize: Annotated[
        bool,
        Meta(description="give every word and segment a 'speaker' (an integer, as /diarize numbers them); "
             "segments are cut where the speaker changes"),
    ] = False
    batch: Annotated[bool, Meta(description="accepted for Reflector; needs 'files'")] = False
    stream: Annotated[bool, Meta(description="not supported: true is refused")] = False


class TranslationForm(UploadForm, kw_only=True):
    """The fields of ``POST /v1/audio/translations``: those of `UploadForm`, without
    ``diarized_json``."""

    response_format: Annotated[TranslationFormat, Meta(description=_FORMAT_HELP)] = "json"  # type: ignore[assignment]


ACCEPTED_EXTENSIONS = ("mp3", "mp4", "mpeg", "mpga", "m4a", "wav", "webm")  # of an uploaded file's name
UPLOAD_FILE_FIELDS = {
    "file": {"type": "string", "format": "binary", "description": f"the audio; accepted extensions: {', '.join(ACCEPTED_EXTENSIONS)}"},
    "files": {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "one or more audio files (the field repeated); two or more answer {\"results\": [...]}",
    },
}


def multipart_operation(form: type[msgspec.Struct], text_media_types: tuple[str, ...] = ()) -> type[Operation]:
    """An `Operation` class (a route's ``operation_class``) whose request body is the
    ``multipart/form-data`` schema of `form` (made by msgspec from the struct, so the
    bounds, defaults and descriptions are the ones `decode_form` enforces) plus the audio
    fields, and whose 200 response may also be one of `text_media_types` (a string body)."""
    (schema,), components = msgspec.json.schema_components([form], ref_template="#/components/schemas/{name}")
    body = dict(components[form.__name__])
    body["properties"] = {**UPLOAD_FILE_FIELDS, **body["properties"]}
    body.pop("required", None)
    body.pop("title", None)

    @dataclass
    class MultipartOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                content={"multipart/form-data": OpenAPIMediaType(schema=body)},  # type: ignore[arg-type]
                required=True,
            )
            ok = (self.responses or {}).get("200")
            content = getattr(ok, "content", None)
            if content is not None:
                for media_type in text_media_types:
                    content[media_type] = OpenAPIMediaType(schema={"type": "string"})  # type: ignore[arg-type]

    return MultipartOperation
