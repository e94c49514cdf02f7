"""HTTP routes, one module per API area. Handlers validate, call a worker, shape the reply.

Checks shared by several routes live here; bounds on JSON and query fields are
`msgspec.Meta` constraints in `app.schemas`.
"""

from __future__ import annotations

import re

from app.errors import BadRequest
from app.schemas import LANGUAGE_CODE_PATTERN

JSON_BODY_LIMIT_BYTES = 1024 * 1024  # every JSON body; uploads have REFLECTOR_GPU_MAX_UPLOAD_BYTES
LANGUAGE_CODE = re.compile(LANGUAGE_CODE_PATTERN)


def check_language(language: str) -> str:
    """`language` in lower case (``EN`` -> ``en``, as Whisper spells its codes) if it looks
    like a language code (``en``, ``yue``, ``zh-TW``), else `BadRequest`."""
    if not LANGUAGE_CODE.match(language):
        raise BadRequest(f"language must be a language code such as 'en' (got {language[:20]!r})")
    return language.lower()
