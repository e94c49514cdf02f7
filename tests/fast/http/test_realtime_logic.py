"""Realtime sessions' pure logic, in-process: server VAD over speech probabilities, the
stable prefix of partial decodes, and session.update as the OpenAI SDKs send it (the
protocol itself, with the SDK's client: tests/service/http/test_realtime.py)."""

from __future__ import annotations

import pytest

from app.http.realtime.events import EventError, SessionConfig, TurnOptions, updated
from app.http.realtime.turns import StablePrefix, TurnDetector

BYTES_PER_SECOND = 24000 * 2  # the Realtime API's 24-kHz PCM16


def _windows(detector: TurnDetector, probabilities: list[float], window: int = 1536) -> list[tuple[str, int]]:
    turns = []
    for index, probability in enumerate(probabilities):
        turn = detector.window(index * window, (index + 1) * window, probability)
        if turn is not None:
            turns.append((turn.kind, turn.position // window))
    return turns


def test_turn_detector_starts_stops_and_splits() -> None:
    options = TurnOptions(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=320)  # 10 windows
    detector = TurnDetector(options, BYTES_PER_SECOND, max_bytes=10**9, split_search_bytes=10**6)
    speech = [0.1] * 5 + [0.9] * 20 + [0.4] * 3 + [0.9] * 5 + [0.1] * 12
    # 0.4 is between the thresholds: it neither stops nor resets; 10 windows under 0.35 stop it.
    assert _windows(detector, speech) == [("started", 5), ("stopped", 43)]
    long = TurnDetector(options, BYTES_PER_SECOND, max_bytes=40 * 1536, split_search_bytes=10 * 1536)
    probabilities = [0.9] * 35 + [0.6] + [0.9] * 30
    assert _windows(long, probabilities) == [("started", 0), ("split", 36)]


def test_stable_prefix_releases_only_agreed_words() -> None:
    prefix = StablePrefix()
    assert prefix.update([" Hello", " wor"]) == ""
    assert prefix.update([" Hello", " world,", " how"]) == "Hello"
    assert prefix.update([" hello", " World.", " how", " are"]) == " World. how"
    assert prefix.update([" Hello", " world", " who"]) == ""  # never taken back
    assert prefix.sent == "Hello World. how"
    assert prefix.rest([" Hello", " world.", " Who", " are", " you?"]) == " are you?"
    assert prefix.sent == "Hello World. how are you?"


def test_session_update_shapes() -> None:
    config = updated(SessionConfig(), "session.update", {
        "type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "transcription": {"language": "en", "prompt": "Zoe"},
                            "turn_detection": None}},
    }, ("en",), audio_started=False)
    assert (config.format, config.sample_rate, config.encoding, config.language, config.prompt, config.turn) == (
        "audio/pcmu", 8000, "mulaw", "en", "Zoe", None
    )
    beta = updated(SessionConfig(), "transcription_session.update", {
        "input_audio_format": "pcm16", "turn_detection": {"type": "server_vad", "silence_duration_ms": 200},
    }, None, audio_started=False)
    assert beta.turn == TurnOptions(silence_duration_ms=200) and beta.sample_rate == 24000
    with pytest.raises(EventError) as french:
        updated(SessionConfig(), "session.update", {"audio": {"input": {"transcription": {"language": "fr"}}}},
                ("en",), audio_started=False)
    assert french.value.param == "session.audio.input.transcription.language"
    with pytest.raises(EventError):
        updated(SessionConfig(), "session.update", {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
                None, audio_started=True)
    with pytest.raises(EventError) as semantic:
        updated(SessionConfig(), "session.update", {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}},
                None, audio_started=False)
    assert semantic.value.param == "session.audio.input.turn_detection.type"
