"""Coordination primitives, datasets and the executor against a real
in-process cluster: the Trio API with ``open_cluster`` / ``open_client``,
and the blocking API with ``LocalCluster`` / ``Client`` (threads drive it)."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from trioflow import (
    Client,
    Event,
    Future,
    LocalCluster,
    Lock,
    MultiLock,
    Pub,
    Queue,
    Semaphore,
    Sub,
    Variable,
    open_client,
    open_cluster,
)


def inc(x: int) -> int:
    return x + 1


def slow_inc(x: int) -> int:
    threading.Event().wait(0.05)
    return x + 1


# ---------------------------------------------------------------- Trio API


async def test_queue_shared_by_two_clients(trioflow_cluster: Any) -> None:
    with trio.fail_after(30):
        async with open_client(trioflow_cluster) as a, open_client(trioflow_cluster) as b:
            qa, qb = Queue("jobs", client=a, maxsize=2), Queue("jobs", client=b)
            fut = await a.submit(inc, 1)
            await qa.put(fut)
            await qa.put("plain")
            with pytest.raises(TimeoutError):
                await qa.put("no room", timeout=0.05)
            assert await qb.qsize() == 2
            assert qb.maxsize == 2
            del fut
            got = await qb.get(timeout=5)
            assert isinstance(got, Future) and got.client is b
            assert await got == 2
            assert await qb.get() == "plain"
            with pytest.raises(TimeoutError):
                await qb.get(timeout=0.05)
            # A getter waiting on b is served by a's put.
            async with trio.open_nursery() as n:
                results: list[Any] = []

                async def getter() -> None:
                    results.append(await qb.get(batch=2))

                n.start_soon(getter)
                await trio.sleep(0)  # (order only: the getter may or may not be first)
                await qa.put(1)
                await qa.put(2)
            assert results == [[1, 2]]
            assert await qb.get(batch=True) == []


async def test_variable_keeps_its_future_after_the_setter_leaves(trioflow_cluster: Any) -> None:
    with trio.fail_after(30):
        async with open_client(trioflow_cluster) as b:
            waiting = Variable("v", client=b)
            got: list[Any] = []
            async with trio.open_nursery() as n:

                async def get() -> None:
                    got.append(await waiting.get(timeout=20))

                n.start_soon(get)
                async with open_client(trioflow_cluster) as a:
                    await Variable("v", client=a).set(await a.submit(inc, 41))
            # a has left: the key lives on because the variable holds it.
            assert await got[0] == 42
            again = await Variable("v", client=b).get()
            assert await again == 42
            await waiting.delete()
            with pytest.raises(TimeoutError):
                await waiting.get(timeout=0.05)


async def test_semaphore_lease_of_a_departed_client_is_freed(trioflow_cluster: Any) -> None:
    with trio.fail_after(30):
        async with open_client(trioflow_cluster) as b:
            sb = Semaphore(max_leases=1, name="db", client=b)
            async with open_client(trioflow_cluster) as a:
                sa = Semaphore(max_leases=1, name="db", client=a)
                assert await sa.acquire()
                assert not await sb.acquire(timeout=0.05)
                assert await sb.get_value() == 1
            # a disconnected without releasing: its lease went with it.
            assert await sb.acquire(timeout=10)
            assert await sb.release() is True
            assert await sb.get_value() == 0


async def test_lock_wait_cancelled_by_the_client_is_withdrawn(trioflow_cluster: Any) -> None:
    with trio.fail_after(30):
        async with open_client(trioflow_cluster) as a, open_client(trioflow_cluster) as b:
            la, lb = Lock("L", client=a), Lock("L", client=b)
            assert await la.acquire()
            with trio.move_on_after(0.1):
                await lb.acquire()  # no timeout: cancelled here, by Trio
            await la.release()
            # The abandoned request must not have taken the lock.
            assert not await lb.locked()
            assert await lb.acquire(blocking=False)
            with pytest.raises(RuntimeError):
                await la.release()
            await lb.release()


async def test_event_pubsub_and_multilock(trioflow_client: Any) -> None:
    c = trioflow_client
    with trio.fail_after(30):
        ev = Event("go", client=c)
        assert not await ev.is_set()
        assert not await ev.wait(timeout=0.05)
        async with trio.open_nursery() as n:
            n.start_soon(ev.wait)
            await ev.set()
        assert await ev.is_set()
        await ev.clear()
        assert not await ev.is_set()

        sub = Sub("news", client=c)
        await sub._register(c)  # Trio code subscribes at the first get otherwise
        pub = Pub("news", client=c)
        assert await pub.put({"n": 1}) == 1
        assert await sub.get(timeout=5) == {"n": 1}
        with pytest.raises(TimeoutError):
            await sub.get(timeout=0.05)
        await sub.close()
        assert await pub.put("lost") == 0

        m1, m2 = MultiLock(["x", "y"], client=c), MultiLock(["y", "z"], client=c)
        assert await m1.acquire()
        assert not await m2.acquire(timeout=0.05)
        assert await m2.acquire(timeout=5, num_locks=0)
        await m1.release()
        await m2.release()


async def test_published_dataset_outlives_its_publisher() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=1) as cluster:
            async with open_client(cluster) as a:
                f = await a.submit(inc, 1)
                await a.publish_dataset(f, name="one")
                await a.publish_dataset(pair=[f, "x"])
                with pytest.raises(KeyError):
                    await a.publish_dataset(f, name="one")
            async with open_client(cluster) as b:
                assert await b.list_datasets() == ["one", "pair"]
                one = await b.get_dataset("one")
                assert await one == 2
                pair = await b.get_dataset("pair")
                assert await pair[0] == 2 and pair[1] == "x"
                await b.unpublish_dataset("one")
                assert await b.get_dataset("one", default=None) is None
                with pytest.raises(KeyError):
                    await b.get_dataset("one")


# ---------------------------------------------------------------- blocking API


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        yield cluster


def test_lock_gives_mutual_exclusion_to_20_acquirers(cluster: LocalCluster, tmp_path: Path) -> None:
    # 20 threads through two clients (tasks cannot reach a client of their
    # own yet); each holder appends "enter"/"exit" to a shared file and
    # checks nobody else is inside.
    path = tmp_path / "log"
    path.write_text("")
    errors: list[BaseException] = []
    with Client(cluster, set_as_default=False) as c1, Client(cluster, set_as_default=False) as c2:

        def worker(i: int) -> None:
            try:
                lock = Lock("shared", client=c1 if i % 2 else c2)
                assert lock.acquire(timeout=30)
                try:
                    with path.open("a") as f:
                        f.write(f"enter {i}\n")
                    assert path.read_text().splitlines()[-1] == f"enter {i}"
                    with path.open("a") as f:
                        f.write(f"exit {i}\n")
                finally:
                    lock.release()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        lines = path.read_text().splitlines()
        assert len(lines) == 40
        for enter, exit_ in zip(lines[::2], lines[1::2], strict=True):
            assert enter.startswith("enter ") and exit_ == "exit " + enter.split()[1]
        assert not Lock("shared", client=c1).locked()


def use_lock_in_task(x: int, lock: Lock, path: str) -> int:
    with lock:
        with open(path, "a") as f:
            f.write(f"enter {x}\n")
        with open(path) as f:
            assert f.read().splitlines()[-1] == f"enter {x}"
        with open(path, "a") as f:
            f.write(f"exit {x}\n")
    return x


def test_lock_inside_tasks(cluster: LocalCluster, tmp_path: Path) -> None:
    # In-process workers: the tasks reach the scheduler through the default
    # client (the hook tasks will use for their own client later).
    path = tmp_path / "log"
    path.write_text("")
    with Client(cluster) as c:
        futures = c.map(use_lock_in_task, range(20), lock=Lock("in-tasks"), path=str(path))
        assert c.gather(futures) == list(range(20))
    lines = path.read_text().splitlines()
    assert len(lines) == 40
    assert all(a.split()[1] == b.split()[1] for a, b in zip(lines[::2], lines[1::2], strict=True))


def test_blocking_primitives_and_datasets(cluster: LocalCluster) -> None:
    with Client(cluster) as c:
        q = Queue()  # the default client
        q.put(c.submit(inc, 1))
        assert q.get(timeout=5).result() == 2
        v = Variable("x")
        v.set({"a": 1})
        assert v.get() == {"a": 1}
        c.datasets["d"] = c.submit(inc, 2)
        assert "d" in c.datasets and len(c.datasets) == 1
        assert c.datasets["d"].result() == 3
        del c.datasets["d"]
        assert c.list_datasets() == []
        sub = Sub("t")
        Pub("t").put(5)
        assert next(iter(sub)) == 5
        with Semaphore(max_leases=2, name="s") as s:
            assert s.get_value() == 1


def test_executor_works_with_concurrent_futures(cluster: LocalCluster) -> None:
    with Client(cluster) as c:
        with c.get_executor() as ex:
            fs = [ex.submit(slow_inc, i) for i in range(5)]
            done, not_done = cf.wait(fs, timeout=30)
            assert not not_done and sorted(f.result() for f in done) == [1, 2, 3, 4, 5]
            assert sorted(f.result() for f in cf.as_completed([ex.submit(inc, i) for i in range(3)], timeout=30)) == [1, 2, 3]
            assert list(ex.map(inc, range(4), timeout=30)) == [1, 2, 3, 4]
            bad = ex.submit(int, "x")
            with pytest.raises(ValueError):
                bad.result(timeout=30)
            last = ex.submit(slow_inc, 10)
        assert last.done() and last.result() == 11  # shutdown(wait=True) waited
        with pytest.raises(RuntimeError):
            ex.submit(inc, 1)


def put_in_queue(x: int, q: Queue) -> int:
    q.put(x * 10)
    return x


def test_tasks_feed_a_queue(cluster: LocalCluster) -> None:
    # Tasks use the primitives they were given (pickled by name) through the
    # default client, as in-process workers share this process.
    with Client(cluster) as c:
        q = Queue("results")
        futures = c.map(put_in_queue, range(6), q=q)
        c.gather(futures)
        assert sorted(q.get(timeout=10, batch=6)) == [0, 10, 20, 30, 40, 50]
        assert q.qsize() == 0


def test_executor_shutdown_cancels_pending_futures(cluster: LocalCluster) -> None:
    with Client(cluster) as c:
        ev = Event("hold")
        ex = c.get_executor()
        blocked = [ex.submit(ev.wait, 30) for _ in range(4)]
        ex.shutdown(wait=True, cancel_futures=True)
        assert all(f.done() for f in blocked)
        ev.set()


async def test_unrenewed_lease_expires_on_the_scheduler_clock(autojump_clock: Any) -> None:
    # A holder that stops renewing (hung, or its refresh cannot get through)
    # loses its lease after the lease timeout, measured on the Trio clock.
    from trioflow.client import primitives

    with trio.fail_after(300):
        async with open_cluster(n_workers=0) as cluster, open_client(cluster) as a, open_client(cluster) as b:
            sa = Semaphore(max_leases=1, name="s", client=a)
            assert await sa.acquire()
            sa._leases.clear()  # stops its renewals, as a hung holder would
            sb = Semaphore(max_leases=1, name="s", client=b)
            # Nobody waits: the scheduler's deadline loop must expire it alone
            # (virtual time: the clock jumps).
            await trio.sleep(20)
            assert await sb.get_value() == 1
            await trio.sleep(15)
            assert await sb.get_value() == 0
            assert await sb.acquire(timeout=0)
            # And while someone waits.
            sb._leases.clear()
            start = trio.current_time()
            assert await sa.acquire(timeout=100)
            assert 25 < trio.current_time() - start < 30 + primitives.LEASE_REFRESH_INTERVAL
