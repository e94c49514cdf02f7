"""Where the diarization pipeline comes from: what ``REFLECTOR_GPU_DIARIZATION_MODEL`` means
(`resolve_source`), decided without loading anything. Loading is `app.diarization.pipeline`'s.

Four sources, one setting: ``fast`` (the embedded segmentation-3.0 + CAM++ bundle on ONNX
Runtime or PyTorch, `app.diarization.fast`), ``embedded`` (the same bundle as a pyannote
pipeline), a local directory holding a pyannote ``config.yaml``, or a hub pipeline name
(``org/name``, fetched into the models directory with ``HF_TOKEN``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.errors import ModelNotFound
from app.models import looks_like_path

SETTING = "REFLECTOR_GPU_DIARIZATION_MODEL"
FAST = "fast"
EMBEDDED = "embedded"
HUB_PIPELINES = ("pyannote/speaker-diarization-3.1", "pyannote/speaker-diarization-community-1")
CONFIG_NAME = "config.yaml"


@dataclass(frozen=True)
class Source:
    """Where the pipeline comes from: `kind` and a directory (embedded, local) or hub name."""

    kind: Literal["fast", "embedded", "local", "hub"]
    location: str


def hub_cache_dir(models_dir: Path) -> Path:
    """Where hub pipelines are cached: ``<models dir>/diarization-hub``."""
    return models_dir / "diarization-hub"


def resolve_source(name: str, embedded_dir: Path) -> Source:
    """Decide what ``REFLECTOR_GPU_DIARIZATION_MODEL=name`` means, without loading anything.

    Raises `ModelNotFound` naming the setting for a directory without ``config.yaml``,
    a missing path, or a name that is neither ``embedded`` nor a hub id (``org/name``).
    """
    if name == FAST:
        return Source("fast", str(embedded_dir))
    if name == EMBEDDED:
        return Source("embedded", str(embedded_dir))
    path = Path(name).expanduser()
    if looks_like_path(name):
        if not path.is_dir():
            raise ModelNotFound(f"{SETTING}={name}: no such directory (mount the pipeline bundle there)")
        if not (path / CONFIG_NAME).is_file():
            raise ModelNotFound(f"{SETTING}={name}: the directory holds no pyannote pipeline {CONFIG_NAME}")
        return Source("local", str(path))
    if name.count("/") == 1 and all(name.split("/")):
        return Source("hub", name)
    raise ModelNotFound(
        f"{SETTING}={name}: not understood; use 'fast', 'embedded', a directory holding a pyannote "
        f"pipeline {CONFIG_NAME}, or a hub pipeline such as {' or '.join(HUB_PIPELINES)} (with HF_TOKEN)"
    )
