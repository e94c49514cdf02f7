"""Packing live chunks into shared Whisper windows, on plain data: where pieces go in a
window, which encoder frames each piece's decoder row sees, where its decoding starts, and
how its words come back onto its own request's timeline. No model is loaded (the slow test
with the real model is in tests/service/workers/test_scheduling.py)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import ctranslate2
import numpy as np
import pytest

from app.workers.scheduler import Job
from app.workers.whisper import (
    PACK_GAP_SECONDS,
    PACK_MARGIN_SECONDS,
    PIECE_SECONDS,
    PIECES_PER_WINDOW,
    Span,
    WhisperEngine,
    _failed,
    _token_budget,
    batch_rows,
    encoder_frames,
    from_window,
    plan_windows,
    start_token,
)

TIMESTAMP_BEGIN = 50364  # Whisper's first timestamp token


def test_windows_keep_order_and_fit_reflectors_chunks() -> None:
    assert PIECES_PER_WINDOW * 5.12 + (PIECES_PER_WINDOW - 1) * PACK_GAP_SECONDS <= PIECE_SECONDS
    assert plan_windows([5.12] * 7) == [[0, 1, 2, 3], [4, 5, 6]]
    assert len(plan_windows([5.12] * PIECES_PER_WINDOW)) == 1
    assert plan_windows([20.0, 5.0, 5.0, 31.0, 2.0], gap=1.0) == [[0, 1], [2], [3], [4]]
    assert plan_windows([]) == []


def make_piece(name: str, seconds: float, priority: str = "live", offset: float = 0.0):
    job = Job(priority=priority, key="en", context=name)  # type: ignore[arg-type]
    audio = np.full(int(seconds * 16000), len(name), dtype=np.float32)
    return job.add(seconds, (audio, {"offset": offset, "duration": seconds, "segments": []}))


def test_rows_share_a_window_among_live_pieces_one_row_each_and_leave_the_rest_alone() -> None:
    pieces = [make_piece("a", 5.0), make_piece("bb", 4.0, offset=2.5), make_piece("rec", 30.0, "recording"), make_piece("c", 3.0)]
    rows = batch_rows(pieces, lambda piece: piece.job.priority == "live", gap=1.0)
    assert [row.piece.job.context for row in rows] == ["a", "bb", "rec", "c"]
    first, second, alone, single = rows
    assert first.audio is second.audio  # one window, encoded once
    assert (first.span, second.span) == (Span(0.0, 5.0, 0.0), Span(6.0, 10.0, 2.5))
    assert first.meta["duration"] == pytest.approx(10.0) and len(first.audio) == 10 * 16000
    assert not first.audio[5 * 16000:6 * 16000].any()  # the gap is silence
    assert first.audio[6 * 16000] == 2.0  # then the second request's audio
    assert alone.span is None and single.span is None  # a lone piece is decoded as before
    assert alone.carry == "rec" and first.carry is not second.carry  # no timing state is shared
    assert (first.seconds, second.seconds, alone.seconds) == (5.0, 4.0, 30.0)
    assert max(row.meta["duration"] for row in rows) <= PIECE_SECONDS


def test_a_row_sees_its_own_frames_and_a_margin_never_a_neighbours() -> None:
    gap = PACK_GAP_SECONDS
    spans = [Span(0.0, 5.12, 0.0), Span(5.12 + gap, 10.24 + gap, 0.0), Span(10.24 + 2 * gap, 15.36 + 2 * gap, 0.0)]
    frames = [encoder_frames(span) for span in spans]
    assert frames[0] == (0, math.ceil((5.12 + PACK_MARGIN_SECONDS) * 50))
    assert frames[1][0] == int((5.12 + gap - PACK_MARGIN_SECONDS) * 50)
    for (_, stop), (first, _) in itertools.pairwise(frames):
        assert stop < first  # silence between what two rows see
    assert encoder_frames(Span(25.0, 29.9, 0.0)) == (1237, 1500)  # within the window


def test_a_row_starts_at_the_timestamp_token_before_its_piece() -> None:
    tokenizer = SimpleNamespace(timestamp_begin=TIMESTAMP_BEGIN)
    assert start_token(Span(0.0, 5.0, 0.0), tokenizer) == TIMESTAMP_BEGIN
    assert start_token(Span(8.13, 13.0, 0.0), tokenizer) == TIMESTAMP_BEGIN + 406  # 8.12 s


def test_a_rows_segments_move_onto_its_requests_timeline_clipped_to_its_piece() -> None:
    span = Span(8.0, 13.0, 2.5)  # 2.5 s into its request's speech timeline
    segments = [{
        "text": " purple green", "tokens": [1, 2], "start": 7.9, "end": 13.4, "seek": 0,
        "words": [
            {"word": " purple", "start": 7.9, "end": 8.5, "probability": 0.9},
            {"word": " green", "start": 12.5, "end": 13.4, "probability": 0.9},  # timed past its end
        ],
    }]
    [moved] = from_window(segments, span)
    assert [(w["word"], w["start"], w["end"]) for w in moved["words"]] == [(" purple", 2.5, 3.0), (" green", 7.0, 7.5)]
    assert (moved["start"], moved["end"], moved["seek"]) == (2.5, 7.5, 250)
    assert moved["text"] == " purple green" and moved["tokens"] == [1, 2]


class FakeModel:
    """What `WhisperEngine._encode` uses of a faster-whisper model: the feature extractor and
    `encode`. A window's encoding is its audio's first sample at every frame; the empty
    window's is -1."""

    def __init__(self) -> None:
        self.encoded: list[int] = []  # the batch size of each encoder pass

        def features(audio: np.ndarray) -> np.ndarray:
            return np.full((80, 101), float(audio.max()), dtype=np.float32)

        features.mel_filters, features.nb_max_frames = np.zeros((80, 201)), 3000  # type: ignore[attr-defined]
        self.feature_extractor = features

    def encode(self, features: np.ndarray):
        self.encoded.append(len(features))
        values = np.where(features[:, 0, 0] == 0, -1.0, features[:, 0, 0])  # zero features: the empty window
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.repeat(values[:, None, None], 1500, 1).repeat(2, 2).astype(np.float32)))


def test_a_shared_window_is_encoded_once_and_each_row_sees_only_its_own_piece() -> None:
    pieces = [make_piece("a", 5.12), make_piece("bb", 5.12), make_piece("rec", 20.0, "recording")]
    rows = batch_rows(pieces, lambda piece: piece.job.priority == "live")
    engine = WhisperEngine.__new__(WhisperEngine)
    engine._empty = {}
    model = FakeModel()
    features, encoder_output = engine._encode(rows, model)
    assert model.encoded == [2, 1]  # the shared window and the recording piece; then the empty window
    assert features.shape == (3, 80, 3000)
    output = np.asarray(encoder_output)
    assert output.shape == (3, 1500, 2)
    for number, row in enumerate(rows[:2]):
        first, stop = encoder_frames(row.span)
        assert (output[number, first:stop] == 2.0).all()  # its window's encoding, in its frames
        assert (output[number, :first] == -1.0).all() and (output[number, stop:] == -1.0).all()
    assert (output[2] == 3.0).all()  # a piece alone keeps its whole window


class Options:
    compression_ratio_threshold = 2.4
    initial_prompt = None


def test_a_live_batch_may_decode_twice_fast_speech_and_no_more() -> None:
    rows = batch_rows([make_piece("a", 5.0), make_piece("b", 4.0)], lambda piece: True, gap=1.0)
    assert _token_budget(rows, Options()) == 16 * 5 + 16  # the longest piece, not its window
    alone = batch_rows([make_piece("c", 30.0)], lambda piece: False)
    assert _token_budget(alone, Options()) == 448 - 8  # 16 x 30 + 16 is past the decoder's length

    class Prompted(Options):
        initial_prompt = "Reflector"

    assert _token_budget(alone, Prompted()) == 448 - 230


def test_a_shared_row_that_loops_or_hears_nothing_is_decoded_again_alone() -> None:
    def decoded(*texts: str, words: bool = True) -> list[dict]:
        return [{"text": text, "words": [{"word": text}] if words else []} for text in texts]

    assert not _failed(decoded(" Purple, orange.", " Yellow, green."), Options())
    assert _failed(decoded(*[" Hello."] * 12), Options())  # a loop over segments
    assert _failed(decoded(" ", words=False), Options())  # VAD found speech, Whisper none
    assert _failed([], Options())
