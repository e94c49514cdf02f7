"""The supervisor's decisions without the service (fast tier): back-off, when a load failure
stops everything, the order of a stop, the children's TMPDIR, and reaping orphans as PID 1."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from app.supervision import supervisor as supervisor_module
from app.supervision.supervisor import MAX_BACKOFF_SECONDS, MODEL_LOAD_FAILED, Child, Supervisor
from testing.service import ROOT
from testing.stub_workers import make_settings

pytest_plugins = ["testing.stub_workers"]


def exited(code: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({code})"])
    process.wait()
    return process


@pytest.fixture
def supervisor(state_dir: Path) -> Supervisor:
    sup = Supervisor(make_settings(state_dir), None)
    sup.settings.run_dir.mkdir(parents=True)
    return sup


def test_a_crashing_worker_is_restarted_with_doubling_back_off(supervisor: Supervisor) -> None:
    worker = Child("whisper", [sys.executable, "-c", "raise SystemExit(1)"])
    worker.process = exited(1)
    now, delays = 1000.0, []
    for _ in range(7):
        assert supervisor._watch_worker(worker, now) is None
        assert worker.process is None
        delays.append(worker.restart_at - now)
        assert (supervisor.settings.run_dir / "whisper-0.failed").read_text() == "exited with status 1\n"
        assert supervisor._watch_worker(worker, worker.restart_at - 0.01) is None and worker.process is None
        now = worker.restart_at
        supervisor._watch_worker(worker, now)  # due: started again (it exits at once)
        assert worker.process is not None
        worker.process.wait()
    assert delays == [1, 2, 4, 8, 16, MAX_BACKOFF_SECONDS, MAX_BACKOFF_SECONDS]
    assert worker.restarts == 7


def test_a_load_failure_stops_the_service_only_at_start(supervisor: Supervisor) -> None:
    first = Child("whisper", [])
    first.process = exited(MODEL_LOAD_FAILED)
    assert supervisor._watch_worker(first, 0.0) == MODEL_LOAD_FAILED

    reloaded = Child("whisper", [sys.executable, "-c", f"raise SystemExit({MODEL_LOAD_FAILED})"])
    reloaded.process = exited(-9)  # crashed after it was serving
    assert supervisor._watch_worker(reloaded, 0.0) is None
    supervisor._watch_worker(reloaded, reloaded.restart_at)  # restarted; its model fails to load
    reloaded.process.wait()
    assert supervisor._watch_worker(reloaded, 10.0) is None  # retried, the service stays up
    assert reloaded.restarts == 2 and reloaded.restart_at == 12.0


def test_stop_without_granian_gives_workers_their_own_grace(supervisor: Supervisor, monkeypatch) -> None:
    """With no Granian running, the first worker is not mistaken for it (Granian's grace is longer)."""
    monkeypatch.setattr(supervisor_module, "STOP_TIMEOUT_SECONDS", 60.0)
    monkeypatch.setattr(supervisor_module, "WORKER_STOP_SECONDS", 0.5)
    stubborn = Child("whisper", [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"])
    stubborn.process = subprocess.Popen(stubborn.argv, stdout=subprocess.PIPE, start_new_session=True)
    assert stubborn.process.stdout.readline() == b"1\n"  # its SIGTERM handler is in place
    supervisor.workers = [stubborn]
    supervisor.granian = None
    started = time.monotonic()
    supervisor._stop_all()
    assert stubborn.process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 30


def test_children_get_a_tmpdir_inside_the_state_dir(supervisor: Supervisor, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", "/tmp")  # restored afterwards
    supervisor._prepare_dirs()
    child = Child("probe", [sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"])
    child.process = subprocess.Popen(child.argv, stdout=subprocess.PIPE, text=True)
    out, _ = child.process.communicate(timeout=30)
    where = Path(out.strip())
    assert where == supervisor.settings.process_tmp_dir.resolve()
    assert where.is_dir() and where.stat().st_mode & 0o777 == 0o700


REAPER = textwrap.dedent(
    """
    import ctypes, os, subprocess, sys, time
    from app.supervision.supervisor import reap_orphans

    PR_SET_CHILD_SUBREAPER = 36
    assert ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
    known = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"])
    # A child that starts a grandchild and exits: the grandchild is re-parented to us.
    subprocess.run([sys.executable, "-c", "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.3)'])"], check=True)

    def zombies():
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if stat[0] == "Z" and int(stat[1]) == os.getpid():
                    found.append(int(entry))
        return found

    time.sleep(1.0)  # the grandchild and the known child have exited
    assert zombies(), "expected zombies before reaping"
    reaped = reap_orphans([known])
    orphans_left = [pid for pid in zombies() if pid != known.pid]
    print(len(reaped), orphans_left, known.returncode)
    """
)


def test_orphans_are_reaped_and_known_children_keep_their_status() -> None:
    """The supervisor's reaping, run as a child subreaper (what PID 1 is to every orphan)."""
    out = subprocess.run([sys.executable, "-c", REAPER], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # one orphan reaped, none left, and Popen still gets the known child's real status (3)
    assert out.stdout.split("\n")[0] == "1 [] 3"
