"""Known speakers: naming a diarization's speakers after short recordings of known voices.

OpenAI's ``known_speaker_names[]`` / ``known_speaker_references[]``: each reference is a
2-10 s recording of one known person. The diarizer worker decodes it (`reference_samples`),
embeds it with the same CAM++ model, fbank features and 1.5-s windows as the clustering
(`app.diarization.fast.FastDiarizer.embed_reference`), and names *speakers* (clusters),
never single windows: `match_speakers` compares each reference embedding with each
speaker's centroid by cosine similarity and solves one assignment (at most one speaker
per reference and one reference per speaker) that maximises the summed similarity of the
pairs at or above the threshold. A reference that matches no speaker is unused; a speaker
that matches no reference keeps its number.

No web framework here, and no numpy at import time (the HTTP side reads the limits).
Nothing about a reference is logged or kept: its audio arrives as bytes in the worker's
message and lives only for the job; error messages name its index, never its content.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from app.errors import BadRequest, InvalidAudio, PayloadTooLarge

MAX_REFERENCES = 4  # OpenAI: "Up to 4 speakers are supported"
MIN_REFERENCE_SECONDS = 2.0  # OpenAI: "Each sample must be between 2 and 10 seconds"
MAX_REFERENCE_SECONDS = 10.0
# Codecs pad their last frame (an MP3 of exactly 10 s decodes to ~10.03 s): allowed on top.
REFERENCE_SLACK_SECONDS = 0.1
# Bytes of one reference's audio (after base64): 10 s of 48 kHz stereo float WAV is 3.84 MB.
MAX_REFERENCE_BYTES = 4 * 1024 * 1024
SAMPLE_RATE = 16000  # Hz, what CAM++ embeds
KNOWN_SPEAKERS_NEED_FAST = (
    "known speakers (known_speaker_references) need the fast diarization pipeline: "
    "this host runs another one (REFLECTOR_GPU_DIARIZATION_MODEL=fast selects it)"
)

if TYPE_CHECKING:
    import numpy as np


def field(index: int) -> str:
    """The request field holding reference `index`, as error messages name it."""
    return f"known_speaker_references[{index}]"


def reference_samples(data: bytes, index: int) -> np.ndarray:
    """Decode reference `index` (any format FFmpeg reads) into 16 kHz mono float32 samples.

    Raises `InvalidAudio` (400) when the bytes are not decodable audio and `BadRequest`
    (400) when the audio is not 2-10 s long (plus `REFERENCE_SLACK_SECONDS`); both name
    the field, never its content.
    """
    from app.audio.decode import decode_mono

    too_long = None
    try:
        samples = decode_mono(io.BytesIO(data), SAMPLE_RATE, MAX_REFERENCE_SECONDS + REFERENCE_SLACK_SECONDS)
    except InvalidAudio as exc:
        raise InvalidAudio(f"{field(index)}: {exc.detail}") from None
    except PayloadTooLarge:
        too_long = f"over {MAX_REFERENCE_SECONDS:g}"
    if too_long or len(samples) < (MIN_REFERENCE_SECONDS - REFERENCE_SLACK_SECONDS) * SAMPLE_RATE:
        raise BadRequest(
            f"{field(index)}: a reference must hold {MIN_REFERENCE_SECONDS:g} to {MAX_REFERENCE_SECONDS:g} s "
            f"of one person's speech (this one is {too_long or f'{len(samples) / SAMPLE_RATE:.2f}'} s)"
        )
    return samples


def match_speakers(references: np.ndarray, centroids: np.ndarray, threshold: float) -> dict[int, int]:
    """Which reference names which speaker: ``{speaker: reference index}``.

    `references` (r, d) and `centroids` (s, d) hold L2-normalised embeddings (row i of
    `centroids` is speaker i), so their dot products are cosine similarities. A pair is
    allowed when its similarity is >= `threshold`; among the allowed pairs one assignment
    (`scipy.optimize.linear_sum_assignment`, each reference and each speaker used at most
    once) maximises the summed similarity. Not greedy: a reference whose best speaker is
    better explained by another reference takes its own next best, if that passes.
    """
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    if len(references) == 0 or len(centroids) == 0:
        return {}
    similarity = np.asarray(references, dtype=np.float64) @ np.asarray(centroids, dtype=np.float64).T
    allowed = similarity >= threshold
    rows, columns = linear_sum_assignment(np.where(allowed, similarity, 0.0), maximize=True)
    return {int(column): int(row) for row, column in zip(rows, columns) if allowed[row, column]}
