"""HTTP routes, one module per API area. Handlers validate, call a worker, shape the reply.

Checks shared by several routes live here.
"""

from __future__ import annotations

import math
import re

from app.errors import BadRequest

JSON_BODY_LIMIT_BYTES = 1024 * 1024  # every JSON body; uploads have REFLECTOR_GPU_MAX_UPLOAD_BYTES
MAX_TIMESTAMP_OFFSET = 10_000_000.0  # seconds (~115 days): bounds the shifted times
LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


def check_language(language: str) -> str:
    """`language` if it looks like a language code (``en``, ``yue``, ``zh-TW``), else `BadRequest`."""
    if not LANGUAGE_CODE.match(language):
        raise BadRequest(f"language must be a language code such as 'en' (got {language[:20]!r})")
    return language


def check_offset(offset: float, name: str = "timestamp_offset") -> float:
    """`offset` if it is a finite number of seconds in [0, 1e7], else `BadRequest`."""
    if not math.isfinite(offset) or not 0 <= offset <= MAX_TIMESTAMP_OFFSET:
        raise BadRequest(f"{name} must be between 0 and {MAX_TIMESTAMP_OFFSET:g} seconds")
    return offset
