"""Known speakers by name (issue 22): OpenAI's known_speaker_names[] / known_speaker_references[].

The assignment of references to speakers on made-up embeddings; the HTTP side in-process
with stub workers (validation, what reaches the diarizer, the answer shapes, Reflector's
answers byte for byte, the result store's key, nothing kept or logged). The diarizer with
the real models: tests/service/diarization/test_known_speakers.py; the OpenAI SDK over
real HTTPS: tests/service/http/test_openai_api.py.
"""

from __future__ import annotations

import base64
import logging
import threading

import numpy as np
import pytest

from app.diarization.known import MAX_REFERENCE_BYTES, match_speakers
from app.workers.messages import Diarization, DiarizeRequest, TranscribeRequest, Transcript
from testing.speaker_references import data_url
from testing.stub_workers import SEGMENTS, TURNS, WORDS, StubEngine, leftovers, make_settings, open_client

pytest_plugins = ["testing.stub_workers"]

ALICE, BOB = b"RIFF-alice-voice", b"RIFF-bob-voice"


def unit(*rows: list[float]) -> np.ndarray:
    array = np.array(rows, dtype=np.float64)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


# -- the assignment --------------------------------------------------------------------------
def test_each_reference_names_its_most_similar_speaker() -> None:
    centroids = unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    references = unit([0.1, 0.9, 0], [0, 0.2, 1])
    assert match_speakers(references, centroids, 0.6) == {1: 0, 2: 1}


def test_the_assignment_is_not_greedy() -> None:
    """Reference 0 is closest to speaker 0, but reference 1 can only be speaker 0: the
    assignment gives reference 0 its second choice, which still passes the threshold."""
    centroids = unit([1, 0], [0.6, 0.8])
    references = unit([0.9, 0.45], [1, 0.02])
    similarity = references @ centroids.T
    assert similarity[0].argmax() == 0 and similarity[1, 1] < 0.7 <= similarity[0, 1]
    assert match_speakers(references, centroids, 0.7) == {0: 1, 1: 0}


def test_below_the_threshold_nothing_is_named_and_a_name_is_used_once() -> None:
    centroids = unit([1, 0, 0], [0, 1, 0])
    assert match_speakers(unit([0, 0, 1]), centroids, 0.5) == {}  # a voice that is not there
    assert match_speakers(unit([1, 0.05, 0], [1, 0.1, 0]), centroids, 0.5) == {0: 0}  # two refs, one voice
    assert match_speakers(unit([1, 0, 0]), unit([1, 0.01, 0], [1, 0.02, 0]), 0.5) == {0: 0}  # one name, one speaker
    assert match_speakers(np.zeros((0, 3)), centroids, 0.5) == {}
    assert match_speakers(unit([1, 0, 0]), np.zeros((0, 3)), 0.5) == {}


# -- the HTTP side, stub workers -------------------------------------------------------------
def transcript_of(request: TranscribeRequest, cancel: threading.Event) -> Transcript:
    return Transcript(text="Hello there. Hi.", words=WORDS, duration=2.5, segments=SEGMENTS)


@pytest.fixture
def stubs(workers):
    """Whisper and a diarizer whose speaker 1 is matched by the request's first reference."""

    def diarize(request: DiarizeRequest, cancel) -> Diarization:
        return Diarization(diarization=TURNS, duration=2.5, matched={1: 0} if request.references else {})

    diarizer = StubEngine("diarizer", (DiarizeRequest,), diarize)
    workers.serve(StubEngine("whisper", (TranscribeRequest,), transcript_of))
    workers.serve(diarizer)
    return diarizer


def known_fields(names: list[str], references: list[bytes]) -> dict:
    return {"known_speaker_names[]": names, "known_speaker_references[]": [data_url(r) for r in references]}


def upload(client, **fields):
    return client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF-not-really", "audio/wav")},
                       data=fields)


def test_diarized_json_names_the_matched_speaker(app_client, stubs, stub_settings) -> None:
    answer = upload(app_client, response_format="diarized_json", **known_fields(["bob", "alice"], [BOB, ALICE]))
    assert answer.status_code == 200, answer.text
    assert [s["speaker"] for s in answer.json()["segments"]] == ["0", "bob"]
    assert stubs.requests[-1].references == [BOB, ALICE]  # the audio bytes, in the names' order
    verbose = upload(app_client, response_format="verbose_json", diarize="true", **known_fields(["bob"], [BOB]))
    words, segments = verbose.json()["words"], verbose.json()["segments"]
    assert [(w["speaker"], w.get("name")) for w in words] == [(0, None), (0, None), (1, "bob")]
    assert [(s["speaker"], s.get("name")) for s in segments] == [(0, None), (1, "bob")]
    vtt = upload(app_client, response_format="vtt", diarize="true", **known_fields(["B <ob>"], [BOB])).text
    assert "<v Speaker 0>Hello there." in vtt and "<v B &lt;ob&gt;>Hi." in vtt
    srt = upload(app_client, response_format="srt", diarize="true", **known_fields(["bob"], [BOB])).text
    assert "[Speaker 0] Hello there." in srt and "[bob] Hi." in srt
    assert leftovers(stub_settings) == []


def test_without_references_nothing_changes(app_client, stubs) -> None:
    diarized = upload(app_client, response_format="diarized_json")
    assert [s["speaker"] for s in diarized.json()["segments"]] == ["0", "1"]
    verbose = upload(app_client, response_format="verbose_json", diarize="true")
    assert all("name" not in w for w in verbose.json()["words"]) and stubs.requests[-1].references == []


def test_diarize_and_from_url_add_a_name_and_answer_reflector_byte_for_byte(app_client, stubs, audio_server) -> None:
    url = f"{audio_server.url}/sample.wav"
    plain = app_client.post("/diarize", params={"audio_file_url": url})
    assert plain.content == (b'{"diarization":[{"start":0.0,"end":1.2,"speaker":0},'
                             b'{"start":1.3,"end":2.2,"speaker":1}]}')
    body = {"known_speaker_names": ["bob"], "known_speaker_references": [data_url(BOB)]}
    named = app_client.post("/diarize", params={"audio_file_url": url}, json=body)
    assert named.status_code == 200, named.text
    assert named.json()["diarization"] == [{"start": 0.0, "end": 1.2, "speaker": 0},
                                           {"start": 1.3, "end": 2.2, "speaker": 1, "name": "bob"}]
    from_url = app_client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": url, "diarize": True, **body})
    assert from_url.status_code == 200, from_url.text
    assert [w.get("name") for w in from_url.json()["words"]] == [None, None, "bob"]
    assert [(s["speaker"], s.get("name")) for s in from_url.json()["segments"]] == [(0, None), (1, "bob")]
    reflector = app_client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": url, "language": "en"})
    assert reflector.content.startswith(b'{"text":"Hello there. Hi.","words":[{"word":" Hello","start":0.0,"end":0.4}')
    assert b"name" not in reflector.content and b"name" not in plain.content


def test_references_are_in_the_store_key_and_never_in_the_store(app_client, stubs, audio_server, stub_settings,
                                                                caplog) -> None:
    url = f"{audio_server.url}/sample.wav"

    def diarize(references: list[tuple[str, bytes]]):
        body = {"known_speaker_names": [n for n, _ in references],
                "known_speaker_references": [data_url(r) for _, r in references]}
        answer = app_client.post("/diarize", params={"audio_file_url": url}, json=body)
        assert answer.status_code == 200, answer.text
        return answer

    with caplog.at_level(logging.DEBUG):
        assert "name" not in diarize([]).text
        assert diarize([("bob", BOB)]).json()["diarization"][1]["name"] == "bob"  # not the stored answer
        assert diarize([("bob", BOB)]).headers  # the same references: the stored one
        assert diarize([("robert", BOB)]).json()["diarization"][1]["name"] == "robert"
        assert diarize([("bob", ALICE)]).json()["diarization"][1]["name"] == "bob"
    assert len(stubs.requests) == 4  # computed without, with bob, robert, bob-as-alice; the repeat was stored
    stored = b"".join(p.read_bytes() for p in (stub_settings.state_dir / "results").iterdir() if p.is_file())
    assert stored and all(secret not in stored for secret in (b"bob", b"robert", BOB, ALICE, base64.b64encode(BOB)))
    logged = caplog.text
    assert all(secret not in logged for secret in ("bob", "robert", base64.b64encode(BOB).decode()))
    assert leftovers(stub_settings) == []


@pytest.mark.parametrize(
    ("fields", "status", "phrase"),
    [
        ({"response_format": "verbose_json", **known_fields(["a"], [ALICE])}, 400, "diarized_json or diarize=true"),
        ({"diarize": "true", "known_speaker_names[]": ["a", "b"], "known_speaker_references[]": [data_url(ALICE)]},
         400, "as many entries each (got 2 and 1)"),
        ({"diarize": "true", **known_fields(list("abcde"), [ALICE] * 5)}, 400, "[]: Expected `array` of length <= 4"),  # names or references, whichever msgspec checks first
        ({"diarize": "true", **known_fields(["a", "a"], [ALICE, BOB])}, 400, "every name must be different"),
        ({"diarize": "true", **known_fields([" "], [ALICE])}, 400, "known_speaker_names[0] must be 1 to 100"),
        ({"diarize": "true", **known_fields(["x" * 101], [ALICE])}, 400, "known_speaker_names[0]"),
        ({"diarize": "true", "known_speaker_names[]": ["a", "b"],
          "known_speaker_references[]": [data_url(ALICE), "https://example.com/bob.wav"]},
         400, "known_speaker_references[1] must be a data URL"),
        ({"diarize": "true", "known_speaker_names[]": ["a"], "known_speaker_references[]": ["data:audio/wav;base64,#!"]},
         400, "known_speaker_references[0]: the data URL's base64 is not valid"),
        ({"diarize": "true", "known_speaker_names[]": ["a"], "known_speaker_references[]": ["data:audio/wav;base64,"]},
         400, "known_speaker_references[0] is empty"),
        ({"diarize": "true", **known_fields(["a"], [bytes(MAX_REFERENCE_BYTES + 1)])}, 413,
         "known_speaker_references[0] is larger than"),
    ],
)
def test_bad_known_speakers_are_refused_naming_the_field(app_client, stubs, stub_settings, fields, status,
                                                         phrase) -> None:
    answer = upload(app_client, **fields)
    assert answer.status_code == status, answer.text
    assert phrase in answer.json()["detail"] and answer.json()["error"]["message"] == answer.json()["detail"]
    assert stubs.requests == [] and leftovers(stub_settings) == []


def test_json_routes_check_the_same_way(app_client, stubs) -> None:
    url = "http://127.0.0.1:9/a.wav"
    too_many = {"known_speaker_names": list("abcde"), "known_speaker_references": [data_url(ALICE)] * 5}
    answer = app_client.post("/diarize", params={"audio_file_url": url}, json=too_many)
    assert answer.status_code == 400 and "known_speaker_names" in answer.json()["detail"]
    body = {"audio_file_url": url, "known_speaker_names": ["a"], "known_speaker_references": [data_url(ALICE)]}
    answer = app_client.post("/v1/audio/transcriptions-from-url", json=body)
    assert answer.status_code == 400 and "diarize" in answer.json()["detail"]
    answer = app_client.post("/diarize", params={"audio_file_url": url}, json={"known_speaker_references": ["x"]})
    assert answer.status_code == 400 and "as many entries" in answer.json()["detail"]


def test_another_pipeline_says_references_need_fast(state_dir, workers) -> None:
    settings = make_settings(state_dir, diarization_model="embedded")
    with open_client(settings) as client:
        answer = upload(client, response_format="diarized_json", **known_fields(["a"], [ALICE]))
    assert answer.status_code == 400 and "REFLECTOR_GPU_DIARIZATION_MODEL=fast" in answer.json()["detail"]


# -- the engine with the real models -------------------------------------------------------
@pytest.fixture(scope="module")
def engine():
    from app import settings as settings_module
    from app.workers.diarizer import DiarizerEngine

    return DiarizerEngine(settings_module.load({}))
