"""The Whisper worker's scheduler and replicas, over real HTTPS with the real model.

A "recording" here is the pyannote sample repeated (real speech, ~30 s a copy); a "live
clip" is 2 s of it uploaded as Reflector's live path does.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from testing.service import ROOT, Service, pongs, queued_seconds, running_service, wait_for, write_wav


@pytest.fixture(scope="module")
def recording_wav(tmp_path_factory, sample_wav: Path) -> Path:
    """Six copies of the sample back to back: 3 minutes of real two-speaker speech."""
    from app.audio.decode import decode_mono

    audio = decode_mono(sample_wav)
    return write_wav(tmp_path_factory.mktemp("audio") / "recording.wav", np.tile(audio, 6))


@pytest.fixture(scope="module")
def live_clip(tmp_path_factory, sample_wav: Path) -> Path:
    """2 s of the sample's speech (from 6.5 s)."""
    from app.audio.decode import decode_mono

    audio = decode_mono(sample_wav)
    return write_wav(tmp_path_factory.mktemp("audio") / "clip.wav", audio[int(6.5 * 16000) : int(8.5 * 16000)])


def from_url(client: httpx.Client, url: str, offset: float = 0.0) -> httpx.Response:
    return client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": url, "timestamp_offset": offset})


def test_concurrent_requests_answer_what_each_answers_alone(service: Service, audio_server) -> None:
    client = service.client()
    url = audio_server.url + "/sample.wav"
    alone = from_url(client, url)  # offsets below differ from it: the result store answers none of them
    assert alone.status_code == 200, alone.text
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda offset: from_url(service.client(), url, offset), (5.0, 10.0, 20.0, 30.0)))
    expected = [(w["word"], w["start"], w["end"]) for w in alone.json()["words"]]
    for offset, response in zip((5.0, 10.0, 20.0, 30.0), responses):
        assert response.status_code == 200, response.text
        words = [(w["word"], round(w["start"] - offset, 2), round(w["end"] - offset, 2)) for w in response.json()["words"]]
        assert words == expected
        assert response.json()["text"] == alone.json()["text"]


def test_a_live_clip_overtakes_a_running_recording(
    service: Service, audio_server, recording_wav: Path, live_clip: Path
) -> None:
    url = audio_server.add("recording.wav", recording_wav)
    finished: dict[str, float] = {}

    def record() -> None:
        response = from_url(service.client(), url)
        assert response.status_code == 200, response.text
        finished["recording"] = time.monotonic()

    recorder = threading.Thread(target=record)
    recorder.start()
    # The recording's pieces are queued once the worker has decoded and cut it.
    assert wait_for(lambda: queued_seconds(service) > 60)
    with live_clip.open("rb") as audio:
        response = service.client().post(
            "/v1/audio/transcriptions", files={"file": ("clip.wav", audio, "audio/wav")}, data={"language": "en"}
        )
    finished["live"] = time.monotonic()
    assert response.status_code == 200, response.text
    assert response.json()["words"], "the live clip has speech"
    still_queued = queued_seconds(service)
    recorder.join(300)
    assert finished["live"] < finished["recording"]
    assert still_queued > 0, "the live clip was answered while recording pieces were still waiting"


def test_a_departed_clients_pieces_are_dropped_at_once(service: Service, recording_wav: Path) -> None:
    """A live upload whose client leaves: its queued pieces go before any further batch."""
    client = service.client(timeout=httpx.Timeout(60.0, read=3.0))
    with recording_wav.open("rb") as audio, pytest.raises(httpx.ReadTimeout):
        client.post("/v1/audio/transcriptions", files={"file": ("long.wav", audio, "audio/wav")})
    left = time.monotonic()
    # 3 minutes of speech were queued; once the disconnect is seen they are gone, while at
    # most the batches already running (a few pieces) finish.
    assert wait_for(lambda: queued_seconds(service) <= 2 * 30 * 2, timeout=10)
    assert time.monotonic() - left < 10
    assert wait_for(lambda: pongs(service)[0].busy == 0, timeout=60)


def test_two_replicas_both_take_work_and_a_killed_one_fails_only_its_requests(
    cert_dir: Path, audio_server, recording_wav: Path
) -> None:
    url = audio_server.add("recording2.wav", recording_wav)
    sample = audio_server.url + "/sample.wav"
    with running_service(cert_dir, REFLECTOR_GPU_WHISPER_REPLICAS="2", REFLECTOR_GPU_CPU_THREADS="1") as service:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            # Distinct offsets: identical requests would share one job (the result store).
            results = list(pool.map(lambda offset: from_url(service.client(), sample, offset).status_code, range(4)))
        assert results == [200] * 4
        done = [pong.jobs_done for pong in pongs(service, replicas=2)]
        assert all(count >= 1 for count in done), done
        ready = service.client(key=None).get("/ready").json()
        assert [r["state"] for r in ready["replicas"]["whisper"]] == ["ready", "ready"]

        # One long job on each replica (the client sends each to the least loaded one).
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(from_url, service.client(), url, 0.0)
            assert wait_for(lambda: sum(p.busy for p in pongs(service, replicas=2)) == 1)
            second = pool.submit(from_url, service.client(), url, 1.0)
            assert wait_for(lambda: all(p.busy == 1 for p in pongs(service, replicas=2)))
            [victim] = [pid for pid in service.child_pids("app.workers.server whisper 0")]
            os.kill(victim, signal.SIGKILL)
            statuses = sorted([first.result(300).status_code, second.result(300).status_code])
        assert statuses == [200, 503]
        # The supervisor brings replica 0 back.
        assert wait_for(lambda: service.client(key=None).get("/ready").status_code == 200, timeout=120, step=0.5)


VOCABULARIES = {  # what espeak-ng says; Whisper writes numbers in digits (NUMBERS)
    "numbers": "seven, twelve, forty, ninety, three hundred, eleven.",
    "colors": "purple, orange, yellow, green, violet, crimson.",
    "animals": "elephant, giraffe, tiger, rabbit, dolphin, penguin.",
    "fruits": "banana, cherry, mango, apple, lemon, grape.",
    "cities": "London, Paris, Tokyo, Berlin, Madrid, Chicago.",
    "weekdays": "Monday, Tuesday, Friday, Sunday, Thursday, Saturday.",
}
NUMBERS = "7 12 40 90 300 11"


@pytest.mark.parametrize("order", ["forward", "reversed"])
def test_packed_live_chunks_hand_each_request_only_its_own_words(tmp_path: Path, monkeypatch, order: str) -> None:
    """Six live requests, each speaking words of its own vocabulary (espeak-ng), decoded in
    shared windows, in two orders (so each has other neighbours): every answer has its own
    words and none of another request's."""
    import re
    import subprocess

    from app import settings as settings_module
    from app.workers import whisper
    from app.workers.messages import TranscribeRequest
    from app.workers.whisper import WhisperEngine

    settings = settings_module.load({
        "REFLECTOR_GPU_MODELS_DIR": str(ROOT / "models"), "REFLECTOR_GPU_DEVICE": "cpu",
        "REFLECTOR_GPU_WHISPER_LIVE_PACKING": "on",
    })
    engine = WhisperEngine(settings)
    assert engine.live_packing
    rows: list = []
    batch_rows = whisper.batch_rows
    monkeypatch.setattr(whisper, "batch_rows", lambda *args, **kwargs: rows.append(batch_rows(*args, **kwargs)) or rows[-1])
    jobs = {}
    for name, text in (reversed if order == "reversed" else iter)(list(VOCABULARIES.items())):
        path = tmp_path / f"{name}.wav"
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), text], check=True)
        jobs[name] = engine.prepare(TranscribeRequest(path=str(path), language="en", priority="live"))
    with engine.scheduler._lock:  # queued together: one lane takes them in one batch
        futures = {name: engine.scheduler.submit(job) for name, job in jobs.items()}
    answers = {name: future.result(120) for name, future in futures.items()}
    engine.scheduler.stop()
    shared = [sum(other.audio is row.audio for other in batch) for batch in rows for row in batch]
    assert max(shared) >= 3, f"the requests did not share windows: {shared}"

    def words(text: str) -> set[str]:
        return set(re.sub(r"[^\w\s]", " ", text.lower()).split())

    vocabularies = {name: words(text) for name, text in VOCABULARIES.items()}
    vocabularies["numbers"] |= words(NUMBERS)
    for name, answer in answers.items():
        own = vocabularies[name]
        others = set().union(*(v for n, v in vocabularies.items() if n != name)) - own
        heard = words(" ".join(word.word for word in answer.words))
        assert not heard & others, f"{name} got another request's words: {heard & others}"
        assert len(heard & own) >= 4, f"{name} lost its own words: {heard}"
        assert all(0 <= word.start <= word.end <= answer.duration + 0.01 for word in answer.words)
