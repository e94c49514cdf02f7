"""The entrypoint's process tree: model workers and Granian, supervised.

The supervisor starts one process per configured engine (``python -m app.workers.server
KIND``) and Granian serving `app.http.main:create_app`, then watches them:
- each engine runs as one or more replicas (``REFLECTOR_GPU_WHISPER_REPLICAS``, ...), each
  its own process (``python -m app.workers.server KIND INDEX``);
- a worker that exits is restarted with exponential back-off (1 s doubling to 30 s); the
  requests it held already got 503 from `app.workers.client`, and the other replicas go
  on. A worker that fails to load its model (exit status 3) at start stops the whole
  service, since its settings need fixing; one that fails to reload after a crash is
  retried with the same back-off; ``<run>/<kind>-<i>.failed`` tells ``/ready`` a replica
  is down;
- a worker that stops answering pings, or holds work without progress, for
  ``REFLECTOR_GPU_WORKER_HANG_SECONDS`` is killed and restarted (`app.workers.watchdog`);
- Granian exiting ends the service with its exit status;
- as PID 1 (in a container) it also reaps every orphaned process re-parented to it;
- every child gets ``TMPDIR=<state>/tmp/processes``, so nothing lands in the system temp dir;
- SIGTERM or SIGINT stops Granian first: in-flight requests may finish within
  `STOP_DRAIN_SECONDS`; then the workers stop, so the requests still in flight are
  answered 503 (their worker went away) instead of being cut off when Granian's own
  `STOP_TIMEOUT_SECONDS` runs out; all of it within `podman stop`'s 10 s;
- certificate files an operator provides are polled; a changed pair is validated
  (`app.tls.check_pair`), copied to the run directory Granian reads from, and Granian gets
  SIGHUP to reload its workers. An invalid pair is logged and ignored: the old one serves on;
- with ``REFLECTOR_GPU_TLS=acme`` Granian starts only once `app.tls.acme` has stored a valid
  certificate (the workers load meanwhile), so HTTPS never answers with a wrong one.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from app import logs, results, tls
from app.settings import Settings
from app.supervision import rundir
from app.supervision.rundir import failed_marker, metrics_dir, socket_path
from app.supervision.watchdog import Watchdog
from app.workers.registry import WORKERS

log = logging.getLogger("app.supervisor")

MODEL_LOAD_FAILED = 3
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Stopping, within `podman stop`'s 10 s: requests in flight get STOP_DRAIN_SECONDS to finish;
# then the workers get SIGTERM, which answers the rest 503; Granian itself is killed at
# STOP_TIMEOUT_SECONDS, and the workers WORKER_STOP_SECONDS after that at the latest.
STOP_DRAIN_SECONDS = 4.0
STOP_TIMEOUT_SECONDS = 7.0
WORKER_STOP_SECONDS = 2.0
CERT_POLL_SECONDS = 5.0
FIRST_CERT_POLL_SECONDS = 0.2  # while Granian waits for the first ACME certificate
MAX_BACKOFF_SECONDS = 30.0


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    kind: str = ""
    replica: int = 0
    process: subprocess.Popen | None = None
    ready_once: bool = False
    backoff: float = 1.0
    restart_at: float = 0.0
    restarts: int = 0
    env: dict[str, str] | None = None  # None: the supervisor's own environment

    def __post_init__(self) -> None:
        self.kind = self.kind or self.name

    def start(self) -> None:
        # Its own process group: a terminal's Ctrl-C reaches only the supervisor, which stops
        # everything in order, and a stop can signal Granian together with its forked workers.
        self.process = subprocess.Popen(
            self.argv, preexec_fn=_die_with_parent, start_new_session=True, env=self.env
        )
        log.info("started %s (pid %d)", self.name, self.process.pid)

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the child's whole process group (Granian forks its workers)."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


def _load_prctl():
    """libc's ``prctl``, looked up once in the supervisor: the entrypoint runs threads
    (watchdog, ACME, plain-HTTP listener), so the child between fork and exec should do as
    little as possible (no library loading)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the supervisor's own stop still applies
        return None


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the supervisor dies (even by
    SIGKILL), so no worker or Granian outlives it holding the port or a GPU."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def reap_orphans(children: list[subprocess.Popen]) -> list[int]:
    """Reap every exited child process that is not one of `children`; returns their pids.

    As PID 1 in a container (or as a child subreaper) the supervisor inherits every orphaned
    process (a grandchild whose parent died: an FFmpeg helper, a Granian worker); unreaped
    they stay zombies. An exited child of `children` is collected by its own `Popen.poll`,
    so its exit status is kept for the supervisor. Never blocks.
    """
    known = {child.pid: child for child in children}
    reaped = []
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # no children at all
            return reaped
        if info is None:
            return reaped
        if info.si_pid in known:
            known.pop(info.si_pid).poll()
            continue
        os.waitpid(info.si_pid, 0)
        reaped.append(info.si_pid)


class Supervisor:
    """Runs the process tree for `settings` serving `tls_files` (None: plain HTTP)."""

    def __init__(self, settings: Settings, tls_files: tls.TlsFiles | None) -> None:
        self.settings = settings
        self.source = tls_files
        self.serving: tls.TlsFiles | None = None
        self.stopping = False
        self.workers = [
            Child(f"{w.kind}-{i}", [sys.executable, "-m", "app.workers.server", w.kind, str(i)], w.kind, i)
            for w in WORKERS
            if w.configured(settings)
            for i in range(w.replicas(settings))
        ]
        self.granian: Child | None = None
        self.watchdog = Watchdog(settings.worker_hang_seconds)
        self.is_init = os.getpid() == 1  # a container's PID 1 inherits every orphan: reap them
        self._cert_stamp: tuple | None = None
        self._next_cert_poll = 0.0
        self._next_sweep = 0.0

    # -- start-up ---------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        results.clear(self.settings)  # what an unclean stop left
        for directory in (self.settings.run_dir, self.settings.tmp_dir):
            shutil.rmtree(directory, ignore_errors=True)  # sockets and downloads of a dead run
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.settings.run_dir, 0o700)
        metrics_dir(self.settings).mkdir()
        # Every child inherits it: nothing a worker or Granian writes to "the temp dir"
        # (onnxruntime's .ses file, Litestar's spooled uploads) lands in the system's.
        self.settings.process_tmp_dir.mkdir(mode=0o700, exist_ok=True)
        os.environ["TMPDIR"] = str(self.settings.process_tmp_dir.resolve())

    def _install_certificate(self) -> None:
        """Copy the validated pair into the run directory; Granian only ever reads these copies."""
        assert self.source is not None
        cert, key = rundir.serving_cert(self.settings), rundir.serving_key(self.settings)
        shutil.copyfile(self.source.cert, cert.with_suffix(".tmp"))
        cert.with_suffix(".tmp").replace(cert)
        tls.write_private(key, self.source.key.read_bytes())
        self.serving = tls.TlsFiles(cert, key, self.source.ca)
        self._cert_stamp = (tls.file_stamp(self.source.cert), tls.file_stamp(self.source.key))

    def granian_argv(self) -> list[str]:
        s = self.settings
        argv = [
            sys.executable, "-m", "granian",
            "--interface", "asgi", "--factory",
            "--host", s.host, "--port", str(s.port),
            "--workers", str(s.http_workers),
            "--no-access-log",
            "--respawn-failed-workers",
            "--workers-kill-timeout", str(int(STOP_TIMEOUT_SECONDS)),
            "--log-level", s.log_level.lower(),
        ]
        if s.log_format == "json":  # Granian's own lines as JSON too
            config = rundir.granian_log_config(s)
            config.write_text(json.dumps(logs.granian_log_config()))
            argv += ["--log-config", str(config)]
        if self.serving is not None:
            argv += [
                "--ssl-certificate", str(self.serving.cert),
                "--ssl-keyfile", str(self.serving.key),
                "--ssl-protocol-min", "tls1.2",
            ]
            if s.tls_client_ca is not None:  # mTLS: no handshake without a certificate it signed
                argv += ["--ssl-ca", str(s.tls_client_ca), "--ssl-client-verify"]
        return [*argv, "app.http.main:create_app"]

    # -- running ----------------------------------------------------------------------
    def run(self) -> int:
        """Start everything and supervise until stopped; returns the exit status."""
        self._prepare_dirs()
        waiting = self.settings.tls == "acme" and not self._source_valid()
        if self.source is not None and not waiting:
            self._install_certificate()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for worker in self.workers:
            failed_marker(self.settings, worker.kind, worker.replica).unlink(missing_ok=True)
            worker.start()
        if not waiting:
            self._start_granian()
        try:
            while not self.stopping:
                status = self._tick()
                if status is not None:
                    return status
                time.sleep(0.2)
            return 0
        finally:
            self._stop_all()

    def _start_granian(self) -> None:
        # prometheus-client's multiprocess mode: every Granian worker counts into this directory.
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir(self.settings).resolve())}
        self.granian = Child("granian", self.granian_argv(), env=env)
        self.granian.start()

    def _source_valid(self) -> bool:
        assert self.source is not None
        try:
            tls.check_pair(self.source.cert, self.source.key, self.settings.domains)
        except tls.CertificateError:
            return False
        return True

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def _tick(self) -> int | None:
        now = time.monotonic()
        if self.granian is None:  # waiting for the first ACME certificate
            if now >= self._next_cert_poll:
                self._next_cert_poll = now + FIRST_CERT_POLL_SECONDS
                if self._source_valid():
                    self._install_certificate()
                    self._start_granian()
        assert self.granian is None or self.granian.process is not None
        code = None if self.granian is None else self.granian.process.poll()
        if code is not None:
            if not self.stopping:
                log.error("granian exited with status %s; stopping the service", code)
            return code or 1
        for worker in self.workers:
            status = self._watch_worker(worker, now)
            if status is not None:
                return status
        if now >= self._next_sweep and (store := results.ResultStore.open(self.settings)) is not None:
            self._next_sweep = now + results.SWEEP_SECONDS
            store.sweep()  # expired results are deleted, not only skipped
        if self.is_init:
            children = [self.granian, *self.workers]
            for pid in reap_orphans([c.process for c in children if c is not None and c.process is not None]):
                log.debug("reaped orphan process %d", pid)
        if self.source is not None and self.granian is not None and now >= self._next_cert_poll:
            self._next_cert_poll = now + CERT_POLL_SECONDS
            self._check_certificate()
        return None

    def _watch_worker(self, worker: Child, now: float) -> int | None:
        process = worker.process
        marker = failed_marker(self.settings, worker.kind, worker.replica)
        socket = socket_path(self.settings, worker.kind, worker.replica)
        if process is None:
            if now >= worker.restart_at:
                worker.start()
            return None
        code = process.poll()
        if code is None:
            if not worker.ready_once and socket.exists():
                worker.ready_once = True
                worker.backoff = 1.0
                marker.unlink(missing_ok=True)
                self.watchdog.watch(socket)
            reason = self.watchdog.verdict(socket)
            if reason is not None:
                log.error("the %s worker is hung (%s); killing it", worker.name, reason)
                self.watchdog.forget(socket)
                worker.signal_group(signal.SIGKILL)  # its requests get 503; restarted below
            return None
        self.watchdog.forget(socket)
        if code == MODEL_LOAD_FAILED and not worker.ready_once and worker.restarts == 0:
            # At start only: the settings need fixing. After a crash, a failed reload (a GPU
            # still held, say) is retried with back-off like any other exit.
            log.error("the %s worker could not load its model (see above); fix its settings", worker.name)
            return MODEL_LOAD_FAILED
        worker.restarts += 1
        log.error(
            "the %s worker exited with status %s; restart %d in %.0f s",
            worker.name, code, worker.restarts, worker.backoff,
        )
        marker.write_text(f"exited with status {code}\n")
        rundir.write_restarts(self.settings, worker.kind, worker.replica, worker.restarts)  # read by /metrics
        socket.unlink(missing_ok=True)
        worker.process = None
        worker.ready_once = False
        worker.restart_at = now + worker.backoff
        worker.backoff = min(worker.backoff * 2, MAX_BACKOFF_SECONDS)
        return None

    def _check_certificate(self) -> None:
        assert self.source is not None
        stamp = (tls.file_stamp(self.source.cert), tls.file_stamp(self.source.key))
        if stamp == self._cert_stamp:
            return
        self._cert_stamp = stamp
        try:
            leaf = tls.check_pair(self.source.cert, self.source.key, self.settings.domains)
        except tls.CertificateError as exc:
            log.error("new certificate files rejected, still serving the previous ones: %s", exc)
            return
        self._install_certificate()
        assert self.granian is not None and self.granian.process is not None
        self.granian.process.send_signal(signal.SIGHUP)
        log.warning("certificate renewed: now serving SHA-256 %s", tls.fingerprint(leaf))

    # -- stopping ---------------------------------------------------------------------
    def _stop_all(self) -> None:
        self.watchdog.stop()

        def running(children: list[Child | None]) -> list[Child]:
            return [c for c in children if c is not None and c.process is not None]

        def signal_all(group: list[Child]) -> None:
            for child in group:
                if child.process.poll() is None:
                    child.signal_group(signal.SIGTERM)

        def wait_for(group: list[Child], deadline: float) -> None:
            for child in group:
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass

        def kill_left(group: list[Child]) -> None:
            for child in group:
                if child.process.poll() is None:
                    log.warning("%s did not stop in time; killing it", child.name)
                child.signal_group(signal.SIGKILL)  # whatever is left in its group
                child.process.wait()

        # Granian first, so in-flight requests can still reach the workers while they finish.
        granian, workers = running([self.granian]), running(self.workers)
        started = time.monotonic()
        signal_all(granian)
        wait_for(granian, started + STOP_DRAIN_SECONDS)
        if any(child.process.poll() is None for child in granian):
            log.info("requests still in flight after %.0f s: stopping the workers answers them 503", STOP_DRAIN_SECONDS)
        signal_all(workers)
        wait_for(granian, started + STOP_TIMEOUT_SECONDS)
        kill_left(granian)
        wait_for(workers, time.monotonic() + WORKER_STOP_SECONDS)
        kill_left(workers)
        results.clear(self.settings)  # kept transcripts go with a clean stop
