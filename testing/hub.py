"""A loopback model hub: the parts of the Hugging Face Hub's HTTP API that `huggingface_hub`
uses to fetch a model (pointed at with ``HF_ENDPOINT``), serving local directories under
hub repository names.

Routes (as measured against `huggingface_hub`; see shared/test-infrastructure.md):
- ``GET /api/models/{repo}[/revision/{rev}]``: ``{"id", "sha", "siblings"}``;
- ``GET /api/models/{repo}/tree/{sha}?recursive=...``: every file with its size, git blob
  id and, for files over `LFS_THRESHOLD` bytes, ``lfs: {oid: <sha256>, size}``, the hash the
  service must verify against;
- ``GET|HEAD /{repo}/resolve/{rev}/{path}``: the bytes, honouring ``Range: bytes=N-``.

Knobs for the failure paths: `token` (401 without ``Authorization: Bearer <token>``),
`corrupt` (path -> times to serve other bytes than published), `cut` (path -> times to
close the connection half-way through), `seconds_per_file` (spread each large file's bytes
over that long, so a fetch is seen in progress), and what was asked: `requests` (every
request line) and `ranges` (every ``Range`` header).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_THRESHOLD = 1024 * 1024  # larger files are "LFS" files: published with their SHA-256


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()  # noqa: S324 - git's id


@dataclass
class Hub:
    """What the loopback hub serves and what it was asked (see the module docstring)."""

    url: str
    repos: dict[str, Path]
    token: str | None = None
    corrupt: dict[str, int] = field(default_factory=dict)
    cut: dict[str, int] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)
    seconds_per_file: float = 0.0
    _hashes: dict[Path, str] = field(default_factory=dict)

    def downloads(self, name: str) -> int:
        """How many GET requests asked for a file called `name` (any repository)."""
        return sum(1 for line in self.requests if line.startswith("GET ") and "/resolve/" in line and line.endswith("/" + name))

    def tree(self, repo: str) -> list[dict]:
        root = self.repos[repo]
        entries = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            entry = {"type": "file", "path": str(path.relative_to(root)), "size": len(data), "oid": _git_blob_id(data)}
            if len(data) > LFS_THRESHOLD:
                if path not in self._hashes:
                    self._hashes[path] = hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"oid": self._hashes[path], "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return entries


class _Handler(http.server.BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _refuse(self) -> bool:
        if self.hub.token and self.headers.get("Authorization") != f"Bearer {self.hub.token}":
            self._json(401, {"error": "Invalid credentials in Authorization header"})
            return True
        return False

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        hub = self.hub
        hub.requests.append(f"{self.command} {self.path.split('?', 1)[0]}")
        if self._refuse():
            return
        path = self.path.split("?", 1)[0]
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/"):]
            for repo in hub.repos:
                if rest == repo or rest.startswith(repo + "/revision/"):
                    return self._json(200, {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": e["path"]} for e in hub.tree(repo)]})
                if rest.startswith(repo + "/tree/"):
                    return self._json(200, hub.tree(repo))
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        for repo, root in hub.repos.items():
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                name = path[len(prefix):].split("/", 1)[1]
                file = root / name
                if file.is_file():
                    return self._send_file(name, file.read_bytes())
        self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})

    def _send_file(self, name: str, data: bytes) -> None:
        hub = self.hub
        if hub.corrupt.get(name, 0) > 0 and self.command == "GET":
            hub.corrupt[name] -= 1
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]  # same size, other bytes
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged:
            hub.ranges.append(ranged)
        if ranged.startswith("bytes=") and ranged.endswith("-"):
            start = int(ranged[len("bytes="):-1])
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        if hub.cut.get(name, 0) > 0:
            hub.cut[name] -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # the transfer breaks half-way
            return
        if hub.seconds_per_file and len(body) > LFS_THRESHOLD:
            steps = 50
            for index in range(steps):
                self.wfile.write(body[index * len(body) // steps : (index + 1) * len(body) // steps])
                time.sleep(hub.seconds_per_file / steps)
            return
        self.wfile.write(body)


@contextlib.contextmanager
def serve_hub(repos: dict[str, Path], token: str | None = None) -> Iterator[Hub]:
    """A `Hub` serving `repos` (hub name -> local directory) on a free loopback port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    hub = Hub(f"http://127.0.0.1:{server.server_address[1]}", dict(repos), token)
    server.RequestHandlerClass = type("Handler", (_Handler,), {"hub": hub})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
