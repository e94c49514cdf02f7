"""Helpers for tests and benchmarks that run the real service: real audio, a CA from our own
certificate code, the service over HTTPS (`start_service`, `running_service`), and a
loopback HTTP server that plays the part of an object store (`serve_audio`).

`start_service(**env)` runs ``entrypoint.py`` (supervisor, model workers, Granian with TLS)
on a free loopback port and waits for ``/ready``; clients verify the certificate against the
CA with ``ssl.VERIFY_X509_STRICT``. `running_service` stops it on exit and checks it left
no temporary file behind. No test reaches a real model hub: ``HF_HUB_OFFLINE=1`` is set
here, before huggingface_hub reads it, and every service inherits it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import importlib.util
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

# No test or benchmark reaches a real model hub (set before huggingface_hub reads it, and
# inherited by every service started here); the hub tests pass their loopback HF_ENDPOINT and "0".
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent  # the checkout
API_KEY = "test-key-0123456789"


def pyannote_sample_dir() -> Path:
    """``pyannote/audio/sample`` inside the installed pyannote.audio wheel (not imported)."""
    spec = importlib.util.find_spec("pyannote.audio")
    assert spec is not None and spec.submodule_search_locations, "pyannote.audio is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "sample"


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = 16000) -> Path:
    """Write mono float samples in [-1, 1] as 16-bit PCM WAV with PyAV."""
    import av

    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=sample_rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def strict_context(ca_file: Path) -> ssl.SSLContext:
    """A client context trusting only `ca_file`, with Python 3.13's strict X.509 checks."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def plain_request(port: int, method: str, path: str, host: str) -> http.client.HTTPResponse:
    """One plain-HTTP request to ``127.0.0.1:port`` with a ``Host`` header (the redirect
    listener's view of a client); the body is read and the connection closed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, body=b"x" if method == "POST" else None, headers={"Host": host})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    """A running service: its URL, state dir, process, log file, and a verifying client."""

    base_url: str
    state_dir: Path
    process: subprocess.Popen
    log_path: Path
    ca_file: Path | None
    api_key: str | None
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, key: str | None = "default", timeout: float = 120.0) -> httpx.Client:
        """An httpx client on this service; `key` None sends no Authorization header."""
        headers = {}
        key = self.api_key if key == "default" else key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        verify: ssl.SSLContext | bool = strict_context(self.ca_file) if self.ca_file else True
        c = httpx.Client(base_url=self.base_url, headers=headers, verify=verify, timeout=timeout)
        self.clients.append(c)
        return c

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def child_pids(self, pattern: str) -> list[int]:
        """PIDs of the entrypoint's direct children whose command line contains `pattern`."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.process.pid and pattern in cmdline:
                found.append(int(entry.name))
        return found

    def kill_worker_mid_request(self, kind: str, send: Callable[[], httpx.Response], timeout: float = 30.0) -> httpx.Response:
        """Run `send` in a thread, SIGKILL the `kind` worker as soon as it holds the job, and
        return what `send` got back."""
        import asyncio

        from app import settings as settings_module
        from app.workers.client import ping

        settings = settings_module.load({"REFLECTOR_GPU_STATE_DIR": str(self.state_dir)})
        [pid] = self.child_pids(f"app.workers.server {kind}")
        result: dict[str, httpx.Response] = {}
        sender = threading.Thread(target=lambda: result.update(response=send()))
        sender.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pong = asyncio.run(ping(settings, kind))
            if pong is not None and pong.busy:
                break
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        sender.join(60)
        return result["response"]

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        c = self.client(key=None, timeout=5)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if c.get("/ready").status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"service not ready in {timeout} s:\n{self.log()}")

    def stop(self) -> int:
        for c in self.clients:
            c.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_service(
    cert_dir: Path | None,
    api_key: str | None = API_KEY,
    wait: bool = True,
    ca_file: Path | None = None,
    root: Path = ROOT,
    **env: str,
) -> Service:
    """Start ``entrypoint.py`` of the checkout at `root` (this one by default; benches
    compare another) on a free loopback port; `env` adds ``REFLECTOR_GPU_*`` settings.

    Clients trust `ca_file`, else ``ca.crt`` of `cert_dir`, else the self-signed CA in the
    state dir."""
    # Unix socket paths are limited to 108 bytes: keep the state dir short.
    state_dir = Path(tempfile.mkdtemp(prefix="rg-", dir="/tmp"))
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REFLECTOR_GPU_")}
    full_env.update(
        REFLECTOR_GPU_HOST="127.0.0.1",
        REFLECTOR_GPU_PORT=str(port),
        REFLECTOR_GPU_STATE_DIR=str(state_dir),
        REFLECTOR_GPU_APIKEY=api_key or "",
        REFLECTOR_GPU_MODELS_DIR=str(ROOT / "models"),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(root),
    )
    if cert_dir is not None:
        full_env["REFLECTOR_GPU_TLS_DIR"] = str(cert_dir)
    full_env.update(env)
    log_path = state_dir / "service.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, str(root / "entrypoint.py")], cwd=root, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
    )
    scheme = "http" if env.get("REFLECTOR_GPU_TLS") == "off" else "https"
    if ca_file is None:
        ca_file = cert_dir / "ca.crt" if cert_dir is not None else state_dir / "tls" / "ca.crt"
    service = Service(f"{scheme}://localhost:{port}", state_dir, process, log_path, ca_file if scheme == "https" else None, api_key)
    if wait:
        try:
            service.wait_ready()
        except BaseException:
            service.stop()
            raise
    return service


@contextlib.contextmanager
def running_service(cert_dir: Path | None, **kwargs) -> Iterator[Service]:
    """`start_service` that is stopped on exit and must leave no temporary file behind."""
    service = start_service(cert_dir, **kwargs)
    try:
        yield service
    finally:
        service.stop()
        tmp = service.state_dir / "tmp"
        leftovers = [p for p in tmp.glob("*") if p.name != "processes"] if tmp.exists() else []
        shutil.rmtree(service.state_dir, ignore_errors=True)
        assert not leftovers, f"temporary files left behind: {leftovers}"


class _AudioHandler(http.server.BaseHTTPRequestHandler):
    files: dict[str, Path] = {}
    requests: list[str] = []

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        self.requests.append(self.path)
        if path == "/error500":
            self.send_error(500)
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/sample.wav?moved=1")
            self.end_headers()
        elif path == "/slow":
            time.sleep(5)
            self.send_error(500)
        elif path.lstrip("/") in self.files:
            data = self.files[path.lstrip("/")].read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_error(404)


@dataclass
class AudioServer:
    """Serves registered files at ``/<name>``; ``/error500``, ``/loop``, ``/redirect``,
    ``/slow`` (5 s then 500) and anything else (404) for the failure paths."""

    url: str
    files: dict[str, Path]
    requests: list[str]

    def add(self, name: str, path: Path) -> str:
        self.files[name] = path
        return f"{self.url}/{name}"


@contextlib.contextmanager
def serve_audio(files: dict[str, Path]) -> Iterator[AudioServer]:
    """An `AudioServer` for `files` (name -> path) on a free loopback port, stopped on exit."""
    handler = type("Handler", (_AudioHandler,), {"files": files, "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # quick to shut down
    thread.start()
    try:
        yield AudioServer(f"http://127.0.0.1:{server.server_address[1]}", handler.files, handler.requests)
    finally:
        server.shutdown()
        server.server_close()


def stop_and_remove(service: Service) -> None:
    """Stop `service` and delete its state directory."""
    service.stop()
    shutil.rmtree(service.state_dir, ignore_errors=True)


def pongs(service: Service, kind: str = "whisper", replicas: int = 1):
    """Each replica's `Pong` of the `kind` worker of `service` (None where one does not answer)."""
    from app import settings as settings_module
    from app.workers.client import ping

    settings = settings_module.load({"REFLECTOR_GPU_STATE_DIR": str(service.state_dir)})
    return [asyncio.run(ping(settings, kind, i)) for i in range(replicas)]


def queued_seconds(service: Service) -> float:
    """Seconds of audio the (single) Whisper worker holds; 0 while it does not answer."""
    pong = pongs(service)[0]
    return 0.0 if pong is None else pong.queued_seconds


def wait_for(condition, timeout: float = 60.0, step: float = 0.02) -> bool:
    """Poll `condition()` every `step` s until it is true (True) or `timeout` s pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


class WorkerWatch:
    """Counts a worker's jobs while active: busy periods (`runs`), most jobs at once
    (`most`), checked against the change of `Pong.jobs_done`."""

    def __init__(self, service: Service, kind: str) -> None:
        from app import settings as settings_module

        self.settings = settings_module.load({"REFLECTOR_GPU_STATE_DIR": str(service.state_dir)})
        self.kind = kind
        self.runs = 0
        self.most = 0
        self.jobs_done_before = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        from app.workers.client import ping

        busy_before = 0

        async def loop() -> None:
            nonlocal busy_before
            while not self._stop.is_set():
                pong = await ping(self.settings, self.kind)
                if pong is not None:
                    if pong.busy and not busy_before:
                        self.runs += 1
                    busy_before = pong.busy
                    self.most = max(self.most, pong.busy)
                await asyncio.sleep(0.02)

        asyncio.run(loop())

    def _pong(self):
        from app.workers.client import ping

        pong = asyncio.run(ping(self.settings, self.kind))
        assert pong is not None, f"the {self.kind} worker does not answer"
        return pong

    def busy_now(self) -> int:
        return self._pong().busy

    def __enter__(self) -> WorkerWatch:
        self.jobs_done_before = self._pong().jobs_done
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def model_runs(self) -> int:
        """Jobs the worker ran since the watch began; `Pong.jobs_done` must say the same."""
        pong = self._pong()
        assert not pong.busy, "model_runs() is for a quiet worker"
        assert pong.jobs_done - self.jobs_done_before == self.runs, (pong.jobs_done, self.jobs_done_before, self.runs)
        return self.runs
