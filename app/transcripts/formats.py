"""The response formats of OpenAI's audio API, made from a `Transcript` (and speaker turns).

``json``, ``verbose_json`` and ``diarized_json`` are msgspec structs (the OpenAPI schema
comes from them); ``text``, ``srt`` and ``vtt`` are text bodies. SRT is written with the
`srt` library and WebVTT with `webvtt-py` (both parse what they write, and the tests parse
our output back with them). Reflector's shape stays inside ``json`` and ``verbose_json``:
``text``, ``words`` (``word``, ``start``, ``end``) and ``filename``; everything else is
added beside it. Times are seconds, as the worker rounded them (2 decimals).
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping, Sequence

import msgspec

from app.schemas.transcription import (
    DiarizedSegment,
    DiarizedTranscription,
    JsonTranscription,
    OutSegment,
    OutWord,
    Usage,
    VerboseTranscription,
)
from app.transcripts.speakers import SpeakerSegment, SpeakerTurn, split_by_speaker, word_speakers
from app.workers.messages import Segment, Task, Transcript

TEXT_FORMATS = {"text": "text/plain; charset=utf-8", "srt": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8"}


class Attributed(msgspec.Struct, frozen=True):
    """A transcript's speakers: one per word (`words`) and the segments cut by speaker (`parts`)."""

    words: list[int | None]
    parts: list[SpeakerSegment]


def attribute(transcript: Transcript, turns: Sequence[SpeakerTurn]) -> Attributed:
    """Give every word and segment of `transcript` a speaker from `turns` (same timeline)."""
    speakers = word_speakers(transcript.words, turns)
    return Attributed(words=speakers, parts=split_by_speaker(transcript.segments, transcript.words, speakers, turns))


def out_words(
    transcript: Transcript, speakers: Attributed | None = None, names: Mapping[int, str] | None = None
) -> list[OutWord]:
    """The transcript's words, each with its speaker when `speakers` is given, and the
    speaker's name where `names` (speaker -> known speaker's name) has one."""
    labels = speakers.words if speakers is not None else [None] * len(transcript.words)
    names = names or {}
    return [OutWord(w.word, w.start, w.end, label, names.get(label)) for w, label in zip(transcript.words, labels)]


def _segment(source: Segment, index: int, start: float, end: float, text: str, tokens: list[int], speaker: int | None,
             name: str | None = None) -> OutSegment:
    return OutSegment(
        id=index,
        seek=round(start * 100),
        start=start,
        end=end,
        text=text,
        tokens=tokens,
        temperature=source.temperature,
        avg_logprob=source.avg_logprob,
        compression_ratio=source.compression_ratio,
        no_speech_prob=source.no_speech_prob,
        speaker=speaker,
        name=name,
    )


def out_segments(
    transcript: Transcript, speakers: Attributed | None = None, names: Mapping[int, str] | None = None
) -> list[OutSegment]:
    """Whisper's segments; with `speakers`, cut where the speaker changes, each with its
    speaker (and its name where `names`, speaker -> known speaker's name, has one)."""
    names = names or {}
    if speakers is None:
        return [_segment(s, s.id, s.start, s.end, s.text, s.tokens, None) for s in transcript.segments]
    result = []
    previous = None
    for part in speakers.parts:
        source = transcript.segments[part.source]
        whole = part.start == source.start and part.end == source.end
        text = source.text if whole or not part.words else "".join(transcript.words[i].word for i in part.words)
        tokens = source.tokens if part.source != previous else []
        previous = part.source
        result.append(_segment(source, len(result), part.start, part.end, text, tokens, part.speaker,
                               names.get(part.speaker)))
    return result


def json_body(
    transcript: Transcript,
    response_format: str,
    *,
    task: Task = "transcribe",
    filename: str | None = None,
    granularities: Sequence[str] = (),
    speakers: Attributed | None = None,
    names: Mapping[int, str] | None = None,
) -> JsonTranscription | VerboseTranscription | DiarizedTranscription:
    """The body for ``json``, ``verbose_json`` or ``diarized_json``.

    `granularities`: OpenAI's ``timestamp_granularities[]``; ``verbose_json`` gives
    `segments` when it holds ``segment`` or is empty (OpenAI's default), and `words` unless
    it holds only ``segment`` (Reflector reads `words`). ``diarized_json`` needs `speakers`.
    `names`: speaker -> known speaker's name (``diarized_json``: the `speaker` label;
    otherwise a `name` beside the integer).
    """
    usage = Usage(seconds=transcript.duration)
    if response_format == "json":
        return JsonTranscription(transcript.text, out_words(transcript, speakers, names), filename)
    if response_format == "verbose_json":
        wanted = set(granularities)
        return VerboseTranscription(
            task=task,
            language="en" if task == "translate" else transcript.language,
            duration=transcript.duration,
            text=transcript.text,
            segments=out_segments(transcript, speakers, names) if not wanted or "segment" in wanted else None,
            words=out_words(transcript, speakers, names) if wanted != {"segment"} else None,
            filename=filename,
            usage=usage,
        )
    if response_format == "diarized_json":
        if speakers is None:
            raise ValueError("diarized_json needs the speakers")
        segments = [
            DiarizedSegment(id=str(s.id), start=s.start, end=s.end, text=s.text.strip(), speaker=s.name or str(s.speaker))
            for s in out_segments(transcript, speakers, names)
            if s.text.strip() and s.speaker is not None
        ]
        return DiarizedTranscription("transcribe", transcript.duration, transcript.text, segments, usage)
    raise ValueError(f"not a JSON response format: {response_format}")


def _cue_text(text: str) -> str:
    """One line of cue text: no line breaks, and no ``-->`` (it would end the cue's timing line)."""
    return " ".join(text.split()).replace("-->", "->")


def _cues(
    transcript: Transcript, speakers: Attributed | None, names: Mapping[int, str] | None
) -> list[tuple[float, float, str, str | None]]:
    """(start, end, text, speaker label) per cue: the known speaker's name, ``Speaker N``,
    or None without speakers."""
    return [
        (s.start, s.end, _cue_text(s.text), None if s.speaker is None else _cue_text(s.name or f"Speaker {s.speaker}"))
        for s in out_segments(transcript, speakers, names)
        if _cue_text(s.text)
    ]


def srt_body(transcript: Transcript, speakers: Attributed | None = None, names: Mapping[int, str] | None = None) -> str:
    """SubRip subtitles, one cue per segment (per speaker part when diarized, text prefixed
    ``[Speaker N]``, or ``[<name>]`` for a known speaker). Empty for a transcript without speech."""
    import srt

    subtitles = [
        srt.Subtitle(
            index=number,
            start=datetime.timedelta(seconds=start),
            end=datetime.timedelta(seconds=max(end, start)),
            content=text if speaker is None else f"[{speaker}] {text}",
        )
        for number, (start, end, text, speaker) in enumerate(_cues(transcript, speakers, names), 1)
    ]
    return srt.compose(subtitles, reindex=False)


def _vtt_time(seconds: float) -> str:
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"


def vtt_body(transcript: Transcript, speakers: Attributed | None = None, names: Mapping[int, str] | None = None) -> str:
    """WebVTT subtitles, one cue per segment (per speaker part when diarized, in a voice
    span ``<v Speaker N>``, or ``<v name>`` for a known speaker); text escaped as WebVTT
    requires (``&``, ``<``, ``>``)."""
    import webvtt

    captions = []
    for start, end, text, speaker in _cues(transcript, speakers, names):
        escaped = html.escape(text, quote=False)
        captions.append(
            webvtt.Caption(
                start=_vtt_time(start),
                end=_vtt_time(max(end, start)),
                text=escaped if speaker is None else f"<v {html.escape(speaker, quote=False)}>{escaped}",
            )
        )
    return webvtt.WebVTT(captions=captions).content


def text_body(
    transcript: Transcript, response_format: str, speakers: Attributed | None = None,
    names: Mapping[int, str] | None = None,
) -> str:
    """The body for ``text`` (the transcript and a newline), ``srt`` or ``vtt``; `names`:
    speaker -> known speaker's name, for the cues' speaker labels."""
    if response_format == "text":
        return transcript.text + "\n"
    if response_format == "srt":
        return srt_body(transcript, speakers, names)
    if response_format == "vtt":
        return vtt_body(transcript, speakers, names)
    raise ValueError(f"not a text response format: {response_format}")
