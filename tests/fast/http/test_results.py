"""The result store (`app.results`): keys, expiry, the byte bound, privacy, and the lock that
lets a request attach to a job running in another process. Fast: no model, no service."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.results import POLL_SECONDS, Entry, ResultStore, key

ROOT = Path(__file__).resolve().parents[3]  # the checkout


def make_store(tmp_path: Path, ttl: float = 3600, max_bytes: int = 1 << 20) -> ResultStore:
    return ResultStore(tmp_path / "state" / "results", ttl, max_bytes)


def blob_file(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def age(store: ResultStore, name: str, seconds: float) -> None:
    """Make the entry stored under `name` look `seconds` old."""
    path = store.root / f"{name}.entry"
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_key_depends_on_every_part_and_not_on_dict_order() -> None:
    base = key("pad", ["a" * 64], {"start_time_seconds": 1.5, "x": None}, {"model": "m"})
    assert base == key("pad", ["a" * 64], {"x": None, "start_time_seconds": 1.5}, {"model": "m"})
    assert len(base) == 64 and int(base, 16) >= 0
    others = {
        key("mixdown", ["a" * 64], {"start_time_seconds": 1.5, "x": None}, {"model": "m"}),
        key("pad", ["b" * 64], {"start_time_seconds": 1.5, "x": None}, {"model": "m"}),
        key("pad", ["a" * 64], {"start_time_seconds": 1.25, "x": None}, {"model": "m"}),
        key("pad", ["a" * 64], {"start_time_seconds": 1.5, "x": None}, {"model": "n"}),
        key("pad", ["a" * 64, "a" * 64], {"start_time_seconds": 1.5, "x": None}, {"model": "m"}),
    }
    assert base not in others and len(others) == 5


def test_put_get_and_private_files(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    blob = blob_file(tmp_path, "out.webm", 5000)
    assert store.get("k1") is None
    assert store.put("k1", Entry(value=b"result", audio_seconds=12.5), blob, aliases=("a1",))
    entry = store.get("k1")
    assert entry is not None and entry.value == b"result" and entry.audio_seconds == 12.5 and entry.blob
    alias = store.get("a1")
    assert alias == entry
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    files = list(store.root.iterdir())
    assert {p.name for p in files} >= {"k1.entry", "k1.blob", "a1.entry"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    copy = store.checkout_blob("a1", tmp_path / "tmp")
    assert copy is not None and copy.read_bytes() == blob.read_bytes()
    copy.unlink()
    assert store.checkout_blob("missing", tmp_path / "tmp") is None


def test_expired_entries_are_not_served_and_are_deleted(tmp_path: Path) -> None:
    store = make_store(tmp_path, ttl=60)
    store.put("old", Entry(value=b"1"), blob_file(tmp_path, "a", 100))
    store.put("new", Entry(value=b"2"))
    store.alias("alias", "old")
    age(store, "old", 61)
    assert store.get("old") is None and store.get("alias") is None
    assert store.get("new") is not None
    store.sweep()
    names = {p.name for p in store.root.iterdir()}
    assert "old.entry" not in names and "old.blob" not in names and "new.entry" in names


def test_store_never_grows_past_its_bound_oldest_out_first(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_bytes=10_000)
    for index in range(8):
        assert store.put(f"k{index}", Entry(value=b"x" * 100), blob_file(tmp_path, f"b{index}", 3000))
        age(store, f"k{index}", 100 - index)  # written in order, oldest first
        assert store.used_bytes() <= 10_000
    assert [store.get(f"k{index}") is not None for index in range(8)] == [False] * 5 + [True] * 3
    assert not store.put("huge", Entry(value=b"x"), blob_file(tmp_path, "huge", 20_000))
    assert store.get("huge") is None and store.get("k7") is not None


def test_free_lock_files_are_swept_and_a_held_one_is_kept(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    held, free = store.lock("busy"), store.lock("idle")
    assert held.try_acquire() and free.try_acquire()
    free.release()
    store.sweep()
    assert (store.root / "busy.lock").exists() and not (store.root / "idle.lock").exists()
    other = store.lock("busy")
    assert not other.try_acquire()  # held, even from another open file in this process
    held.release()
    assert other.try_acquire()
    other.release()


def test_claim_owner_then_attached_then_stored(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    async def scenario() -> list[str]:
        how, lock = await store.claim("job")
        assert how == "owner"
        waiter = asyncio.ensure_future(store.claim("job"))
        await asyncio.sleep(3 * POLL_SECONDS)
        assert not waiter.done()  # waits for the running job
        store.put("job", Entry(value=b"done"))
        lock.release()
        attached_how, entry = await asyncio.wait_for(waiter, 5)
        stored_how, again = await store.claim("job")
        assert entry.value == again.value == b"done"
        return [attached_how, stored_how]

    assert asyncio.run(scenario()) == ["attached", "stored"]


def test_a_waiter_takes_over_when_the_job_fails(tmp_path: Path) -> None:
    store = make_store(tmp_path)

    async def scenario() -> str:
        how, lock = await store.claim("job")
        waiter = asyncio.ensure_future(store.claim("job"))
        await asyncio.sleep(2 * POLL_SECONDS)
        lock.release()  # the job failed: nothing stored
        how, got = await asyncio.wait_for(waiter, 5)
        got.release()
        return how

    assert asyncio.run(scenario()) == "owner"


def test_a_job_in_another_process_is_attached_to_and_its_death_frees_the_key(tmp_path: Path) -> None:
    """Granian runs several worker processes: the lock must work across them."""
    store = make_store(tmp_path)
    holder = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from app.results import Entry, ResultStore\n"
        "store = ResultStore(Path(sys.argv[1]), 3600, 1 << 20)\n"
        "lock = store.lock(sys.argv[2]); assert lock.try_acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[3]))\n"
        "if sys.argv[4] == 'put': store.put(sys.argv[2], Entry(value=b'from the other process'))\n"
    )

    def start(name: str, hold: float, then: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", holder, str(store.root), name, str(hold), then], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        return process

    finisher = start("shared", 1.0, "put")
    how, entry = asyncio.run(asyncio.wait_for(store.claim("shared"), 10))
    finisher.wait(10)
    assert how == "attached" and entry.value == b"from the other process"

    crasher = start("crashy", 60, "-")
    started = time.monotonic()

    async def kill_soon() -> tuple[str, object]:
        waiter = asyncio.ensure_future(store.claim("crashy"))
        await asyncio.sleep(0.5)
        assert not waiter.done()
        crasher.kill()
        return await asyncio.wait_for(waiter, 10)

    how, lock = asyncio.run(kill_soon())
    crasher.wait(10)
    assert how == "owner" and time.monotonic() - started < 10
    lock.release()


def test_clear_and_ttl_zero_turns_the_store_off(tmp_path: Path) -> None:
    from app import results, settings as settings_module

    settings = settings_module.load({"REFLECTOR_GPU_STATE_DIR": str(tmp_path / "s")})
    assert settings.orphan_seconds == 1800 and settings.result_ttl_seconds == 3600
    assert settings.result_store_bytes == 2 * 1024**3
    store = ResultStore.open(settings)
    assert store is not None and store.root == tmp_path / "s" / "results"
    store.put("k", Entry(value=b"v"))
    results.clear(settings)
    assert not store.root.exists()
    off = settings_module.load({"REFLECTOR_GPU_STATE_DIR": str(tmp_path / "s"), "REFLECTOR_GPU_RESULT_TTL_SECONDS": "0"})
    assert ResultStore.open(off) is None


@pytest.mark.parametrize(
    "name,value",
    [
        ("REFLECTOR_GPU_ORPHAN_SECONDS", "-1"),
        ("REFLECTOR_GPU_RESULT_TTL_SECONDS", "soon"),
        ("REFLECTOR_GPU_RESULT_STORE_BYTES", "-5"),
    ],
)
def test_bad_settings_are_named(name: str, value: str) -> None:
    from app import settings as settings_module

    with pytest.raises(settings_module.SettingsError, match=name):
        settings_module.load({name: value})
