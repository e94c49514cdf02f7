"""The translation worker's engine, the language table and model conversion, without HTTP.

Models are the tiny random ones from `translation_models` (built here, no model hub).
"""

from __future__ import annotations

import pytest

from app import models
from app.errors import ModelNotFound
from app.languages import FAMILIES, language_token, load_table, parse_table
from app.settings import Settings
from app.workers.translator import (
    TranslatorEngine,
    chunk_tokens,
    detect_family,
    split_sentences,
)
from testing.languages import reflector_codes
from testing.translation_models import (  # noqa: F401 - fixtures
    build_marian,
    m2m100,
    m2m100_model,
    madlad_model,
    marian,
    marian_model,
    nllb_model,
)

# --- the language table -------------------------------------------------------------------


def test_table_covers_every_reflector_language_and_nothing_else():
    codes = reflector_codes()
    assert len(codes) == 95
    assert sorted(load_table()) == sorted(codes)


def test_every_family_code_is_one_that_family_really_has():
    """Checked against the language lists shipped in `transformers` (facts, not our table)."""
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES as M2M
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES as NLLB

    table = load_table()
    m2m = {lang.codes["m2m100"] for lang in table.values() if "m2m100" in lang.codes}
    nllb = {lang.codes["nllb"] for lang in table.values() if "nllb" in lang.codes}
    assert m2m <= set(M2M["m2m100"])
    assert nllb <= set(NLLB)
    assert table["fr"].codes == {"m2m100": "fr", "nllb": "fra_Latn", "madlad": "fr", "marian": "fr"}
    assert language_token("m2m100", table["cmn"].codes["m2m100"]) == "__zh__"
    assert language_token("nllb", table["fr"].codes["nllb"]) == "fra_Latn"
    assert language_token("madlad", table["fr"].codes["madlad"]) == "<2fr>"


def test_family_coverage(capsys):
    """How many of Reflector's 95 each family covers (printed for the report; NLLB has all)."""
    table = load_table()
    counts = {family: sum(family in lang.codes for lang in table.values()) for family in FAMILIES}
    approximate = {family: sum(family in lang.approximate for lang in table.values()) for family in FAMILIES}
    with capsys.disabled():
        print(f"\nlanguage coverage of Reflector's {len(table)}: {counts}; of them approximate: {approximate}")
    assert counts["nllb"] == 95 and approximate["nllb"] == 0
    assert counts["m2m100"] >= 80


def test_parse_table_rejects_bad_rows():
    header = "code\tname\tm2m100\tnllb\tmadlad\tmarian\n"
    with pytest.raises(ValueError, match="line 2: 5 fields"):
        parse_table(header + "fr\tFrench\tfr\tfra_Latn\tfr\n")
    with pytest.raises(ValueError, match="appears twice"):
        parse_table(header + "fr\tFrench\tfr\t-\t-\t-\nfr\tFrench\tfr\t-\t-\t-\n")
    with pytest.raises(ValueError, match="header lacks madlad"):
        parse_table("code\tname\tm2m100\tnllb\tmarian\n")
    parsed = parse_table("# comment\n" + header + "arz\tEgyptian Arabic\tar~\tarz_Arab\t-\tar~\n")
    assert parsed["arz"].codes == {"m2m100": "ar", "nllb": "arz_Arab", "marian": "ar"}
    assert parsed["arz"].approximate == {"m2m100", "marian"}


# --- text handling -------------------------------------------------------------------------


def test_split_sentences_keeps_separators():
    text = "  Hello there. How are you?  Fine!\n\nNew paragraph… ok 日本語です。次の文。\nlast"
    pieces = split_sentences(text)
    assert [s for s, _ in pieces] == [
        "Hello there.", "How are you?", "Fine!", "New paragraph…", "ok 日本語です。", "次の文。", "last",
    ]
    assert "".join(s + sep for s, sep in pieces) == text.lstrip()
    assert split_sentences("") == [] and split_sentences("   ") == []
    assert split_sentences("no end") == [("no end", "")]


def test_chunk_tokens_cuts_long_runs_at_word_starts():
    tokens = [("▁w" if i % 3 == 0 else "x") for i in range(1000)]
    chunks = chunk_tokens(tokens, limit=200)
    assert sum(chunks, []) == tokens
    assert all(len(c) <= 200 for c in chunks)
    assert all(c[0].startswith("▁") for c in chunks)
    assert chunk_tokens(["a"] * 450, limit=200) == [["a"] * 200, ["a"] * 200, ["a"] * 50]


# --- configuration -------------------------------------------------------------------------


def test_not_configured_says_how_to_install(tmp_path):
    settings = Settings(models_dir=tmp_path)
    assert not models.translation_is_configured(settings)
    with pytest.raises(ModelNotFound, match=r"python -m app.models fetch translation"):
        models.translation_model_path(settings)
    named = Settings(models_dir=tmp_path, translation_model="facebook/nllb-200-distilled-600M")
    assert models.translation_is_configured(named)
    with pytest.raises(ModelNotFound, match=r"REFLECTOR_GPU_TRANSLATION_MODEL=facebook/nllb.*fetch translation"):
        models.translation_model_path(named)
    with pytest.raises(ModelNotFound, match="no CTranslate2 model.bin"):
        models.translation_model_path(Settings(translation_model=str(tmp_path)))


def test_detect_family():
    assert detect_family({"tokenizer_class": "M2M100Tokenizer"}, set()) == "m2m100"
    assert detect_family({"tokenizer_class": "NllbTokenizerFast"}, set()) == "nllb"
    assert detect_family({"tokenizer_class": "T5Tokenizer"}, {"<2en>"}) == "madlad"
    assert detect_family({"tokenizer_class": "MarianTokenizer"}, set()) == "marian"
    assert detect_family({}, {"eng_Latn", "fra_Latn"}) == "nllb"
    assert detect_family({}, {"<2en>"}) == "madlad"
    with pytest.raises(ModelNotFound, match="cannot tell the model family"):
        detect_family({"tokenizer_class": "BertTokenizer"}, {"hello"})


def test_marian_without_language_pair_is_refused(tmp_path):
    model = build_marian(tmp_path / "m", source_lang="", target_lang="")
    with pytest.raises(ModelNotFound, match="source_lang"):
        TranslatorEngine(Settings(translation_model=str(model), device="cpu"))


# --- the engine on real (tiny) models ------------------------------------------------------


