"""Benchmark: K realtime sessions at once, streaming real speech at real-time pace.

Each session streams two utterances of the pyannote sample (6 s and 5.5 s of speech, each
followed by 1.5 s of silence) twice, as 24-kHz PCM16 in 20-ms frames at real-time pace,
with server VAD at the API's defaults (500 ms of silence ends an utterance). Sessions
start 0-1 s apart. For K = 1, 2, 4, ... it prints, over every utterance of every session:
the time from the end of the speech to its ``...transcription.completed`` event (median,
p95; the 500 ms of silence turn detection waits for are included), and from the start of
the speech to the utterance's first delta. It stops after the first K whose p95 is over
`BAR_SECONDS` and prints the largest K that stayed under it. With ``--uploads``, a
Reflector-like live client uploads a 5.12-s chunk every 5.12 s during every round and its
latency is printed too (Reflector's live path and streaming sessions sharing the host).

Run: ``.venv/bin/python bench/realtime.py [--max-sessions 16] [--uploads]``. The client
runs on the same machine as the service, so on a small CPU it takes some of its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx
import numpy as np
from websockets.asyncio.client import connect

from app import tls
from app.audio.decode import decode_mono
from testing.service import pyannote_sample_dir, running_service, strict_context

RATE = 24000  # Hz
BYTES_PER_SECOND = RATE * 2
FRAME_BYTES = BYTES_PER_SECOND // 50  # 20 ms
BAR_SECONDS = 2.0
UTTERANCES = ((8.3, 14.3), (22.0, 27.5))  # seconds of the sample: speech, no pause of 500 ms
SILENCE_SECONDS = 1.5
ROUNDS = 2
CHUNK_SECONDS = 5.12  # Reflector's live chunk


def stream_audio() -> tuple[bytes, list[tuple[float, float]]]:
    """The stream one session sends, and its speech spans (seconds on the stream)."""
    audio = decode_mono(pyannote_sample_dir() / "sample.wav", RATE)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    out, spans = bytearray(), []
    for _ in range(ROUNDS):
        for start, end in UTTERANCES:
            piece = pcm[int(start * RATE) * 2 : int(end * RATE) * 2]
            spans.append((len(out) / BYTES_PER_SECOND, (len(out) + len(piece)) / BYTES_PER_SECOND))
            out += piece + bytes(int(SILENCE_SECONDS * RATE) * 2)
    return bytes(out), spans


async def session(url: str, key: str, ca: Path, pcm: bytes, spans: list, delay: float, results: dict) -> None:
    await asyncio.sleep(delay)
    headers = {"Authorization": f"Bearer {key}"}
    async with connect(url, ssl=strict_context(ca), additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "transcription", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}}))
        started = time.monotonic()
        first_delta: dict[str, float] = {}
        speech_start: dict[str, float] = {}
        completed: list[tuple[str, float]] = []

        async def read() -> None:
            async for message in ws:
                event = json.loads(message)
                now = time.monotonic() - started
                if event["type"] == "input_audio_buffer.speech_started":
                    speech_start[event["item_id"]] = event["audio_start_ms"] / 1000
                elif event["type"].endswith("transcription.delta"):
                    first_delta.setdefault(event["item_id"], now)
                elif event["type"].endswith("transcription.completed"):
                    completed.append((event["item_id"], now))
                elif event["type"] == "error":
                    results["errors"].append(event["error"]["code"])

        reader = asyncio.ensure_future(read())
        for offset in range(0, len(pcm), FRAME_BYTES):
            frame = pcm[offset : offset + FRAME_BYTES]
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()}))
            due = started + (offset + len(frame)) / BYTES_PER_SECOND
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        deadline = time.monotonic() + 30
        while len(completed) < len(spans) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
    # Completed events come in order: the n-th belongs to the n-th utterance.
    for (item, at), (speech_from, speech_to) in zip(completed, spans):
        results["final"].append(at - speech_to)
        if item in first_delta:
            results["first_delta"].append(first_delta[item] - speech_from)
    results["missing"] += len(spans) - len(completed)


def uploads(base_url: str, key: str, ca: Path, stop: threading.Event, latencies: list[float]) -> None:
    """Reflector's live path: one 5.12-s WAV chunk every 5.12 s, as the OpenAI SDK posts it."""
    audio = decode_mono(pyannote_sample_dir() / "sample.wav", 16000)[(8 * 16000) : int((8 + CHUNK_SECONDS) * 16000)]
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16000)
        writer.writeframes((audio * 32767).astype("<i2").tobytes())
    with httpx.Client(base_url=base_url, verify=strict_context(ca), headers={"Authorization": f"Bearer {key}"},
                      timeout=90) as client:
        while not stop.is_set():
            sent = time.monotonic()
            response = client.post("/v1/audio/transcriptions", files={"file": ("chunk.wav", out.getvalue())},
                                   data={"model": "whisper-1", "response_format": "verbose_json", "language": "en"})
            if response.status_code == 200:
                latencies.append(time.monotonic() - sent)
            stop.wait(max(0.0, CHUNK_SECONDS - (time.monotonic() - sent)))


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


async def one_round(service, k: int, pcm: bytes, spans: list) -> dict:
    url = service.base_url.replace("https://", "wss://") + "/v1/realtime?intent=transcription"
    results: dict = {"final": [], "first_delta": [], "missing": 0, "errors": []}
    await asyncio.gather(*(
        session(url, service.api_key, service.ca_file, pcm, spans, random.uniform(0, 1), results) for _ in range(k)
    ))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-sessions", type=int, default=16)
    parser.add_argument("--uploads", action="store_true", help="run Reflector-like live uploads beside the sessions")
    args = parser.parse_args()
    pcm, spans = stream_audio()
    with tempfile.TemporaryDirectory() as scratch:
        certs = Path(scratch) / "certs"
        tls.make_cert(certs, "localhost", "IP:127.0.0.1")
        with running_service(certs, REFLECTOR_GPU_REALTIME_SESSIONS=str(args.max_sessions)) as service:
            print(f"{'K':>3} {'end of speech -> completed: median':>36} {'p95':>6} {'first delta: median':>20} "
                  f"{'p95':>6} {'missing':>8}" + ("  uploads: median  p95" if args.uploads else ""))
            best = 0
            k = 1
            while k <= args.max_sessions:
                stop, latencies = threading.Event(), []
                uploader = threading.Thread(
                    target=uploads, args=(service.base_url, service.api_key, service.ca_file, stop, latencies)
                ) if args.uploads else None
                if uploader:
                    uploader.start()
                results = asyncio.run(one_round(service, k, pcm, spans))
                stop.set()
                if uploader:
                    uploader.join()
                final, delta = results["final"], results["first_delta"]
                line = (f"{k:>3} {statistics.median(final) if final else float('nan'):>35.2f}s {p95(final):>5.2f}s "
                        f"{statistics.median(delta) if delta else float('nan'):>19.2f}s {p95(delta):>5.2f}s "
                        f"{results['missing']:>8}")
                if uploader:
                    line += f"  {statistics.median(latencies) if latencies else float('nan'):>13.2f}s {p95(latencies):>4.2f}s"
                print(line + (f"  errors: {sorted(set(results['errors']))}" if results["errors"] else ""), flush=True)
                if not final or p95(final) > BAR_SECONDS or results["missing"]:
                    break
                best = k
                k *= 2
            print(f"largest K with p95 end of speech -> completed under {BAR_SECONDS:g} s: {best}")


if __name__ == "__main__":
    main()
