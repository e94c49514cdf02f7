"""Every message the HTTP side and the model workers exchange, besides the protocol's own
(`app.workers.protocol`: ping, pong, accepted, failure).

This is the only module of `app.workers` that the HTTP side imports besides `client`,
`protocol` and `registry`: editing an engine cannot change the HTTP contract unseen, and a
route builds its request without importing an engine (or its model libraries). Every
request and result is a tagged, frozen `msgspec.Struct` sent as msgpack; times are seconds,
rates Hz, sizes bytes.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Priority = Literal["live", "recording"]  # live pieces (uploads) are decoded before recordings
Task = Literal["transcribe", "translate"]
# Silero VAD scores windows of 512 samples at 16 kHz: a `SpeechProbabilities` step (32 ms).
VAD_WINDOW_SAMPLES = 512
VAD_WINDOW_SECONDS = VAD_WINDOW_SAMPLES / 16000
PcmEncoding = Literal["pcm16", "mulaw", "alaw"]  # the keys of app.audio.decode.WAV_FORMATS


# -- Whisper -------------------------------------------------------------------------------
class TranscribeRequest(msgspec.Struct, tag="transcribe", frozen=True):
    """Transcribe `path` (any format FFmpeg decodes); shift every time by `timestamp_offset` s.

    `language`: a code the model supports, or None to detect it from the audio (an
    English-only model answers ``en``). `task`: ``transcribe``, or ``translate`` (speech in
    any language to English text; multilingual models only). `prompt`: text conditioning
    every 30-s piece (Whisper's initial prompt). `temperature`: sampling temperature (0:
    beam search, falling back to sampling for a piece caught in a repetition loop; each
    segment reports the temperature it was decoded at). `priority`: ``live`` pieces
    (uploads) are decoded before ``recording`` pieces (whole recordings from a URL).
    """

    path: str
    language: str | None = None
    timestamp_offset: float = 0.0
    task: Task = "transcribe"
    prompt: str | None = None
    temperature: float = 0.0
    priority: Priority = "recording"


class TranscribePcmRequest(TranscribeRequest, tag="transcribe_pcm", frozen=True):
    """A `TranscribeRequest` whose audio travels inline: `pcm`, raw mono samples in
    `encoding` (16-bit little-endian PCM, or 8-bit G.711 mu-law / A-law) at `sample_rate`
    Hz, with `path` unused. The worker wraps them as a WAV (`app.audio.decode.pcm_wav`), so
    the transcript is the one an upload of that WAV gets. Realtime sessions send these: an
    utterance is at most a few MB (30 s of 24-kHz PCM16 is 1.4 MB), a frame the socket
    carries at once, and nothing is left on disk."""

    path: str = ""
    pcm: bytes = b""
    encoding: PcmEncoding = "pcm16"
    sample_rate: int = 24000


class SpeechProbabilitiesRequest(msgspec.Struct, tag="speech_probabilities", frozen=True):
    """Silero VAD's speech probability for each 32-ms window (`VAD_WINDOW_SAMPLES`) of each of
    `chunks` (raw mono audio, encoded as in `TranscribePcmRequest`), each decoded and
    resampled to 16 kHz on its own as an upload would be; the first `context[i]` windows
    of chunk ``i`` only warm the model up and get no probability. Chunks are independent,
    so a window's probability depends on its chunk alone, never on how audio was grouped
    into requests. Answered at once on the worker's preparation threads (a few ms per
    second of audio), never queued behind batches."""

    chunks: list[bytes]
    context: list[int]
    encoding: PcmEncoding = "pcm16"
    sample_rate: int = 24000


class SpeechProbabilities(msgspec.Struct, tag="speech_probabilities_reply", frozen=True):
    """One probability in [0, 1] per whole 32-ms VAD window after the context
    of each chunk, the chunks' in order."""

    probabilities: list[float]


class Word(msgspec.Struct, frozen=True):
    """One word with its leading space as Whisper emits it; times in seconds, 2 decimals."""

    word: str
    start: float
    end: float


class Segment(msgspec.Struct, frozen=True):
    """One decoded segment (Whisper's own split of a 30-s piece), times in seconds (2 decimals).

    `tokens`: the token ids; `avg_logprob`, `compression_ratio`, `no_speech_prob`: Whisper's
    decoding statistics, as OpenAI's ``verbose_json`` reports them.
    """

    id: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class Transcript(msgspec.Struct, tag="transcript", frozen=True):
    """The text, the words and segments in time order, the audio duration in seconds, and
    the language spoken (as given, or detected)."""

    text: str
    words: list[Word]
    duration: float
    language: str = "en"
    segments: list[Segment] = []


# -- diarization --------------------------------------------------------------------------
class DiarizeRequest(msgspec.Struct, tag="diarize", frozen=True):
    """Diarize `path` (any format FFmpeg decodes); shift every time by `timestamp` seconds.

    Optional speaker-count hints (integers >= 1, checked by the HTTP side):
    `num_speakers` fixes the count; `min_speakers` / `max_speakers` bound it.
    `references`: known speakers' voices, each 2-10 s of audio in any format FFmpeg
    decodes (at most 4, each at most 4 MiB, checked by the HTTP side); the reply's
    `matched` says which speaker each one names (`app.diarization.known`). The `fast`
    pipeline only. `priority`: ``live`` jobs (uploads with ``diarize=true``) run before
    queued ``recording`` ones (`/diarize`, the from-URL route), as in the Whisper worker.
    """

    path: str
    timestamp: float = 0.0
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    references: list[bytes] = []
    priority: Priority = "recording"


class Turn(msgspec.Struct, frozen=True):
    """One speaker turn: seconds (3 decimals), `speaker` an integer from 0."""

    start: float
    end: float
    speaker: int


class Diarization(msgspec.Struct, tag="diarization", frozen=True):
    """Turns sorted by start (then end, speaker); `duration` of the audio in seconds;
    `matched`: speaker -> index of the request's reference that names it (only speakers a
    reference matched; empty without references)."""

    diarization: list[Turn]
    duration: float
    matched: dict[int, int] = {}


# -- translation ---------------------------------------------------------------------------
class TranslateRequest(msgspec.Struct, tag="translate", frozen=True):
    """Translate `text` from Reflector language `source` to `target` (codes as Reflector sends them)."""

    text: str
    source: str = "en"
    target: str = "fr"


class Translation(msgspec.Struct, tag="translation", frozen=True):
    """The translated text and how many pieces (sentences or parts of long ones) were decoded."""

    text: str
    pieces: int = 0


# -- audio (pad, mixdown) ------------------------------------------------------------------
class PadRequest(msgspec.Struct, tag="pad", frozen=True):
    """Write `source` preceded by `start_time_seconds` (s) of silence to `output` (WebM/Opus)."""

    source: str
    output: str
    start_time_seconds: float


class MixdownRequest(msgspec.Struct, tag="mixdown", frozen=True):
    """Mix `sources` into the MP3 file `output`.

    `offsets_seconds` (one per source, s) place the sources on one timeline;
    `target_sample_rate` (Hz) or else the first source's rate; `labels` name the sources
    in error messages (e.g. ``"track 2"``, the index in the client's list).
    """

    sources: list[str]
    output: str
    offsets_seconds: list[float] | None = None
    target_sample_rate: int | None = None
    labels: list[str] | None = None


class Encoded(msgspec.Struct, tag="encoded", frozen=True):
    """The file written: `size` (bytes), `duration_ms` (audio encoded, ms), `sample_rate` (Hz)."""

    size: int
    duration_ms: float
    sample_rate: int
