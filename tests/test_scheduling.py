"""Placement, queuing, stealing, resources, priorities and retries on a live cluster."""

import threading
import time

import numpy as np
import pytest
import trio

from trioflow import get_worker, open_client, open_cluster


def _where() -> str:
    return get_worker().address


def _big(n: int) -> np.ndarray:
    return np.ones(n, dtype="u1")


def _nbytes_and_where(a: np.ndarray) -> tuple[int, str]:
    return a.nbytes, get_worker().address


def _slow(x: int, delay: float = 0.02) -> int:
    time.sleep(delay)
    return x


@pytest.mark.slow
async def test_task_runs_where_its_large_dependency_is() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=3) as cluster:
            async with open_client(cluster) as client:
                for w in cluster.workers:
                    big = await client.submit(_big, 50_000_000, workers=[w.address], pure=False)
                    nbytes, where = await (await client.submit(_nbytes_and_where, big))
                    assert nbytes == 50_000_000
                    assert where == w.address


@pytest.mark.slow
async def test_pinned_load_spreads_when_a_second_worker_joins() -> None:
    with trio.fail_after(60):
        async with open_cluster(n_workers=1) as cluster:
            async with open_client(cluster) as client:
                seed = await client.submit(_slow, 0, 0.0)
                futures = await client.map(_slow, [seed] * 0 + list(range(1000)), [0.002] * 1000, pure=False)
                await trio.sleep(0.05)
                second = await cluster.start_worker()
                await client.gather(futures)
                first = cluster.workers[0]
                ran_on_second = sum(1 for k, *_ in second.task_log if k.startswith("_slow"))
                assert ran_on_second > 200, ran_on_second
                assert len(first.task_log) + ran_on_second >= 1000


@pytest.mark.slow
async def test_dependent_tasks_are_stolen_by_an_idle_worker() -> None:
    with trio.fail_after(60):
        async with open_cluster(n_workers=1) as cluster:
            async with open_client(cluster) as client:
                seed = await client.submit(_slow, 0, 0.0)
                await seed
                # Tasks with a dependency are not queued: all go to the only worker.
                futures = [await client.submit(_slow, seed, 0.03, pure=False) for _ in range(60)]
                await trio.sleep(0.05)
                second = await cluster.start_worker()
                await client.gather(futures)
                assert cluster.scheduler.state.steal_count > 0
                assert len(second.task_log) > 5


async def test_resources_wait_for_a_worker_with_capacity() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=1) as cluster:
            async with open_client(cluster) as client:
                f = await client.submit(_where, resources={"GPU": 1}, pure=False)
                await trio.sleep(0.2)
                assert f.status == "pending"  # waits, never fails, for lack of a GPU
                assert cluster.scheduler.state.tasks[f.key].state == "no-worker"
                gpu = await cluster.start_worker(resources={"GPU": 2})
                assert await f == gpu.address


_LOG: list[int] = []
_GATE = threading.Event()


def _record(i: int) -> int:
    _LOG.append(i)
    return i


def _wait_gate() -> bool:
    return _GATE.wait(10)


async def test_higher_priority_runs_first() -> None:
    _LOG.clear()
    _GATE.clear()
    with trio.fail_after(30):
        async with open_cluster(n_workers=1, scheduler_options={"worker_saturation": float("inf")}) as cluster:
            async with open_client(cluster) as client:
                blocker = await client.submit(_wait_gate, pure=False)
                low = [await client.submit(_record, i, priority=0, pure=False) for i in range(10)]
                high = await client.submit(_record, 100, priority=10, pure=False)
                await trio.sleep(0.1)
                _GATE.set()
                await client.gather([blocker, high, *low])
                # The worker had already been handed a couple of low ones;
                # the high-priority task overtakes everything still waiting.
                assert _LOG.index(100) <= 3, _LOG


_attempts: dict[str, int] = {}


def _flaky(name: str, fail_times: int) -> str:
    _attempts[name] = _attempts.get(name, 0) + 1
    if _attempts[name] <= fail_times:
        raise RuntimeError(f"attempt {_attempts[name]}")
    return f"ok after {_attempts[name]}"


async def test_retries_rerun_then_err() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=1) as cluster:
            async with open_client(cluster) as client:
                assert await (await client.submit(_flaky, "a", 2, retries=2)) == "ok after 3"
                f = await client.submit(_flaky, "b", 5, retries=2)
                with pytest.raises(RuntimeError, match="attempt 3"):
                    await f


@pytest.mark.slow
async def test_retire_workers_moves_data_only_they_hold() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=2) as cluster:
            async with open_client(cluster) as client:
                a, b = cluster.workers
                futures = [await client.submit(_big, 1_000_000 + i, workers=[a.address], pure=False) for i in range(5)]
                await client.gather([await client.submit(len, f) for f in futures])
                retired = await client.retire_workers([a.address])
                assert retired == [a.address]
                with trio.fail_after(10):
                    while a.status != "closed":
                        await trio.sleep(0.02)
                # Nothing had to be recomputed: every value moved to b first.
                who = await client.who_has(futures)
                assert all(who[f.key] == [b.address] for f in futures), who
                assert [v.nbytes for v in await client.gather(futures)] == [1_000_000 + i for i in range(5)]
                assert all(k.startswith("_big") is False for k, *_ in b.task_log if k.startswith("_big"))


@pytest.mark.slow
async def test_scheduler_learns_of_transfers_from_heartbeats() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=2) as cluster:
            async with open_client(cluster) as client:
                a, b = cluster.workers
                big = await client.submit(_big, 5_000_000, workers=[a.address], pure=False)
                nbytes, where = await (await client.submit(_nbytes_and_where, big, workers=[b.address]))
                assert where == b.address
                s = cluster.scheduler
                while not s.transfer_stream:
                    await trio.sleep(0.05)
                worker, peer, moved, start, stop, nkeys = s.transfer_stream[0]
                assert (worker, peer, nkeys) == (b.address, a.address, 1)
                assert moved >= 5_000_000 and stop >= start
                assert s.bytes_transferred >= 5_000_000
