"""The piece scheduler on plain functions: priorities, turns, batching keys, cancellation.

No model is loaded: `run_batch` records what it was given, and a gate holds the first
batch so that the queue can be arranged while a lane is busy.
"""

from __future__ import annotations

import threading
import time

import pytest

from app.workers.scheduler import Job, Scheduler


class Recorder:
    """A `run_batch` that records batches as ``[(job name, piece index), ...]``; the first
    batch waits for `gate` so the test can queue more work behind it."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(self, pieces):
        self.batches.append([(piece.job.context, piece.index) for piece in pieces])
        self.started.set()
        self.gate.wait(10)
        return [f"{piece.job.context}:{piece.index}" for piece in pieces]


def finish(job: Job) -> list[str]:
    return [job.outputs[i] for i in range(job.total)]


def make_job(name: str, pieces: int, priority: str = "recording", key: str = "en", seconds: float = 30.0) -> Job:
    job = Job(priority=priority, key=key, context=name)  # type: ignore[arg-type]
    for index in range(pieces):
        job.add(seconds, index)
    return job


@pytest.fixture
def recorder():
    rec = Recorder()
    yield rec
    rec.gate.set()


def start_blocked(recorder: Recorder, **options) -> tuple[Scheduler, Job]:
    """A scheduler whose lane is busy with a one-piece job ``blocker`` until the gate opens."""
    scheduler = Scheduler(recorder, finish, **options)
    blocker = make_job("blocker", 1)
    scheduler.submit(blocker)
    assert recorder.started.wait(5)
    return scheduler, blocker


def test_each_job_gets_its_own_outputs_in_order(recorder):
    recorder.gate.set()
    scheduler = Scheduler(recorder, finish, batch_size=4, live_lane=False)
    jobs = [make_job(name, count) for name, count in (("a", 3), ("b", 5), ("c", 1))]
    futures = [scheduler.submit(job) for job in jobs]
    assert futures[0].result(5) == ["a:0", "a:1", "a:2"]
    assert futures[1].result(5) == [f"b:{i}" for i in range(5)]
    assert futures[2].result(5) == ["c:0"]
    assert all(len(batch) <= 4 for batch in recorder.batches)
    assert scheduler.queued_seconds == 0
    scheduler.stop()


def test_live_pieces_go_before_recordings_and_recordings_take_turns(recorder):
    scheduler, _ = start_blocked(recorder, batch_size=2, live_lane=False)
    long, short = make_job("long", 6), make_job("short", 2)
    scheduler.submit(long)
    scheduler.submit(short)
    live = make_job("live", 1, priority="live")
    scheduler.submit(live)
    recorder.gate.set()
    assert live.future.result(5) == ["live:0"]
    short.future.result(5)
    long.future.result(5)
    after_blocker = recorder.batches[1:]
    assert after_blocker[0] == [("live", 0)]
    # One piece per recording per round: the short one is done after two rounds, not six.
    assert after_blocker[1] == [("long", 0), ("short", 0)]
    assert after_blocker[2] == [("long", 1), ("short", 1)]
    assert after_blocker[3:] == [[("long", 2), ("long", 3)], [("long", 4), ("long", 5)]]
    scheduler.stop()


def test_live_lane_runs_beside_a_busy_recording_lane(recorder):
    scheduler, blocker = start_blocked(recorder, batch_size=2, live_lane=True)
    live = make_job("live", 1, priority="live")
    scheduler.submit(live)
    # The only general lane is held by the blocker; the live lane answers anyway. (Its own
    # batch passes the gate only once the gate opens, so open it after the live batch began.)
    deadline = time.monotonic() + 5
    while [("live", 0)] not in recorder.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [("live", 0)] in recorder.batches and not blocker.future.done()
    recorder.gate.set()
    assert live.future.result(5) == ["live:0"]
    scheduler.stop()


def test_pieces_share_a_batch_only_with_the_same_key(recorder):
    scheduler, _ = start_blocked(recorder, batch_size=4, live_lane=False)
    english, french = make_job("en", 2, key="en"), make_job("fr", 2, key="fr")
    scheduler.submit(english)
    scheduler.submit(french)
    recorder.gate.set()
    english.future.result(5)
    french.future.result(5)
    for batch in recorder.batches[1:]:
        assert len({name for name, _ in batch}) == 1, batch
    scheduler.stop()


def test_a_cancelled_job_loses_its_queued_pieces_at_once(recorder):
    scheduler, _ = start_blocked(recorder, batch_size=1, live_lane=False)
    doomed, other = make_job("doomed", 5), make_job("other", 1)
    scheduler.submit(doomed)
    scheduler.submit(other)
    assert scheduler.queued_seconds == pytest.approx(30 + 150 + 30)
    scheduler.cancel(doomed, RuntimeError("client left"))
    assert scheduler.queued_seconds == pytest.approx(30 + 30)  # at once, before any batch ran
    assert scheduler.queued_pieces(doomed) == 0
    with pytest.raises(RuntimeError, match="client left"):
        doomed.future.result(0)
    recorder.gate.set()
    assert other.future.result(5) == ["other:0"]
    assert all(name != "doomed" for batch in recorder.batches for name, _ in batch)
    assert scheduler.queued_seconds == 0
    scheduler.stop()


def test_cancelling_a_job_whose_piece_is_running_leaves_no_queued_audio(recorder):
    scheduler, blocker = start_blocked(recorder, batch_size=1, live_lane=False)
    scheduler.cancel(blocker, RuntimeError("client left"))
    recorder.gate.set()
    deadline = time.monotonic() + 5
    while scheduler.batches_run < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scheduler.queued_seconds == 0
    scheduler.stop()


def test_a_failing_batch_fails_its_jobs_and_the_rest_go_on():
    def run_batch(pieces):
        if any(piece.job.context == "bad" for piece in pieces):
            raise ValueError("decoder failed")
        return [piece.index for piece in pieces]

    scheduler = Scheduler(run_batch, finish, batch_size=1, live_lane=False)
    bad, good = make_job("bad", 2), make_job("good", 2)
    scheduler.submit(bad)
    scheduler.submit(good)
    with pytest.raises(ValueError, match="decoder failed"):
        bad.future.result(5)
    assert good.future.result(5) == [0, 1]
    scheduler.stop()


def test_a_job_without_pieces_finishes_at_once():
    scheduler = Scheduler(lambda pieces: [], finish, batch_size=2)
    assert scheduler.submit(make_job("silence", 0)).result(1) == []
    scheduler.stop()


def test_two_lanes_share_the_queue_and_measure_the_real_time_factor():
    lanes_seen: set[str] = set()

    def run_batch(pieces):
        lanes_seen.add(threading.current_thread().name)
        time.sleep(0.05)
        return [None] * len(pieces)

    scheduler = Scheduler(run_batch, finish, batch_size=8, lanes=2, live_lane=False, name="t")
    jobs = [make_job(str(i), 1, seconds=10.0) for i in range(8)]
    with scheduler._lock:  # queue everything before either lane looks
        for job in jobs:
            scheduler.submit(job)
    for job in jobs:
        job.future.result(5)
    assert lanes_seen == {"t-bulk0", "t-bulk1"}
    assert scheduler.rtf is not None and 0 < scheduler.rtf < 1
    assert scheduler.estimated_wait(100.0) == pytest.approx(100.0 * scheduler.rtf)
    scheduler.stop()


def test_a_lane_leaves_a_busy_lane_its_share_of_the_queue():
    """Both lanes busy, two pieces queued: the lane that frees first takes one, not both,
    so the other lane is not left idle while it decodes a batch of two (4 pieces on 2 lanes
    end after 2 rounds, not 3)."""
    gates = {name: threading.Event() for name in ("t-bulk0", "t-bulk1")}
    started = threading.Semaphore(0)
    batches: list[tuple[str, list[str]]] = []

    def run_batch(pieces):
        lane = threading.current_thread().name
        batches.append((lane, [piece.job.context for piece in pieces]))
        started.release()
        gates[lane].wait(10)
        return [None] * len(pieces)

    scheduler = Scheduler(run_batch, finish, batch_size=2, lanes=2, live_lane=False, name="t")
    first = [make_job(name, 1) for name in ("a", "b")]
    for job in first:
        scheduler.submit(job)
    assert started.acquire(timeout=5) and started.acquire(timeout=5)  # both lanes busy
    later = [make_job(name, 1) for name in ("c", "d")]
    for job in later:
        scheduler.submit(job)
    freed = batches[0][0]
    gates[freed].set()
    assert started.acquire(timeout=5)
    assert batches[2] == (freed, [batches[2][1][0]]) and len(batches[2][1]) == 1
    for gate in gates.values():
        gate.set()
    for job in first + later:
        job.future.result(5)
    assert sorted(name for _, names in batches for name in names) == ["a", "b", "c", "d"]
    assert len(batches) == 4
    scheduler.stop()


def test_an_empty_job_is_finished_outside_the_lock_and_counted() -> None:
    """`finish` may take a while (assembling a long transcript): other threads must be able
    to take the scheduler's lock meanwhile; jobs are counted under the lock."""
    seen: list[bool] = []
    scheduler: Scheduler

    def finish(job: Job) -> str:
        other = threading.Thread(target=lambda: seen.append(scheduler._lock.acquire(timeout=0.5) and (scheduler._lock.release() or True)))
        other.start()
        other.join()
        return "done"

    scheduler = Scheduler(lambda pieces: [], finish, batch_size=2, name="whisper")
    job = Job(priority="live", key="k")
    assert scheduler.submit(job).result(5) == "done"
    assert seen == [True] and scheduler.jobs_done == 1
    assert job.progress is not None and job.progress.job == "whisper"  # named after its scheduler, not "transcription"
    scheduler.stop()


def test_a_lane_takes_every_queued_live_piece_up_to_the_live_batch_size(recorder):
    """Live chunks of many requests share one batch (the engine may pack them into one
    window); recordings still go in batches of `batch_size`, after the live pieces."""
    recorder.gate.set()
    scheduler = Scheduler(recorder, finish, batch_size=2, live_lane=False, live_batch_size=5)
    live = [make_job(f"live{i}", 1, priority="live", seconds=5.12) for i in range(7)]
    french = make_job("fr", 1, priority="live", key="fr")
    recording = make_job("rec", 3)
    with scheduler._lock:  # everything queued before the lane looks
        for job in [recording, *live[:3], french, *live[3:]]:
            scheduler.submit(job)
    for job in [recording, french, *live]:
        job.future.result(5)
    names = [[name for name, _ in batch] for batch in recorder.batches]
    assert names == [
        ["live0", "live1", "live2", "live3", "live4"], ["fr"], ["live5", "live6"], ["rec", "rec"], ["rec"]
    ]
    scheduler.stop()


def test_the_live_lane_batches_live_pieces_beside_a_running_recording_batch(recorder):
    scheduler, blocker = start_blocked(recorder, batch_size=2, lanes=1, live_lane=True, live_batch_size=8)
    with scheduler._lock:
        jobs = [make_job(f"live{i}", 1, priority="live") for i in range(6)]
        for job in jobs:
            scheduler.submit(job)
    deadline = time.monotonic() + 5
    while len(recorder.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder.batches[1] == [(f"live{i}", 0) for i in range(6)] and not blocker.future.done()
    recorder.gate.set()
    for job in jobs:
        job.future.result(5)
    scheduler.stop()


def test_with_a_live_lane_only_it_takes_live_pieces_and_recordings_wait_for_them(recorder):
    """Free recording lanes leave queued live pieces to the live lane (on a CPU they run
    niced, and the live lane's next batch can share passes), and start no recording piece
    while live pieces wait."""
    scheduler = Scheduler(recorder, finish, batch_size=2, lanes=2, live_lane=True, live_batch_size=8, name="t")
    first = make_job("live0", 1, priority="live")
    scheduler.submit(first)
    assert recorder.started.wait(5)
    later = [make_job(f"live{i}", 1, priority="live") for i in (1, 2)]
    recording = make_job("rec", 1)
    for job in [*later, recording]:
        scheduler.submit(job)
    time.sleep(0.2)
    assert recorder.batches == [[("live0", 0)]]  # two recording lanes idle, nothing else taken
    recorder.gate.set()
    for job in [first, *later, recording]:
        job.future.result(5)
    assert recorder.batches[1:] == [[("live1", 0), ("live2", 0)], [("rec", 0)]]
    scheduler.stop()


def test_a_second_live_lane_takes_what_queued_while_the_first_decodes(recorder):
    scheduler = Scheduler(recorder, finish, batch_size=2, lanes=1, live_lanes=2, live_batch_size=8, name="t")
    first = make_job("live0", 1, priority="live")
    scheduler.submit(first)
    assert recorder.started.wait(5)
    later = [make_job(f"live{i}", 1, priority="live") for i in (1, 2)]
    for job in later:
        scheduler.submit(job)
        time.sleep(0.05)
    deadline = time.monotonic() + 5
    while len(recorder.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    # The second live lane took live1 at once; live2 waits for a free live lane.
    assert recorder.batches == [[("live0", 0)], [("live1", 0)]]
    recorder.gate.set()
    for job in [first, *later]:
        job.future.result(5)
    assert recorder.batches[2] == [("live2", 0)]
    scheduler.stop()
