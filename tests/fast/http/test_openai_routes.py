"""The OpenAI routes in-process (fast tier): what reaches the workers, and the answer shapes.

Stub engines behind the real worker server (testing/stub_workers.py); no model is loaded.
"""

from __future__ import annotations

import threading

from app.workers.messages import Diarization, DiarizeRequest, TranscribeRequest, Transcript
from testing.stub_workers import SEGMENTS, TURNS, WORDS, StubEngine

pytest_plugins = ["testing.stub_workers"]



def transcript_of(request: TranscribeRequest, cancel: threading.Event) -> Transcript:
    return Transcript(
        text="Hello there. Hi.", words=WORDS, duration=2.5, language=request.language or "de", segments=SEGMENTS
    )


def upload(client, path: str = "/v1/audio/transcriptions", **fields):
    return client.post(path, files={"file": ("a.wav", b"RIFF-not-really", "audio/wav")}, data=fields)


def test_uploads_pass_the_openai_fields_to_whisper(app_client, workers) -> None:
    whisper = StubEngine("whisper", (TranscribeRequest,), transcript_of)
    workers.serve(whisper)
    assert upload(app_client, prompt="Names: Diane.", temperature="0.4", model="whisper-1").status_code == 200
    assert upload(app_client, language="auto").status_code == 200
    assert upload(app_client, language="FR").status_code == 200  # codes are case-insensitive
    translated = upload(app_client, "/v1/audio/translations", response_format="verbose_json")
    assert translated.status_code == 200 and translated.json()["task"] == "translate"
    assert translated.json()["language"] == "en"  # the output language, as OpenAI reports it
    first, auto, french, translation = whisper.requests
    assert (first.prompt, first.temperature, first.language, first.task) == ("Names: Diane.", 0.4, None, "transcribe")
    assert (auto.language, french.language) == (None, "fr")
    assert translation.task == "translate"
    assert {r.priority for r in whisper.requests} == {"live"}


def test_diarize_runs_both_workers_at_once_and_labels_words(app_client, workers) -> None:
    def whisper_handle(request, cancel):
        assert diarizer.started.wait(10), "the diarizer did not start while Whisper ran"
        return transcript_of(request, cancel)

    def diarizer_handle(request: DiarizeRequest, cancel) -> Diarization:
        assert whisper.started.wait(10), "Whisper did not start while the diarizer ran"
        return Diarization(diarization=TURNS, duration=2.5)

    whisper = StubEngine("whisper", (TranscribeRequest,), whisper_handle)
    diarizer = StubEngine("diarizer", (DiarizeRequest,), diarizer_handle)
    workers.serve(whisper)
    workers.serve(diarizer)
    answer = upload(app_client, response_format="verbose_json", diarize="true")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [(w["word"], w["speaker"]) for w in body["words"]] == [(" Hello", 0), (" there.", 0), (" Hi.", 1)]
    assert [(s["text"], s["speaker"], s["start"], s["end"]) for s in body["segments"]] == [
        (" Hello there.", 0, 0.0, 1.0),
        (" Hi.", 1, 1.5, 2.0),
    ]
    diarized = upload(app_client, response_format="diarized_json").json()
    assert diarized == {
        "task": "transcribe",
        "duration": 2.5,
        "text": "Hello there. Hi.",
        "segments": [
            {"id": "0", "start": 0.0, "end": 1.0, "text": "Hello there.", "speaker": "0", "type": "transcript.text.segment"},
            {"id": "1", "start": 1.5, "end": 2.0, "text": "Hi.", "speaker": "1", "type": "transcript.text.segment"},
        ],
        "usage": {"seconds": 2.5, "type": "duration"},
    }
    assert diarizer.requests[0].path == whisper.requests[0].path  # the same file


def test_text_formats_and_their_media_types(app_client, workers) -> None:
    workers.serve(StubEngine("whisper", (TranscribeRequest,), transcript_of))
    expected = {"text": "text/plain", "srt": "text/plain", "vtt": "text/vtt"}
    for response_format, media_type in expected.items():
        answer = upload(app_client, response_format=response_format)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(media_type)
    assert upload(app_client, response_format="text").text == "Hello there. Hi.\n"
    assert upload(app_client, response_format="srt").text == "1\n00:00:00,000 --> 00:00:02,000\nHello there. Hi.\n\n"
    files = [("files", ("a.wav", b"x", "audio/wav")), ("files", ("b.wav", b"y", "audio/wav"))]
    several = app_client.post("/v1/audio/transcriptions", files=files, data={"response_format": "srt"})
    assert several.status_code == 400 and "answers one file" in several.json()["detail"]
    refused = upload(app_client, "/v1/audio/translations", response_format="diarized_json")
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
    invalid = app_client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": 3})
    assert invalid.status_code == 400 and invalid.json()["error"]["message"] == invalid.json()["detail"]


def test_models_lists_the_workers_model(app_client, workers) -> None:
    assert app_client.get("/v1/models").json() == {"object": "list", "data": []}  # not loaded yet
    workers.serve(StubEngine("whisper", (TranscribeRequest,), transcript_of))
    listed = app_client.get("/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["whisper-1", "stub"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in listed["data"])


def test_a_prompt_longer_than_whisper_can_use_is_400(app_client, workers) -> None:
    workers.serve(StubEngine("whisper", (TranscribeRequest,), transcript_of))
    refused = upload(app_client, prompt="word " * 60000)  # 300 KB
    assert refused.status_code == 400 and refused.json()["detail"] == "prompt: Expected `str` of length <= 4096"
    assert upload(app_client, prompt="Names: Diane. " * 200).status_code == 200
