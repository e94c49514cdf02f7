"""The Realtime API's transcription-session events, as the OpenAI Python SDK writes and reads them.

Client events read here: ``session.update`` (``session.type`` ``transcription``, the GA
shape: ``audio.input.format``, ``.transcription`` {model, language, prompt},
``.turn_detection``, ``.noise_reduction``; and ``include``), the beta
``transcription_session.update`` (``input_audio_format``, ``input_audio_transcription``,
``turn_detection``), ``input_audio_buffer.append`` / ``.commit`` / ``.clear``. Anything
else gets an ``error`` event. Server events are written as JSON with a fresh
``event_id``; errors use the API's shape ``{"type": "error", "error": {"type", "code",
"message", "param", "event_id"}}``.

Accepted input formats: ``audio/pcm`` (16-bit little-endian mono PCM) at 24000 Hz, the
API's rate, or 8000, 16000 or 48000 Hz (an extension); ``audio/pcmu`` and ``audio/pcma``
(G.711 mu-law and A-law, 8000 Hz). The beta names ``pcm16``, ``g711_ulaw`` and
``g711_alaw`` mean the same.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from app.http.routes import LANGUAGE_CODE

PCM_RATES = (8000, 16000, 24000, 48000)  # Hz accepted for audio/pcm; the API's own is 24000
G711_RATE = 8000  # Hz, audio/pcmu and audio/pcma
# format type -> (the worker's encoding name, bytes per sample)
FORMATS = {"audio/pcm": ("pcm16", 2), "audio/pcmu": ("mulaw", 1), "audio/pcma": ("alaw", 1)}
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
MAX_PROMPT_CHARS = 2000  # Whisper conditions on at most 224 tokens anyway
SESSION_OBJECT = "realtime.transcription_session"


class EventError(Exception):
    """A client event that cannot be applied; becomes an ``error`` event (the session goes on)."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


class TurnOptions(msgspec.Struct, frozen=True):
    """Server VAD: speech starts at a window whose probability reaches `threshold` (0-1)
    and stops after `silence_duration_ms` below ``threshold - 0.15``; each utterance keeps
    `prefix_padding_ms` of audio before its start. The API's defaults."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


class SessionConfig(msgspec.Struct, frozen=True):
    """One session's effective settings. `format`: a key of `FORMATS` at `sample_rate` Hz;
    `language` None: detected per utterance; `turn` None: no turn detection, the client
    commits; `model` is echoed, never used (the loaded Whisper model transcribes)."""

    format: str = "audio/pcm"
    sample_rate: int = 24000
    model: str = "whisper-1"
    language: str | None = None
    prompt: str | None = None
    turn: TurnOptions | None = TurnOptions()
    include: tuple[str, ...] = ()

    @property
    def encoding(self) -> str:
        return FORMATS[self.format][0]

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * FORMATS[self.format][1]

    @property
    def sample_bytes(self) -> int:
        return FORMATS[self.format][1]


# -- what session.update may carry (unknown fields are ignored, absent ones left as they are)
class _Format(msgspec.Struct):
    type: str = "audio/pcm"
    rate: int | None = None


class _TurnDetection(msgspec.Struct):
    type: str = "server_vad"
    threshold: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    prefix_padding_ms: Annotated[int, Meta(ge=0, le=10_000)] | None = None
    silence_duration_ms: Annotated[int, Meta(ge=0, le=10_000)] | None = None


class _Transcription(msgspec.Struct):
    model: str | None = None
    language: str | None = None
    prompt: Annotated[str, Meta(max_length=MAX_PROMPT_CHARS)] | None = None


class _AudioInput(msgspec.Struct):
    format: _Format | UnsetType = UNSET
    transcription: _Transcription | None | UnsetType = UNSET
    turn_detection: _TurnDetection | None | UnsetType = UNSET


class _Audio(msgspec.Struct):
    input: _AudioInput | UnsetType = UNSET


class _Session(msgspec.Struct):
    type: str = "transcription"
    audio: _Audio | UnsetType = UNSET
    include: list[str] | None | UnsetType = UNSET


class _BetaSession(msgspec.Struct):
    input_audio_format: str | UnsetType = UNSET
    input_audio_transcription: _Transcription | None | UnsetType = UNSET
    turn_detection: _TurnDetection | None | UnsetType = UNSET
    include: list[str] | None | UnsetType = UNSET


def read_event(data: str | bytes) -> tuple[str, str | None, dict[str, Any]]:
    """A client event's ``(type, event_id, fields)``; `EventError` when it is not a JSON
    object with a string ``type``."""
    try:
        event = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        raise EventError("the message is not valid JSON: send one JSON object per message", "invalid_json") from None
    if not isinstance(event, dict):
        raise EventError("a client event must be a JSON object", "invalid_event")
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        raise EventError("the event has no 'type'", "missing_required_parameter", "type")
    return kind, event_id, event


def appended_audio(event: dict[str, Any], config: SessionConfig) -> bytes:
    """The audio bytes of an ``input_audio_buffer.append``: base64, whole samples."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise EventError("input_audio_buffer.append needs 'audio', a base64 string", "missing_required_parameter", "audio")
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise EventError("'audio' is not valid base64", "invalid_value", "audio") from None
    if len(data) % config.sample_bytes:
        raise EventError(
            f"'audio' must hold whole {8 * config.sample_bytes}-bit samples ({len(data)} bytes)", "invalid_value", "audio"
        )
    return data


def _convert(value: Any, type_: type, prefix: str) -> Any:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        message = str(exc)
        param = message.rpartition("at `$")[2].rstrip("`") if "at `$" in message else None
        raise EventError(f"invalid session: {message.replace('`$', '`' + prefix)}", "invalid_value",
                         prefix + param if param else prefix) from None


def _format(kind: str, rate: int | None, param: str) -> tuple[str, int]:
    if kind not in FORMATS:
        raise EventError(f"unsupported audio format {kind[:40]!r}: use one of {', '.join(FORMATS)}", "invalid_value", param)
    if kind != "audio/pcm":
        if rate not in (None, G711_RATE):
            raise EventError(f"{kind} is {G711_RATE} Hz", "invalid_value", param + ".rate")
        return kind, G711_RATE
    rate = 24000 if rate is None else rate
    if rate not in PCM_RATES:
        raise EventError(
            f"unsupported rate {rate} Hz for audio/pcm: use 24000 (or {', '.join(map(str, PCM_RATES))})",
            "invalid_value", param + ".rate",
        )
    return kind, rate


def _turn(value: _TurnDetection | None, param: str) -> TurnOptions | None:
    if value is None:
        return None
    if value.type != "server_vad":
        raise EventError(
            f"turn_detection type {value.type[:40]!r} is not supported: use server_vad, or null to commit yourself",
            "invalid_value", param + ".type",
        )
    defaults = TurnOptions()
    return TurnOptions(
        threshold=defaults.threshold if value.threshold is None else value.threshold,
        prefix_padding_ms=defaults.prefix_padding_ms if value.prefix_padding_ms is None else value.prefix_padding_ms,
        silence_duration_ms=(
            defaults.silence_duration_ms if value.silence_duration_ms is None else value.silence_duration_ms
        ),
    )


def _transcription(value: _Transcription | None, languages: tuple[str, ...] | None, param: str) -> dict[str, Any]:
    if value is None:  # "off" has no meaning in a transcription session: back to the defaults
        return {"model": SessionConfig.model, "language": None, "prompt": None}
    changes: dict[str, Any] = {}
    if value.model is not None:
        changes["model"] = value.model[:100]
    if value.language is not None:
        language = value.language.strip() or None
        if language is not None and not LANGUAGE_CODE.match(language):
            raise EventError(f"language must be a code such as 'en' (got {language[:20]!r})", "invalid_value",
                             param + ".language")
        if language is not None and languages is not None and language not in languages:
            raise EventError(
                f"language {language!r} is not supported by the loaded Whisper model; it supports: "
                f"{', '.join(languages)}", "invalid_value", param + ".language",
            )
        changes["language"] = language
    if value.prompt is not None:
        changes["prompt"] = value.prompt or None
    return changes


def updated(config: SessionConfig, kind: str, session: Any, languages: tuple[str, ...] | None,
            audio_started: bool) -> SessionConfig:
    """`config` with a ``session.update`` (or beta ``transcription_session.update``) applied.

    Raises `EventError` naming the field. `languages`: the loaded model's, when known.
    The format cannot change once audio was appended (`audio_started`)."""
    beta = kind == "transcription_session.update"
    if not isinstance(session, dict):
        raise EventError(f"{kind} needs a 'session' object", "missing_required_parameter", "session")
    changes: dict[str, Any] = {}
    if beta:
        given = _convert(session, _BetaSession, "session")
        fmt: tuple[str, int | None] | None = None
        if given.input_audio_format is not UNSET:
            if given.input_audio_format not in BETA_FORMATS:
                raise EventError(f"unsupported input_audio_format: use one of {', '.join(BETA_FORMATS)}",
                                 "invalid_value", "session.input_audio_format")
            fmt = (BETA_FORMATS[given.input_audio_format], None)
        transcription, turn, prefix = given.input_audio_transcription, given.turn_detection, "session"
        transcription_param = "session.input_audio_transcription"
    else:
        given = _convert(session, _Session, "session")
        if given.type != "transcription":
            raise EventError("this host serves transcription sessions only: set session.type to 'transcription'",
                             "invalid_value", "session.type")
        audio_input = given.audio.input if given.audio is not UNSET else UNSET
        if audio_input is UNSET:
            audio_input = _AudioInput()
        fmt = None if audio_input.format is UNSET else (audio_input.format.type, audio_input.format.rate)
        transcription, turn, prefix = audio_input.transcription, audio_input.turn_detection, "session.audio.input"
        transcription_param = prefix + ".transcription"
    if fmt is not None:
        fmt_param = "session.input_audio_format" if beta else prefix + ".format"
        changes["format"], changes["sample_rate"] = _format(fmt[0], fmt[1], fmt_param)
        if audio_started and (changes["format"], changes["sample_rate"]) != (config.format, config.sample_rate):
            raise EventError("the input audio format cannot change once audio was appended", "invalid_value", fmt_param)
    if transcription is not UNSET:
        changes.update(_transcription(transcription, languages, transcription_param))
    if turn is not UNSET:
        changes["turn"] = _turn(turn, prefix + ".turn_detection")
    if given.include is not UNSET:
        changes["include"] = tuple(given.include or ())
    return msgspec.structs.replace(config, **changes)


# -- server events --------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    """An id such as ``item_3f2a...`` (``sess``, ``item``, ``event``)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def encode(kind: str, **fields: Any) -> bytes:
    """One server event as JSON text, with a fresh ``event_id``."""
    return msgspec.json.encode({"type": kind, "event_id": new_id("event"), **fields})


def error_event(message: str, code: str, param: str | None = None, event_id: str | None = None,
                kind: str = "invalid_request_error") -> bytes:
    """An ``error`` event in the API's shape; `event_id` is the client event's that caused it."""
    return encode("error", error={"type": kind, "code": code, "message": message, "param": param, "event_id": event_id})


def _turn_object(turn: TurnOptions | None) -> dict[str, Any] | None:
    if turn is None:
        return None
    return {"type": "server_vad", **msgspec.structs.asdict(turn)}


def session_object(config: SessionConfig, session_id: str, expires_at: int, beta: bool = False) -> dict[str, Any]:
    """The session as ``session.created`` / ``session.updated`` carry it (GA shape), or as
    the beta ``transcription_session.updated`` does."""
    transcription = {"model": config.model, "language": config.language, "prompt": config.prompt or ""}
    if beta:
        beta_format = {v: k for k, v in BETA_FORMATS.items()}[config.format]
        return {
            "id": session_id, "object": SESSION_OBJECT, "expires_at": expires_at,
            "input_audio_format": beta_format, "input_audio_transcription": transcription,
            "turn_detection": _turn_object(config.turn), "input_audio_noise_reduction": None,
            "include": list(config.include), "modalities": ["text"],
        }
    audio_format: dict[str, Any] = {"type": config.format}
    if config.format == "audio/pcm":
        audio_format["rate"] = config.sample_rate
    return {
        "type": "transcription", "id": session_id, "object": SESSION_OBJECT, "expires_at": expires_at,
        "audio": {"input": {
            "format": audio_format, "transcription": transcription,
            "turn_detection": _turn_object(config.turn), "noise_reduction": None,
        }},
        "include": list(config.include),
    }


def user_item(item_id: str, transcript: str | None = None) -> dict[str, Any]:
    """The user message item a committed utterance becomes (audio itself is never echoed)."""
    return {
        "id": item_id, "object": "realtime.item", "type": "message", "role": "user",
        "status": "completed", "content": [{"type": "input_audio", "transcript": transcript}],
    }
