"""Downloads: a server that accepts a connection and closes it before answering is asked
again (a GET is idempotent and nothing was received), a bounded number of times."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from app.audio.fetch import DOWNLOAD_ATTEMPTS, download
from app.errors import UpstreamError
from app.settings import Settings

BODY = b"RIFF" + bytes(1000)


def dropping_server(drops: int) -> tuple[str, list[int], threading.Event]:
    """A loopback HTTP server that closes its first `drops` connections unanswered, then
    answers `BODY`; returns its URL, the count of connections, and a stop event."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    seen, stop = [0], threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                seen[0] += 1
                if seen[0] > drops:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/a.wav", seen, stop


def test_a_connection_closed_before_the_answer_is_asked_again(tmp_path: Path) -> None:
    url, seen, stop = dropping_server(drops=DOWNLOAD_ATTEMPTS - 1)
    try:
        path = asyncio.run(download(Settings(state_dir=tmp_path / "state"), url))
        assert path.read_bytes() == BODY and seen[0] == DOWNLOAD_ATTEMPTS
        path.unlink()
    finally:
        stop.set()


def test_the_retries_are_bounded_and_leave_nothing(tmp_path: Path) -> None:
    url, seen, stop = dropping_server(drops=100)
    settings = Settings(state_dir=tmp_path / "state")
    try:
        with pytest.raises(UpstreamError, match="the connection broke"):
            asyncio.run(download(settings, url))
        assert seen[0] == DOWNLOAD_ATTEMPTS and list(settings.tmp_dir.iterdir()) == []
    finally:
        stop.set()
