"""Checks of the built image with podman, run by `make image-test` (scripts/image-test.sh).

Not collected by `make test` (the file name does not match ``test_*.py``): it needs the image
built first. ``REFLECTOR_GPU_TEST_IMAGE`` names the image, ``PODMAN`` the podman command line.

Every HTTPS request verifies the server with the CA in use (strict X.509 checks) and the name
``localhost``; ports are published on 127.0.0.1 only. The checks:
- a `make cert` directory mounted at /certs (``server.pem`` and ``server-key.pem`` only, the
  key group-readable by the image's group; never ``ca.key``) and a tiny M2M100 translation
  model under the /models volume; the CA trusted for downloads through
  ``REFLECTOR_GPU_EXTRA_CA``: ``/health``, ``/ready``, the HEALTHCHECK, a real
  transcription of pyannote's sample (uploaded, and from an HTTPS URL whose certificate only
  that extra CA verifies), speaker diarization once the image has a diarizer worker, a
  translation, 401 without the key, non-root processes; a certificate
  swap is picked up (the supervisor validates, then SIGHUPs Granian) while fresh connections
  keep succeeding; a broken swap is rejected and the previous certificate keeps serving;
  ``podman stop`` during a transcription answers that request (200, or 503) and ends the
  container with status 0 in under 10 s;
- no certificate mounted: the self-signed certificate made at the first start is reused from
  the /state volume by a second container (same SHA-256 fingerprint).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jiwer
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app import tls
from testing.service import API_KEY, free_port, strict_context
from testing.translation_models import build_m2m100

IMAGE = os.environ.get("REFLECTOR_GPU_TEST_IMAGE", "localhost/reflector-gpu:cpu-test")
PODMAN = shlex.split(os.environ.get("PODMAN", "podman"))
# This host has no CAP_SYS_RESOURCE: podman's default ulimits cannot be applied here.
# HF_HUB_OFFLINE: the image's `auto` models would try the model hub, which no test reaches.
RUN_FLAGS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768", "--env", "HF_HUB_OFFLINE=1"]
APP_UID = 10001  # the image's user (Containerfile: APP_UID)
READY_SECONDS = 240.0
STOP_LIMIT_SECONDS = 10.0
CERT_POLL_SECONDS = 5.0  # app.supervision.supervisor.CERT_POLL_SECONDS


def podman(*args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, check=check, timeout=timeout)


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s']", " ", text.lower())).strip()


@dataclass
class Container:
    """One running container of the image, published on 127.0.0.1:`port`."""

    name: str
    port: int
    ca_file: Path

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def client(self, key: str | None = API_KEY, timeout: float = 120.0, keepalive: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
        return httpx.Client(
            base_url=self.url, headers=headers, verify=strict_context(self.ca_file), timeout=timeout, limits=limits
        )

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        return podman("inspect", "--format", "{{.State.Running}}", self.name).stdout.strip() == "true"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"container {self.name} exited:\n{self.logs()}")
            if self.ca_file.is_file():
                with contextlib.suppress(httpx.HTTPError, ssl.SSLError), self.client(key=None, timeout=5) as c:
                    if c.get("/ready").status_code == 200:
                        return
            time.sleep(1)
        raise AssertionError(f"container {self.name} not ready in {READY_SECONDS} s:\n{self.logs()}")

    def served_fingerprint(self) -> str:
        """SHA-256 of the certificate served now, over a fresh verified TLS connection."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with strict_context(self.ca_file).wrap_socket(raw, server_hostname="localhost") as conn:
                der = conn.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()

    def stop(self) -> tuple[float, int]:
        """`podman stop` with its default 10 s timeout: (seconds it took, exit status)."""
        started = time.monotonic()
        podman("stop", "--time", str(int(STOP_LIMIT_SECONDS)), self.name, timeout=60)
        elapsed = time.monotonic() - started
        return elapsed, int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())


@contextlib.contextmanager
def container(tag: str, ca_file: Path, *args: str) -> Iterator[Container]:
    """Run the image detached with `args` (volumes, env); removed on exit."""
    name = f"rg-image-test-{os.getpid()}-{tag}"
    port = free_port()
    podman(
        "run", "--detach", "--name", name, *RUN_FLAGS,
        "--publish", f"127.0.0.1:{port}:8443",
        "--env", f"REFLECTOR_GPU_APIKEY={API_KEY}",
        *args, IMAGE,
    )
    box = Container(name, port, ca_file)
    try:
        yield box
    finally:
        podman("rm", "--force", "--volumes", "--time", "0", name, check=False)


# -- certificates from `make cert`, mounted at /certs ---------------------------------------
def publish(source: Path, mount: Path, key: Path | None = None) -> None:
    """Copy the server files of a `make cert` directory into the mounted one, as an operator's
    renewal hook would: certificate world-readable, key readable by the image's group only,
    each replaced atomically (key first, then certificate). Neither ``ca.key`` nor ``ca.crt``
    goes there: the HEALTHCHECK must manage with the CA that ``server.pem`` carries."""
    for name, mode, src in (
        ("server-key.pem", 0o640, key or source / "server-key.pem"),
        ("server.pem", 0o644, source / "server.pem"),
    ):
        tmp = mount / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        os.chown(tmp, 0, APP_UID)
        os.chmod(tmp, mode)
        tmp.replace(mount / name)


@pytest.fixture(scope="module")
def cert_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make cert DOMAIN=localhost SANS=IP:127.0.0.1` output (with ca.key: stays on the host)."""
    directory = tmp_path_factory.mktemp("make-cert")
    tls.make_cert(directory, "localhost", "IP:127.0.0.1")
    return directory


@pytest.fixture(scope="module")
def cert_mount(cert_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    mount = tmp_path_factory.mktemp("certs")
    mount.chmod(0o755)
    publish(cert_source, mount)
    return mount


@pytest.fixture(scope="module")
def m2m100_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random M2M100 model (CTranslate2 + tokenizer), as a user would mount one."""
    return build_m2m100(tmp_path_factory.mktemp("m2m100"))


@pytest.fixture(scope="module")
def with_certs(cert_source: Path, cert_mount: Path, m2m100_dir: Path) -> Iterator[Container]:
    with container(
        "certs", cert_source / "ca.crt",
        "--volume", f"{cert_mount}:/certs:ro",
        "--volume", f"{m2m100_dir}:/models/m2m100:ro",
        "--env", "REFLECTOR_GPU_TRANSLATION_MODEL=/models/m2m100",
        "--volume", f"{cert_source / 'ca.crt'}:/etc/reflector-gpu/extra-ca.pem:ro",
        "--env", "REFLECTOR_GPU_EXTRA_CA=/etc/reflector-gpu/extra-ca.pem",
    ) as box:
        box.wait_ready()
        yield box


def test_health_ready_and_healthcheck(with_certs: Container) -> None:
    with with_certs.client(key=None) as c:
        assert c.get("/health").status_code == 200
        ready = c.get("/ready")
        assert ready.status_code == 200, ready.text
        workers = ready.json()["workers"]
        assert workers["whisper"] == "ready" and workers["translator"] == "ready", workers
    result = podman("healthcheck", "run", with_certs.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    inspect = podman("inspect", "--format", "{{json .Config.Healthcheck}}", with_certs.name).stdout
    assert "healthcheck.py" in inspect


def test_runs_as_non_root(with_certs: Container) -> None:
    assert podman("exec", with_certs.name, "id", "-u").stdout.strip() == str(APP_UID)
    users = podman("top", with_certs.name, "user", "huser", "args").stdout.splitlines()[1:]
    assert len(users) >= 3, users  # entrypoint, a model worker, granian
    for line in users:
        user, host_user = line.split()[:2]  # in the container, and as the host sees it
        assert (user, host_user) == ("reflector", str(APP_UID)), line


def test_transcribes_pyannote_sample(with_certs: Container, sample_wav: Path, sample_words: list[str]) -> None:
    with with_certs.client() as c, sample_wav.open("rb") as audio:
        response = c.post(
            "/v1/audio/transcriptions", files={"file": ("sample.wav", audio, "audio/wav")}, data={"language": "en"}
        )
    assert response.status_code == 200, response.text
    data = response.json()
    wer = jiwer.wer(normalise(" ".join(sample_words)), normalise(data["text"]))
    print(f"WER of the image's tiny.en on sample.wav: {wer:.3f}")
    assert wer <= 0.20
    assert data["words"] and data["words"][-1]["end"] <= 30.5


class _AudioHandler(http.server.SimpleHTTPRequestHandler):
    """GET serves files; PUT stores the body in `uploads` (by path), like a presigned S3 PUT
    (a body without Content-Length is refused, as S3 does)."""

    uploads: dict[str, bytes]

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        length = self.headers.get("Content-Length")
        if length is None:
            self.send_error(411)
            return
        self.uploads[self.path.split("?", 1)[0]] = self.rfile.read(int(length))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class AudioServer:
    url: str
    uploads: dict[str, bytes]


@pytest.fixture(scope="module")
def audio_server(with_certs: Container, cert_source: Path, sample_wav: Path, tmp_path_factory) -> Iterator[AudioServer]:
    """An HTTPS server for pyannote's sample directory (GET) and uploads (PUT), as containers
    reach the host (``host.containers.internal``), bound to podman's bridge gateway only. Its
    certificate is issued by the `make cert` CA, which the container trusts only through
    REFLECTOR_GPU_EXTRA_CA."""
    gateway = podman("network", "inspect", "podman", "--format", "{{range .Subnets}}{{.Gateway}}{{end}}")
    ca_cert, ca_key = tls.load_or_make_ca(cert_source)
    files = tls.issue_server_cert(
        tmp_path_factory.mktemp("audio-tls"), ca_cert, ca_key, [tls.parse_name("host.containers.internal")]
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    uploads: dict[str, bytes] = {}
    handler_class = type("Handler", (_AudioHandler,), {"uploads": uploads})
    handler = functools.partial(handler_class, directory=str(sample_wav.parent))
    server = http.server.ThreadingHTTPServer((gateway.stdout.strip(), 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield AudioServer(f"https://host.containers.internal:{server.server_address[1]}", uploads)
    finally:
        server.shutdown()
        server.server_close()


def test_transcribes_from_a_url_trusted_through_extra_ca(
    with_certs: Container, audio_server: AudioServer, sample_words: list[str]
) -> None:
    url = f"{audio_server.url}/sample.wav?X-Amz-Signature=not-for-logs"
    with with_certs.client() as c:
        response = c.post("/v1/audio/transcriptions-from-url", json={"audio_file_url": url, "language": "en"})
    assert response.status_code == 200, response.text
    wer = jiwer.wer(normalise(" ".join(sample_words)), normalise(response.json()["text"]))
    assert wer <= 0.20
    assert "not-for-logs" not in with_certs.logs()


def test_diarizes_from_a_url(with_certs: Container, audio_server: AudioServer) -> None:
    with with_certs.client(key=None) as c:
        workers = c.get("/ready").json()["workers"]
    if "diarizer" not in workers:
        pytest.skip(f"this build has no diarizer worker yet (workers: {sorted(workers)})")
    with with_certs.client() as c:
        response = c.post("/diarize", params={"audio_file_url": f"{audio_server.url}/sample.wav", "timestamp": 0})
    assert response.status_code == 200, response.text
    turns = response.json()["diarization"]
    assert len({turn["speaker"] for turn in turns}) >= 2, turns
    assert all(0 <= turn["start"] < turn["end"] <= 30.5 for turn in turns), turns


def test_pads_and_uploads_to_a_presigned_style_url(with_certs: Container, audio_server: AudioServer) -> None:
    import av

    body = {
        "track_url": f"{audio_server.url}/sample.wav",
        "output_url": f"{audio_server.url}/out/padded.webm?X-Amz-Signature=not-for-logs",
        "start_time_seconds": 1.5,
        "track_index": 0,
    }
    with with_certs.client() as c:
        response = c.post("/pad", json=body)
    assert response.status_code == 200, response.text
    uploaded = audio_server.uploads["/out/padded.webm"]
    assert response.json() == {"size": len(uploaded), "cancelled": False}
    with av.open(io.BytesIO(uploaded)) as container_file:
        stream = container_file.streams.audio[0]
        assert (stream.codec_context.name, stream.rate) == ("opus", 48000)
        seconds = sum(frame.samples for frame in container_file.decode(stream)) / 48000
    assert seconds == pytest.approx(30.0 + 1.5, abs=0.1)


def test_translates_with_a_model_from_the_models_volume(with_certs: Container) -> None:
    text = "The meeting will start in five minutes."
    with with_certs.client() as c:
        response = c.post("/translate", params={"text": text, "source_language": "en", "target_language": "fr"})
    assert response.status_code == 200, response.text
    body = response.json()["text"]
    assert body["en"] == text
    assert body["fr"].strip() and body["fr"] != text  # a random model, but it really ran


def test_401_without_key(with_certs: Container, sample_wav: Path) -> None:
    with with_certs.client(key=None) as c, sample_wav.open("rb") as audio:
        response = c.post("/v1/audio/transcriptions", files={"file": ("sample.wav", audio, "audio/wav")})
    assert response.status_code == 401
    assert response.json()["detail"]
    assert response.headers["www-authenticate"].lower().startswith("bearer")


def wait_for_fingerprint(box: Container, wanted: str, timeout: float, in_a_row: int = 20) -> bool:
    """Wait until `in_a_row` fresh connections in a row get the certificate `wanted`.

    During Granian's graceful reload the old worker still accepts for a few seconds, so a
    single connection with the new certificate does not mean the swap is complete."""
    deadline = time.monotonic() + timeout
    streak = 0
    while time.monotonic() < deadline and streak < in_a_row:
        try:
            streak = streak + 1 if box.served_fingerprint() == wanted else 0
        except (OSError, ssl.SSLError):
            streak = 0
        time.sleep(0.1)
    return streak >= in_a_row


def leaf_fingerprint(pem_file: Path) -> str:
    cert = tls.x509.load_pem_x509_certificates(pem_file.read_bytes())[0]
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def test_certificate_swap_keeps_the_listener(with_certs: Container, cert_source: Path, cert_mount: Path) -> None:
    old = with_certs.served_fingerprint()
    assert old == leaf_fingerprint(cert_mount / "server.pem")
    failures: list[str] = []
    count = 0
    stop = threading.Event()

    def hammer() -> None:  # one new TCP + TLS connection per request: exercises the listener
        nonlocal count
        with with_certs.client(key=None, timeout=10, keepalive=False) as c:
            while not stop.is_set():
                try:
                    status = c.get("/health").status_code
                    if status != 200:
                        failures.append(f"HTTP {status}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                count += 1
                time.sleep(0.05)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(1)
        tls.make_cert(cert_source, "localhost", "IP:127.0.0.1")  # a renewal: new key, same CA
        publish(cert_source, cert_mount)
        new = leaf_fingerprint(cert_mount / "server.pem")
        assert new != old
        swapped = wait_for_fingerprint(with_certs, new, timeout=CERT_POLL_SECONDS * 4 + 10)
        time.sleep(2)  # requests after the reload too
    finally:
        stop.set()
        thread.join()
    assert swapped, f"the new certificate was not served:\n{with_certs.logs()}"
    assert "certificate renewed" in with_certs.logs()
    assert count > 20 and not failures, f"{len(failures)} of {count} requests failed during the swap: {failures[:5]}"


def test_broken_swap_keeps_the_previous_certificate(
    with_certs: Container, cert_source: Path, cert_mount: Path
) -> None:
    serving = with_certs.served_fingerprint()
    assert serving == leaf_fingerprint(cert_mount / "server.pem")
    rejections = with_certs.logs().count("new certificate files rejected")
    stray = cert_source / "stray-key.pem"
    stray.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    publish(cert_source, cert_mount, key=stray)  # a key that does not match the certificate
    deadline = time.monotonic() + CERT_POLL_SECONDS * 4
    while with_certs.logs().count("new certificate files rejected") == rejections and time.monotonic() < deadline:
        time.sleep(0.5)
    assert with_certs.logs().count("new certificate files rejected") > rejections, with_certs.logs()
    time.sleep(2)
    assert with_certs.running()
    assert with_certs.served_fingerprint() == serving, with_certs.logs()
    with with_certs.client(key=None) as c:
        assert c.get("/health").status_code == 200


def test_stop_is_clean_and_quick(with_certs: Container, sample_wav: Path) -> None:
    """`podman stop` during a transcription: the request gets its answer (200, or 503 if the
    grace period ran out), never a dropped connection; the container exits 0 within 10 s."""
    outcome: list[object] = []

    def transcribe() -> None:
        with with_certs.client(timeout=30) as c, sample_wav.open("rb") as audio:
            try:
                outcome.append(c.post("/v1/audio/transcriptions", files={"file": ("sample.wav", audio)}).status_code)
            except httpx.HTTPError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=transcribe)
    thread.start()
    time.sleep(1.0)  # the upload is in and the worker is decoding
    elapsed, status = with_certs.stop()
    thread.join()
    print(f"podman stop took {elapsed:.1f} s, exit status {status}; the request in flight got {outcome}")
    assert status == 0, with_certs.logs()
    assert elapsed < STOP_LIMIT_SECONDS
    assert outcome and outcome[0] in (200, 503), with_certs.logs()


# -- self-signed, kept in the /state volume ------------------------------------------------
def test_self_signed_certificate_reused_from_state_volume(tmp_path: Path) -> None:
    volume = f"rg-image-test-{os.getpid()}-state"
    podman("volume", "create", volume)
    try:
        fingerprints = []
        for run in ("first", "second"):
            ca_file = tmp_path / f"ca-{run}.crt"
            with container(f"self-signed-{run}", ca_file, "--volume", f"{volume}:/state") as box:
                deadline = time.monotonic() + READY_SECONDS
                while podman("cp", f"{box.name}:/state/tls/ca.crt", str(ca_file), check=False).returncode != 0:
                    assert time.monotonic() < deadline and box.running(), box.logs()
                    time.sleep(1)
                box.wait_ready()
                fingerprints.append(box.served_fingerprint())
                elapsed, status = box.stop()
                assert status == 0 and elapsed < STOP_LIMIT_SECONDS, box.logs()
        assert (tmp_path / "ca-first.crt").read_bytes() == (tmp_path / "ca-second.crt").read_bytes()
        assert fingerprints[0] == fingerprints[1]
    finally:
        podman("volume", "rm", "--force", volume, check=False)
