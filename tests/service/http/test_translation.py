"""``POST /translate`` over real HTTPS against the whole service (entrypoint, supervisor,
translator worker on a tiny random model built locally, Granian with TLS)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from testing.service import Service, running_service, start_service
from testing.translation_models import generated_sentences, m2m100_model, marian_model  # noqa: F401

MAX_CHARS = 6000
SENTENCE = "Kalo mine rusa to vize. Ne ru sa poda!"


@pytest.fixture(scope="module")
def m2m100_service(cert_dir, m2m100_model) -> Iterator[Service]:
    """API key required, translation on the tiny M2M100 model, a 6000-character limit."""
    with running_service(
        cert_dir,
        REFLECTOR_GPU_TRANSLATION_MODEL=str(m2m100_model),
        REFLECTOR_GPU_MAX_TRANSLATE_CHARS=str(MAX_CHARS),
        REFLECTOR_GPU_DEVICE="cpu",
    ) as service:
        yield service


@pytest.fixture(scope="module")
def open_marian_service(cert_dir, marian_model) -> Iterator[Service]:
    """API key required except on /translate (REFLECTOR_GPU_OPEN_ROUTES=translate); tiny Marian en->fr."""
    with running_service(
        cert_dir,
        REFLECTOR_GPU_TRANSLATION_MODEL=str(marian_model),
        REFLECTOR_GPU_OPEN_ROUTES="translate",
        REFLECTOR_GPU_DEVICE="cpu",
    ) as service:
        yield service


def translate(service: Service, params: dict | None = None, json: object = None, key: str | None = "default"):
    return service.client(key=key).post("/translate", params=params, json=json)


def test_query_parameters_as_reflector_sends_them(m2m100_service):
    answer = translate(m2m100_service, {"text": SENTENCE, "source_language": "en", "target_language": "de"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"text"} and set(body["text"]) == {"en", "de"}
    assert body["text"]["en"] == SENTENCE
    translated = body["text"]["de"]
    assert translated.strip() and translated != SENTENCE  # the model really ran
    again = translate(m2m100_service, {"text": SENTENCE, "source_language": "en", "target_language": "de"})
    assert again.json()["text"]["de"] == translated  # deterministic for a fixed input


def test_languages_from_a_json_body_and_query_wins(m2m100_service):
    query = translate(m2m100_service, {"text": SENTENCE, "source_language": "en", "target_language": "es"}).json()
    body = translate(m2m100_service, {"text": SENTENCE}, json={"source_language": "en", "target_language": "es"})
    assert body.status_code == 200, body.text
    assert body.json() == query
    everything_in_body = translate(m2m100_service, json={"text": SENTENCE, "target_language": "es"})
    assert everything_in_body.json() == query
    mixed = translate(m2m100_service, {"text": SENTENCE, "target_language": "es"}, json={"target_language": "de"})
    assert mixed.json() == query  # the query string wins over the body


def test_defaults_are_english_to_french(m2m100_service):
    default = translate(m2m100_service, {"text": SENTENCE}).json()
    explicit = translate(m2m100_service, {"text": SENTENCE, "source_language": "en", "target_language": "fr"}).json()
    assert set(default["text"]) == {"en", "fr"} and default == explicit
    other = translate(m2m100_service, {"text": SENTENCE, "target_language": "de"}).json()
    assert other["text"]["de"] != default["text"]["fr"]  # the target language reaches the model


def test_same_language_passes_through(m2m100_service):
    answer = translate(m2m100_service, {"text": SENTENCE, "source_language": "fr", "target_language": "fr"})
    assert answer.status_code == 200 and answer.json() == {"text": {"fr": SENTENCE}}


def test_unknown_or_unsupported_language_is_400_listing_supported(m2m100_service):
    unknown = translate(m2m100_service, {"text": SENTENCE, "target_language": "xx"})
    assert unknown.status_code == 400
    detail = unknown.json()["detail"]
    assert "'xx' is not a language code" in detail and "fr, " in detail and "zu" in detail
    lacking = translate(m2m100_service, {"text": SENTENCE, "source_language": "luo"})
    assert lacking.status_code == 400 and "cannot translate from Luo" in lacking.json()["detail"]


def test_empty_and_missing_text(m2m100_service):
    empty = translate(m2m100_service, {"text": "", "target_language": "de"})
    assert empty.status_code == 200 and empty.json() == {"text": {"en": "", "de": ""}}
    missing = translate(m2m100_service, {"target_language": "de"})
    assert missing.status_code == 400 and "text" in missing.json()["detail"]


def test_long_text_is_batched_and_the_limit_is_413(m2m100_service):
    sentences = generated_sentences(200, seed=9)
    text = " ".join(sentences)[: MAX_CHARS - 100]
    text = text[: text.rfind(".") + 1]
    answer = translate(m2m100_service, {"text": text, "target_language": "de"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["text"]["de"].strip()
    too_long = translate(m2m100_service, json={"text": "a" * (MAX_CHARS + 1)})
    assert too_long.status_code == 413
    assert "REFLECTOR_GPU_MAX_TRANSLATE_CHARS" in too_long.json()["detail"]


def test_key_required_unless_the_route_is_open(m2m100_service, open_marian_service):
    closed = translate(m2m100_service, {"text": SENTENCE}, key=None)
    assert closed.status_code == 401 and closed.headers["www-authenticate"] == "Bearer"
    opened = translate(open_marian_service, {"text": SENTENCE}, key=None)
    assert opened.status_code == 200, opened.text
    assert opened.json()["text"]["fr"] != SENTENCE
    other_route = open_marian_service.client(key=None).post("/v1/audio/transcriptions-from-url", json={})
    assert other_route.status_code == 401  # only the named route is open


def test_marian_pair_only(open_marian_service):
    answer = translate(open_marian_service, {"text": SENTENCE, "target_language": "de"})
    assert answer.status_code == 400
    assert answer.json()["detail"].endswith("supported target languages: fr")


def test_no_model_is_503_with_instructions_and_ready_says_not_configured(service):
    answer = service.client().post("/translate", params={"text": SENTENCE})
    assert answer.status_code == 503
    assert "python -m app.models fetch translation" in answer.json()["detail"]
    ready = service.client(key=None).get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["workers"]["translator"] == "not configured"


def test_ready_with_a_model(m2m100_service):
    ready = m2m100_service.client(key=None).get("/ready").json()
    assert ready["status"] == "ready" and ready["workers"]["translator"] == "ready"


def test_a_missing_model_directory_stops_the_start_naming_the_setting(cert_dir, tmp_path):
    missing = tmp_path / "no-such-model"
    service = start_service(cert_dir, wait=False, REFLECTOR_GPU_TRANSLATION_MODEL=str(missing))
    try:
        assert service.process.wait(timeout=90) != 0
        assert f"REFLECTOR_GPU_TRANSLATION_MODEL={missing}: no CTranslate2 model.bin" in service.log()
    finally:
        service.stop()
        shutil.rmtree(service.state_dir, ignore_errors=True)
