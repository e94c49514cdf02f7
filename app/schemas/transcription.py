"""The public shapes of the transcription routes: the upload forms (`UploadForm`,
`TranslationForm`: decoded from multipart, their OpenAPI description made from them),
OpenAI's answers (``json``, ``verbose_json``, ``diarized_json``), the from-URL request and
answer, and the several-files answer. No web framework here: `app.transcripts.formats`
shapes transcripts into these."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from app.schemas import KnownSpeakerNames, KnownSpeakerReferences, SpokenLanguage, TimestampOffset, Url
from app.workers.messages import Segment, Task

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"]
RESPONSE_FORMATS: tuple[str, ...] = ResponseFormat.__args__  # type: ignore[attr-defined]
Granularity = Literal["word", "segment"]
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


ACCEPTED_EXTENSIONS = ("mp3", "mp4", "mpeg", "mpga", "m4a", "wav", "webm")  # of an uploaded file's name
UPLOAD_FILE_FIELDS = {
    "file": {"type": "string", "format": "binary", "description": f"the audio; accepted extensions: {', '.join(ACCEPTED_EXTENSIONS)}"},
    "files": {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "one or more audio files (the field repeated); two or more answer {\"results\": [...]}",
    },
}


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
    temperature: Annotated[float, Meta(ge=0, le=1, description="sampling temperature; 0 is beam search (a piece caught in a repetition loop is decoded again hotter)")] = 0.0
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
    known_speaker_names: KnownSpeakerNames = msgspec.field(default_factory=list, name="known_speaker_names[]")
    known_speaker_references: KnownSpeakerReferences = msgspec.field(
        default_factory=list, name="known_speaker_references[]"
    )


class TranslationForm(UploadForm, kw_only=True):
    """The fields of ``POST /v1/audio/translations``: those of `UploadForm`, without
    ``diarized_json``."""

    response_format: Annotated[TranslationFormat, Meta(description=_FORMAT_HELP)] = "json"  # type: ignore[assignment]


class OutWord(msgspec.Struct, omit_defaults=True):
    """One word with its leading space, as Whisper writes it; `speaker` only when diarized;
    `name` only when the speaker matched a known speaker's reference."""

    word: str
    start: float
    end: float
    speaker: int | None = None
    name: str | None = None


class OutSegment(Segment, omit_defaults=True, frozen=True):
    """One segment as OpenAI's ``verbose_json`` gives it, plus `speaker` when diarized.

    `seek`: the segment's start in 10-ms frames (Whisper's unit). `tokens`: token ids (a
    segment cut by a speaker change keeps them on its first part). `temperature`,
    `avg_logprob`, `compression_ratio`, `no_speech_prob`: Whisper's decoding statistics.
    The wire `Segment`'s fields (one definition), plus `seek` and `speaker`.
    """

    seek: int
    speaker: int | None = None
    name: str | None = None


class Usage(msgspec.Struct):
    """What the request cost, as OpenAI reports it for Whisper: seconds of audio."""

    seconds: float
    type: Literal["duration"] = "duration"


class JsonTranscription(msgspec.Struct, omit_defaults=True):
    """``json`` (and the answer when `response_format` is absent): exactly Reflector's shape
    ``{text, words, filename}``; words carry `speaker` when diarized."""

    text: str
    words: list[OutWord]
    filename: str | None = None


class VerboseTranscription(msgspec.Struct, omit_defaults=True):
    """``verbose_json``: OpenAI's fields (`task`, `language` as a code such as ``en``: the
    language spoken, or ``en`` for a translation, as OpenAI reports the output language;
    `duration` in seconds, `text`, `segments` unless only word timestamps were asked for,
    `words` unless only segment timestamps were asked for), Reflector's `filename`, `usage`."""

    task: Task
    language: str
    duration: float
    text: str
    segments: list[OutSegment] | None = None
    words: list[OutWord] | None = None
    filename: str | None = None
    usage: Usage | None = None


class DiarizedSegment(msgspec.Struct):
    """A stretch of speech by one speaker. OpenAI types `id` and `speaker` as strings:
    `id` is the segment's index, `speaker` the known speaker's name when a reference
    matched, else the integer ``/diarize`` gives, as a string."""

    id: str
    start: float
    end: float
    text: str
    speaker: str
    type: Literal["transcript.text.segment"] = "transcript.text.segment"


class DiarizedTranscription(msgspec.Struct, omit_defaults=True):
    """``diarized_json``: OpenAI's shape: `task`, `duration` (s), `text`, `segments`."""

    task: Literal["transcribe"]
    duration: float
    text: str
    segments: list[DiarizedSegment]
    usage: Usage | None = None




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
    known_speaker_names: KnownSpeakerNames = []
    known_speaker_references: KnownSpeakerReferences = []


class UrlTranscription(msgspec.Struct, omit_defaults=True):
    """A whole recording's transcript; times shifted by `timestamp_offset` seconds.

    With ``diarize``, each word has a `speaker` and `segments` (with `speaker`) are added.
    """

    text: str
    words: list[OutWord]
    segments: list[OutSegment] | None = None
