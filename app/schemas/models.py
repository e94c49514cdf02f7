"""The public answer of ``GET /v1/models`` (OpenAI's model list)."""

from __future__ import annotations

from typing import Literal

import msgspec

OWNER = "reflector-gpu"


class Model(msgspec.Struct):
    """One model, as OpenAI lists it; `created` is a Unix time (s)."""

    id: str
    created: int
    owned_by: str = OWNER
    object: Literal["model"] = "model"


class ModelList(msgspec.Struct):
    """The models a client may name."""

    data: list[Model]
    object: Literal["list"] = "list"
