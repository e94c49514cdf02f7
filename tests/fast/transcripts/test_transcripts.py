"""Speakers for words and segments, and the OpenAI response formats (pure, fast)."""

from __future__ import annotations

import io

import msgspec
import pytest
import srt
import webvtt

from app.transcripts.formats import attribute, json_body, srt_body, text_body, vtt_body
from app.transcripts.speakers import segment_of_words, split_by_speaker, word_speakers
from app.workers.messages import Segment, Transcript, Turn, Word


def segment(index: int, start: float, end: float, text: str) -> Segment:
    return Segment(index, start, end, text, [index, index + 1], 0.0, -0.2, 1.1, 0.01)


def test_a_word_goes_to_the_speaker_who_talks_most_over_it() -> None:
    turns = [Turn(0.0, 1.2, 0), Turn(1.0, 3.0, 1)]
    words = [Word(" a", 0.0, 0.5), Word(" b", 0.9, 1.5), Word(" c", 1.1, 1.2), Word(" d", 2.0, 2.5)]
    # b: 0.3 s of speaker 0 (0.9-1.2) against 0.5 s of speaker 1 (1.0-1.5); c: 0.1 s each -> tie to 0.
    assert word_speakers(words, turns) == [0, 1, 0, 1]


def test_words_in_gaps_take_the_nearest_turn_and_no_turn_gives_none() -> None:
    turns = [Turn(0.0, 1.0, 3), Turn(5.0, 6.0, 7)]
    words = [Word(" x", 1.2, 1.4), Word(" y", 4.5, 4.8), Word(" z", 3.0, 3.0), Word(" w", 9.0, 9.5)]
    words.sort(key=lambda w: w.start)  # sorted input: x 1.2, z 3.0, y 4.5, w 9.0
    assert word_speakers(words, turns) == [3, 3, 7, 7]
    assert word_speakers(words, []) == [None] * 4


def test_a_long_turn_that_started_earlier_still_counts() -> None:
    turns = [Turn(0.0, 100.0, 2), Turn(10.0, 10.5, 5), Turn(20.0, 20.2, 5)]
    words = [Word(" a", 10.0, 10.4), Word(" b", 50.0, 50.5), Word(" c", 20.0, 20.6)]
    words.sort(key=lambda w: w.start)
    # a: 0.4 s of both -> tie to 2; c: 0.6 s of 2 against 0.2 s of 5.
    assert word_speakers(words, turns) == [2, 2, 2]


def test_words_are_owned_by_the_segment_holding_their_middle() -> None:
    segments = [segment(0, 0.0, 2.0, ""), segment(1, 3.0, 5.0, "")]
    words = [Word(" a", 0.5, 1.0), Word(" b", 2.1, 2.3), Word(" c", 2.7, 2.9), Word(" d", 4.0, 4.5)]
    assert segment_of_words(segments, words) == [0, 0, 1, 1]


def test_segments_split_where_the_speaker_changes() -> None:
    segments = [segment(0, 0.0, 4.0, " Hello there. Hi."), segment(1, 5.0, 6.0, " Bye."), segment(2, 7.0, 8.0, " ")]
    words = [Word(" Hello", 0.2, 0.6), Word(" there.", 0.6, 1.5), Word(" Hi.", 2.5, 3.5), Word(" Bye.", 5.1, 5.8)]
    turns = [Turn(0.0, 2.0, 0), Turn(2.2, 6.0, 1), Turn(6.5, 9.0, 0)]
    speakers = word_speakers(words, turns)
    assert speakers == [0, 0, 1, 1]
    parts = split_by_speaker(segments, words, speakers, turns)
    assert [(p.source, p.start, p.end, p.words, p.speaker) for p in parts] == [
        (0, 0.0, 1.5, [0, 1], 0),
        (0, 2.5, 4.0, [2], 1),
        (1, 5.0, 6.0, [3], 1),
        (2, 7.0, 8.0, [], 0),
    ]


@pytest.fixture
def transcript() -> Transcript:
    words = [Word(" Hello", 0.2, 0.6), Word(" there.", 0.6, 1.5), Word(" A&B", 2.5, 3.5), Word(" -->", 3.5, 3.9)]
    segments = [segment(0, 0.0, 4.0, " Hello there. A&B -->"), segment(1, 3661.5, 3662.25, " Late.")]
    words.append(Word(" Late.", 3661.6, 3662.2))
    return Transcript(text="Hello there. A&B --> Late.", words=words, duration=3663.0, language="fr", segments=segments)


def test_json_keeps_reflectors_shape(transcript: Transcript) -> None:
    body = msgspec.to_builtins(json_body(transcript, "json", filename="a.wav"))
    assert body["text"] == transcript.text and body["filename"] == "a.wav"
    assert body["words"][0] == {"word": " Hello", "start": 0.2, "end": 0.6}
    assert set(body) == {"text", "words", "filename"}


@pytest.mark.parametrize(
    ("granularities", "has_words", "has_segments"),
    [((), True, True), (("word",), True, False), (("segment",), False, True), (("word", "segment"), True, True)],
)
def test_verbose_json_follows_the_granularities(transcript: Transcript, granularities, has_words, has_segments) -> None:
    body = msgspec.to_builtins(json_body(transcript, "verbose_json", filename="a.wav", granularities=granularities))
    assert (body["task"], body["language"], body["duration"]) == ("transcribe", "fr", 3663.0)
    assert ("words" in body) is has_words and ("segments" in body) is has_segments
    if has_segments:
        first = body["segments"][0]
        assert set(first) == {
            "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"
        }


def test_diarized_json_and_speakers_in_verbose_json(transcript: Transcript) -> None:
    turns = [Turn(0.0, 2.0, 0), Turn(2.2, 4.0, 1), Turn(3600.0, 3700.0, 0)]
    speakers = attribute(transcript, turns)
    verbose = msgspec.to_builtins(json_body(transcript, "verbose_json", speakers=speakers))
    assert [w["speaker"] for w in verbose["words"]] == [0, 0, 1, 1, 0]
    assert [(s["id"], s["text"], s["speaker"], s["tokens"]) for s in verbose["segments"]] == [
        (0, " Hello there.", 0, [0, 1]),
        (1, " A&B -->", 1, []),
        (2, " Late.", 0, [1, 2]),
    ]
    diarized = msgspec.to_builtins(json_body(transcript, "diarized_json", speakers=speakers))
    assert diarized["task"] == "transcribe" and diarized["duration"] == 3663.0
    assert [(s["type"], s["id"], s["text"], s["speaker"]) for s in diarized["segments"]] == [
        ("transcript.text.segment", "0", "Hello there.", "0"),
        ("transcript.text.segment", "1", "A&B -->", "1"),
        ("transcript.text.segment", "2", "Late.", "0"),
    ]


def test_srt_and_vtt_parse_back(transcript: Transcript) -> None:
    cues = list(srt.parse(srt_body(transcript), ignore_errors=False))
    assert [(c.index, c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == [
        (1, 0.0, 4.0, "Hello there. A&B ->"),
        (2, 3661.5, 3662.25, "Late."),
    ]
    vtt = vtt_body(transcript)
    assert vtt.startswith("WEBVTT")
    captions = webvtt.from_buffer(io.StringIO(vtt)).captions
    assert [(c.start, c.end, c.raw_text) for c in captions] == [
        ("00:00:00.000", "00:00:04.000", "Hello there. A&amp;B -&gt;"),
        ("01:01:01.500", "01:01:02.250", "Late."),
    ]
    assert text_body(transcript, "text") == transcript.text + "\n"


def test_subtitles_name_the_speakers(transcript: Transcript) -> None:
    speakers = attribute(transcript, [Turn(0.0, 2.0, 0), Turn(2.2, 4.0, 1), Turn(3600.0, 3700.0, 0)])
    contents = [c.content for c in srt.parse(srt_body(transcript, speakers))]
    assert contents == ["[Speaker 0] Hello there.", "[Speaker 1] A&B ->", "[Speaker 0] Late."]
    captions = webvtt.from_buffer(io.StringIO(vtt_body(transcript, speakers))).captions
    assert [(c.voice, c.text) for c in captions] == [("Speaker 0", "Hello there."), ("Speaker 1", "A&amp;B -&gt;"), ("Speaker 0", "Late.")]


def test_empty_transcript_gives_empty_subtitles() -> None:
    empty = Transcript(text="", words=[], duration=10.0)
    assert list(srt.parse(srt_body(empty))) == []
    assert webvtt.from_buffer(io.StringIO(vtt_body(empty))).captions == []
    assert msgspec.to_builtins(json_body(empty, "verbose_json", granularities=["word"]))["words"] == []


def test_model_names_for_a_client() -> None:
    from app.http.routes.models import model_names

    assert model_names("tiny.en") == ["whisper-1", "tiny.en"]
    assert model_names("/models/faster-whisper-large-v3") == ["whisper-1", "faster-whisper-large-v3"]
    assert model_names("whisper-1") == ["whisper-1"]
