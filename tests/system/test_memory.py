"""The worker's spilling store and memory-size parsing."""

import os
import signal
import sys
import threading
from typing import Any

import cloudpickle
import numpy as np
import pytest
from support import daemons, start_scheduler, start_worker, wait_until  # noqa: E402

from trioflow.config import format_bytes, parse_bytes, parse_memory_limit
from trioflow.worker.spill import SpillBuffer

# Task functions travel by value: worker processes cannot import this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_parse_bytes() -> None:
    assert parse_bytes("5GB") == 5_000_000_000
    assert parse_bytes("5000M") == 5_000_000_000
    assert parse_bytes("1.5 GiB") == int(1.5 * 2**30)
    assert parse_bytes(123) == 123
    assert parse_bytes("10e3") == 10_000
    for bad in ("lots", "5 XB", "", "-3GB"):
        with pytest.raises(ValueError, match="not a size"):
            parse_bytes(bad)


def test_parse_memory_limit() -> None:
    total = 8_000_000_000
    assert parse_memory_limit(0, total=total) == 0
    assert parse_memory_limit("0", total=total) == 0
    assert parse_memory_limit(None, total=total) == 0
    assert parse_memory_limit(0.5, total=total) == 4_000_000_000
    assert parse_memory_limit("2GB", total=total) == 2_000_000_000
    assert parse_memory_limit("auto", n_workers=4, total=total) == 2_000_000_000
    assert parse_memory_limit("100GB", total=total) == total  # capped at the machine
    with pytest.raises(ValueError):
        parse_memory_limit("lots", total=total)
    with pytest.raises(ValueError):
        parse_memory_limit(-5, total=total)
    assert format_bytes(2_500_000) == "2.50 MB"


def test_spill_lru_to_disk_and_back(tmp_path) -> None:
    buf = SpillBuffer(str(tmp_path / "spill"), target=3_000_000)
    arrays = {f"x{i}": np.full(1_000_000 // 8, i, dtype="f8") for i in range(6)}
    for k, v in arrays.items():
        buf[k] = v
    # At most ~3 MB stays in memory; the oldest went to disk.
    assert buf.fast_bytes <= 3_000_000
    assert "x0" in buf.slow and "x5" in buf.fast
    assert len(os.listdir(tmp_path / "spill")) == len(buf.slow)
    # Reading a spilled value brings it back intact and evicts another.
    np.testing.assert_array_equal(buf["x0"], arrays["x0"])
    assert "x0" in buf.fast
    for k, v in arrays.items():
        np.testing.assert_array_equal(buf[k], v)
    assert len(buf) == 6
    del buf["x1"]
    assert "x1" not in buf
    assert len(os.listdir(tmp_path / "spill")) == len(buf.slow)
    buf.close()
    assert not (tmp_path / "spill").exists()


def test_oversized_value_goes_straight_to_disk(tmp_path) -> None:
    buf = SpillBuffer(str(tmp_path / "s"), target=1000)
    buf["big"] = b"x" * 10_000
    assert "big" in buf.slow and buf.fast_bytes == 0
    assert buf["big"] == b"x" * 10_000
    buf.close()


def test_unpicklable_values_stay_in_memory(tmp_path) -> None:
    buf = SpillBuffer(str(tmp_path / "s"), target=10)
    lock = threading.Lock()
    buf.set("lock", lock, 1_000)
    buf.set("data", b"y" * 100, 100)
    assert buf["lock"] is lock
    assert "lock" in buf.fast
    assert buf["data"] == b"y" * 100
    buf.close()


def _make(i: int) -> "np.ndarray":
    return np.full(20_000_000 // 8, i, dtype="f8")  # 20 MB


def _first(a: "np.ndarray") -> float:
    return float(a[0])


@pytest.mark.slow
async def test_worker_spills_past_target_and_reads_back(tmp_path) -> None:
    import trio

    from trioflow import open_client, open_cluster

    with trio.fail_after(60):
        async with open_cluster(n_workers=1, memory_limit=100_000_000, worker_options={"local_directory": str(tmp_path)}) as cluster:
            async with open_client(cluster) as client:
                futures = await client.map(_make, range(15))  # 300 MB against a 60 MB target
                firsts = await client.gather([await client.submit(_first, f) for f in futures])
                assert firsts == [float(i) for i in range(15)]
                worker = cluster.workers[0]
                assert worker.data.fast_bytes <= 60_000_000
                assert len(worker.data.slow) >= 10
                spill_dir = worker.data.directory
                assert len(os.listdir(spill_dir)) == len(worker.data.slow)
                values = await client.gather(futures)
                for i, v in enumerate(values):
                    assert v.shape == (2_500_000,) and v[0] == i and v[-1] == i
                del futures, values
    # Nothing spilled is left on disk once the worker is gone.
    assert os.listdir(tmp_path) == []


def _spill_state() -> dict[str, Any]:
    import trioflow

    data = trioflow.get_worker().data
    return {
        "pid": os.getpid(),
        "fast_bytes": data.fast_bytes,
        "slow": len(data.slow),
        "files": len(os.listdir(data.directory)),
        "directory": data.directory,
    }


@pytest.mark.slow
def test_worker_process_holds_a_gigabyte_in_300mb_and_leaves_no_files(tmp_path) -> None:
    """A real worker (under its nanny) with a 300 MB limit: 1 GB of results,
    most of them on disk, all gathered intact; after a SIGKILL the nanny
    removes the dead worker's files, and after a clean stop nothing is left."""
    from trioflow import Client, wait

    work = tmp_path / "work"
    with daemons() as start:
        _, address, _ = start_scheduler(start, tmp_path)
        worker = start_worker(start, tmp_path, address, "--nthreads", "1", "--memory-limit", "300MB", "--local-directory", str(work))
        with Client(address, timeout=20) as client:
            futures = client.map(_make, range(50))  # 50 x 20 MB = 1 GB
            wait(futures, timeout=60)
            (state,) = client.run(_spill_state).values()
            assert state["fast_bytes"] <= 180_000_000, state  # target: 60% of the limit
            assert state["slow"] >= 40 and state["files"] == state["slow"], state
            values = client.gather(futures)
            assert len(values) == 50
            for i, v in enumerate(values):
                assert v.shape == (2_500_000,) and v[0] == i and v[-1] == i and v.sum() == i * 2_500_000
            del values
            client.cancel(futures)
            del futures

            # A worker killed outright cannot clean up after itself; its nanny does.
            more = client.map(_make, range(100, 115), pure=False)  # 300 MB: some on disk
            wait(more, timeout=60)
            (state,) = client.run(_spill_state).values()
            assert state["files"] > 0, state
            os.kill(state["pid"], signal.SIGKILL)
            wait_until(lambda: not os.path.exists(state["directory"]), 20, "the dead worker's spill directory to go")
            client.cancel(more)
            del more
        worker.stop()
    assert os.listdir(work) == []


@pytest.mark.slow
def test_directory_of_a_killed_worker_without_nanny_is_removed_by_the_next(tmp_path) -> None:
    """No nanny to clean up after a SIGKILL: the next worker started in the
    same parent directory removes what the dead one left; a live worker's
    directory is left alone."""
    work = tmp_path / "work"
    with daemons() as start:
        _, address, _ = start_scheduler(start, tmp_path)
        args = ("--nthreads", "1", "--no-nanny", "--local-directory", str(work))
        first = start_worker(start, tmp_path, address, *args, name="first")
        live = start_worker(start, tmp_path, address, *args, name="live")
        assert len(list(work.glob("trioflow-worker-*"))) == 2
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert len(list(work.glob("trioflow-worker-*"))) == 2  # nobody cleaned up (yet)
        start_worker(start, tmp_path, address, *args, name="next")
        left = list(work.glob("trioflow-worker-*"))
        assert len(left) == 2, left  # the live one and the new one
        assert all((d / "owner").read_text().split()[1] != str(first.pid) for d in left)
        live.stop()
    assert list(work.iterdir()) == []


def test_arena_limit_leaves_a_users_setting_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioflow.process import malloc as memory

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setattr(memory, "arena_limit", None)
    assert memory.limit_malloc_arenas(1) is False
    assert memory.arena_limit is None
