"""The public request and answer of ``POST /translate``."""

from __future__ import annotations

import msgspec


class TranslationParameters(msgspec.Struct):
    """The optional JSON body; any field also present in the query string is taken from there."""

    text: str | None = None
    source_language: str | None = None
    target_language: str | None = None


class TranslationResult(msgspec.Struct):
    """``text`` maps the source code to the input and the target code to its translation
    (one entry when they are the same language)."""

    text: dict[str, str]
