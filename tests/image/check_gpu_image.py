"""Checks of the GPU image on a machine WITHOUT a GPU, run by `make image-gpu-test`
(``VARIANT=gpu scripts/image-test.sh``). Not collected by `make test`.

- every shared library that CTranslate2 and torch load for CUDA resolves inside the image
  (``ldd`` reports no "not found"), except the driver's own libraries (``libcuda.so.1``,
  ``libnvidia-ml.so.1``), which nvidia-container-toolkit mounts from the host at run time;
  the cuBLAS 12 that CTranslate2 dlopens by name (``libcublas.so.12``) loads;
- torch reports its CUDA build (``torch.version.cuda``, cuDNN), and no GPU here;
- the service falls back to the CPU and transcribes pyannote's sample, in a container run as
  Kubernetes runs it (read-only root file system, the state on a volume, /tmp a tmpfs), with
  the self-signed certificate it makes at start, verified by its CA from the state volume;
  ``GET /metrics`` answers with the key.

``REFLECTOR_GPU_TEST_IMAGE`` names the image, ``PODMAN`` the podman command line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest

from tests.image.check_image import APP_UID, RUN_FLAGS, Container, container, normalise, podman

IMAGE = os.environ.get("REFLECTOR_GPU_TEST_IMAGE", "localhost/reflector-gpu:gpu-test")
DRIVER_LIBRARIES = ("libcuda.so.1", "libnvidia-ml.so.1")  # the host driver's, mounted at run time

# ldd on every CUDA-side shared object: torch's and CTranslate2's own (as the loader resolves
# them, through their RUNPATH), and the NVIDIA wheels' (with their sibling directories on the
# path, as torch preloads them). Prints JSON {"count": n, "missing": {library: [names]}}.
_LDD_SCRIPT = r"""
import glob, json, os, subprocess, sysconfig
site = sysconfig.get_paths()["purelib"]
def find(*patterns):
    return sorted({p for pattern in patterns for p in glob.glob(os.path.join(site, pattern), recursive=True)})
own = find("torch/lib/*.so*", "ctranslate2/*.so*", "ctranslate2.libs/*.so*")
wheels = find("nvidia/**/*.so*")
siblings = ":".join(sorted({os.path.dirname(p) for p in wheels}))
missing = {}
for libraries, env in ((own, None), (wheels, {**os.environ, "LD_LIBRARY_PATH": siblings})):
    for library in libraries:
        out = subprocess.run(["ldd", library], capture_output=True, text=True, env=env).stdout
        lost = [line.split()[0] for line in out.splitlines() if "not found" in line]
        if lost:
            missing[os.path.relpath(library, site)] = lost
print(json.dumps({"count": len(own) + len(wheels), "missing": missing}))
"""
# Plug-ins of the NVIDIA wheels for cluster fabrics that neither torch nor CTranslate2 loads on
# one host: GPUDirect Storage over RDMA and NVSHMEM's multi-node bootstraps and transports
# (they need MPI, PMIx, UCX, libfabric or Mellanox libraries).
FABRIC_PLUGINS = re.compile(r"libcufile_rdma\.so|nvshmem_(bootstrap|transport)_\w+\.so")

_TORCH_SCRIPT = r"""
import ctypes, json, torch, ctranslate2
ctypes.CDLL("libcublas.so.12")  # what CTranslate2 dlopens for its GPU path
print(json.dumps({
    "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
    "cuda_available": torch.cuda.is_available(), "ctranslate2": ctranslate2.__version__,
    "ctranslate2_cuda_devices": ctranslate2.get_cuda_device_count(),
}))
"""


def in_image(script: str) -> dict:
    """Run `script` with the image's Python (no GPU) and return the JSON it printed last."""
    result = podman("run", "--rm", *RUN_FLAGS, "--entrypoint", "python", IMAGE, "-c", script, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cuda_libraries_resolve_inside_the_image() -> None:
    report = in_image(_LDD_SCRIPT)
    print(f"ldd: {report['count']} CUDA-side libraries checked")
    assert report["count"] > 20, report  # torch's and the NVIDIA wheels' libraries were found
    plugins = sorted(library for library in report["missing"] if FABRIC_PLUGINS.search(library))
    unresolved = {
        library: lost
        for library, lost in report["missing"].items()
        if library not in plugins and any(name not in DRIVER_LIBRARIES for name in lost)
    }
    assert not unresolved, unresolved
    driver = sorted({name for library, lost in report["missing"].items() if library not in plugins for name in lost})
    print(f"ldd: unresolved only the driver's {driver} (mounted from the host with a GPU)")
    print(f"ldd: not checked, cluster-fabric plug-ins: {[Path(p).name for p in plugins]}")


def test_torch_reports_its_cuda_build() -> None:
    facts = in_image(_TORCH_SCRIPT)
    print(f"image: {facts}")
    assert facts["cuda"] and facts["cuda"].startswith("13."), facts
    assert facts["cudnn"] and facts["cudnn"] >= 90000, facts
    assert facts["cuda_available"] is False and facts["ctranslate2_cuda_devices"] == 0  # no GPU here


@pytest.fixture(scope="module")
def read_only_service() -> Iterator[Container]:
    state = Path(tempfile.mkdtemp(prefix="rg-gpu-state-"))
    os.chown(state, APP_UID, APP_UID)
    with container(
        "gpu", state / "tls" / "ca.crt",
        "--read-only", "--tmpfs", "/tmp",
        "--volume", f"{state}:/state",
        "--env", "REFLECTOR_GPU_METRICS=key",
        "--env", "REFLECTOR_GPU_LOG_FORMAT=json",
        # As deploy/kubernetes does: caches under $HOME go to the state volume.
        "--env", "HOME=/state/home", "--env", "XDG_CACHE_HOME=/state/cache",
    ) as box:
        box.wait_ready()
        yield box
    shutil.rmtree(state, ignore_errors=True)


def test_falls_back_to_the_cpu_and_transcribes(read_only_service: Container, sample_wav: Path, sample_words: list[str]) -> None:
    with read_only_service.client() as c, sample_wav.open("rb") as audio:
        response = c.post("/v1/audio/transcriptions", files={"file": ("sample.wav", audio, "audio/wav")}, data={"language": "en"})
        assert response.status_code == 200, response.text
        scrape = c.get("/metrics")
    wer = jiwer.wer(normalise(" ".join(sample_words)), normalise(response.json()["text"]))
    print(f"GPU image on the CPU: WER {wer:.3f} on sample.wav")
    assert wer <= 0.20
    assert scrape.status_code == 200 and 'reflector_gpu_requests_total{route="transcriptions",status="200"} 1.0' in scrape.text
    records = [json.loads(line) for line in read_only_service.logs().splitlines() if line.startswith("{")]
    assert records, "REFLECTOR_GPU_LOG_FORMAT=json wrote no JSON line"
    loaded = [r["message"] for r in records if r["message"].startswith("loaded whisper")]
    assert loaded and " on cpu " in loaded[0], loaded  # device auto: no GPU, so the CPU
    with read_only_service.client(key=None) as anonymous:
        assert anonymous.get("/metrics").status_code == 401
