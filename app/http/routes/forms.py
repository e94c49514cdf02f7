"""OpenAPI descriptions of multipart bodies and text responses, which Litestar does not
derive from a handler that reads ``request.form()`` itself.

`documented_operation` returns an `Operation` subclass for a route's ``operation_class``:
it sets the ``multipart/form-data`` request body from a field table and adds text media
types (``text/plain``, ``text/vtt``) to the 200 response beside the JSON Litestar derived
from the return annotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody

BINARY = {"type": "string", "format": "binary"}


def field(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    """One form field's JSON schema with its description."""
    return {**schema, "description": description, **extra}


def documented_operation(
    fields: dict[str, dict[str, Any]], text_media_types: tuple[str, ...] = (), required: tuple[str, ...] = ()
) -> type[Operation]:
    """An `Operation` class describing a multipart body of `fields` (name -> JSON schema) and
    a 200 response that may also be one of `text_media_types` (a string body)."""

    @dataclass
    class MultipartOperation(Operation):
        def __post_init__(self) -> None:
            schema: dict[str, Any] = {"type": "object", "properties": fields}
            if required:
                schema["required"] = list(required)
            self.request_body = RequestBody(
                content={"multipart/form-data": OpenAPIMediaType(schema=schema)},  # type: ignore[arg-type]
                required=True,
            )
            ok = (self.responses or {}).get("200")
            content = getattr(ok, "content", None)
            if content is not None:
                for media_type in text_media_types:
                    content[media_type] = OpenAPIMediaType(schema={"type": "string"})  # type: ignore[arg-type]

    return MultipartOperation
