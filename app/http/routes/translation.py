"""``POST /translate``: text from one of Reflector's languages into another.

Reflector's production client sends everything in the query string
(``?text=...&source_language=en&target_language=fr``); its conformance test sends ``text``
in the query and the languages in a JSON body. Both work: each parameter comes from the
query string when present there, else from the JSON body, else its default (``en`` ->
``fr``). The answer is ``{"text": {<source>: <input>, <target>: <translation>}}``.

Text, length and both codes (Reflector's language table) are checked first, so a bad
request is 400/413 even on a host without a translation model. Same source and target
answer the text unchanged without the model. Text over ``REFLECTOR_GPU_MAX_TRANSLATE_CHARS`` characters is refused with 413.
Everything else goes to the translator worker, which answers 400 for a language the loaded
model lacks (listing those it has); with no model installed the worker is not configured
and the answer is 503 saying how to install one.
"""

from __future__ import annotations

from typing import Annotated

from litestar import post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter

from app.errors import BadRequest, PayloadTooLarge
from app.http.routes import JSON_BODY_LIMIT_BYTES
from app.languages import load_table
from app.schemas.translation import TranslationParameters, TranslationResult
from app.settings import Settings
from app.workers.client import WorkerPool
from app.workers.messages import TranslateRequest, Translation

DEFAULT_SOURCE = "en"
DEFAULT_TARGET = "fr"


def _code(value: str | None, default: str, side: str) -> str:
    """The lower-cased code, `default` when empty; `BadRequest` for a code not in the table."""
    code = (value or "").strip().lower() or default
    table = load_table()
    if code not in table:
        raise BadRequest(
            f"{side}: {code[:20]!r} is not a language code this service knows; known codes: {', '.join(sorted(table))}"
        )
    return code


@post("/translate", name="translate", status_code=200, request_max_body_size=JSON_BODY_LIMIT_BYTES)
async def translate(
    settings: NamedDependency[Settings],
    workers: NamedDependency[WorkerPool],
    data: JSONBody[TranslationParameters | None] = None,
    text: Annotated[str | None, Parameter(description="the text to translate")] = None,
    source_language: Annotated[str | None, Parameter(description="Reflector's code, default en")] = None,
    target_language: Annotated[str | None, Parameter(description="Reflector's code, default fr")] = None,
) -> TranslationResult:
    """Translate ``text`` from ``source_language`` (default ``en``) to ``target_language`` (default ``fr``).

    Parameters come from the query string, else the JSON body. Codes are Reflector's
    (``fr``, ``de``, ``cmn``, ``yue``...). 400 for a missing text or a language the model
    lacks, 413 over the length limit, 503 when no translation model is installed.
    """
    body = data or TranslationParameters()
    text = text if text is not None else body.text
    if text is None:
        raise BadRequest("no text: send it as the 'text' query parameter (or in a JSON body)")
    if len(text) > settings.max_translate_chars:
        raise PayloadTooLarge(
            f"text of {len(text)} characters is over the {settings.max_translate_chars}-character limit "
            "(REFLECTOR_GPU_MAX_TRANSLATE_CHARS); send it in parts"
        )
    # Everything the request can get wrong is checked here, before a missing model answers 503.
    source = _code(source_language if source_language is not None else body.source_language, DEFAULT_SOURCE, "source_language")
    target = _code(target_language if target_language is not None else body.target_language, DEFAULT_TARGET, "target_language")
    if source == target:
        return TranslationResult(text={source: text})
    result = await workers.call("translator", TranslateRequest(text, source, target), Translation)
    return TranslationResult(text={source: text, target: result.text})
