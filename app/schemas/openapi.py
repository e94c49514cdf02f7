"""The parts of the public contract that only Litestar reads: bounds on query parameters
(Litestar takes a query parameter's bounds from `Parameter`, not from `msgspec.Meta`) and
the OpenAPI operation of a multipart route. Kept apart so that `app.schemas` and its
structs import no web framework (domain code shapes its answers with them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.params import Parameter

from app.audio.fetch import MAX_URL_CHARS
from app.schemas import MAX_TIMESTAMP_OFFSET_SECONDS
from app.schemas.transcription import UPLOAD_FILE_FIELDS

# The same bound for a query parameter (Litestar reads a query parameter's bounds from
# `Parameter`, not from `Meta`).
TimestampOffsetQuery = Annotated[
    float,
    Parameter(ge=0, le=MAX_TIMESTAMP_OFFSET_SECONDS, description="seconds added to every returned time"),
]
# The same bound for a query parameter (/diarize's audio_file_url).
UrlQuery = Annotated[str, Parameter(max_length=MAX_URL_CHARS, description="an absolute http:// or https:// URL")]


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
