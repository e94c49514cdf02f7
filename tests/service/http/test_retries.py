"""Retries that finish (issue 11), over real HTTPS with the real models.

Reflector gives up on a recording after its time-out and retries with a freshly presigned
URL. Here the first client times out before the job ends; the job goes on; the retry (same
audio, another query string) attaches to it or is answered from the store, and the model
runs once. Model runs are counted by watching the worker from outside: each job holds the
worker busy (`Pong.busy` >= 1) from start to end, so the count of busy periods and the most
jobs seen at once say how often the model ran, and `Pong.jobs_done` must agree. Two Granian
workers serve, so retries land on either.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testing.service import Service, WorkerWatch, running_service

pytest_plugins = ["testing.seaweedfs"]

FULL_JOB_SECONDS: dict[str, float] = {}  # measured by the first test, used by the last
TTL_SECONDS = 20  # long enough for a retry to find the result; short enough to see it expire
FIRST_TIMEOUT = httpx.Timeout(60.0, read=2.0)  # the impatient first client


@pytest.fixture(scope="module")
def service(cert_dir: Path) -> Iterator[Service]:
    # Whisper batches of 2 pieces: a cancelled job stops at the end of its current batch, so
    # a 2-minute file takes several batches and a cancellation shows before the job would end.
    with running_service(
        cert_dir,
        REFLECTOR_GPU_HTTP_WORKERS="2",
        REFLECTOR_GPU_RESULT_TTL_SECONDS=str(TTL_SECONDS),
        REFLECTOR_GPU_WHISPER_BATCH_SIZE="2",
    ) as running:
        yield running


def concatenated(sample_wav: Path, directory: Path, times: int) -> Path:
    """`sample_wav` `times` times in a row (sox): real speech, as long as we need."""
    out = directory / f"sample-x{times}.wav"
    subprocess.run(["sox", *[str(sample_wav)] * times, str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def long_wav(sample_wav: Path, tmp_path_factory) -> Path:
    return concatenated(sample_wav, tmp_path_factory.mktemp("long"), 4)


def access_lines(service: Service, path: str) -> list[str]:
    return [line for line in service.log().splitlines() if "app.access" in line and f"path={path} " in line]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def timed(send) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = send()
    return response, time.monotonic() - started


def give_up_early(send) -> float:
    """Send with the impatient client; it must time out. Returns how long it waited."""
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        send()
    return time.monotonic() - started


def test_from_url_retry_attaches_then_is_stored_then_expires(service: Service, audio_server, long_wav: Path) -> None:
    url = audio_server.add("retry-long.wav", long_wav)
    impatient, patient = service.client(timeout=FIRST_TIMEOUT), service.client(timeout=600)

    def post(client: httpx.Client, query: str, **extra) -> httpx.Response:
        return client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": f"{url}?{query}", "language": "en", **extra})

    with WorkerWatch(service, "whisper") as watch:
        give_up_early(lambda: post(impatient, "X-Amz-Signature=first"))
        wait_for(lambda: watch.runs == 1, 30, "the job never reached the worker")  # it goes on without its client
        retry, retry_s = timed(lambda: post(patient, "X-Amz-Signature=second"))
        assert retry.status_code == 200, retry.text
        stored, stored_s = timed(lambda: post(patient, "X-Amz-Signature=third"))
        assert watch.model_runs() == 1 and watch.most == 1
        # Another timestamp_offset is another result: the model runs again, same words shifted.
        shifted = post(patient, "X-Amz-Signature=fourth", timestamp_offset=100.0)
        assert watch.model_runs() == 2
        time.sleep(TTL_SECONDS + 1)
        expired, expired_s = timed(lambda: post(patient, "X-Amz-Signature=fifth"))
        assert watch.model_runs() == 3

    words = retry.json()["words"]
    assert len(words) > 100 and stored.json() == retry.json() == expired.json()
    moved = shifted.json()["words"]
    assert [w["word"] for w in moved] == [w["word"] for w in words]
    assert all(abs(m["start"] - w["start"] - 100) <= 0.011 for m, w in zip(moved, words))
    assert stored_s < expired_s / 5, (stored_s, expired_s)
    FULL_JOB_SECONDS["whisper"] = expired_s
    lines = access_lines(service, "/v1/audio/transcriptions-from-url")[-5:]
    assert "status=499" in lines[0]
    assert "status=200" in lines[1] and "result=attached" in lines[1]
    assert "result=stored" in lines[2] and "audio_s=120.00" in lines[2]
    assert "result=" not in lines[3] + lines[4]
    assert "X-Amz-Signature" not in service.log()


def test_diarize_retry_attaches(service: Service, audio_server, sample_wav: Path, tmp_path: Path) -> None:
    # Long enough that the fast pipeline is still at work when the first client gives up.
    url = audio_server.add("retry-diarize.wav", concatenated(sample_wav, tmp_path, 20))
    impatient, patient = service.client(timeout=FIRST_TIMEOUT), service.client(timeout=600)
    with WorkerWatch(service, "diarizer") as watch:
        give_up_early(lambda: impatient.post("/diarize", params={"audio_file_url": f"{url}?sig=1", "timestamp": 5}))
        retry = patient.post("/diarize", params={"audio_file_url": f"{url}?sig=2", "timestamp": 5})
        stored = patient.post("/diarize", params={"audio_file_url": f"{url}?sig=3", "timestamp": 5})
        assert watch.model_runs() == 1 and watch.most == 1
    assert retry.status_code == 200, retry.text
    turns = retry.json()["diarization"]
    assert len({t["speaker"] for t in turns}) >= 2 and min(t["start"] for t in turns) >= 5
    assert stored.json() == retry.json()
    lines = access_lines(service, "/diarize")[-3:]
    assert "status=499" in lines[0] and "result=attached" in lines[1] and "result=stored" in lines[2]


@pytest.fixture(scope="module")
def ten_minute_wav(sample_wav: Path, tmp_path_factory) -> Path:
    """Long enough that padding it takes seconds on any machine (2 min took under 1 s)."""
    return concatenated(sample_wav, tmp_path_factory.mktemp("ten"), 20)


def test_pad_retry_puts_the_kept_file_to_the_new_url(service: Service, seaweed, audio_server, ten_minute_wav: Path) -> None:
    track = audio_server.add("retry-pad.wav", ten_minute_wav)
    impatient = service.client(timeout=httpx.Timeout(60.0, read=1.0))
    patient = service.client(timeout=600)

    def body(name: str) -> dict:
        return {"track_url": f"{track}?sig={name}", "output_url": seaweed.presign_put(f"out/{name}.webm"), "start_time_seconds": 1.5, "track_index": 0}

    with WorkerWatch(service, "audio") as watch:
        give_up_early(lambda: impatient.post("/pad", json=body("first")))
        wait_for(lambda: watch.runs == 1, 30, "the pad job never reached the audio worker")
        retry = patient.post("/pad", json=body("second"))
        stored = patient.post("/pad", json=body("third"))
        assert watch.model_runs() == 1
    assert retry.status_code == 200 and stored.status_code == 200, (retry.text, stored.text)
    size = retry.json()["size"]
    assert stored.json() == {"size": size, "cancelled": False} and size > 100_000
    assert seaweed.get("out/second.webm") == seaweed.get("out/third.webm") and len(seaweed.get("out/third.webm")) == size
    lines = access_lines(service, "/pad")[-3:]
    assert "status=499" in lines[0] and re.search(r"result=(attached|stored)", lines[1]) and "result=stored" in lines[2]


def test_idempotency_key_answers_before_downloading(service: Service, audio_server, sample_wav: Path) -> None:
    url = audio_server.add("retry-idempotent.wav", sample_wav)
    client = service.client(timeout=600)
    headers = {"Idempotency-Key": "meeting-42-track-0"}
    first = client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": f"{url}?a=1"}, headers=headers)
    fetched = len([r for r in audio_server.requests if "retry-idempotent" in r])
    again = client.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": f"{url}?a=2"}, headers=headers)
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert len([r for r in audio_server.requests if "retry-idempotent" in r]) == fetched  # no second download
    # The access line is written once the answer is sent: give it a moment to reach the log.
    wait_for(lambda: "result=stored" in access_lines(service, "/v1/audio/transcriptions-from-url")[-1], 5,
             "the retry was not logged as stored")


def test_live_upload_is_cancelled_when_its_client_leaves(service: Service, audio_server, long_wav: Path) -> None:
    if "whisper" not in FULL_JOB_SECONDS:  # run alone: time a whole job first
        url = audio_server.add("retry-full.wav", long_wav)
        FULL_JOB_SECONDS["whisper"] = timed(
            lambda: service.client(timeout=600).post(
                "/v1/audio/transcriptions-from-url", json={"audio_file_url": url, "timestamp_offset": 7.0}
            )
        )[1]
    impatient = service.client(timeout=httpx.Timeout(60.0, read=1.0))
    with WorkerWatch(service, "whisper") as watch:
        with long_wav.open("rb") as audio:
            started = time.monotonic()
            give_up_early(lambda: impatient.post("/v1/audio/transcriptions", files={"file": ("long.wav", audio, "audio/wav")}))
        wait_for(lambda: watch.runs == 1 and not watch.busy_now(), 60, "the live job never ended")
        ended_after = time.monotonic() - started
    assert watch.model_runs() == 1
    # The worker stops at the end of its current batch (after decoding and VAD, done up front).
    assert ended_after < 0.8 * FULL_JOB_SECONDS["whisper"], (ended_after, FULL_JOB_SECONDS)
    assert "status=499" in access_lines(service, "/v1/audio/transcriptions")[-1]
