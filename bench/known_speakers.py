"""Benchmark: known speakers by name (``known_speaker_references``) on real and generated voices.

Conversations (voices that CAM++ tells apart: espeak-ng variants are too alike, see
/shared test-infrastructure):

- ``sample``: pyannote's 30-s sample, references for both voices cut from the sample
  itself (per sample.rttm; the acceptance case of issue 22);
- ``sample, absent voice``: the sample with only a reference of an espeak-ng voice that
  is not in it (must name nothing);
- ``2 voices`` ... ``4 voices``: clips of the sample's two real voices interleaved with
  espeak-ng voices chosen to be far apart for CAM++ (pairwise cosine < 0.5), references cut
  from *other* parts of the same voices (the real voices: another stretch of the sample;
  espeak-ng: other sentences), plus a reference of a voice that is absent when room is
  left (at most 4 references);
- ``4 voices, 2 named``: the 4-voice conversation with references for two of its voices
  and two absent voices.

Words come from the Whisper engine (the configured model, default tiny.en); each word
takes its speaker as the service gives it (`app.transcripts.speakers.word_speakers`) and
the name the diarizer matched. A word is scored where exactly one true speaker talks at
its middle: *right* (the true voice's name), *wrong* (a name, but not the true voice's:
another reference's name, or any name on a voice without a reference), *unnamed*. Time
added: the diarizer engine's job with references minus without (median of 3).

``--sweep`` prints the same shares for thresholds 0.30 ... 0.90 (same diarization, only
the assignment re-run) and the cosine similarities of same-voice and other-voice
(reference, speaker centroid) pairs: the measurement behind
``REFLECTOR_GPU_KNOWN_SPEAKER_THRESHOLD``'s default.

Run: ``nice .venv/bin/python bench/known_speakers.py [--sweep]`` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import settings as settings_module  # noqa: E402
from app.diarization.known import match_speakers, reference_samples  # noqa: E402
from app.transcripts.speakers import word_speakers  # noqa: E402
from app.workers.diarizer import DiarizerEngine, DiarizeRequest  # noqa: E402
from app.workers.whisper import TranscribeRequest, WhisperEngine  # noqa: E402
from testing.service import pyannote_sample_dir  # noqa: E402
from testing.speaker_references import (  # noqa: E402
    SAMPLE_RATE,
    SAMPLE_REFERENCES,
    cut,
    espeak,
    rttm_turns,
    sample_samples,
    wav_bytes,
)

SENTENCES = [
    "Good morning everyone, let's get started with the weekly review.",
    "I finished the migration of the billing service on Tuesday.",
    "Do we have numbers for the latency after the last deploy?",
    "That is better than last month, but still above our target.",
    "Can someone take the action item to profile the database queries?",
    "We should also update the documentation for the new endpoints.",
    "The customer from Berlin asked again about the export feature.",
    "I am not sure the budget allows another contractor this quarter.",
    "Sounds reasonable to me, as long as the release date does not slip.",
    "Just a reminder that the office is closed on Friday.",
]
CANDIDATES = [("en-us+m3", 50, 160), ("en-gb+f2", 50, 160), ("en-gb-scotland+m1", 25, 150),
              ("en-029+f4", 75, 175), ("en-us+klatt", 50, 160), ("en-gb+Storm", 50, 160),
              ("en-us+grandpa", 50, 160), ("en-gb-scotland+f1", 75, 175), ("en-us+steph", 50, 160)]
# The sample's voices: stretches for the conversations, and others for their references
# (single-speaker per sample.rttm; seconds).
REAL_MATERIAL = {"speaker90": [(8.35, 9.92), (18.59, 21.49), (28.5, 30.0)],
                 "speaker91": [(21.78, 27.85), (7.55, 8.32)]}
REAL_REFERENCE = {"speaker90": (11.03, 14.49), "speaker91": (14.70, 17.92)}
THRESHOLDS = [round(0.3 + 0.05 * i, 2) for i in range(13)]


@dataclass
class Case:
    """One conversation: 16 kHz samples, true turns (start, end, voice), references by voice."""

    name: str
    samples: np.ndarray
    truth: list[tuple[float, float, str]]
    references: dict[str, bytes] = field(default_factory=dict)


def pick_voices(engine: DiarizerEngine, count: int) -> list[tuple[str, int, int]]:
    """`count` espeak-ng voices whose CAM++ embeddings are pairwise under 0.5 cosine and
    under 0.5 against the sample's two real voices."""
    real = [engine.fast.embed_reference(cut(sample_samples(), *span)) for span in REAL_REFERENCE.values()]
    chosen, vectors = [], list(real)
    for voice in CANDIDATES:
        vector = engine.fast.embed_reference(espeak(*voice[:1], SENTENCES[0], *voice[1:]))
        if all(float(vector @ other) < 0.5 for other in vectors):
            chosen.append(voice)
            vectors.append(vector)
        if len(chosen) == count:
            return chosen
    raise SystemExit(f"only {len(chosen)} espeak-ng voices are far enough apart")


def conversation(name: str, clips: list[tuple[str, np.ndarray]], seed: int) -> Case:
    """Clips (voice, samples) in order with 0.2-0.8 s gaps; true turns trimmed to speech."""
    rng = np.random.default_rng(seed)
    parts, truth, cursor = [np.zeros(int(0.5 * SAMPLE_RATE), np.float32)], [], 0.5
    for voice, clip in clips:
        voiced = np.flatnonzero(np.abs(clip) > 0.01)
        truth.append((cursor + voiced[0] / SAMPLE_RATE, cursor + voiced[-1] / SAMPLE_RATE, voice))
        gap = float(rng.uniform(0.2, 0.8))
        parts += [clip.astype(np.float32), np.zeros(int(gap * SAMPLE_RATE), np.float32)]
        cursor += len(clip) / SAMPLE_RATE + gap
    return Case(name, np.concatenate(parts), truth)


def cases(engine: DiarizerEngine) -> list[Case]:
    sample = sample_samples()
    voices = pick_voices(engine, 5)
    label = {voice: f"espeak:{voice[0]}" for voice in voices}
    # Each espeak-ng voice says 4 of the first 8 sentences; its reference says the last 2.
    talk = {label[v]: [espeak(v[0], s, *v[1:]) for s in SENTENCES[i % 2:8:2]] for i, v in enumerate(voices)}
    refs = {label[v]: wav_bytes(np.concatenate([espeak(v[0], s, *v[1:]) for s in SENTENCES[8:]])[:8 * SAMPLE_RATE])
            for v in voices}
    refs.update({voice: wav_bytes(cut(sample, *span)) for voice, span in REAL_REFERENCE.items()})
    talk.update({voice: [cut(sample, *span) for span in spans] for voice, spans in REAL_MATERIAL.items()})
    e1, e2, e3, e4, e5 = (label[v] for v in voices)

    def interleave(names: list[str]) -> list[tuple[str, np.ndarray]]:
        queues = {n: list(talk[n]) for n in names}
        clips = []
        while any(queues.values()):
            for n in names:
                if queues[n]:
                    clips.append((n, queues[n].pop(0)))
        return clips

    whole = Case("sample (references cut from it)", sample, rttm_turns(pyannote_sample_dir() / "sample.rttm"),
                 {voice: wav_bytes(cut(sample, *span)) for voice, span in SAMPLE_REFERENCES.items()})
    absent = Case("sample, absent voice only", sample, whole.truth, {e5: refs[e5]})
    two = conversation("2 voices", interleave(["speaker90", "speaker91"]), 1)
    two.references = {v: refs[v] for v in ("speaker90", "speaker91", e5)}
    three = conversation("3 voices", interleave(["speaker90", e1, "speaker91"]), 2)
    three.references = {v: refs[v] for v in ("speaker90", "speaker91", e1, e5)}
    four = conversation("4 voices", interleave(["speaker90", e1, "speaker91", e2]), 3)
    four.references = {v: refs[v] for v in ("speaker90", "speaker91", e1, e2)}
    lone = conversation("1 real + 1 espeak-ng voice", interleave(["speaker90", e1]), 5)
    lone.references = {v: refs[v] for v in ("speaker90", "speaker91", e1)}  # speaker91 is absent
    partial = Case("4 voices, 2 named", four.samples, four.truth, {v: refs[v] for v in ("speaker91", e1, e3, e4)})
    generated = conversation("3 espeak-ng voices", interleave([e3, e4, e2]), 4)
    generated.references = {v: refs[v] for v in (e3, e4, e2, e5)}
    return [whole, absent, two, lone, three, four, partial, generated]


def scored_words(words, turns, case: Case) -> list[tuple[int | None, str]]:
    """(speaker given, true voice) of each word where exactly one true voice talks at its middle."""
    pairs = []
    for word, speaker in zip(words, word_speakers(words, turns)):
        middle = (word.start + word.end) / 2
        talking = {voice for start, end, voice in case.truth if start <= middle < end}
        if len(talking) == 1:
            pairs.append((speaker, talking.pop()))
    return pairs


def score(words, turns, matched: dict[int, int], case: Case) -> tuple[int, int, int]:
    """(right, wrong, scored) word counts (see the module docstring)."""
    names = list(case.references)
    right = wrong = 0
    pairs = scored_words(words, turns, case)
    for speaker, voice in pairs:
        name = names[matched[speaker]] if speaker in matched else None
        right += name is not None and name == voice
        wrong += name is not None and name != voice
    return right, wrong, len(pairs)


def diarization_agreement(words, turns, case: Case) -> float:
    """Share of scored words whose speaker is their true voice under the best one-to-one
    mapping of speakers to voices: what any naming of whole speakers can reach at most."""
    from scipy.optimize import linear_sum_assignment

    pairs = scored_words(words, turns, case)
    speakers = sorted({s for s, _ in pairs if s is not None})
    voices = sorted({v for _, v in pairs})
    counts = np.zeros((len(speakers), len(voices)))
    for speaker, voice in pairs:
        if speaker is not None:
            counts[speakers.index(speaker), voices.index(voice)] += 1
    rows, columns = linear_sum_assignment(counts, maximize=True)
    return counts[rows, columns].sum() / len(pairs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", action="store_true", help="score thresholds 0.30-0.90 and print similarities")
    args = parser.parse_args()
    settings = settings_module.load({"REFLECTOR_GPU_MODELS_DIR": str(ROOT / "models")})
    diarizer, whisper = DiarizerEngine(settings), WhisperEngine(settings)
    threshold = settings.known_speaker_threshold
    print(f"threshold (REFLECTOR_GPU_KNOWN_SPEAKER_THRESHOLD): {threshold}")
    totals = {t: [0, 0, 0] for t in THRESHOLDS}
    same, other, real_other, added = [], [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        rows = []
        for case in cases(diarizer):
            path = Path(scratch) / "conversation.wav"
            path.write_bytes(wav_bytes(case.samples))
            words = whisper.handle(TranscribeRequest(path=str(path)), threading.Event()).words
            references = list(case.references.values())
            plain, named = [], []
            for _ in range(3):
                started = time.perf_counter()
                diarizer.handle(DiarizeRequest(path=str(path)), threading.Event())
                plain.append(time.perf_counter() - started)
                started = time.perf_counter()
                result = diarizer.handle(DiarizeRequest(path=str(path), references=references), threading.Event())
                named.append(time.perf_counter() - started)
            added.append(statistics.median(named) - statistics.median(plain))
            right, wrong, scored = score(words, result.diarization, result.matched, case)
            found = f"{len({t.speaker for t in result.diarization})}/{len({v for _, _, v in case.truth})}"
            rows.append((case.name, len(case.samples) / SAMPLE_RATE, len(references), found,
                         diarization_agreement(words, result.diarization, case), right, wrong, scored,
                         statistics.median(plain), added[-1]))
            if args.sweep:
                turns, centroids = diarizer.fast.diarize(diarizer_samples(path))
                vectors = np.stack([diarizer.fast.embed_reference(reference_samples(r, i))
                                    for i, r in enumerate(references)])
                truth_of = speaker_truth(turns, case)
                for i, voice in enumerate(case.references):
                    for speaker, similarity in enumerate(centroids @ vectors[i]):
                        if truth_of.get(speaker) == voice:
                            same.append(float(similarity))
                        else:
                            other.append(float(similarity))
                            real = voice.startswith("speaker") and truth_of.get(speaker, "").startswith("speaker")
                            if real:
                                real_other.append(float(similarity))
                for t in THRESHOLDS:
                    counts = score(words, to_public(turns), match_speakers(vectors, centroids, t), case)
                    totals[t] = [a + b for a, b in zip(totals[t], counts)]
    print(f"{'conversation':34s} {'audio s':>7s} {'refs':>4s} {'found':>5s} {'diar.':>6s} {'right':>6s} {'wrong':>6s} "
          f"{'words':>5s} {'diarize s':>9s} {'added s':>7s}")
    for name, seconds, count, found, agreement, right, wrong, scored, plain_s, added_s in rows:
        print(f"{name:34s} {seconds:7.1f} {count:4d} {found:>5s} {agreement:6.1%} {right / scored:6.1%} "
              f"{wrong / scored:6.1%} {scored:5d} {plain_s:9.2f} {added_s:7.2f}")
    right, wrong, scored = (sum(row[i] for row in rows) for i in (5, 6, 7))
    print(f"{'all':34s} {'':7s} {'':4s} {'':5s} {'':6s} {right / scored:6.1%} {wrong / scored:6.1%} {scored:5d}")
    print("found: speakers found / voices; diar.: words whose speaker is right under the best mapping of "
          "speakers to voices (the most that naming whole speakers can reach)")
    if args.sweep:
        print("\nthreshold  right   wrong")
        for t, (r, w, s) in totals.items():
            print(f"{t:9.2f} {r / s:6.1%} {w / s:6.1%}")
        print(f"\ncosine, reference vs its own voice's speaker: min {min(same):.3f} median {np.median(same):.3f} "
              f"(n={len(same)})")
        print(f"cosine, reference vs another voice's speaker: max {max(other):.3f} median {np.median(other):.3f} "
              f"(n={len(other)}); between the two real voices: {', '.join(f'{x:.3f}' for x in sorted(real_other))}")
    return 0


def diarizer_samples(path: Path) -> np.ndarray:
    from app.audio.decode import decode_mono

    return decode_mono(path, SAMPLE_RATE)


def speaker_truth(turns, case: Case) -> dict[int, str]:
    """Each found speaker's true voice: the one it overlaps most."""
    overlap: dict[int, dict[str, float]] = {}
    for start, end, speaker in turns:
        for a, b, voice in case.truth:
            shared = min(end, b) - max(start, a)
            if shared > 0:
                overlap.setdefault(speaker, {}).setdefault(voice, 0.0)
                overlap[speaker][voice] += shared
    return {speaker: max(votes, key=votes.get) for speaker, votes in overlap.items()}


def to_public(turns):
    """The fast pipeline's (start, end, speaker) triples as objects `word_speakers` reads."""
    from app.workers.diarizer import Turn

    return [Turn(start=round(s, 3), end=round(e, 3), speaker=k) for s, e, k in sorted(turns)]


if __name__ == "__main__":
    raise SystemExit(main())
