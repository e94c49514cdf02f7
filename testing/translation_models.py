"""Tiny translation models with random weights, built locally for the tests (no model hub).

Four families, all converted with the service's own `app.models.convert_translation`:

- MarianMT: no language tokens; the pair comes from ``tokenizer_config.json``
  (``source_lang``/``target_lang``).
- M2M100: the tokenizer carries the 100 ``__xx__`` language tokens, so the worker's
  target-language path (source token, forced target prefix) is exercised.
- NLLB-200: the same architecture with FLORES-200 tokens (``fra_Latn``) from `NllbTokenizer`.
- MADLAD-400: T5 with ``<2xx>`` target tokens as SentencePiece user-defined symbols.

A SentencePiece vocabulary is trained on generated pseudo-words, the model is a 1-layer,
32-wide transformer, and the end-of-sentence logit is pushed down so that a random model
still emits text instead of stopping at once. Each build takes well under a second once
`transformers` is imported. The weights are random but seeded: the same build gives the
same translations, so tests can check determinism.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fe", "gu", "hi", "ju", "bo")
# 32 wide with init_std 0.05: measured to give non-empty outputs that depend on the input,
# the source token and the target prefix (16 wide or other scales collapse more often).
_TINY = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
             decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512,
             init_std=0.05)


def generated_sentences(count: int, seed: int) -> list[str]:
    """`count` sentences of 3-12 pseudo-words made of `SYLLABLES`, with punctuation."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(rng.randint(3, 12))]
        words[0] = words[0].capitalize()
        sentences.append(" ".join(words) + rng.choice(".!?"))
    return sentences


def _train_spm(seed: int, vocab_size: int = 120, **options) -> bytes:
    """A SentencePiece model (unigram unless `options` say otherwise) trained on generated text."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(generated_sentences(800, seed)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=options.pop("model_type", "unigram"),
        character_coverage=1.0,
        minloglevel=2,
        **options,
    )
    return model.getvalue()


def _pieces(spm_bytes: bytes) -> list[str]:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=spm_bytes)
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())
            if not (processor.is_control(i) or processor.is_unknown(i))]


def _quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")


def _silence_eos(model, eos_id: int) -> None:
    """Make end-of-sentence nearly impossible so random weights still produce words."""
    import torch

    with torch.no_grad():
        bias = getattr(model, "final_logits_bias", None)
        if bias is not None:
            bias[0, eos_id] = -1e4
        else:
            model.get_output_embeddings().weight[eos_id].zero_()


def _build(root: Path, seed: int, write_tokenizer, make_model, **spm_options) -> Path:
    """Shared steps: reuse ``root/ct2`` if built; else train the SentencePiece model, let
    `write_tokenizer(hf_dir, spm_bytes) -> vocab size` write the tokenizer files, build the
    seeded random model with `make_model(vocab_size) -> (model, eos id)`, save it under
    ``root/hf`` and convert it with the service's converter into ``root/ct2``."""
    output = root / "ct2"
    if (output / "model.bin").is_file():
        return output
    import torch

    from app.models import convert_translation

    _quiet_transformers()
    hf = root / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(hf, _train_spm(seed, **spm_options))
    torch.manual_seed(seed)
    model, eos_id = make_model(vocab_size)
    _silence_eos(model, eos_id)
    model.save_pretrained(hf)
    return convert_translation(hf, output, quantization=None)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def build_marian(root: Path, source_lang: str = "en", target_lang: str = "fr", seed: int = 7) -> Path:
    """A CTranslate2 MarianMT model at ``root/ct2`` translating `source_lang` -> `target_lang`.

    Reuses an existing build. Vocabulary: ``</s>`` 0, ``<unk>`` 1, the SentencePiece
    pieces, then ``<pad>`` last (Marian's convention; CTranslate2 drops it).
    """
    from transformers import MarianConfig, MarianMTModel

    def write_tokenizer(hf: Path, spm_bytes: bytes) -> int:
        (hf / "source.spm").write_bytes(spm_bytes)
        (hf / "target.spm").write_bytes(spm_bytes)
        tokens = ["</s>", "<unk>", *_pieces(spm_bytes), "<pad>"]
        _write_json(hf / "vocab.json", {t: i for i, t in enumerate(tokens)})
        _write_json(hf / "tokenizer_config.json", {
            "tokenizer_class": "MarianTokenizer", "source_lang": source_lang, "target_lang": target_lang,
            "unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>", "model_max_length": 512,
        })
        return len(tokens)

    def make_model(vocab_size: int):
        pad = vocab_size - 1
        config = MarianConfig(vocab_size=vocab_size, pad_token_id=pad, decoder_start_token_id=pad,
                              eos_token_id=0, forced_eos_token_id=0, **_TINY)
        return MarianMTModel(config), 0

    return _build(root, seed, write_tokenizer, make_model)


def build_m2m100(root: Path, seed: int = 11) -> Path:
    """A CTranslate2 M2M100 model at ``root/ct2`` whose vocabulary has all 100 ``__xx__`` tokens.

    Reuses an existing build. Layout as in facebook/m2m100: ``vocab.json`` (``<s>`` 0,
    ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, pieces), ``sentencepiece.bpe.model``; the tokenizer
    adds the language tokens and 8 ``madeupword`` entries after them.
    """
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    def write_tokenizer(hf: Path, spm_bytes: bytes) -> int:
        (hf / "sentencepiece.bpe.model").write_bytes(spm_bytes)
        tokens = ["<s>", "<pad>", "</s>", "<unk>", *_pieces(spm_bytes)]
        _write_json(hf / "vocab.json", {t: i for i, t in enumerate(tokens)})
        tokenizer = M2M100Tokenizer(vocab_file=str(hf / "vocab.json"), spm_file=str(hf / "sentencepiece.bpe.model"))
        tokenizer.save_pretrained(hf)
        return len(tokens) + len(tokenizer.lang_token_to_id) + tokenizer.num_madeup_words

    def make_model(vocab_size: int):
        config = M2M100Config(vocab_size=vocab_size, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                              decoder_start_token_id=2, **_TINY)
        return M2M100ForConditionalGeneration(config), 2

    return _build(root, seed, write_tokenizer, make_model)


def build_nllb(root: Path, seed: int = 13) -> Path:
    """A CTranslate2 NLLB-200 model at ``root/ct2``: M2M100 architecture, a BPE SentencePiece
    model, and `NllbTokenizer` (converted from it) with the 202 FLORES-200 language tokens."""
    from transformers import AutoTokenizer, M2M100Config, M2M100ForConditionalGeneration
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    def write_tokenizer(hf: Path, spm_bytes: bytes) -> int:
        (hf / "sentencepiece.bpe.model").write_bytes(spm_bytes)
        _write_json(hf / "tokenizer_config.json", {
            "tokenizer_class": "NllbTokenizer", "additional_special_tokens": FAIRSEQ_LANGUAGE_CODES,
        })
        tokenizer = AutoTokenizer.from_pretrained(str(hf))
        tokenizer.save_pretrained(hf)
        return len(tokenizer)

    def make_model(vocab_size: int):
        config = M2M100Config(vocab_size=vocab_size, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                              decoder_start_token_id=2, **_TINY)
        return M2M100ForConditionalGeneration(config), 2

    return _build(root, seed, write_tokenizer, make_model, model_type="bpe")


def build_madlad(root: Path, seed: int = 17) -> Path:
    """A CTranslate2 MADLAD-400 model at ``root/ct2``: T5 architecture, a unigram
    SentencePiece model (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2) whose user-defined symbols are
    the ``<2xx>`` target tokens of the language table, and `T5Tokenizer`."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from app.languages import language_token, load_table

    tokens = sorted({language_token("madlad", lang.codes["madlad"]) for lang in load_table().values()
                     if "madlad" in lang.codes})

    def write_tokenizer(hf: Path, spm_bytes: bytes) -> int:
        (hf / "spiece.model").write_bytes(spm_bytes)
        _write_json(hf / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "extra_ids": 0})
        tokenizer = AutoTokenizer.from_pretrained(str(hf))
        tokenizer.save_pretrained(hf)
        return len(tokenizer)

    def make_model(vocab_size: int):
        config = T5Config(vocab_size=vocab_size, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                          pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        return T5ForConditionalGeneration(config), 1

    return _build(root, seed, write_tokenizer, make_model, vocab_size=120 + len(tokens),
                  pad_id=0, eos_id=1, unk_id=2, bos_id=-1, user_defined_symbols=tokens)


# Pytest fixtures; a test module imports the ones it uses. Builds are shared through one
# directory per session, so a second module reuses the first one's models.
try:
    import pytest
except ImportError:  # the builders also serve bench/translation.py, which needs no pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def marian_model(tmp_path_factory) -> Path:
        """A tiny en -> fr MarianMT model directory (CTranslate2)."""
        return build_marian(tmp_path_factory.getbasetemp() / "translation-models" / "marian")

    @pytest.fixture(scope="session")
    def m2m100_model(tmp_path_factory) -> Path:
        """A tiny M2M100 model directory (CTranslate2) with all 100 language tokens."""
        return build_m2m100(tmp_path_factory.getbasetemp() / "translation-models" / "m2m100")

    @pytest.fixture(scope="session")
    def nllb_model(tmp_path_factory) -> Path:
        """A tiny NLLB-200 model directory (CTranslate2) with the 202 FLORES-200 language tokens."""
        return build_nllb(tmp_path_factory.getbasetemp() / "translation-models" / "nllb")

    @pytest.fixture(scope="session")
    def madlad_model(tmp_path_factory) -> Path:
        """A tiny MADLAD-400 (T5) model directory (CTranslate2) with ``<2xx>`` tokens."""
        return build_madlad(tmp_path_factory.getbasetemp() / "translation-models" / "madlad")

    @pytest.fixture(scope="module")
    def marian(marian_model):
        """The translator engine on the tiny MarianMT model (CPU)."""
        from app.settings import Settings
        from app.workers.translator import TranslatorEngine

        return TranslatorEngine(Settings(translation_model=str(marian_model), device="cpu"))

    @pytest.fixture(scope="module")
    def m2m100(m2m100_model):
        """The translator engine on the tiny M2M100 model (CPU)."""
        from app.settings import Settings
        from app.workers.translator import TranslatorEngine

        return TranslatorEngine(Settings(translation_model=str(m2m100_model), device="cpu"))
