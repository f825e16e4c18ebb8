"""``Client(asynchronous=True)`` and ``async with`` servers under asyncio and Trio.

Every scenario is one coroutine run under both backends (``anyio.run`` with
``asyncio`` and ``trio``), against a cluster served from a thread, the way a
notebook or an asyncio web app would reach one.  One scenario runs as cells
of IPython's top-level ``await`` (its asyncio runner).
"""

from __future__ import annotations

import inspect
import io
import operator
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from trioflow import (
    Client,
    Future,
    LocalCluster,
    as_completed,
    fire_and_forget,
    futures_of,
    progress,
    wait,
)
from trioflow.client.bridge import ServerContext, wait_concurrent

BACKENDS = ["asyncio", "trio"]


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def fail() -> None:
    raise ZeroDivisionError("boom")


_gate = threading.Event()
_ran = threading.Event()


def gated_mark() -> None:
    _gate.wait(30)
    _ran.set()


def gated(x: int) -> int:
    _gate.wait(30)
    return x


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c


def run(backend: str, fn: Any, *args: Any) -> Any:
    """``await fn(*args)`` in a fresh event loop of ``backend``, time-limited."""
    return anyio.run(_limited, fn, *args, backend=backend)


async def _limited(fn: Any, *args: Any) -> Any:
    with anyio.fail_after(30):
        return await fn(*args)


async def _user_coroutine(x: int) -> int:
    await anyio.sleep(0)
    return x * 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_async_session(cluster: LocalCluster, backend: str) -> None:
    async def session(address: str) -> None:
        async with Client(address, asynchronous=True) as c:
            assert c.asynchronous and c.status == "running"
            f = c.submit(inc, 1)
            assert isinstance(f, Future)
            assert await f == 2
            assert await f.result() == 2
            fs = c.map(inc, range(10))
            assert await c.gather(fs) == list(range(1, 11))
            [x] = await c.scatter([10])
            assert await c.submit(add, x, 1) == 11
            finished = [g async for g in as_completed(fs)]
            assert sorted(g.key for g in finished) == sorted(g.key for g in fs)
            pairs = [p async for p in as_completed(fs[:3], with_results=True)]
            assert sorted(r for _, r in pairs) == [1, 2, 3]
            done, not_done = await wait(fs)
            assert len(done) == 10 and not not_done
            out = io.StringIO()
            await progress(fs, file=out)
            assert "10/10" in out.getvalue() or "100%" in out.getvalue(), out.getvalue()
            assert await c.sync(_user_coroutine, 4) == 8
            assert len((await c.scheduler_info())["workers"]) == 2
            assert sum((await c.nthreads()).values()) == 2
            bad = c.submit(fail)
            with pytest.raises(ZeroDivisionError, match="boom"):
                await bad
            assert isinstance(await bad.exception(), ZeroDivisionError)
            assert address in repr(c)  # repr never awaits in the caller's loop
            # dask collections
            import dask.array as da

            x = c.persist(da.arange(1000, chunks=250))
            done, _ = await wait(x)
            assert len(done) == 4
            total = c.compute(x.sum())
            assert isinstance(total, Future) and await total == sum(range(1000))
            assert await c.compute(x.sum(), sync=True) == sum(range(1000))
        assert c.status == "closed"

    run(backend, session, cluster.scheduler_address)


@pytest.mark.parametrize("backend", BACKENDS)
def test_await_client_then_close(cluster: LocalCluster, backend: str) -> None:
    async def session(address: str) -> None:
        c = Client(address, asynchronous=True)
        assert c.status == "newly-created" and address in repr(c)
        with pytest.raises(RuntimeError, match="not started"):
            c.submit(inc, 1)
        assert await c is c
        try:
            futures = c.map(inc, range(5), key=[f"x-{i}" for i in range(5)])
            assert [await f for f in futures] == [1, 2, 3, 4, 5]
            await c.cancel(futures[:1])
            assert futures[0].cancelled()
        finally:
            await c.close()
        assert c.status == "closed"
        await c.close()  # twice is fine

    run(backend, session, cluster.scheduler_address)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancelling_the_caller_leaves_the_client_usable(cluster: LocalCluster, backend: str) -> None:
    async def session(address: str) -> None:
        _gate.clear()
        async with Client(address, asynchronous=True) as c:
            f = c.submit(gated, 7, pure=False)
            with anyio.CancelScope() as scope:
                scope.cancel()
                await f  # cancelled at once, as any await in a cancelled scope
            assert scope.cancelled_caught
            assert not f.done()
            _gate.set()
            assert await f == 7

    try:
        run(backend, session, cluster.scheduler_address)
    finally:
        _gate.set()


@pytest.mark.parametrize("backend", BACKENDS)
def test_servers_in_async_with(backend: str) -> None:
    """``async with`` a scheduler and a worker, then a client, in one loop
    of either kind (in asyncio each server runs in a Trio thread)."""
    from trioflow import Scheduler, Worker

    async def session() -> None:
        async with Scheduler("tcp://127.0.0.1:0") as s:
            assert s.address.startswith("tcp://")
            async with Worker(s.address, nthreads=1):
                async with Client(s.address, asynchronous=True) as c:
                    await c.wait_for_workers(1)
                    assert await c.gather(c.map(inc, range(3))) == [1, 2, 3]
        assert s.status == "closed"

    run(backend, session)


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_context_calls_into_the_servers_loop(backend: str) -> None:
    from trioflow import Scheduler

    async def session() -> None:
        ctx = ServerContext(Scheduler("tcp://127.0.0.1:0"))
        async with ctx as s:

            async def workers() -> int:
                return len(s.state.workers)

            assert await ctx.call(workers) == 0
        assert s.status == "closed"

    run(backend, session)


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_cluster_asynchronous(backend: str) -> None:
    async def session() -> None:
        async with LocalCluster(n_workers=1, processes=False, dashboard_address=None, asynchronous=True) as cluster:
            assert cluster.scheduler_address.startswith("tcp://")
            async with Client(cluster, asynchronous=True) as c:
                assert await c.submit(inc, 1) == 2
                await cluster.scale(2)
                await c.wait_for_workers(2)
        cluster2 = await LocalCluster(n_workers=1, processes=False, dashboard_address=None, asynchronous=True)
        await cluster2.close()

    run(backend, session)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wait_concurrent_is_woken_from_another_thread(backend: str) -> None:
    import concurrent.futures

    async def session() -> Any:
        cf: concurrent.futures.Future[int] = concurrent.futures.Future()
        t = threading.Thread(target=cf.set_result, args=(5,))
        t.start()
        try:
            return await wait_concurrent(cf)
        finally:
            t.join()

    assert run(backend, session) == 5


def test_ipython_autoawait_session(cluster: LocalCluster) -> None:
    """Cells with top-level ``await``, run by IPython's asyncio runner."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    try:
        shell.user_ns.update(Client=Client, inc=inc, address=cluster.scheduler_address)
        cells = [
            "client = await Client(address, asynchronous=True)",
            "futures = client.map(inc, range(4))",
            "total = sum(await client.gather(futures))",
            "one = await client.submit(inc, 41)",
            "await client.close()",
        ]
        for cell in cells:
            result = shell.run_cell(cell)
            result.raise_error()
        assert shell.user_ns["total"] == 10
        assert shell.user_ns["one"] == 42
        assert shell.user_ns["client"].status == "closed"
    finally:
        InteractiveShell.clear_instance()
        from IPython.core import async_helpers

        loop = async_helpers._asyncio_event_loop  # IPython keeps its loop for the next cell
        if loop is not None:
            loop.close()


def test_awaiting_a_blocking_client_is_an_error(cluster: LocalCluster) -> None:
    with Client(cluster) as c:

        async def attempt() -> None:
            await c  # type: ignore[misc]

        with pytest.raises(TypeError, match="asynchronous=True"):
            anyio.run(attempt)


def test_a_forgotten_close_in_trio_ends_with_the_run(cluster: LocalCluster) -> None:
    """In Trio the client lives in a system task of the caller's run: a
    client never closed is closed when the run ends, without errors."""
    clients: list[Client] = []

    async def session(address: str) -> None:
        c = await Client(address, asynchronous=True)
        clients.append(c)
        assert await c.submit(inc, 1) == 2

    run("trio", session, cluster.scheduler_address)
    assert clients[0].status == "closed"


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_nanny_in_async_with(backend: str) -> None:
    from trioflow import Scheduler
    from trioflow.process.nanny import Nanny

    async def session() -> None:
        async with Scheduler("tcp://127.0.0.1:0") as s:
            async with Nanny(s.address, nthreads=1):
                async with Client(s.address, asynchronous=True) as c:
                    await c.wait_for_workers(1, timeout=20)
                    # (a worker process cannot import this test module)
                    assert await c.submit(operator.add, 1, 1) == 2

    run(backend, session)


@pytest.mark.parametrize("backend", BACKENDS)
def test_as_completed_grows_while_iterated(cluster: LocalCluster, backend: str) -> None:
    """A futures chain: each result finished adds the next task."""

    async def session(address: str) -> list[int]:
        async with Client(address, asynchronous=True) as c:
            ac = as_completed([c.submit(inc, 0)], with_results=True)
            results = []
            async for _, value in ac:
                results.append(value)
                if value < 5:
                    ac.add(c.submit(inc, value))
            return results

    assert run(backend, session, cluster.scheduler_address) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_return_shapes_are_dasks(cluster: LocalCluster, backend: str) -> None:
    """As in dask: submit, map, compute (without sync) and persist give
    their Futures or collections at once; the calls that wait for the
    cluster give awaitables."""
    import dask
    import dask.array as da
    from dask.delayed import Delayed

    async def awaited(value: Any) -> Any:
        assert inspect.isawaitable(value), value
        return await value

    async def session(address: str) -> None:
        async with Client(address, asynchronous=True) as c:
            f = c.submit(inc, 1)
            assert isinstance(f, Future) and await f == 2
            fs = c.map(add, range(3), [10] * 3)
            assert isinstance(fs, list) and all(isinstance(g, Future) for g in fs)
            assert await awaited(c.gather(fs)) == [10, 11, 12]
            [x] = await awaited(c.scatter([5]))
            assert isinstance(x, Future)
            x_arr = c.persist(da.arange(10, chunks=5))
            assert isinstance(x_arr, da.Array) and len(futures_of(x_arr)) == 2
            p, q = c.persist([dask.delayed(inc)(1), dask.delayed(inc)(2)])
            assert isinstance(p, Delayed) and isinstance(q, Delayed)
            total = c.compute(x_arr.sum())
            assert isinstance(total, Future) and await total == 45
            both = c.compute([x_arr.sum(), 7])
            assert isinstance(both[0], Future) and both[1] == 7 and await both[0] == 45
            assert await awaited(c.compute(p + q, sync=True)) == 5
            assert await awaited(c.compute([p, 7], sync=True)) == [2, 7]
            done, not_done = await awaited(wait(fs))
            assert done == set(fs) and not not_done
            assert await awaited(progress(fs, file=io.StringIO())) is None
            assert set((await awaited(c.run(inc, 1))).values()) == {2}
            assert len((await awaited(c.scheduler_info()))["workers"]) == 2
            assert await awaited(c.wait_for_workers(2)) is None
            assert await awaited(c.cancel([f])) is None
            assert [g async for g in as_completed(c.map(inc, range(3), pure=False))]
        assert c.status == "closed"

    run(backend, session, cluster.scheduler_address)


@pytest.mark.parametrize("backend", BACKENDS)
def test_futures_made_at_once_keep_their_dependencies(cluster: LocalCluster, backend: str) -> None:
    """A future dropped right after a task that needs it was submitted (or
    mapped, or persisted on) is not released before that task is sent."""
    import dask

    async def session(address: str) -> None:
        async with Client(address, asynchronous=True) as c:
            x = c.submit(inc, 1, pure=False)
            y = c.submit(inc, x)
            ys = c.map(add, [x] * 3, range(3))
            d = c.persist(dask.delayed(add)(x, 100))
            del x
            assert await y == 3
            assert await c.gather(ys) == [2, 3, 4]
            assert await c.compute(d, sync=True) == 102

    run(backend, session, cluster.scheduler_address)


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_errors_at_once_and_sends_nothing_of_a_failed_map(cluster: LocalCluster, backend: str) -> None:
    from trioflow.protocol.serialize import SerializationError

    async def session(address: str) -> None:
        async with Client(address, asynchronous=True) as c:
            with pytest.raises(SerializationError, match="lock"):
                c.map(inc, [1, 2, threading.Lock()], pure=False)
            with pytest.raises(TypeError, match="callable"):
                c.map(3, [1])
            with pytest.raises(ValueError, match="keys"):
                c.map(inc, [1, 2], key=["only-one"])
            assert await c.gather(c.map(inc, [1, 2, 3], key="named")) == [2, 3, 4]
            assert await c.gather(c.map(add, range(7), [1] * 7, batch_size=3)) == list(range(1, 8))
            assert await c.has_what() is not None
            who = await c.who_has()
            assert not any(k.startswith("inc-") for k in who)

    run(backend, session, cluster.scheduler_address)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fire_and_forget_a_future_made_at_once(cluster: LocalCluster, backend: str) -> None:
    async def session(address: str) -> None:
        _gate.clear()
        _ran.clear()
        async with Client(address, asynchronous=True) as c:
            fire_and_forget(c.submit(gated_mark, pure=False))  # the future is dropped here
            await c.who_has()  # (the release, if any, has been handed over by now)
            _gate.set()
            await anyio.to_thread.run_sync(_ran.wait, 20)
        assert _ran.is_set()

    try:
        run(backend, session, cluster.scheduler_address)
    finally:
        _gate.set()


def test_trio_submit_is_sent_before_later_calls(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """In Trio the client runs in the caller's loop: what submit, map,
    persist and compute make is sent before they return, so nothing the
    caller does next can overtake it."""
    import dask

    from trioflow.protocol import messages as m

    async def session(address: str) -> None:
        async with Client(address, asynchronous=True) as c:
            sent: list[list[str]] = []
            real_send = c._core._send

            def recording_send(msg: m.Message) -> None:
                if isinstance(msg, m.UpdateGraph):
                    sent.append(list(msg.keys))
                real_send(msg)

            monkeypatch.setattr(c._core, "_send", recording_send)
            _gate.clear()
            f = c.submit(gated, 3, pure=False)
            assert sent == [[f.key]]
            fs = c.map(inc, range(2))
            assert sent[1:] == [[g.key for g in fs]]
            d = c.persist(dask.delayed(inc)(5))
            t = c.compute(dask.delayed(inc)(6))
            assert sent[2:] == [[d.key], [t.key]]
            await c.cancel([f])
            assert f.cancelled()
            _gate.set()
            assert await c.gather([*fs, t]) == [1, 2, 7]

    try:
        run("trio", session, cluster.scheduler_address)
    finally:
        _gate.set()
