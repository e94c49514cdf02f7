"""The translation worker's engine, the language table and model conversion, without HTTP.

Models are the tiny random ones from `translation_models` (built here, no model hub).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from app import models
from app.errors import BadRequest
from app.languages import load_table
from app.settings import Settings
from app.workers.translator import (
    TranslateRequest,
    TranslatorEngine,
)
from testing.languages import reflector_codes
from testing.translation_models import (  # noqa: F401 - fixtures
    generated_sentences,
    m2m100,
    m2m100_model,
    madlad_model,
    marian,
    marian_model,
    nllb_model,
)

NO_CANCEL = threading.Event()


# --- the language table -------------------------------------------------------------------


# --- text handling -------------------------------------------------------------------------


# --- configuration -------------------------------------------------------------------------


def test_fetched_default_is_found_without_setting(tmp_path, marian_model):
    target = models.translation_dir(Settings(models_dir=tmp_path), models.DEFAULT_TRANSLATION_MODEL)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(marian_model, target_is_directory=True)
    settings = Settings(models_dir=tmp_path)
    assert models.translation_is_configured(settings)
    assert models.translation_model_path(settings) == target


@pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")
def test_fetch_converts_a_local_transformers_directory(tmp_path, marian_model, monkeypatch):
    """`python -m app.models fetch translation DIR` converts without the network."""
    hf_dir = marian_model.parent / "hf"
    monkeypatch.setenv("REFLECTOR_GPU_MODELS_DIR", str(tmp_path))
    assert models.main(["fetch", "translation", str(hf_dir)]) == 0
    converted = tmp_path / "translation-hf"
    assert (converted / "model.bin").is_file() and (converted / "source.spm").is_file()
    assert not list(tmp_path.glob("*.partial"))
    # The engine loads the converted directory and finds the same language pair.
    engine = TranslatorEngine(Settings(translation_model=str(converted), device="cpu"))
    assert engine.describe().info["target_languages"] == ["fr"]
    assert engine.handle(TranslateRequest("Kalo mine rusa to.", "en", "fr"), NO_CANCEL).text
    # `fetch` stores float16 weights, the reference float32 ones (both converted from `hf`):
    # the two must compute the same function within float16 rounding. Greedy text of a
    # random model is no such measure (one flipped arg-max changes every later token), so
    # compare the log-probabilities both assign to the same target tokens, in float32.
    import ctranslate2

    source = engine.source_spm.encode(generated_sentences(6, seed=3), out_type=str)
    target = engine.target_spm.encode(generated_sentences(6, seed=4), out_type=str)

    def token_log_probs(model_dir: Path, targets: list[list[str]]) -> list[float]:
        # The last score is the end of sentence, pushed down by thousands in these models.
        results = ctranslate2.Translator(str(model_dir), compute_type="float32").score_batch(source, targets)
        return [p for r in results for p in r.log_probs[:-1]]

    converted_scores = token_log_probs(converted, target)
    assert converted_scores == pytest.approx(token_log_probs(marian_model, target), abs=0.02)
    # The measure can tell models apart: the same model scores other targets differently.
    assert converted_scores != pytest.approx(token_log_probs(converted, [t[::-1] for t in target]), abs=0.02)


# --- the engine on real (tiny) models ------------------------------------------------------


def test_marian_translates_deterministically(marian):
    pong = marian.describe()
    assert pong.kind == "translator" and pong.device == "cpu"
    assert pong.info["family"] == "marian" and pong.info["compute_type"] == "int8"
    assert pong.info["source_languages"] == ["en"] and pong.info["target_languages"] == ["fr"]
    text = "Kalo mine rusa to vize."
    first = marian.handle(TranslateRequest(text, "en", "fr"), NO_CANCEL)
    second = marian.handle(TranslateRequest(text, "en", "fr"), NO_CANCEL)
    assert first.text and first.text != text
    assert first == second
    assert first.pieces == 1


def test_marian_refuses_a_language_it_lacks(marian):
    with pytest.raises(BadRequest, match=r"cannot translate into German \('de'\); supported target languages: fr"):
        marian.handle(TranslateRequest("hello", "en", "de"), NO_CANCEL)
    with pytest.raises(BadRequest, match=r"'xx' is not a language code this service knows.*: en$"):
        marian.handle(TranslateRequest("hello", "xx", "fr"), NO_CANCEL)


def test_m2m100_uses_the_language_tokens(m2m100):
    info = m2m100.describe().info
    assert info["family"] == "m2m100"
    assert len(info["target_languages"]) == sum("m2m100" in lang.codes for lang in load_table().values())
    assert {"ary", "arz", "nn", "yue"} == set(info["approximate"])
    text = " ".join(generated_sentences(10, seed=5))
    to_fr = m2m100.handle(TranslateRequest(text, "en", "fr"), NO_CANCEL).text
    to_de = m2m100.handle(TranslateRequest(text, "en", "de"), NO_CANCEL).text
    from_es = m2m100.handle(TranslateRequest(text, "es", "fr"), NO_CANCEL).text
    assert len({to_fr, to_de, from_es, text}) == 4  # target prefix and source token both reach the model
    for output in (to_fr, to_de, from_es):
        assert output.strip()
        assert "__" not in output and "madeupword" not in output and "</s>" not in output
    assert m2m100.handle(TranslateRequest(text, "en", "fr"), NO_CANCEL).text == to_fr


def test_same_language_and_empty_text_pass_through(m2m100):
    assert m2m100.handle(TranslateRequest("Kalo mine.", "fr", "fr"), NO_CANCEL).text == "Kalo mine."
    assert m2m100.handle(TranslateRequest("", "en", "fr"), NO_CANCEL).text == ""
    assert m2m100.handle(TranslateRequest(" \n ", "en", "fr"), NO_CANCEL).text == " \n "


def test_long_text_is_split_batched_and_rejoined(m2m100):
    sentences = generated_sentences(60, seed=3)
    text = " ".join(sentences[:30]) + "\n\n" + " ".join(sentences[30:])
    whole = m2m100.handle(TranslateRequest(text, "en", "fr"), NO_CANCEL)
    assert whole.pieces == 60
    assert whole.text.count("\n\n") == 1
    sentence = sentences[0]
    repeated = m2m100.handle(TranslateRequest(f"{sentence} {sentence}\n\n{sentence}", "en", "fr"), NO_CANCEL)
    first, second = repeated.text.split("\n\n")
    assert repeated.pieces == 3 and first == f"{second} {second}"  # each sentence on its own, rejoined
    unpunctuated = " ".join(s.rstrip(".!?") for s in sentences)  # one "sentence" of ~450 words
    long = m2m100.handle(TranslateRequest(unpunctuated, "en", "fr"), NO_CANCEL)
    assert long.pieces > 1 and long.text


def test_nllb_has_every_reflector_language_and_uses_flores_tokens(nllb_model):
    engine = TranslatorEngine(Settings(translation_model=str(nllb_model), device="cpu"))
    info = engine.describe().info
    assert info["family"] == "nllb"
    assert info["target_languages"] == sorted(reflector_codes()) and info["approximate"] == []
    assert engine._source_tokens(["▁x"], "en", "fr") == ["eng_Latn", "▁x", "</s>"]
    text = " ".join(generated_sentences(10, seed=5))
    to_fr = engine.handle(TranslateRequest(text, "en", "fr"), NO_CANCEL).text
    to_de = engine.handle(TranslateRequest(text, "en", "de"), NO_CANCEL).text
    from_es = engine.handle(TranslateRequest(text, "es", "fr"), NO_CANCEL).text
    assert len({to_fr, to_de, from_es, text}) == 4
    assert "_Latn" not in to_fr + to_de + from_es and "</s>" not in to_fr
    assert engine.handle(TranslateRequest(text, "en", "fr"), NO_CANCEL).text == to_fr


def test_madlad_puts_the_target_token_first_and_never_prints_it(madlad_model):
    engine = TranslatorEngine(Settings(translation_model=str(madlad_model), device="cpu"))
    info = engine.describe().info
    assert info["family"] == "madlad"
    assert len(info["target_languages"]) == 94 and "luo" not in info["target_languages"]
    assert engine._source_tokens(["▁x"], "en", "tl") == ["<2fil>", "▁x", "</s>"]
    result = engine.handle(TranslateRequest("Kalo mine rusa to vize.", "en", "fr"), NO_CANCEL)
    assert result.text.strip() and "<2" not in result.text and result.text != "Kalo mine rusa to vize."
    with pytest.raises(BadRequest, match="cannot translate into Luo"):
        engine.handle(TranslateRequest("x", "en", "luo"), NO_CANCEL)
