"""The loop one worker process runs: load an engine, then serve its Unix socket.

Jobs run one at a time on a single thread (one model, one device); the asyncio loop stays
free to answer `Ping`, to refuse work past the queue limit (`Failure("Unavailable")` with
``Retry-After``), and to notice a client that hung up, which sets the job's cancel event.
The socket is bound only after the model has loaded, so a client that can connect is
talking to a ready worker.

An engine is a class with:
- ``kind: str`` and ``request_types: tuple[type[msgspec.Struct], ...]`` (tagged structs);
- ``__init__(settings)``: loads the model; raises `app.errors.ServiceError` or anything;
- ``describe() -> Pong``;
- ``handle(request, cancel: threading.Event) -> msgspec.Struct``: runs one job; raises
  `app.errors.ServiceError` subclasses for failures the client should see.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Union

import msgspec

from app import settings as settings_module
from app.errors import ServiceError
from app.logs import setup_logging
from app.workers.protocol import Accepted, Failure, Ping, encode_frame, read_frame
from app.workers.registry import socket_path, spec

log = logging.getLogger("app.worker")


def load_engine_class(path: str) -> type:
    """Import ``"module:Class"``."""
    module_name, _, class_name = path.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


class WorkerServer:
    """Serves one loaded engine on a Unix socket; see the module docstring."""

    def __init__(self, engine: Any, queue_size: int) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.pending = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=engine.kind)
        self._decoder = msgspec.msgpack.Decoder(Union[(Ping, *engine.request_types)])  # type: ignore[misc]

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            body = await read_frame(reader)
            if body is None:
                return
            try:
                request = self._decoder.decode(body)
            except msgspec.DecodeError as exc:
                reply: msgspec.Struct = Failure("BadRequest", f"malformed worker request: {exc}")
            else:
                reply = await self._dispatch(request, reader, writer)
            if reply is not None:
                try:
                    frame = encode_frame(reply)
                except (TypeError, ValueError, OverflowError):
                    log.exception("%s reply could not be encoded", self.engine.kind)
                    frame = encode_frame(Failure("WorkerFailed", f"the {self.engine.kind} worker sent an invalid reply"))
                writer.write(frame)
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            writer.close()

    async def _dispatch(
        self, request: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> msgspec.Struct | None:
        if isinstance(request, Ping):
            pong = self.engine.describe()
            return msgspec.structs.replace(pong, busy=self.pending)
        if self.pending >= self.queue_size:
            return Failure(
                "Unavailable",
                f"the {self.engine.kind} worker has {self.pending} jobs running or queued "
                f"(REFLECTOR_GPU_QUEUE_SIZE={self.queue_size}); retry later",
                retry_after=5,
            )
        writer.write(encode_frame(Accepted()))
        await writer.drain()
        cancel = threading.Event()
        self.pending += 1
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._executor, self._run, request, cancel)
        hangup = asyncio.ensure_future(reader.read(1))  # b"" when the client goes away
        try:
            done, _ = await asyncio.wait({job, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if job not in done:
                cancel.set()  # the client left; the job stops at its next check
                await asyncio.wait({job})
                return None
            return job.result()
        finally:
            hangup.cancel()
            self.pending -= 1

    def _run(self, request: Any, cancel: threading.Event) -> msgspec.Struct:
        if cancel.is_set():
            return Failure("Unavailable", "cancelled: the client went away")
        try:
            return self.engine.handle(request, cancel)
        except ServiceError as exc:
            return Failure(type(exc).__name__, exc.detail, exc.retry_after)
        except Exception as exc:  # noqa: BLE001 - reported to the client, logged with traceback
            log.exception("%s job failed", self.engine.kind)
            return Failure("WorkerFailed", f"the {self.engine.kind} worker failed: {type(exc).__name__}")


async def _serve(server: WorkerServer, path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    unix_server = await asyncio.start_unix_server(server.handle_connection, path=path)
    os.chmod(path, 0o600)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # SIGINT stays ignored: the entrypoint decides
    log.info("%s worker ready on %s", server.engine.kind, path)
    async with unix_server:
        await stop.wait()
    if os.path.exists(path):
        os.unlink(path)


def main(kind: str) -> None:
    """Worker process entry: read settings, load the `kind` engine, serve until SIGTERM.

    Exits with status 3 when the model cannot be loaded (the log says why).
    """
    settings = settings_module.load()
    setup_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping is the entrypoint's decision (SIGTERM)
    worker = spec(kind)
    try:
        engine = load_engine_class(worker.engine)(settings)
    except ServiceError as exc:
        log.error("%s worker cannot start: %s", kind, exc.detail)
        sys.exit(3)
    except Exception:
        log.exception("%s worker cannot load its model", kind)
        sys.exit(3)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_serve(WorkerServer(engine, settings.queue_size), str(socket_path(settings, kind))))
    # A job may still run on the engine thread; its client already got its answer (503) when
    # the socket closed, so leave now instead of waiting for the model to finish.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
