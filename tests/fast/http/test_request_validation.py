"""Request validation in-process (fast tier): the bounds in `app.schemas` and the route checks.

Every case is refused before any download or worker call; the URLs point at a closed
loopback port, so a request that got past validation fails with 502 instead.
"""

from __future__ import annotations

import pytest

from app.schemas import MAX_TIMESTAMP_OFFSET_SECONDS, MAX_TRACK_START_SECONDS

pytest_plugins = ["testing.stub_workers"]

CLOSED = "http://127.0.0.1:9"
PAD_OK = {
    "track_url": f"{CLOSED}/in",
    "output_url": f"{CLOSED}/out",
    "start_time_seconds": 1.0,
    "track_index": 0,
}
MIX_OK = {"track_urls": [f"{CLOSED}/a", f"{CLOSED}/b"], "output_url": f"{CLOSED}/out"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"track_url": ""}, "track_url is empty"),
        ({"track_url": "  "}, "track_url is empty"),
        ({"output_url": ""}, "output_url is empty"),
        ({"start_time_seconds": 0}, "start_time_seconds: Expected `float` > 0.0"),
        ({"start_time_seconds": -1.5}, "start_time_seconds: Expected `float` > 0.0"),
        ({"start_time_seconds": 18000.001}, "start_time_seconds: Expected `float` <= 18000.0"),
        ({"start_time_seconds": "soon"}, "start_time_seconds"),
        ({"track_index": -1}, "track_index: Expected `int` >= 0"),
        ({"track_url": "http://h/" + "a" * 20000}, "track_url: Expected `str` of length <= 16384"),
        ({"output_url": "s3://bucket/key"}, "output_url must be an absolute http:// or https:// URL"),
        ({"output_url": "http://127.0.0.1:99999/up"}, "output_url must be an absolute"),
        ({"output_url": "http://[::1/up"}, "output_url must be an absolute"),
        ({"output_url": "http://127.0.0.1:8/up/a b\u0000"}, "output_url must be an absolute"),
        ({"track_url": "http://127.0.0.1:99999/in.wav"}, "must be an absolute"),
    ],
)
def test_pad_bad_requests(app_client, change: dict, message: str) -> None:
    response = app_client.post("/pad", json={**PAD_OK, **change})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"track_urls": []}, "no non-empty URL"),
        ({"track_urls": ["", " "]}, "no non-empty URL"),
        ({"track_urls": [f"{CLOSED}/a"] * 65}, "track_urls: Expected `array` of length <= 64"),
        ({"offsets_seconds": [1.0]}, "offsets_seconds has 1 values but track_urls has 2"),
        ({"offsets_seconds": [1.0, 18000.5]}, "offsets_seconds[1]: Expected `float` <= 18000.0"),
        ({"output_url": ""}, "output_url is empty"),
        ({"target_sample_rate": 96000}, "target_sample_rate: Invalid enum value 96000"),
        ({"track_urls": "http://x"}, "track_urls"),
        ({"output_url": "/relative/key"}, "output_url must be an absolute http:// or https:// URL"),
    ],
)
def test_mixdown_bad_requests(app_client, change: dict, message: str) -> None:
    response = app_client.post("/mixdown", json={**MIX_OK, **change})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"track_urls": ["", " "]}, "no non-empty URL"),
        ({"track_urls": [f"{CLOSED}/a"] * 65}, "track_urls: Expected `array` of length <= 64"),
        ({"output_url": ""}, "output_url is empty"),
        ({"target_sample_rate": 96000}, "target_sample_rate: Invalid enum value 96000"),
        ({"expected_duration_sec": -1}, "expected_duration_sec: Expected `float` >= 0"),
        ({"output_url": "/relative/key"}, "output_url must be an absolute"),
    ],
)
def test_mixdown_v1_bad_requests(app_client, change: dict, message: str) -> None:
    response = app_client.post("/v1/audio/mixdown", json={**MIX_OK, **change})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def test_offsets_too_far_apart(app_client) -> None:
    response = app_client.post("/mixdown", json={**MIX_OK, "offsets_seconds": [-1e9, 0.0]})
    assert response.status_code == 413, response.text
    assert "REFLECTOR_GPU_MAX_AUDIO_SECONDS" in response.json()["detail"]


def test_boundaries_are_accepted(app_client, caplog) -> None:
    """18000 s and negative offsets pass validation (the fetch then fails: 502, not 400)."""
    response = app_client.post("/pad", json={**PAD_OK, "start_time_seconds": MAX_TRACK_START_SECONDS, "track_index": 3})
    assert response.status_code == 502, response.text
    assert "track_index=3" in caplog.text  # accepted and logged
    response = app_client.post("/mixdown", json={**MIX_OK, "offsets_seconds": [-3.0, 18000], "target_sample_rate": 22050})
    assert response.status_code == 502, response.text


def test_diarize_missing_url_is_400(app_client) -> None:
    response = app_client.post("/diarize")
    assert response.status_code == 400
    assert "audio_file_url" in response.json()["detail"]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"audio_file_url": "http://127.0.0.1:99999/a.wav"}, "absolute"),
        ({"audio_file_url": " "}, "audio_file_url is empty"),
        ({"audio_file_url": "http://host/" + "a" * 20000}, "audio_file_url: Expected `str` of length <= 16384"),
        ({"audio_file_url": f"{CLOSED}/a.wav", "timestamp": "-5"}, "timestamp: Expected `float` >= 0.0"),
        ({"audio_file_url": f"{CLOSED}/a.wav", "timestamp": "nan"}, "timestamp: Expected `float` >= 0.0"),
        ({"audio_file_url": f"{CLOSED}/a.wav", "timestamp": "1e17"}, "timestamp: Expected `float` <= 10000000.0"),
    ],
)
def test_diarize_bad_parameters_are_400(app_client, params: dict, words: str) -> None:
    response = app_client.post("/diarize", params=params)
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "phrase"),
    [
        ({"audio_file_url": "http://[::1"}, "absolute"),
        ({"audio_file_url": "http://127.0.0.1:99999/a.wav"}, "absolute"),
        ({"audio_file_url": "http://host/" + "a" * 20000}, "audio_file_url: Expected `str` of length <= 16384"),
        ({"audio_file_url": f"{CLOSED}/a.wav", "timestamp_offset": -5}, "timestamp_offset: Expected `float` >= 0.0"),
        ({"audio_file_url": f"{CLOSED}/a.wav", "language": "x" * 5000}, "language: Expected `str` matching regex"),
    ],
)
def test_from_url_rejects_bad_values_with_short_messages(app_client, body: dict, phrase: str) -> None:
    response = app_client.post("/v1/audio/transcriptions-from-url", json=body)
    assert response.status_code == 400, response.text
    assert phrase in response.json()["detail"] and len(response.text) < 500


def test_from_url_bounds_pass_validation(app_client) -> None:
    """The largest offset and an empty language (the default) reach the download: 502, not 400."""
    body = {"audio_file_url": f"{CLOSED}/a.wav", "timestamp_offset": MAX_TIMESTAMP_OFFSET_SECONDS, "language": ""}
    response = app_client.post("/v1/audio/transcriptions-from-url", json=body)
    assert response.status_code == 502, response.text


def test_json_bodies_are_bounded_and_parsed_safely(app_client) -> None:
    json = {"content-type": "application/json"}
    huge = app_client.post(
        "/v1/audio/transcriptions-from-url", content=b'{"audio_file_url": "' + b"a" * (24 * 1024 * 1024) + b'"}', headers=json
    )
    assert huge.status_code == 413 and "JSON bodies are limited" in huge.json()["detail"]
    nested = app_client.post("/v1/audio/transcriptions-from-url", content=b"[" * 100000 + b"]" * 100000, headers=json)
    assert nested.status_code == 400
    empty = app_client.post("/v1/audio/transcriptions-from-url", content=b"", headers=json)
    assert empty.status_code == 400 and "JSON object" in empty.json()["detail"]


def test_openapi_carries_the_bounds(app_client) -> None:
    schemas = app_client.get("/docs/openapi.json").json()["components"]["schemas"]
    pad = schemas["PadBody"]["properties"]
    assert pad["start_time_seconds"]["exclusiveMinimum"] == 0 and pad["start_time_seconds"]["maximum"] == 18000
    url_request = next(v for k, v in schemas.items() if k.endswith("UrlTranscriptionRequest"))["properties"]
    assert url_request["timestamp_offset"]["maximum"] == MAX_TIMESTAMP_OFFSET_SECONDS
    assert url_request["audio_file_url"]["maxLength"] == 16384
