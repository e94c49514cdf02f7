"""Padding and mixdown on local files, checked by decoding what was written."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from app.audio.mixdown import mix_files
from app.audio.pad import pad_file
from app.errors import BadRequest, InvalidAudio, PayloadTooLarge, Unavailable
from testing.audiogen import decode, rms, write_tone, write_video_only

TONE_RMS = 0.5 / np.sqrt(2)  # a sine of peak 0.5


def onset(samples: np.ndarray, rate: int, threshold: float = 0.02) -> float:
    """Seconds until the first sample above `threshold` on any channel."""
    loud = np.flatnonzero(np.abs(samples).max(axis=0) > threshold)
    return loud[0] / rate if loud.size else float("inf")


def test_pad_tone(tmp_path):
    source = write_tone(tmp_path / "tone.wav", 3.0, 440, 44100, channels=2, amp=0.5)
    outcome = pad_file(source, tmp_path / "out.webm", 1.5)
    info, samples = decode(tmp_path / "out.webm")
    assert (info["format"], info["codec"], info["rate"], info["layout"]) == (
        "matroska,webm",
        "opus",
        48000,
        "stereo",
    )
    assert outcome.size == (tmp_path / "out.webm").stat().st_size
    assert outcome.duration_ms == 4500.0
    assert samples.shape[1] / 48000 == pytest.approx(4.5, abs=0.03)
    assert rms(samples[:, : int(1.4 * 48000)]) < 1e-3
    assert rms(samples[:, int(1.6 * 48000) : int(4.4 * 48000)]) == pytest.approx(TONE_RMS, rel=0.05)
    assert onset(samples, 48000) == pytest.approx(1.5, abs=0.002)


def test_pad_is_millisecond_exact(tmp_path):
    source = write_tone(tmp_path / "tone.wav", 1.0, 440, 48000, amp=0.5)
    outcome = pad_file(source, tmp_path / "out.webm", 0.2345)
    _, samples = decode(tmp_path / "out.webm")
    assert outcome.duration_ms == 1234.5
    assert onset(samples, 48000) == pytest.approx(0.2345, abs=0.001)


@pytest.mark.parametrize(
    ("kind", "rate", "channels"),
    [("webm-live", 48000, 1), ("m4a", 44100, 2), ("mp3", 44100, 1), ("wav", 16000, 1)],
)
def test_pad_input_formats(tmp_path, kind, rate, channels):
    source = write_tone(tmp_path / f"in.{kind}", 2.0, 440, rate, channels=channels, amp=0.5, kind=kind)
    in_info, _ = decode(source)
    if kind == "webm-live":
        assert in_info["header_duration"] is None  # as a browser's MediaRecorder writes it
    outcome = pad_file(source, tmp_path / "out.webm", 0.5)
    info, samples = decode(tmp_path / "out.webm")
    assert (info["codec"], info["rate"], info["layout"]) == ("opus", 48000, "stereo")
    assert samples.shape[1] / 48000 == pytest.approx(2.5, abs=0.03)
    assert outcome.duration_ms == pytest.approx(2500, abs=30)
    assert onset(samples, 48000) == pytest.approx(0.5, abs=0.005)
    # A mono input is spread over both channels at -3 dB, as FFmpeg's rematrixing does.
    expected = TONE_RMS if channels == 2 else TONE_RMS / np.sqrt(2)
    assert rms(samples[:, int(0.7 * 48000) : int(2.3 * 48000)]) == pytest.approx(expected, rel=0.08)


def test_mix_two_tones_with_offsets(tmp_path):
    # Different rates on purpose: the 44.1 kHz track must be resampled, not dropped.
    first = write_tone(tmp_path / "first.wav", 3.0, 440, 16000, amp=0.3)
    second = write_tone(tmp_path / "second.wav", 3.0, 1000, 44100, amp=0.2)
    outcome = mix_files([first, second], tmp_path / "mix.mp3", [2.0, 0.5], 16000)
    info, samples = decode(tmp_path / "mix.mp3")
    assert (info["format"], info["codec"], info["rate"]) == ("mp3", "mp3float", 16000)
    assert outcome.sample_rate == 16000
    assert outcome.duration_ms == 4500.0
    assert samples.shape[1] / 16000 == pytest.approx(4.5, abs=0.03)

    def level(begin: float, end: float) -> float:
        return rms(samples[:, int(begin * 16000) : int(end * 16000)])

    a, b = 0.3 / np.sqrt(2), 0.2 / np.sqrt(2)
    assert level(0.1, 1.4) == pytest.approx(b, rel=0.08)  # only the second track
    assert level(1.6, 2.9) == pytest.approx(np.hypot(a, b), rel=0.08)  # both, summed
    assert level(3.1, 4.4) == pytest.approx(a, rel=0.08)  # only the first track
    # The first track starts 1.5 s after the second: find its 440 Hz onset.
    spectrum_window = int(0.05 * 16000)
    starts = []
    for begin in range(0, samples.shape[1] - spectrum_window, spectrum_window // 4):
        window = samples[0, begin : begin + spectrum_window]
        magnitudes = np.abs(np.fft.rfft(window))
        freqs = np.fft.rfftfreq(spectrum_window, 1 / 16000)
        if magnitudes[np.argmin(np.abs(freqs - 440))] > 0.25 * magnitudes.max():
            starts.append(begin + spectrum_window)
            break
    assert starts and starts[0] / 16000 == pytest.approx(1.5, abs=0.05)
    assert onset(samples, 16000) < 0.01


def test_mix_rate_defaults_to_first_track(tmp_path):
    first = write_tone(tmp_path / "a.m4a", 1.0, 440, 22050, kind="m4a")
    second = write_tone(tmp_path / "b.webm", 1.0, 660, 48000, kind="webm-live")
    outcome = mix_files([first, second], tmp_path / "mix.mp3")
    info, samples = decode(tmp_path / "mix.mp3")
    assert info["rate"] == outcome.sample_rate == 22050
    magnitudes = np.abs(np.fft.rfft(samples[0, 2205:19845]))
    freqs = np.fft.rfftfreq(19845 - 2205, 1 / 22050)
    peaks = sorted(freqs[np.argsort(magnitudes)[-2:]].round())
    assert peaks == [440, 660]


def test_mix_rate_mp3_cannot_carry_moves_to_nearest(tmp_path):
    source = write_tone(tmp_path / "hi.wav", 0.5, 440, 96000)
    assert mix_files([source], tmp_path / "mix.mp3").sample_rate == 48000


def test_mix_rejects_unencodable_rate(tmp_path):
    source = write_tone(tmp_path / "a.wav", 0.5, 440, 16000)
    with pytest.raises(BadRequest, match="target_sample_rate 96000"):
        mix_files([source], tmp_path / "mix.mp3", target_sample_rate=96000)


def test_not_audio_gives_decoder_reason(tmp_path):
    junk = tmp_path / "junk.webm"
    junk.write_bytes(b"this is not audio at all\n" * 100)
    with pytest.raises(InvalidAudio, match="cannot be decoded: Invalid data found when processing input"):
        pad_file(junk, tmp_path / "out.webm", 1.0)
    good = write_tone(tmp_path / "a.wav", 0.5, 440, 16000)
    with pytest.raises(InvalidAudio, match="^track 1 cannot be decoded: Invalid data"):
        mix_files([good, junk], tmp_path / "mix.mp3")


def test_no_audio_stream(tmp_path):
    video = write_video_only(tmp_path / "video.mkv")
    with pytest.raises(InvalidAudio, match="has no audio stream"):
        pad_file(video, tmp_path / "out.webm", 1.0)


def test_truncated_file(tmp_path):
    source = write_tone(tmp_path / "a.m4a", 2.0, 440, 44100, kind="m4a")
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 3])  # moov atom at the end is gone
    with pytest.raises(InvalidAudio, match="cannot be decoded"):
        pad_file(source, tmp_path / "out.webm", 1.0)


def test_limits_and_cancel(tmp_path):
    source = write_tone(tmp_path / "a.wav", 3.0, 440, 16000)
    with pytest.raises(PayloadTooLarge, match="REFLECTOR_GPU_MAX_AUDIO_SECONDS"):
        pad_file(source, tmp_path / "out.webm", 1.0, max_seconds=2.0)
    with pytest.raises(PayloadTooLarge, match="REFLECTOR_GPU_MAX_AUDIO_SECONDS"):
        mix_files([source, source], tmp_path / "mix.mp3", [-3600.0, 3600.0], max_seconds=2.0)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Unavailable, match="cancelled"):
        mix_files([source, source], tmp_path / "mix.mp3", cancel=cancel)


def test_a_long_pad_stops_soon_after_cancel(tmp_path):
    """One input frame behind 5 h of silence yields hours of output from a single push: the
    cancel flag is also checked on the output side, so the job stops within about a second."""
    source = write_tone(tmp_path / "short.wav", 1.0, 440, 48000)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Unavailable, match="cancelled"):
        pad_file(source, tmp_path / "padded.webm", 18000.0, cancel=cancel)
    assert time.monotonic() - started < 5


def test_an_output_removed_as_the_client_leaves_is_a_cancellation(tmp_path, monkeypatch):
    """The race the audio worker sees when a client hangs up at the very end of a job: the
    HTTP side has removed the output file and the hang-up lands after the last cancel check,
    so closing the file fails (FileNotFoundError). The worker answers `Cancelled`
    (cancelled) without logging a traceback, and the engine leaves no file."""
    from app import settings as settings_module
    from app.audio import pipeline
    from app.workers.audio import AudioEngine
    from app.workers.messages import PadRequest
    from app.workers.protocol import Failure
    from app.workers.server import WorkerServer

    source = write_tone(tmp_path / "tone.wav", 2.0, 440, 48000)
    output = tmp_path / "out.webm"
    cancel = threading.Event()
    finish = pipeline.Encoder.finish

    def client_leaves_then_finish(encoder):
        output.unlink()  # the HTTP side's cleanup
        cancel.set()  # the worker notices the hang-up
        return finish(encoder)

    monkeypatch.setattr(pipeline.Encoder, "finish", client_leaves_then_finish)
    engine = AudioEngine(settings_module.load({"REFLECTOR_GPU_STATE_DIR": str(tmp_path / "state")}))
    reply = WorkerServer(engine, 1)._start(PadRequest(source=str(source), output=str(output), start_time_seconds=1.0), cancel)
    assert reply == Failure("Cancelled", "cancelled: the client went away")  # a 503 (Unavailable) on the HTTP side
    assert not output.exists()
