"""Packing live chunks into one Whisper window, on plain data: where pieces go in a window,
and how the window's decoded words go back to their own requests. No model is loaded
(the slow test with the real model is in tests/service/workers/test_scheduling.py)."""

from __future__ import annotations

import numpy as np
import pytest

from app.workers.scheduler import Job
from app.workers.whisper import (
    PIECE_SECONDS,
    PIECES_PER_WINDOW,
    Span,
    _redo,
    _token_budget,
    batch_rows,
    plan_windows,
    split_packed,
)

TIMESTAMP_BEGIN = 50364  # Whisper's first timestamp token


class Tokenizer:
    """What `split_packed` uses of faster-whisper's tokenizer."""

    timestamp_begin = TIMESTAMP_BEGIN

    @staticmethod
    def encode(text: str) -> list[int]:
        return [len(word) for word in text.split()]


def stamp(seconds: float) -> int:
    return TIMESTAMP_BEGIN + round(seconds / 0.02)


def segment(words: list[tuple[str, float, float]], start: float | None = None, end: float | None = None) -> dict:
    """A decoded segment as faster-whisper's batched `forward` returns it; `start`/`end`
    are its timestamp tokens (default: its first and last word's times)."""
    start = words[0][1] if start is None else start
    end = words[-1][2] if end is None else end
    return {
        "text": "".join(w for w, _, _ in words), "tokens": [stamp(start), 1, 2, stamp(end)],
        "start": words[0][1], "end": words[-1][2], "avg_logprob": -0.2, "no_speech_prob": 0.01,
        "compression_ratio": 1.1, "seek": 0,
        "words": [{"word": w, "start": s, "end": e, "probability": 0.9} for w, s, e in words],
    }


SPANS = [Span(0.0, 5.0, 0.0), Span(6.0, 10.0, 0.0), Span(11.0, 16.0, 2.5)]


def test_windows_keep_order_and_fit_reflectors_chunks() -> None:
    assert plan_windows([5.12] * 7) == [[0, 1, 2, 3, 4], [5, 6]]
    assert len(plan_windows([5.12] * PIECES_PER_WINDOW)) == 1
    assert plan_windows([20.0, 5.0, 5.0, 31.0, 2.0]) == [[0, 1], [2], [3], [4]]
    assert plan_windows([]) == []


def test_each_segment_goes_whole_to_its_own_piece_on_its_own_timeline() -> None:
    segments = [
        segment([(" seven", 0.2, 0.6), (" eleven", 4.6, 5.45)]),  # last word timed into the gap
        segment([(" purple", 6.3, 6.8), (" green", 9.0, 9.5)]),
        segment([(" tiger", 11.5, 12.0)]),
    ]
    first, second, third = split_packed(segments, SPANS, Tokenizer())
    assert [w["word"] for s in first for w in s["words"]] == [" seven", " eleven"]
    assert first[0]["words"][-1]["end"] == 5.0  # clipped to its piece
    assert [(w["word"], w["start"], w["end"]) for s in second for w in s["words"]] == [
        (" purple", 0.3, 0.8), (" green", 3.0, 3.5)
    ]
    # The third piece starts 2.5 s into its request's speech timeline.
    assert [(w["start"], w["end"]) for w in third[0]["words"]] == [(3.0, 3.5)]
    assert third[0]["start"] == 3.0 and third[0]["seek"] == 250
    assert all(token < TIMESTAMP_BEGIN for s in first + second + third for token in s["tokens"])


def test_a_segment_that_runs_over_a_gap_is_cut_there() -> None:
    [joined] = [segment([(" seven", 3.0, 3.4), (" eight", 4.2, 4.8), (" purple", 6.2, 6.7), (" green", 7.0, 7.4)])]
    first, second, third = split_packed([joined], SPANS, Tokenizer())
    assert [s["text"] for s in first] == [" seven eight"]
    assert [s["text"] for s in second] == [" purple green"]
    assert third == []
    assert second[0]["start"] == 0.2 and second[0]["tokens"] == Tokenizer.encode(" purple green")
    for part in first + second:
        assert all(part["start"] <= w["start"] <= w["end"] <= part["end"] for w in part["words"])


def test_a_last_word_timed_into_a_gap_stays_with_its_segment() -> None:
    """tiny.en timed the first piece's last word (espeak-ng's "eleven") 0.65 s into a 1-s
    gap, past its middle; its segment's timestamps end inside the first piece."""
    numbers = segment([(" seven,", 0.0, 0.52), (" 300,", 3.76, 3.76), (" 11,", 5.65, 5.65)], end=4.68)
    first, second, _ = split_packed([numbers], SPANS, Tokenizer())
    assert [w["word"] for s in first for w in s["words"]] == [" seven,", " 300,", " 11,"]
    assert second == []


def test_a_word_aligned_in_the_next_piece_goes_to_that_piece_whatever_the_segment_says() -> None:
    """Whisper may close a segment before a gap (its timestamp tokens) and still write the
    next piece's first words into it: those words belong to the other request's audio."""
    leaky = segment([(" neither", 3.0, 3.5), (" did", 3.6, 4.0), (" I", 4.1, 4.4), (" thought", 6.1, 6.5)], end=4.9)
    first, second, _ = split_packed([leaky], SPANS, Tokenizer())
    assert [w["word"] for s in first for w in s["words"]] == [" neither", " did", " I"]
    assert [w["word"] for s in second for w in s["words"]] == [" thought"]
    assert [s["text"] for s in first + second] == [" neither did I", " thought"]


def test_no_word_crosses_a_boundary_and_each_piece_keeps_only_its_own_time() -> None:
    rng = np.random.default_rng(0)
    words = []
    for index in range(60):
        start = float(rng.uniform(0, 17))
        words.append((f" w{index}", round(start, 2), round(start + float(rng.uniform(0.05, 1.5)), 2)))
    words.sort(key=lambda w: w[1])
    segments = [segment(words[i:i + 7]) for i in range(0, len(words), 7)]
    parts = split_packed(segments, SPANS, Tokenizer())
    handed = sorted(w["word"] for piece in parts for s in piece for w in s["words"])
    assert handed == sorted(w for w, _, _ in words)  # every word once
    for span, piece in zip(SPANS, parts):
        for s in piece:
            for w in s["words"]:
                assert span.offset <= w["start"] <= w["end"] <= span.offset + span.end - span.start


def test_a_silent_segment_goes_by_its_time() -> None:
    silent = {**segment([(" x", 12.0, 12.5)]), "words": []}
    parts = split_packed([silent], SPANS, Tokenizer())
    assert [len(p) for p in parts] == [0, 0, 1] and parts[2][0]["words"] == []


def make_piece(name: str, seconds: float, priority: str = "live"):
    job = Job(priority=priority, key="en", context=name)  # type: ignore[arg-type]
    audio = np.full(int(seconds * 16000), len(name), dtype=np.float32)
    return job.add(seconds, (audio, {"offset": 0.0, "duration": seconds, "segments": []}))


def test_rows_pack_live_pieces_with_silence_between_and_leave_the_rest_alone() -> None:
    pieces = [make_piece("a", 5.0), make_piece("bb", 4.0), make_piece("rec", 30.0, "recording"), make_piece("c", 3.0)]
    rows = batch_rows(pieces, lambda piece: piece.job.priority == "live", gap=1.0)
    assert [[p.job.context for p in row.pieces] for row in rows] == [["a", "bb"], ["rec"], ["c"]]
    packed, alone, single = rows
    assert packed.spans == [Span(0.0, 5.0, 0.0), Span(6.0, 10.0, 0.0)]
    assert packed.meta["duration"] == pytest.approx(10.0) and len(packed.audio) == 10 * 16000
    assert not packed.audio[5 * 16000:6 * 16000].any()  # the gap is silence
    assert packed.audio[6 * 16000] == 2.0  # then the second request's audio
    assert alone.spans is None and single.spans is None  # a lone piece is decoded as before
    assert alone.carry == "rec" and packed.carry is not packed.pieces[0].job.context
    assert max(row.meta["duration"] for row in rows) <= PIECE_SECONDS


class Options:
    compression_ratio_threshold = 2.4
    initial_prompt = None


def test_only_the_pieces_a_window_failed_are_decoded_again() -> None:
    good = segment([(" tiger", 1.0, 1.5)])
    looped = {**segment([(" hello", 6.5, 6.8)]), "compression_ratio": 9.0}
    parts = [[good], [looped], [], [good]]
    assert _redo(parts, Options()) == [1, 2]


def test_a_live_batch_may_decode_twice_fast_speech_and_no_more() -> None:
    rows = batch_rows([make_piece("a", 5.0), make_piece("b", 4.0)], lambda piece: True, gap=1.0)
    assert _token_budget(rows, Options()) == 16 * 10 + 16
    alone = batch_rows([make_piece("c", 30.0)], lambda piece: False)
    assert _token_budget(alone, Options()) == 448 - 8  # 16 x 30 + 16 is past the decoder's length
    class Prompted(Options):
        initial_prompt = "Reflector"
    assert _token_budget(alone, Prompted()) == 448 - 230
