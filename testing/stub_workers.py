"""The fast tier's fixtures: the real HTTP app in-process, real worker sockets, stub engines.

Nothing here loads a model. `StubWorkers` serves engines through the real
`app.workers.server.WorkerServer` on the real socket path (``<state>/run/<kind>-0.sock``), on
an asyncio loop in a background thread, so requests go through the real client, framing,
queue limit and failure mapping; only the engine is a stand-in. `app_client` is Litestar's
test client on `app.http.main.create_app(settings)` (all middlewares included).

Use from a test module::

    pytest_plugins = ["testing.stub_workers"]        # the fixtures below
    from testing.stub_workers import StubEngine, make_settings, open_client

Fixtures: `stub_settings` (a short state dir under /tmp, an API key, a 1-s worker start
timeout), `workers` (a `StubWorkers` on those settings), `app_client` (a `TestClient`
sending the key). A test that needs other settings builds them with `make_settings`.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from app.settings import Settings
from app.supervision.rundir import socket_path
from app.workers.messages import Segment, Turn, Word
from app.workers.protocol import Pong
from app.workers.server import WorkerServer

API_KEY = "stub-key-0123456789"
# What stub Whisper and diarizer engines answer for any file: 2.5 s of audio, three words
# in one segment, two speakers.
WORDS = [Word(" Hello", 0.0, 0.4), Word(" there.", 0.4, 1.0), Word(" Hi.", 1.5, 2.0)]
SEGMENTS = [Segment(0, 0.0, 2.0, " Hello there. Hi.", [1, 2, 3], 0.0, -0.3, 1.2, 0.02)]
TURNS = [Turn(0.0, 1.2, 0), Turn(1.3, 2.2, 1)]
Handler = Callable[[Any, threading.Event], msgspec.Struct]


class StubEngine:
    """A plain engine (`app.workers.engine.Engine`) for `WorkerServer` whose `handle` is the
    function the test gives.

    `requests` records every request it ran, in order; `release` (when given) is waited on
    before each job, so a test can hold a job in flight.
    """

    scheduler = None
    device = "cpu"

    def __init__(
        self,
        kind: str,
        request_types: tuple[type[msgspec.Struct], ...],
        handle: Handler,
        release: threading.Event | None = None,
    ) -> None:
        self.kind = kind
        self.request_types = request_types
        self._handle = handle
        self.release = release
        self.requests: list[Any] = []
        self.started = threading.Event()

    def describe(self) -> Pong:
        return Pong(kind=self.kind, model="stub", device="cpu")

    def audio_seconds(self, request: Any) -> float | None:
        return None

    def handle(self, request: Any, cancel: threading.Event) -> msgspec.Struct:
        self.requests.append(request)
        self.started.set()
        if self.release is not None:
            self.release.wait(30)
        return self._handle(request, cancel)


class StubWorkers:
    """Serves stub engines on their real Unix sockets from one background event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: dict[str, asyncio.AbstractServer] = {}
        settings.run_dir.mkdir(parents=True, exist_ok=True)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def serve(
        self, engine: StubEngine, queue_size: int | None = None, queue_audio_seconds: float = math.inf
    ) -> WorkerServer:
        """Start serving `engine` on ``<run>/<engine.kind>-0.sock``; returns its `WorkerServer`."""
        server = WorkerServer(engine, queue_size or self.settings.queue_size, queue_audio_seconds)
        path = str(socket_path(self.settings, engine.kind))

        async def start() -> asyncio.AbstractServer:
            return await asyncio.start_unix_server(server.handle_connection, path=path)

        self._servers[engine.kind] = self._run(start())
        return server

    def serve_raw(self, kind: str, respond: Callable[[bytes], bytes]) -> None:
        """Serve `kind` with a fake worker that answers each connection's first bytes with
        ``respond(received)`` verbatim and closes: for malformed and oversized frames."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received = await reader.read(65536)
            writer.write(respond(received))
            await writer.drain()
            writer.close()

        async def start() -> asyncio.AbstractServer:
            return await asyncio.start_unix_server(handle, path=str(socket_path(self.settings, kind)))

        self._servers[kind] = self._run(start())

    def stop(self, kind: str) -> None:
        """Stop serving `kind` and remove its socket, as a worker that exited would."""
        server = self._servers.pop(kind)

        async def close() -> None:
            server.close()

        self._run(close())
        socket_path(self.settings, kind).unlink(missing_ok=True)

    def close(self) -> None:
        for kind in list(self._servers):
            self.stop(kind)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def make_settings(state_dir: Path, **overrides: Any) -> Settings:
    """Settings for an in-process test: `state_dir`, the stub key, a 1-s worker start timeout."""
    values: dict[str, Any] = {
        "state_dir": state_dir,
        "apikeys": (API_KEY,),
        "worker_start_timeout": 1.0,
        "models_dir": state_dir / "models",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state dir (Unix socket paths are limited to 108 bytes), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="rg-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stub_settings(state_dir: Path) -> Settings:
    return make_settings(state_dir)


@pytest.fixture
def workers(stub_settings: Settings) -> Iterator[StubWorkers]:
    stubs = StubWorkers(stub_settings)
    try:
        yield stubs
    finally:
        stubs.close()


def open_client(settings: Settings, key: str | None = API_KEY) -> TestClient:
    """A Litestar test client on ``create_app(settings)``; `key` None sends no Authorization."""
    from app.http.main import create_app

    client = TestClient(create_app(settings), raise_server_exceptions=False)
    if key:
        client.headers["Authorization"] = f"Bearer {key}"
    return client


@pytest.fixture
def app_client(stub_settings: Settings, workers: StubWorkers) -> Iterator[TestClient]:
    with open_client(stub_settings) as client:
        yield client


def leftovers(settings: Settings) -> list[str]:
    """Names of the files left in ``<state>/tmp`` (a request must delete what it made)."""
    return sorted(os.listdir(settings.tmp_dir)) if settings.tmp_dir.exists() else []
