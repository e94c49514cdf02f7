"""The translation engine (CTranslate2) and its messages.

One `TranslateRequest` carries text and two Reflector language codes; the reply is a
`Translation`. The model is a local CTranslate2 directory made by
``python -m app.models fetch translation NAME`` (or any CTranslate2 conversion of an
M2M100, NLLB-200, MADLAD-400 or MarianMT model that kept the tokenizer files). The family is
read from the directory's ``tokenizer_config.json`` (``tokenizer_class``), falling back to
the language tokens in its vocabulary; which Reflector languages the model has is decided
by looking their tokens up in that vocabulary (see `app.languages`).

How a text is translated: split into sentences (and over-long sentences into pieces of at
most `MAX_SOURCE_TOKENS` tokens), tokenize each with the model's SentencePiece model, build
the family's source tokens and target prefix, translate all of them in one
`translate_batch` call (beam search, so the output is deterministic), decode, and rejoin
with the original separators. Heavy imports (ctranslate2, sentencepiece) happen inside
`TranslatorEngine` only, so the HTTP side can import the messages.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app import models
from app.errors import BadRequest, Cancelled, ModelNotFound, Unavailable
from app.languages import Language, language_token, load_table
from app.models import TRANSLATION_SETTING, hub
from app.settings import Settings
from app.workers.messages import TranslateRequest, Translation
from app.workers.protocol import Pong

log = logging.getLogger("app.worker.translator")

CUDA_COMPUTE_TYPE = "int8_float16"  # int8 weights, float16 activations; the CPU default stays int8
BEAM_SIZE = 4  # CTranslate2's and fairseq's usual setting for translation
MAX_BATCH_SIZE = 32  # sentences decoded together; bounds memory on long texts
MAX_SOURCE_TOKENS = 200  # longer "sentences" (unpunctuated transcripts) are cut at word starts
MAX_DECODING_TOKENS = 512  # never decode more than this per piece
SPM_FILES = {
    "m2m100": ("sentencepiece.bpe.model",),
    "nllb": ("sentencepiece.bpe.model",),
    "madlad": ("spiece.model",),
    "marian": ("source.spm", "target.spm"),
}
# How each family spells a language token, so that none leaks into the text.
LANGUAGE_TOKEN = {
    "m2m100": re.compile(r"__[a-z]{2,3}__"),
    "nllb": re.compile(r"[a-z]{3}_[A-Z][a-z]{3}"),
    "madlad": re.compile(r"<2[A-Za-z_-]+>"),
    "marian": re.compile(r">>[A-Za-z_]+<<"),
}

NOT_CONFIGURED = models.TRANSLATION_NOT_CONFIGURED
RETRY_WHILE_FETCHING_SECONDS = 30


def read_vocabulary(model_dir: Path) -> list[str]:
    """The target vocabulary of a CTranslate2 model directory, in id order.

    CTranslate2 writes ``shared_vocabulary.json`` (or ``.txt``), or separate
    ``source_``/``target_vocabulary`` files. Raises `ModelNotFound` when there is none.
    """
    for stem in ("shared_vocabulary", "target_vocabulary"):
        if (model_dir / f"{stem}.json").is_file():
            return json.loads((model_dir / f"{stem}.json").read_text(encoding="utf-8"))
        if (model_dir / f"{stem}.txt").is_file():
            return (model_dir / f"{stem}.txt").read_text(encoding="utf-8").splitlines()
    raise ModelNotFound(f"{model_dir}: no CTranslate2 vocabulary file; is this a converted translation model?")


def read_tokenizer_config(model_dir: Path) -> dict:
    """``tokenizer_config.json`` from the model directory, or {} when absent or unreadable."""
    try:
        return json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def detect_family(tokenizer_config: dict, vocabulary: set[str]) -> str:
    """``m2m100``, ``nllb``, ``madlad`` or ``marian`` for a model, from its tokenizer class,
    else from the language tokens in `vocabulary`. Raises `ModelNotFound` when neither tells."""
    tokenizer_class = str(tokenizer_config.get("tokenizer_class", "")).lower()
    for marker, family in (("m2m100", "m2m100"), ("nllb", "nllb"), ("marian", "marian"), ("t5", "madlad")):
        if marker in tokenizer_class:
            return family
    for token, family in (("__en__", "m2m100"), ("eng_Latn", "nllb"), ("<2en>", "madlad")):
        if token in vocabulary:
            return family
    raise ModelNotFound(
        f"{TRANSLATION_SETTING}: cannot tell the model family (tokenizer_class "
        f"{tokenizer_config.get('tokenizer_class')!r}); supported: M2M100, NLLB-200, MADLAD-400, MarianMT"
    )


def _marian_matches(language: Language, code: str | None) -> bool:
    if not code:
        return False
    code = code.lower()
    nllb = language.codes.get("nllb", "")
    return code in {language.code, language.codes.get("marian"), nllb.split("_")[0]}


@dataclass(frozen=True)
class LanguageSupport:
    """What a loaded model can do: token per Reflector code on each side (None: no token needed)."""

    family: str
    sources: dict[str, str | None]
    targets: dict[str, str | None]


def language_support(family: str, vocabulary: set[str], tokenizer_config: dict, model_name: str) -> LanguageSupport:
    """Which Reflector languages a model of `family` with `vocabulary` translates from and to.

    Multilingual families: a language is supported when its token is in the vocabulary.
    Marian: the pair comes from ``source_lang``/``target_lang`` in ``tokenizer_config.json``
    or an ``opus-mt-SRC-TGT`` directory name; ``>>xx<<`` tokens add targets. Raises
    `ModelNotFound` when a Marian model names no pair.
    """
    table = load_table()
    if family != "marian":
        supported = {}
        for language in table.values():
            code = language.codes.get(family)
            if code and language_token(family, code) in vocabulary:
                supported[language.code] = language_token(family, code)
        return LanguageSupport(family, supported, dict(supported))
    source_lang, target_lang = tokenizer_config.get("source_lang"), tokenizer_config.get("target_lang")
    match = re.search(r"opus-mt-([a-z]{2,3})-([a-z]{2,3})$", model_name.lower())
    if match and not (source_lang and target_lang):
        source_lang, target_lang = match.groups()
    sources = {code: None for code, lang in table.items() if _marian_matches(lang, source_lang)}
    targets: dict[str, str | None] = {code: None for code, lang in table.items() if _marian_matches(lang, target_lang)}
    for code, lang in table.items():
        for candidate in (lang.codes.get("marian"), lang.codes.get("nllb", "").split("_")[0]):
            if candidate and language_token("marian", candidate) in vocabulary:
                targets[code] = language_token("marian", candidate)
                break
    if not sources or not targets:
        raise ModelNotFound(
            f"{TRANSLATION_SETTING}: this MarianMT model does not say which languages it translates; "
            "add \"source_lang\" and \"target_lang\" (ISO codes) to its tokenizer_config.json"
        )
    return LanguageSupport(family, sources, targets)


_SEPARATOR = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])\s*|\s*\n\s*")


def split_sentences(text: str) -> list[tuple[str, str]]:
    """Cut `text` into ``(sentence, separator)`` pairs whose concatenation is `text` minus
    leading whitespace: after ``. ! ? …`` followed by whitespace, after ``。！？``, and at line
    breaks (the newlines are kept in the separator, so paragraphs survive the round trip)."""
    pieces: list[tuple[str, str]] = []
    text = text.lstrip()
    start = 0
    for match in _SEPARATOR.finditer(text):
        if match.start() == start and not match.group():
            continue
        if match.start() > start:
            pieces.append((text[start : match.start()], match.group()))
        elif pieces:
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + match.group())
        start = match.end()
    if start < len(text):
        pieces.append((text[start:], ""))
    return pieces


def chunk_tokens(tokens: list[str], limit: int = MAX_SOURCE_TOKENS) -> list[list[str]]:
    """Cut a token list into runs of at most `limit`, preferring to cut before a word start (``▁``)."""
    chunks = []
    while len(tokens) > limit:
        cut = next((i for i in range(limit, limit // 2, -1) if tokens[i].startswith("▁")), limit)
        chunks.append(tokens[:cut])
        tokens = tokens[cut:]
    chunks.append(tokens)
    return chunks


class TranslatorEngine:
    """Loads one CTranslate2 translation model and answers `TranslateRequest`s."""

    kind = "translator"
    request_types = (TranslateRequest,)
    scheduler = None  # a plain engine: one job at a time

    def __init__(self, settings: Settings) -> None:
        from app.workers.devices import ct2_compute_type, ct2_device

        self.settings = settings
        self.device = ct2_device(settings)
        self.compute_type = ct2_compute_type(settings, self.device, cuda_default=CUDA_COMPUTE_TYPE)
        self.model_path: Path | None = None  # set last by `_load`: the engine answers from then on
        self.load_seconds: float | None = None
        self.fetch_error: str | None = None
        auto = settings.translation_model == models.AUTO
        try:
            # A named hub model is fetched now (a start-up error when it cannot be had).
            path = models.translation_model_path(settings, fetch=not auto)
        except ModelNotFound:
            if not auto:
                raise
            path = None
        self.progress = hub.Progress(models.translation_name(settings) or "")
        if path is not None:
            self._load(path)
        else:  # `auto` without its model: serve (503 with Retry-After) while it is fetched
            threading.Thread(target=self._fetch_and_load, name="translation-fetch", daemon=True).start()

    def _fetch_and_load(self) -> None:
        """Fetch and convert `auto`'s model, then load it; a failure is logged once and
        kept for `handle` and `describe` to report."""
        try:
            self._load(models.fetch_translation(self.settings, models.DEFAULT_TRANSLATION_MODEL, self.progress))
        except ModelNotFound as exc:
            self.fetch_error = exc.detail
            log.error("translation stays unavailable: %s", exc.detail)
        except Exception as exc:  # noqa: BLE001 - a broken download must not end the worker
            self.fetch_error = f"{models.DEFAULT_TRANSLATION_MODEL} could not be loaded ({type(exc).__name__})"
            log.exception("translation stays unavailable")

    def _load(self, model_path: Path) -> None:
        """Load the CTranslate2 model at `model_path` with its tokenizers and language table."""
        import ctranslate2
        import sentencepiece

        started = time.monotonic()
        vocabulary = read_vocabulary(model_path)
        tokenizer_config = read_tokenizer_config(model_path)
        self.family = detect_family(tokenizer_config, set(vocabulary))
        self.support = language_support(self.family, set(vocabulary), tokenizer_config, model_path.name)
        processors = []
        for name in SPM_FILES[self.family]:
            if not (model_path / name).is_file():
                raise ModelNotFound(
                    f"{TRANSLATION_SETTING}: {model_path} lacks the tokenizer file {name}; convert it with "
                    "`python -m app.models fetch translation`, which copies the tokenizer files"
                )
            processors.append(sentencepiece.SentencePieceProcessor(model_file=str(model_path / name)))
        self.source_spm, self.target_spm = processors[0], processors[-1]
        self.model_name = model_path.name
        self.droppable = self._non_text_tokens(vocabulary)
        self.translator = ctranslate2.Translator(
            str(model_path),
            device=self.device,
            compute_type=self.compute_type,
            intra_threads=self.settings.cpu_threads,
        )
        self.load_seconds = time.monotonic() - started
        self.model_path = model_path
        log.info(
            "loaded %s translation model %s on %s (%s) in %.1f s: %d source and %d target languages",
            self.family,
            model_path.name,
            self.device,
            self.compute_type,
            self.load_seconds,
            len(self.support.sources),
            len(self.support.targets),
        )

    def status(self) -> str:
        """``ready``, how the fetch of `auto`'s model goes, or why translation is unavailable."""
        if self.model_path is not None:
            return "ready"
        if self.fetch_error is not None:
            return f"unavailable: {self.fetch_error}"
        return self.progress.describe()

    def _non_text_tokens(self, vocabulary: list[str]) -> frozenset[str]:
        """Vocabulary entries that must not reach the text: everything that is not a normal or
        byte piece of the target SentencePiece model (control and unknown tokens, language
        tokens such as ``__fr__``/``fra_Latn``/``<2fr>``, fairseq's ``madeupword``s)."""
        spm = self.target_spm
        language_token_pattern = LANGUAGE_TOKEN[self.family]
        drop = set()
        for token in vocabulary:
            piece = spm.piece_to_id(token)
            if (
                spm.id_to_piece(piece) != token
                or spm.is_control(piece)
                or spm.is_unknown(piece)
                or spm.is_unused(piece)
                or language_token_pattern.fullmatch(token)
            ):
                drop.add(token)
        return frozenset(drop)

    def describe(self) -> Pong:
        if self.model_path is None:
            return Pong(kind=self.kind, model=self.progress.label, device=self.device, status=self.status())
        table = load_table()
        return Pong(
            kind=self.kind,
            model=self.model_path.name,
            device=self.device,
            load_seconds=round(self.load_seconds or 0.0, 3),
            info={
                "family": self.family,
                "compute_type": self.compute_type,
                "source_languages": sorted(self.support.sources),
                "target_languages": sorted(self.support.targets),
                "approximate": sorted(c for c in self.support.targets if self.family in table[c].approximate),
            },
        )

    def _check(self, code: str, side: str, supported: dict[str, str | None]) -> None:
        """Raise `BadRequest` naming the supported codes when `code` is not in `supported`."""
        if code in supported:
            return
        language = load_table().get(code)
        if language is None:
            reason = f"{code!r} is not a language code this service knows"
        else:
            direction = "from" if side == "source" else "into"
            reason = (
                f"the loaded {self.family} model ({self.model_name}) cannot translate {direction} "
                f"{language.name} ({code!r})"
            )
        raise BadRequest(f"{side} language: {reason}; supported {side} languages: {', '.join(sorted(supported))}")

    def _source_tokens(self, pieces: list[str], source: str, target: str) -> list[str]:
        """The family's source layout around SentencePiece `pieces`."""
        if self.family in ("m2m100", "nllb"):
            return [self.support.sources[source], *pieces, "</s>"]  # type: ignore[list-item]
        prefix = self.support.targets[target]  # MADLAD <2xx>; multi-target Marian >>xx<<; else None
        return [*([prefix] if prefix else []), *pieces, "</s>"]

    def audio_seconds(self, request: TranslateRequest) -> None:
        """Text, not audio: nothing to measure."""
        return None

    def handle(self, request: TranslateRequest, cancel: threading.Event) -> Translation:
        """Translate one text. Raises `BadRequest` for a language the model lacks,
        `Unavailable` while `auto`'s model is fetched (with ``Retry-After``), when it could
        not be had (with what to do), or when cancelled before the model ran."""
        if self.model_path is None:
            if self.fetch_error is not None:
                raise Unavailable(f"{NOT_CONFIGURED} ({self.fetch_error})")
            raise Unavailable(
                f"the translation model {self.progress.label} is being fetched ({self.progress.describe()}); "
                "retry later",
                retry_after=RETRY_WHILE_FETCHING_SECONDS,
            )
        self._check(request.source, "source", self.support.sources)
        self._check(request.target, "target", self.support.targets)
        if request.source == request.target or not request.text.strip():
            return Translation(text=request.text, pieces=0)
        units: list[tuple[list[str], str]] = []  # (source tokens, separator after)
        for sentence, separator in split_sentences(request.text):
            chunks = chunk_tokens(self.source_spm.encode(sentence, out_type=str))
            for index, chunk in enumerate(chunks):
                last = index == len(chunks) - 1
                units.append((self._source_tokens(chunk, request.source, request.target), separator if last else " "))
        if cancel.is_set():
            raise Cancelled()
        prefix = [self.support.targets[request.target]] if self.family in ("m2m100", "nllb") else None
        longest = max(len(tokens) for tokens, _ in units)
        results = self.translator.translate_batch(
            [tokens for tokens, _ in units],
            target_prefix=[prefix] * len(units) if prefix else None,
            beam_size=BEAM_SIZE,
            max_batch_size=MAX_BATCH_SIZE,
            max_decoding_length=min(MAX_DECODING_TOKENS, 2 * longest + 16),
            disable_unk=True,
        )
        parts = []
        for result, (_, separator) in zip(results, units):
            pieces = [t for t in result.hypotheses[0] if t not in self.droppable]
            parts.append(self.target_spm.decode(pieces).strip() + separator)
        return Translation(text="".join(parts).rstrip(), pieces=len(units))
