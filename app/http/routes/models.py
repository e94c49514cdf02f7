"""``GET /v1/models``: the loaded speech model, under the names a client may pass as `model`.

OpenAI's shape: ``{"object": "list", "data": [{"id", "object": "model", "created",
"owned_by"}, ...]}``. The Whisper worker's model is listed as ``whisper-1`` (OpenAI's name,
which Reflector and most clients send) and under its own name (``tiny.en``, ``base``, the
last part of a directory path, or a hub name), once one of its replicas answers a ping. A `model`
in a request that names neither is accepted and ignored (one model is loaded).
"""

from __future__ import annotations

import logging
import time
from pathlib import PurePath

from litestar import get
from litestar.di import NamedDependency

from app.schemas.transcription import OPENAI_MODEL_ALIAS
from app.schemas.models import Model, ModelList
from app.settings import Settings
from app.workers.client import WorkerPool

log = logging.getLogger("app.http")

OPENAI_ALIAS = OPENAI_MODEL_ALIAS  # the name OpenAI's SDKs send
STARTED = int(time.time())  # `created` of every listed model: when this HTTP process started


def model_names(whisper_model: str) -> list[str]:
    """``whisper-1`` and each served Whisper model's own name (a path's last part);
    `whisper_model` is the worker's ``+``-joined list (``tiny.en+base``)."""
    own = [PurePath(name).name if "/" in name else name for name in whisper_model.split("+")]
    return [OPENAI_ALIAS] + [name for name in own if name and name != OPENAI_ALIAS]


def check_model(settings: Settings, name: str | None) -> None:
    """Note (debug log) a requested `model` that is not a listed name; it is never an error."""
    if name and name not in model_names(settings.whisper_model):
        log.debug("model %r is not loaded; using %s", name[:100], settings.whisper_model)


@get("/v1/models", name="models", cache=False)
async def models(workers: NamedDependency[WorkerPool]) -> ModelList:
    """The loaded transcription model under every name it answers to (empty while loading)."""
    pong = await workers.any_pong("whisper")
    if pong is None:
        return ModelList(data=[])
    return ModelList(data=[Model(id=name, created=STARTED) for name in model_names(pong.model)])
