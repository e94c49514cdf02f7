"""`app.workers.whisper._Decoder`: the temperature reaches CTranslate2, and a piece caught in
a repetition loop at temperature 0 is decoded again at rising temperatures.

A fake CTranslate2 Whisper model answers from a table (row, temperature) -> text, so the
fallback is checked exactly, whatever a real model would do on this CPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import ctranslate2
import numpy as np
import pytest

from app.workers.whisper import FALLBACK_TEMPERATURES, _Decoder

LOOP = "We are going to make a new channel. " * 12  # compression ratio ~9
GOOD = "Good morning everyone, the meeting begins now."
BEAM = {"beam_size": 5, "patience": 1, "length_penalty": 1, "return_scores": True}


class FakeWhisper:
    """Rows are told apart by their prompt (``[row]``); `texts[(row, temperature)]` is the
    text decoded, `scores` its score (default 0)."""

    def __init__(self, texts: dict[tuple[int, float], str], scores: dict[tuple[int, float], float] | None = None):
        self.texts, self.scores, self.calls, self.prompts = texts, scores or {}, [], []

    def generate(self, encoder_output, prompts, **kwargs):
        rows = np.asarray(encoder_output)
        self.prompts.append(prompts)
        self.calls.append(([prompt[0] for prompt in prompts], rows[:, 0, 0].tolist(), kwargs))
        temperature = kwargs["sampling_temperature"]
        return [
            SimpleNamespace(
                sequences_ids=[self.texts[(prompt[0], temperature)].split(" ")],
                scores=[self.scores.get((prompt[0], temperature), 0.0)],
            )
            for prompt in prompts
        ]


def decode(model: FakeWhisper, temperature: float, rows: int = 2, starts: dict | None = None) -> tuple[list[str], list[float]]:
    # Tokens are words here; "~" sorts after them all, as timestamp tokens come after text ones.
    tokenizer = SimpleNamespace(decode=lambda tokens: " ".join(tokens), timestamp_begin="~")
    decoder = _Decoder(model, tokenizer, SimpleNamespace(compression_ratio_threshold=2.4, best_of=5), starts)
    encoder_output = ctranslate2.StorageView.from_array(np.arange(rows, dtype=np.float32).reshape(rows, 1, 1).repeat(3, 1))
    results = decoder.generate(encoder_output, [[row] for row in range(rows)], sampling_temperature=temperature, **BEAM)
    return [" ".join(result.sequences_ids[0]) for result in results], decoder.temperatures


def sampled_at(temperature: float) -> dict:
    return {**BEAM, "sampling_temperature": temperature, "beam_size": 1, "num_hypotheses": 5, "sampling_topk": 0}


def test_temperature_zero_is_one_beam_search() -> None:
    model = FakeWhisper({(0, 0.0): GOOD, (1, 0.0): GOOD})
    assert decode(model, 0.0) == ([GOOD, GOOD], [0.0, 0.0])
    assert model.calls == [([0, 1], [0.0, 1.0], {**BEAM, "sampling_temperature": 0.0})]


@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_a_temperature_samples_best_of_and_never_falls_back(temperature: float) -> None:
    model = FakeWhisper({(0, temperature): GOOD, (1, temperature): LOOP})
    assert decode(model, temperature) == ([GOOD, LOOP], [temperature, temperature])
    assert model.calls == [([0, 1], [0.0, 1.0], sampled_at(temperature))]


def test_a_looping_piece_is_sampled_at_rising_temperatures_until_it_stops() -> None:
    texts = {(0, 0.0): GOOD, (1, 0.0): LOOP, (1, 0.2): LOOP, (1, 0.4): GOOD.upper()}
    model = FakeWhisper(texts)
    assert decode(model, 0.0) == ([GOOD, GOOD.upper()], [0.0, 0.4])
    # Only the looping row, on its own encoder output row, again.
    assert model.calls[1:] == [([1], [1.0], sampled_at(0.2)), ([1], [1.0], sampled_at(0.4))]


def test_when_every_try_loops_the_most_probable_is_kept() -> None:
    temperatures = (0.0, *FALLBACK_TEMPERATURES)
    texts = {(0, t): f"{t} " + LOOP for t in temperatures}
    model = FakeWhisper(texts, scores={(0, 0.6): -0.1, **{(0, t): -1.0 for t in temperatures if t != 0.6}})
    assert decode(model, 0.0, rows=1) == ([texts[(0, 0.6)]], [0.6])
    assert [call[2]["sampling_temperature"] for call in model.calls] == list(temperatures)


def test_a_shared_row_starts_at_its_timestamp_token_and_keeps_its_first_try() -> None:
    """A row of a shared window (`starts`) ends its prompt with its start token and its
    result begins with it, as if Whisper had predicted it; it is not sampled again (its
    piece is decoded again alone instead, `_failed`); a row that opens with a timestamp of
    its own keeps it."""
    model = FakeWhisper({(0, 0.0): LOOP, (1, 0.0): LOOP, (2, 0.0): "~0.40 " + GOOD, (0, 0.2): GOOD})
    texts, temperatures = decode(model, 0.0, rows=3, starts={1: "~8.12", 2: "~0.00"})
    assert texts == [GOOD, "~8.12 " + LOOP, "~0.40 " + GOOD] and temperatures == [0.2, 0.0, 0.0]
    assert model.prompts[0] == [[0], [1, "~8.12"], [2, "~0.00"]]
    assert [prompt for call in model.prompts[1:] for prompt in call] == [[0]]  # only the row alone falls back
