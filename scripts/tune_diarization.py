"""Tune the diarization pipelines on synthetic conversations (never on the evaluation file).

Never tunes on pyannote's sample.wav (the evaluation file). Instead:

1. Speak a few sentences with every candidate espeak-ng voice (variants and pitch/speed
   shifts), convert with sox to 16 kHz mono, and embed each with CAM++. Keep a set of
   voices that CAM++ tells apart (every cross-voice cosine similarity of voice centroids
   under ``--max-similarity``): many espeak-ng male variants are near-identical to CAM++,
   and tuning on them would drive the threshold down.
2. Build ``--conversations`` conversations (`make_dataset`): 2, 3 and 4 speakers in turn
   (``count = 2 + index % 3``), turns of one sentence or, one time in three, a short
   reply of one to four words; gaps from -0.4 s (overlap) to 1 s, a little noise; write
   WAV + reference RTTM + the voices used. A directory that already holds the set is reused
   (bench/diarization.py scores the same files).
3. ``--pipeline fast`` (default): segment and embed each conversation once, then sweep the
   `fast` pipeline's centroid merge similarity and affinity pruning (clustering and turns
   only), printing DER (collar 0, overlap scored) and the share of conversations with the
   right speaker count. ``--pipeline embedded``: sweep the pyannote pipeline's clustering
   threshold (segmentation and embeddings cached by pyannote's training mode), then score
   the best threshold at other segmentation steps.

Usage: .venv/bin/python scripts/tune_diarization.py [--pipeline fast|embedded] [--out DIR]
[--conversations N] [--seed S]. Put the chosen values in app/diarization/fast.py
(`FastOptions`) or config/diarization/embedded.yaml.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLE_RATE = 16000
SENTENCES = [
    "Good morning everyone, let's get started with the weekly review.",
    "I finished the migration of the billing service on Tuesday.",
    "Do we have numbers for the latency after the last deploy?",
    "The dashboard shows about two hundred milliseconds at the ninety fifth percentile.",
    "That is better than last month, but still above our target.",
    "Can someone take the action item to profile the database queries?",
    "I can look into it this afternoon and report back tomorrow.",
    "We should also update the documentation for the new endpoints.",
    "The customer from Berlin asked again about the export feature.",
    "Let's schedule a call with them next week to clarify the requirements.",
    "I am not sure the budget allows another contractor this quarter.",
    "Maybe we can move the design work to the next sprint instead.",
    "Sounds reasonable to me, as long as the release date does not slip.",
    "The test suite has been flaky since we upgraded the build machines.",
    "I opened a ticket for that yesterday with a few failing examples.",
    "Thanks, that helps a lot. Anything else before we wrap up?",
    "Just a reminder that the office is closed on Friday.",
    "Right, I will send the notes to everyone after the meeting.",
    "Could you repeat the last point? The connection dropped for a second.",
    "We agreed to ship the beta to ten customers by the end of the month.",
]
# espeak-ng voice variants and (pitch, speed) shifts: candidates before CAM++ selection.
VARIANTS = ["f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7",
            "Annie", "belinda", "Alicia", "anika", "steph", "linda", "Andy", "david",
            "john", "max", "paul", "klatt", "Storm", "edward", "Mr", "grandpa"]
LANGUAGES = ["en-us", "en-gb", "en-gb-scotland", "en-029"]
SHIFTS = [(50, 160), (25, 150), (75, 175)]


def synthesize(voice: tuple[str, int, int], text: str, scratch: Path) -> np.ndarray:
    """Speak `text` with ``(espeak voice, pitch 0-99, words per minute)``; 16 kHz float32."""
    name, pitch, speed = voice
    raw, out = scratch / "raw.wav", scratch / "out.wav"
    subprocess.run(["espeak-ng", "-v", name, "-p", str(pitch), "-s", str(speed), "-w", str(raw), text], check=True)
    subprocess.run(["sox", "-V1", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)], check=True)
    with wave.open(str(out)) as handle:
        samples = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16)
    return samples.astype(np.float32) / 32768.0


def write_wav(path: Path, samples: np.ndarray) -> None:
    """Write float samples in [-1, 1] as 16-bit mono 16 kHz WAV."""
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(SAMPLE_RATE)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())


def select_voices(model, rng: np.random.Generator, scratch: Path, max_similarity: float) -> list[tuple[str, int, int]]:
    """Candidate voices whose CAM++ centroids are pairwise below `max_similarity` (cosine)."""
    import torch

    candidates = [(f"{lang}+{variant}", pitch, speed) for lang in LANGUAGES[:2] for variant in VARIANTS
                  for pitch, speed in SHIFTS[:1]]
    candidates += [(f"{lang}+{variant}", pitch, speed) for lang in LANGUAGES[2:] for variant in VARIANTS[:12:3]
                   for pitch, speed in SHIFTS[1:]]
    centroids = []
    texts = rng.choice(SENTENCES, size=3, replace=False)
    for voice in candidates:
        with torch.inference_mode():
            vectors = [model(torch.from_numpy(synthesize(voice, t, scratch))[None, None]).numpy()[0] for t in texts]
        vectors = [v / np.linalg.norm(v) for v in vectors]
        centroid = np.mean(vectors, axis=0)
        centroids.append(centroid / np.linalg.norm(centroid))
    similarity = np.array(centroids) @ np.array(centroids).T
    chosen: list[int] = []
    for index in rng.permutation(len(candidates)):
        if all(similarity[index, other] < max_similarity for other in chosen):
            chosen.append(int(index))
    print(f"{len(chosen)} of {len(candidates)} voices kept (pairwise CAM++ cosine < {max_similarity}):")
    for index in chosen:
        print("  ", candidates[index])
    return [candidates[index] for index in chosen]


SHORT_REPLIES = ["Yes.", "Okay, agreed.", "Right.", "No, I don't think so.", "Exactly.", "Sure, go ahead.",
                 "Hmm, maybe.", "Thanks.", "Got it."]


def make_conversation(voices, rng: np.random.Generator, scratch: Path, turns: int):
    """(samples, [(start s, end s, speaker)]) for one conversation of `turns` turns; one turn
    in three is a short reply (`SHORT_REPLIES`)."""
    cache: dict[tuple, np.ndarray] = {}
    timeline: list[tuple[float, np.ndarray, int]] = []
    cursor, previous = 0.5, -1
    for _ in range(turns):
        speaker = int(rng.choice([s for s in range(len(voices)) if s != previous]))
        text = str(rng.choice(SHORT_REPLIES if rng.random() < 1 / 3 else SENTENCES))
        key = (speaker, text)
        if key not in cache:
            cache[key] = synthesize(voices[speaker], text, scratch)
        audio = cache[key]
        gap = float(rng.uniform(-0.4, 1.0)) if timeline else 0.0
        start = max(0.0, cursor + gap)
        timeline.append((start, audio, speaker))
        cursor = start + len(audio) / SAMPLE_RATE
        previous = speaker
    total = int((cursor + 0.5) * SAMPLE_RATE)
    mix = np.zeros(total, dtype=np.float32)
    reference = []
    for start, audio, speaker in timeline:
        begin = int(start * SAMPLE_RATE)
        mix[begin:begin + len(audio)] += audio * float(rng.uniform(0.5, 0.9))
        # speech extent: trim espeak's leading/trailing silence for the reference
        voiced = np.flatnonzero(np.abs(audio) > 0.01)
        reference.append(((begin + voiced[0]) / SAMPLE_RATE, (begin + voiced[-1]) / SAMPLE_RATE, speaker))
    mix += rng.normal(0, 0.003, size=total).astype(np.float32)
    return mix, reference


def campplus_model():
    """The embedded bundle's CAM++ as a pyannote `Model` (waveform (1, 1, samples) -> (1, 192))."""
    from pyannote.audio import Model

    from app.diarization import embedded

    return Model.from_pretrained(str(embedded.bundle_dir() / "embedding")).eval()


def make_dataset(out: Path, conversations: int = 12, seed: int = 7, turns: int = 14,
                 max_similarity: float = 0.5) -> list[tuple[Path, Path]]:
    """Write (or reuse) `conversations` WAV + RTTM pairs under `out`; returns their paths.

    Conversation i has ``2 + i % 3`` speakers. The set is reused when ``out/manifest.txt``
    names the same parameters.
    """
    manifest = out / "manifest.txt"
    key = f"conversations={conversations} seed={seed} turns={turns} max_similarity={max_similarity} v2"
    pairs = [(out / f"conversation{i:02d}.wav", out / f"conversation{i:02d}.rttm") for i in range(conversations)]
    if manifest.is_file() and manifest.read_text() == key and all(w.is_file() and r.is_file() for w, r in pairs):
        return pairs
    from pyannote.core import Annotation, Segment

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        voices = select_voices(campplus_model(), rng, Path(scratch), max_similarity)
        (out / "voices.txt").write_text("".join(f"{name} {pitch} {speed}\n" for name, pitch, speed in voices))
        for index, (wav, rttm) in enumerate(pairs):
            count = min(2 + index % 3, len(voices))
            chosen = [voices[i] for i in rng.choice(len(voices), size=count, replace=False)]
            samples, spoken = make_conversation(chosen, rng, Path(scratch), turns)
            write_wav(wav, samples)
            reference = Annotation(uri=wav.stem)
            for start, end, speaker in spoken:
                reference[Segment(start, end)] = f"S{speaker}"
            with rttm.open("w") as handle:
                reference.write_rttm(handle)
    manifest.write_text(key)
    return pairs


def make_long(dataset: Path, minutes: int, speakers: int = 4, seed: int = 11) -> tuple[Path, Path]:
    """A `minutes`-long meeting of `speakers` of the dataset's voices (WAV + RTTM under
    `dataset`, made once): `make_conversation` with enough turns, cut to the length."""
    wav, rttm = dataset / f"meeting-{minutes}min.wav", dataset / f"meeting-{minutes}min.rttm"
    if wav.is_file() and rttm.is_file():
        return wav, rttm
    from pyannote.core import Annotation, Segment

    voices = [(name, int(pitch), int(speed)) for name, pitch, speed in
              (line.split() for line in (dataset / "voices.txt").read_text().splitlines())]
    rng = np.random.default_rng(seed)
    chosen = [voices[i] for i in rng.choice(len(voices), size=min(speakers, len(voices)), replace=False)]
    with tempfile.TemporaryDirectory() as scratch:
        samples, spoken = make_conversation(chosen, rng, Path(scratch), int(minutes * 60 / 3.0))
    seconds = minutes * 60.0  # cut to the exact length
    write_wav(wav.with_suffix(".partial"), samples[: int(seconds * SAMPLE_RATE)])
    reference = Annotation(uri=wav.stem)
    for start, end, speaker in spoken:
        if start < seconds:
            reference[Segment(start, min(end, seconds))] = f"S{speaker}"
    with rttm.open("w") as handle:
        reference.write_rttm(handle)
    wav.with_suffix(".partial").replace(wav)
    return wav, rttm


def load_reference(rttm: Path):
    """The reference `Annotation` in `rttm` (one file, one recording)."""
    from pyannote.database.util import load_rttm

    return next(iter(load_rttm(rttm).values()))


def tune_fast(files, args) -> None:
    """Sweep the fast pipeline's merge similarity and pruning on cached embeddings."""
    from dataclasses import replace

    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    from app.diarization import embedded
    from app.diarization.fast import FastDiarizer, FastOptions, SpeakerHints, cluster

    diarizer = FastDiarizer(embedded.bundle_dir(), options=FastOptions(segmentation_step=args.step))
    cached = []
    for samples, reference in files:
        segmentation, count = diarizer.segment(samples, lambda: False)
        windows = diarizer.windows(count, len(samples) / SAMPLE_RATE, diarizer.changes(segmentation, len(count)))
        cached.append((segmentation, count, windows, diarizer.embed(samples, windows, lambda: False), reference))
    base = diarizer.options
    results = []
    for pruning in (0.02, 0.05, 0.1):
        for merge in np.round(np.arange(0.4, 0.95, 0.05), 2):
            options = replace(base, pruning=pruning, merge_similarity=float(merge))
            metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
            right = 0
            for segmentation, count, windows, embeddings, reference in cached:
                labels = cluster(embeddings, SpeakerHints(), options)
                hypothesis = Annotation()
                for start, end, speaker in diarizer.turns(segmentation, count, windows, labels):
                    hypothesis[Segment(start, end)] = speaker
                metric(reference, hypothesis)
                right += len(hypothesis.labels()) == len(reference.labels())
            results.append((abs(metric), -right, pruning, float(merge)))
            print(f"pruning {pruning:.2f} merge {merge:.2f}: DER {abs(metric):.4f}, "
                  f"speaker count right {right}/{len(cached)}")
    der, right, pruning, merge = min(results)
    print(f"best: pruning {pruning} merge_similarity {merge} (DER {der:.4f}, count right {-right}/{len(cached)})")


def tune_embedded(files, args) -> None:
    """Sweep the pyannote pipeline's clustering threshold, then score other steps."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    from app.diarization import embedded
    from app.diarization.pipeline import Options, load_pipeline
    from app.models.diarization import Source

    pipeline = load_pipeline(Source("embedded", str(embedded.bundle_dir())), Options(segmentation_step=args.step),
                             hf_token=None, models_dir=Path("models"))
    base_params = pipeline.parameters(instantiated=True)
    import torch

    audios = [({"waveform": torch.from_numpy(samples)[None], "sample_rate": SAMPLE_RATE}, ref) for samples, ref in files]
    total_seconds = sum(len(samples) for samples, _ in files) / SAMPLE_RATE

    def evaluate(threshold: float) -> tuple[float, float]:
        params = {**base_params, "clustering": {**base_params["clustering"], "threshold": threshold}}
        pipeline.instantiate(params)
        metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
        speaker_errors = 0
        for audio, reference in audios:
            hypothesis = pipeline(audio).speaker_diarization
            metric(reference, hypothesis)
            speaker_errors += abs(len(hypothesis.labels()) - len(reference.labels()))
        return abs(metric), speaker_errors / len(audios)

    pipeline.training = True  # cache segmentation + embeddings per file across thresholds
    results = []
    sweep = [] if args.threshold is not None else np.round(np.arange(0.4, 1.05, 0.05), 2)
    for threshold in sweep:
        der, count_error = evaluate(float(threshold))
        results.append((der, count_error, float(threshold)))
        print(f"threshold {threshold:.2f}: DER {der:.4f}, mean |speaker count error| {count_error:.2f}")
    best = min(results)[2] if results else args.threshold
    for step in args.other_steps:
        pipeline.training = False
        inference = pipeline._segmentation
        inference.step = step * inference.duration
        for audio, _ in audios:
            for key in [k for k in audio if k.startswith("training_cache")]:
                del audio[key]
        started = time.monotonic()
        der, count_error = evaluate(best)
        print(f"step {step}: DER {der:.4f}, mean |speaker count error| {count_error:.2f}, "
              f"real-time factor {(time.monotonic() - started) / total_seconds:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", choices=["fast", "embedded"], default="fast")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "reflector-diarization-tuning")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-similarity", type=float, default=0.5)
    parser.add_argument("--step", type=float, default=0.2, help="segmentation step used while tuning")
    parser.add_argument("--other-steps", type=float, nargs="*", default=[0.2, 0.25, 0.5])
    parser.add_argument("--threshold", type=float, help="embedded: skip the sweep; score this threshold")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    warnings.filterwarnings("ignore", message="'uem' was approximated")

    from app.audio.decode import decode_mono

    pairs = make_dataset(args.out, args.conversations, args.seed, args.turns, args.max_similarity)
    files = [(decode_mono(wav), load_reference(rttm)) for wav, rttm in pairs]
    print(f"{len(files)} conversations, {sum(len(s) for s, _ in files) / SAMPLE_RATE:.0f} s, in {args.out}")
    (tune_fast if args.pipeline == "fast" else tune_embedded)(files, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
