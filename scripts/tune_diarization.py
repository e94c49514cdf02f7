"""Tune the embedded diarization pipeline's clustering threshold on synthetic conversations.

Never tunes on pyannote's sample.wav (the evaluation file). Instead:

1. Speak a few sentences with every candidate espeak-ng voice (variants and pitch/speed
   shifts), convert with sox to 16 kHz mono, and embed each with CAM++. Keep a set of
   voices that CAM++ tells apart (every cross-voice cosine similarity of voice centroids
   under ``--max-similarity``): many espeak-ng male variants are near-identical to CAM++,
   and tuning on them would drive the threshold down.
2. Build ``--conversations`` conversations of 2-4 of those voices: turns of one sentence,
   gaps from -0.4 s (overlap) to 1 s, a little noise; write WAV + reference RTTM.
3. Run the pipeline once per conversation (segmentation and embeddings are cached by
   pyannote's training mode), sweep the clustering threshold, and print the DER
   (collar 0, overlap scored) per threshold, then the DER of the best threshold at other
   segmentation steps.

Usage: .venv/bin/python scripts/tune_diarization.py [--out DIR] [--conversations N] [--seed S]
Takes ~10-20 min on 2 CPU cores. Put the chosen threshold in config/diarization/embedded.yaml.
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


def make_conversation(voices, rng: np.random.Generator, scratch: Path, turns: int):
    """(samples, [(start s, end s, speaker)]) for one conversation of `turns` turns."""
    cache: dict[tuple, np.ndarray] = {}
    timeline: list[tuple[float, np.ndarray, int]] = []
    cursor, previous = 0.5, -1
    for _ in range(turns):
        speaker = int(rng.choice([s for s in range(len(voices)) if s != previous]))
        text = str(rng.choice(SENTENCES))
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "reflector-diarization-tuning")
    parser.add_argument("--conversations", type=int, default=12)
    parser.add_argument("--turns", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--max-similarity", type=float, default=0.5)
    parser.add_argument("--step", type=float, default=0.1, help="segmentation step used while tuning")
    parser.add_argument("--other-steps", type=float, nargs="*", default=[0.2, 0.25, 0.5])
    parser.add_argument("--threshold", type=float, help="skip the sweep; score this threshold at the other steps")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    warnings.filterwarnings("ignore", message="'uem' was approximated")

    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    from app.diarization import embedded
    from app.diarization.audio import load_waveform
    from app.diarization.pipeline import Options, Source, load_pipeline

    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline = load_pipeline(Source("embedded", str(embedded.bundle_dir())), Options(segmentation_step=args.step),
                             hf_token=None, models_dir=Path("models"))
    base_params = pipeline.parameters(instantiated=True)
    with tempfile.TemporaryDirectory() as scratch:
        voices = select_voices(pipeline._embedding.model_, rng, Path(scratch), args.max_similarity)
        files = []
        for index in range(args.conversations):
            count = int(rng.integers(2, 5))
            chosen = [voices[i] for i in rng.choice(len(voices), size=min(count, len(voices)), replace=False)]
            samples, turns = make_conversation(chosen, rng, Path(scratch), args.turns)
            wav = args.out / f"conversation{index:02d}.wav"
            write_wav(wav, samples)
            reference = Annotation(uri=wav.stem)
            for start, end, speaker in turns:
                reference[Segment(start, end)] = f"S{speaker}"
            with (args.out / f"{wav.stem}.rttm").open("w") as handle:
                reference.write_rttm(handle)
            files.append((load_waveform(wav), reference))
    total_seconds = sum(f["waveform"].shape[-1] for f, _ in files) / SAMPLE_RATE
    print(f"{len(files)} conversations, {total_seconds:.0f} s, written to {args.out}")

    def evaluate(threshold: float) -> tuple[float, float]:
        params = {**base_params, "clustering": {**base_params["clustering"], "threshold": threshold}}
        pipeline.instantiate(params)
        metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
        speaker_errors = 0
        for audio, reference in files:
            output = pipeline(audio)
            hypothesis = output.speaker_diarization
            metric(reference, hypothesis)
            speaker_errors += abs(len(hypothesis.labels()) - len(reference.labels()))
        return abs(metric), speaker_errors / len(files)

    pipeline.training = True  # cache segmentation + embeddings per file across thresholds
    started = time.monotonic()
    results = []
    sweep = [] if args.threshold is not None else np.round(np.arange(0.4, 1.05, 0.05), 2)
    for threshold in sweep:
        der, count_error = evaluate(float(threshold))
        results.append((der, count_error, float(threshold)))
        print(f"threshold {threshold:.2f}: DER {der:.4f}, mean |speaker count error| {count_error:.2f}")
    if results:
        best_der, _, best = min(results)
        print(f"best threshold {best:.2f} (DER {best_der:.4f}) at step {args.step}; sweep took "
              f"{time.monotonic() - started:.0f} s")
    else:
        best = args.threshold
    for step in args.other_steps:
        pipeline.training = False
        inference = pipeline._segmentation
        inference.step = step * inference.duration
        for audio, _ in files:
            for key in [k for k in audio if k.startswith("training_cache")]:
                del audio[key]
        started = time.monotonic()
        der, count_error = evaluate(best)
        print(f"step {step}: DER {der:.4f}, mean |speaker count error| {count_error:.2f}, "
              f"real-time factor {(time.monotonic() - started) / total_seconds:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
