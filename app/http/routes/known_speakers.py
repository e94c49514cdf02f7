"""Known speakers on the HTTP side: OpenAI's ``known_speaker_names[]`` and
``known_speaker_references[]``, checked and made into what the diarizer worker gets.

The fields come as the OpenAI SDK sends them (multipart fields repeated, ``[]`` in the
name) on ``/v1/audio/transcriptions``, or as two JSON arrays on ``/diarize`` and
``/v1/audio/transcriptions-from-url``. Each reference is a data URL
(``data:audio/wav;base64,...``) of 2-10 s of one person's voice, in any format the upload
accepts. Here only the data URL is unwrapped (base64 or percent-encoding); the worker
decodes the audio, checks its length and embeds it (`app.diarization.known`). Errors name
the field and the entry's index, never a name or a reference's content, since error
details are logged; nothing here logs or keeps either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from app.diarization.known import KNOWN_SPEAKERS_NEED_FAST, MAX_REFERENCE_BYTES, MAX_REFERENCES
from app.errors import BadRequest, PayloadTooLarge
from app.http.routes import JSON_BODY_LIMIT_BYTES
from app.settings import Settings

NAMES = "known_speaker_names[]"
REFERENCES = "known_speaker_references[]"
MAX_NAME_CHARS = 100
# A data URL of MAX_REFERENCE_BYTES in base64, with room for its header.
MAX_REFERENCE_URL_CHARS = (MAX_REFERENCE_BYTES + 2) // 3 * 4 + 256
# JSON bodies that may carry references (/diarize, the from-URL route): the usual limit
# plus MAX_REFERENCES data URLs.
KNOWN_SPEAKERS_BODY_LIMIT_BYTES = JSON_BODY_LIMIT_BYTES + MAX_REFERENCES * MAX_REFERENCE_URL_CHARS
_DATA_URL = re.compile(r"data:(?P<type>[^,]*?),(?P<data>.*)", re.DOTALL | re.IGNORECASE)


class KnownSpeakers(msgspec.Struct, frozen=True):
    """Checked known speakers: `names[i]` is the person whose voice `references[i]` holds
    (audio file bytes). Empty for a request that names nobody."""

    names: tuple[str, ...] = ()
    references: tuple[bytes, ...] = ()

    def named(self, matched: Mapping[int, int]) -> dict[int, str]:
        """Speaker number -> name, from the worker's speaker -> reference index."""
        return {speaker: self.names[index] for speaker, index in matched.items() if 0 <= index < len(self.names)}


def known_key(known: KnownSpeakers, settings: Settings) -> dict[str, Any]:
    """What a recording's result-store key must add for `known`: every name with the
    SHA-256 of its reference, and the matching threshold; nothing without references, so
    Reflector's keys stay as they were. A request with references never collects a result
    made without them, nor with other ones."""
    if not known.names:
        return {}
    pairs = [[name, hashlib.sha256(audio).hexdigest()] for name, audio in zip(known.names, known.references)]
    return {"known_speakers": {"references": pairs, "threshold": settings.known_speaker_threshold}}


def checked(names: Sequence[Any], references: Sequence[Any], diarize: bool, settings: Settings) -> KnownSpeakers:
    """`KnownSpeakers` from the raw field values, or `BadRequest` / `PayloadTooLarge` naming
    the field: names and references in equal numbers, at most `MAX_REFERENCES` (OpenAI's
    limit), names non-empty, distinct and at most `MAX_NAME_CHARS` printable characters,
    references data URLs of at most `MAX_REFERENCE_BYTES`; only with diarization, and
    only on the `fast` pipeline."""
    if not names and not references:
        return KnownSpeakers()
    if not diarize:
        raise BadRequest(f"{NAMES} and {REFERENCES} name the speakers of a diarization: "
                         "ask for response_format=diarized_json or diarize=true")
    if settings.diarization_model != "fast":
        raise BadRequest(KNOWN_SPEAKERS_NEED_FAST)
    if len(names) != len(references):
        raise BadRequest(f"{NAMES} and {REFERENCES} must hold as many entries each "
                         f"(got {len(names)} and {len(references)})")
    if len(names) > MAX_REFERENCES:
        raise BadRequest(f"{NAMES}: at most {MAX_REFERENCES} known speakers (got {len(names)})")
    clean = tuple(_name(value, index) for index, value in enumerate(names))
    if len(set(clean)) != len(clean):
        raise BadRequest(f"{NAMES}: every name must be different")
    return KnownSpeakers(clean, tuple(_reference(value, index) for index, value in enumerate(references)))


def _name(value: Any, index: int) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise BadRequest(f"known_speaker_names[{index}] must be 1 to {MAX_NAME_CHARS} printable characters")
    return name


def _reference(value: Any, index: int) -> bytes:
    """The audio bytes of one data URL (``data:[<type>][;base64],<data>``)."""
    field = f"known_speaker_references[{index}]"
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a data URL string such as data:audio/wav;base64,...")
    if len(value) > MAX_REFERENCE_URL_CHARS:
        raise PayloadTooLarge(f"{field} is larger than {MAX_REFERENCE_BYTES} bytes of audio")
    match = _DATA_URL.fullmatch(value.strip())
    if match is None:
        raise BadRequest(f"{field} must be a data URL such as data:audio/wav;base64,... (2-10 s of one voice)")
    data = match.group("data")
    try:
        if match.group("type").lower().endswith(";base64"):
            audio = base64.b64decode("".join(data.split()), validate=True)
        else:
            audio = urllib.parse.unquote_to_bytes(data)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field}: the data URL's base64 is not valid") from None
    if not audio:
        raise BadRequest(f"{field} is empty")
    if len(audio) > MAX_REFERENCE_BYTES:
        raise PayloadTooLarge(f"{field} is larger than {MAX_REFERENCE_BYTES} bytes of audio")
    return audio
