"""End to end through the Trio API: ``open_cluster`` + ``open_client``.

A scheduler and in-process workers talk over real TCP on 127.0.0.1 (with
``validate=True``, so both state machines check every invariant after every
event); the tests drive them through the public client API and look inside
the scheduler and workers only to check that memory is freed.

Task functions live at module level so they pickle by reference; tasks that
must stay running block on a ``threading.Event`` (with a bounded wait, so a
broken test cannot hang a worker thread) that every test sets before its
cluster closes.
"""

from __future__ import annotations

import gc
import pickle
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from support import wait_until

from trioflow import (
    CancelledError,
    Future,
    SerializationError,
    as_completed,
    get_worker,
    open_client,
    open_cluster,
    wait,
)
from trioflow.client.core import AsyncClient
from trioflow.deploy.local import InProcessCluster
from trioflow.protocol import messages as m
from trioflow.protocol.serialize import Serialized, dumps_function

# ---------------------------------------------------------------- task functions


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def echo_value(x: Any) -> Any:
    return x.value if isinstance(x, _Recorder) else x


class _Recorder:
    """An argument that calls ``on_pickle`` when the client pickles it."""

    def __init__(self, value: int, on_pickle: Callable[[], None]) -> None:
        self.value = value
        self.on_pickle = on_pickle

    def __reduce__(self) -> Any:
        self.on_pickle()
        return (int, (self.value,))


def total(*args: Any, **kwargs: Any) -> int:
    """Sum every number found in args and kwargs, at any depth."""

    def walk(v: Any) -> int:
        if isinstance(v, dict):
            return sum(walk(x) for x in v.values())
        if isinstance(v, (list, tuple, set)):
            return sum(walk(x) for x in v)
        return v

    return walk(list(args)) + walk(kwargs)


class Boom(Exception):
    pass


def fail(x: Any = None) -> Any:
    raise Boom(f"boom {x}")


def return_lock() -> Any:
    return threading.Lock()


def whoami(*_: Any) -> tuple[str, str]:
    w = get_worker()
    return w.name, w.address


def worker_name() -> str:
    return get_worker().name


_gate = threading.Event()


def blocked(x: Any = None) -> Any:
    """Wait for the test to open ``_gate`` (bounded, so no thread is stranded)."""
    _gate.wait(10)
    return x


_attempts: dict[str, int] = {}
_attempts_lock = threading.Lock()


def flaky(token: str, fail_times: int) -> str:
    """Fail the first ``fail_times`` calls for ``token``, then succeed."""
    with _attempts_lock:
        n = _attempts[token] = _attempts.get(token, 0) + 1
    if n <= fail_times:
        raise Boom(f"attempt {n}")
    return f"ok after {n}"


_concurrency: dict[str, list[int]] = {}
_concurrency_lock = threading.Lock()


def count_concurrent(token: str, x: int) -> int:
    """Record the most tasks of ``token`` running at once on this worker."""
    name = get_worker().name
    with _concurrency_lock:
        cur, peak = _concurrency.setdefault(f"{token}/{name}", [0, 0])
        cur += 1
        _concurrency[f"{token}/{name}"] = [cur, max(peak, cur)]
    time.sleep(0.02)
    with _concurrency_lock:
        _concurrency[f"{token}/{name}"][0] -= 1
    return x


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _open_gate() -> Any:
    _gate.clear()
    yield
    _gate.set()


@asynccontextmanager
async def cluster_client(**options: Any) -> AsyncIterator[tuple[InProcessCluster, AsyncClient]]:
    options.setdefault("n_workers", 2)
    options.setdefault("validate", True)
    async with open_cluster(**options) as cluster:
        try:
            async with open_client(cluster) as client:
                yield cluster, client
        finally:
            _gate.set()  # before the workers close, so their threads can finish


@pytest.fixture
async def cc(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> AsyncIterator[tuple[InProcessCluster, AsyncClient]]:
    """The shipped fixtures (options from ``@pytest.mark.trioflow_cluster``) as
    one pair, opening the gate before they close so the workers' threads can
    finish."""
    try:
        yield trioflow_cluster, trioflow_client
    finally:
        _gate.set()


@pytest.fixture
async def c(cc: tuple[InProcessCluster, AsyncClient]) -> AsyncClient:
    return cc[1]


def processing_keys(cluster: InProcessCluster) -> set[str]:
    return {k for k, ts in cluster.scheduler.state.tasks.items() if ts.state == "processing"}


# ---------------------------------------------------------------- submit and keys


async def test_submit_and_await(c: AsyncClient) -> None:
    with trio.fail_after(10):
        f = await c.submit(inc, 1)
        assert isinstance(f, Future)
        assert await f == 2
        assert await f.result() == 2
        assert f.done() and f.status == "finished"
        g = await c.submit(add, 1, y=10)
        assert await g == 11


async def test_submit_lambda_and_closure(c: AsyncClient) -> None:
    n = 5
    with trio.fail_after(10):
        assert await (await c.submit(lambda x: x * n, 3)) == 15


async def test_pure_keys_are_deterministic(c: AsyncClient) -> None:
    with trio.fail_after(10):
        a = await c.submit(inc, 1)
        b = await c.submit(inc, 1)
        other = await c.submit(inc, 2)
        kw1 = await c.submit(add, 1, y=2)
        kw2 = await c.submit(add, 1, y=3)
        assert a.key == b.key
        assert a.key.startswith("inc-")
        assert other.key != a.key
        assert kw1.key != kw2.key
        assert (await c.submit(add, 1, 2)).key != (await c.submit(total, 1, 2)).key
        assert await a == await b == 2


async def test_impure_keys_differ(c: AsyncClient) -> None:
    with trio.fail_after(10):
        a = await c.submit(inc, 1, pure=False)
        b = await c.submit(inc, 1, pure=False)
        assert a.key != b.key
        assert a.key.startswith("inc-") and b.key.startswith("inc-")
        assert await c.gather([a, b]) == [2, 2]



@pytest.mark.parametrize("trioflow_cluster", [{"n_workers": 1}, {"n_workers": 3, "threads_per_worker": 2}], indirect=True)
async def test_shipped_fixture_takes_an_indirect_parameter(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    info = (await c.scheduler_info())["workers"]
    assert len(info) == len(cluster.workers) in (1, 3)
    assert {w.nthreads for w in cluster.workers} == ({1} if len(info) == 1 else {2})

async def test_explicit_key(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        f = await c.submit(inc, 1, key="my-key")
        assert f.key == "my-key"
        assert await f == 2
        assert "my-key" in cluster.scheduler.state.tasks
        assert (await c.who_has([f]))["my-key"]


# ---------------------------------------------------------------- map


async def test_map_one_iterable(c: AsyncClient) -> None:
    with trio.fail_after(10):
        fs = await c.map(inc, range(10))
        assert len(fs) == 10
        assert len({f.key for f in fs}) == 10
        assert await c.gather(fs) == list(range(1, 11))


async def test_map_several_iterables(c: AsyncClient) -> None:
    with trio.fail_after(10):
        fs = await c.map(add, [1, 2, 3], [10, 20, 30])
        assert await c.gather(fs) == [11, 22, 33]
        # zip semantics: the shortest iterable wins
        fs = await c.map(add, [1, 2, 3], (100, 200))
        assert await c.gather(fs) == [101, 202]


async def test_map_with_kwargs_and_futures(c: AsyncClient) -> None:
    with trio.fail_after(10):
        base = await c.submit(inc, 99)
        fs = await c.map(add, range(3), y=base)
        assert await c.gather(fs) == [100, 101, 102]


async def test_map_key_list(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        fs = await c.map(inc, [1, 2, 3], key=["a", "b", "c"])
        assert [f.key for f in fs] == ["a", "b", "c"]
        assert await c.gather(fs) == [2, 3, 4]
        assert {"a", "b", "c"} <= set(cluster.scheduler.state.tasks)
        with pytest.raises(ValueError, match="keys"):
            await c.map(inc, [1, 2], key=["only-one"])


async def test_map_key_prefix(c: AsyncClient) -> None:
    with trio.fail_after(10):
        fs = await c.map(inc, [1, 2], key="prefix")
        assert all(f.key.startswith("prefix-") for f in fs)
        assert len({f.key for f in fs}) == 2
        assert await c.gather(fs) == [2, 3]


async def test_map_repeated_pure_arguments(c: AsyncClient) -> None:
    with trio.fail_after(10):
        fs = await c.map(inc, [1, 1, 2])
        assert fs[0].key == fs[1].key != fs[2].key
        assert await c.gather(fs) == [2, 2, 3]


async def test_map_batch_size(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        before = cluster.scheduler.state.generation
        fs = await c.map(inc, range(7), batch_size=3)
        assert await c.gather(fs) == list(range(1, 8))
        assert cluster.scheduler.state.generation - before == 3  # graphs of 3, 3 and 1


def graphs_sent(c: AsyncClient, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the size of every graph ``c`` sends, in order."""
    sent: list[int] = []
    real_send = c._send

    def counting_send(msg: m.Message) -> None:
        if isinstance(msg, m.UpdateGraph):
            sent.append(len(msg.tasks))
        real_send(msg)

    monkeypatch.setattr(c, "_send", counting_send)
    return sent


async def test_map_streams_its_tasks_in_graphs(cc: tuple[InProcessCluster, AsyncClient], monkeypatch: pytest.MonkeyPatch) -> None:
    """A long map is sent in graphs of MAP_CHUNK_TASKS as it is prepared:
    each graph goes out before the next task is pickled."""
    from trioflow.client import submit as core

    cluster, c = cc
    monkeypatch.setattr(core, "MAP_CHUNK_TASKS", 10)
    sent = graphs_sent(c, monkeypatch)
    graphs_sent_at_pickle: list[int] = []

    def arg(i: int) -> _Recorder:
        return _Recorder(i, lambda: graphs_sent_at_pickle.append(len(sent)))

    with trio.fail_after(20):
        before = cluster.scheduler.state.generation
        fs = await c.map(echo_value, [arg(i) for i in range(35)])
        assert await c.gather(fs) == list(range(35))
    assert sent == [10, 10, 10, 5]
    assert graphs_sent_at_pickle == [i // 10 for i in range(35)]
    assert cluster.scheduler.state.generation - before == 4


async def test_an_impure_map_goes_as_one_graph(cc: tuple[InProcessCluster, AsyncClient], monkeypatch: pytest.MonkeyPatch) -> None:
    """pure=False: tasks with effects, so all or nothing (nothing runs if a
    late argument cannot be pickled)."""
    from trioflow.client import submit as core

    cluster, c = cc
    monkeypatch.setattr(core, "MAP_CHUNK_TASKS", 5)
    sent = graphs_sent(c, monkeypatch)
    with trio.fail_after(20):
        with pytest.raises(SerializationError, match="lock"):
            await c.map(inc, [*range(12), threading.Lock()], pure=False)
        assert sent == []
        assert await c.gather(await c.map(inc, range(12), pure=False)) == list(range(1, 13))
        assert sent == [12]


async def test_a_map_that_fails_midway_leaves_nothing_submitted(
    cc: tuple[InProcessCluster, AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trioflow.client import submit as core

    cluster, c = cc
    monkeypatch.setattr(core, "MAP_CHUNK_TASKS", 5)
    state = cluster.scheduler.state
    sent = graphs_sent(c, monkeypatch)
    with trio.fail_after(20):
        args: list[Any] = list(range(12)) + [threading.Lock()]
        with pytest.raises(SerializationError, match="lock") as info:
            await c.map(inc, args)
        assert sent == [5, 5]  # the first graphs were sent...
        gc.collect()
        # ... and released again once map raised, though the exception (and
        # with it map's frame) is still alive.
        assert not [k for k in c._refcount if k.startswith("inc-")]
        await wait_until(lambda: not any(k.startswith("inc-") for k in state.tasks), what="map's tasks released")
        assert info.value is not None
        assert await c.gather(await c.map(inc, range(3))) == [1, 2, 3]


# ---------------------------------------------------------------- gather


async def test_result_goes_straight_to_the_announced_holder(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    """KeyInMemory says where a value is: result() fetches it from there
    without asking the scheduler; a hint gone stale (the value moved) costs
    one WhoHas, and the right value still comes back."""
    cluster, c = cc
    sched = cluster.scheduler
    asked: list[list[str] | None] = []
    real = sched._request_handlers[m.WhoHas]

    async def counting(msg: m.WhoHas) -> m.Message:
        asked.append(msg.keys)
        return await real(msg)

    sched._request_handlers[m.WhoHas] = counting
    a, b = cluster.workers
    f = await c.submit(inc, 41, workers=[a.address])
    assert await f.result() == 42
    assert asked == []
    # Move it: b gets a copy, a forgets its own.
    await c.retire_workers([a.address])
    await wait_until(lambda: a.status == "closed", what="the retired worker to close")
    assert await f.result() == 42
    assert asked == [[f.key]]


async def test_gather_nested(c: AsyncClient) -> None:
    with trio.fail_after(10):
        a, b, d = await c.submit(inc, 1), await c.submit(inc, 2), await c.submit(inc, 3)
        result = await c.gather({"x": [a, (b, 7)], "y": {"z": d}, "w": "plain"})
        assert result == {"x": [2, (3, 7)], "y": {"z": 4}, "w": "plain"}
        assert isinstance(result["x"][1], tuple)
        assert await c.gather(a) == 2
        assert await c.gather([]) == []


async def test_gather_errors_raise(c: AsyncClient) -> None:
    with trio.fail_after(10):
        good = await c.submit(inc, 1)
        bad = await c.submit(fail, 1)
        with pytest.raises(Boom, match="boom 1"):
            await c.gather([good, bad])
        with pytest.raises(Boom):
            await c.gather({"a": [good, {"b": bad}]})


async def test_gather_errors_skip(c: AsyncClient) -> None:
    with trio.fail_after(10):
        good = await c.submit(inc, 1)
        bad = await c.submit(fail, 1)
        assert await c.gather([good, bad, good], errors="skip") == [2, 2]
        assert await c.gather({"g": good, "b": bad}, errors="skip") == {"g": 2}
        assert await c.gather([[bad], (good, bad)], errors="skip") == [[], (2,)]
        with pytest.raises(ValueError, match="errors"):
            await c.gather([good], errors="bogus")


# ---------------------------------------------------------------- scatter


async def test_scatter_single_list_dict(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        one = await c.scatter(123)
        assert isinstance(one, Future) and one.status == "finished"
        assert await one == 123
        many = await c.scatter([1, 2, 3])
        assert isinstance(many, list) and len(many) == 3
        assert await c.gather(many) == [1, 2, 3]
        tup = await c.scatter((4, 5))
        assert isinstance(tup, tuple) and await c.gather(tup) == (4, 5)
        named = await c.scatter({"k1": 10, "k2": 20})
        assert set(named) == {"k1", "k2"}
        assert named["k1"].key == "k1"
        assert await c.gather(named) == {"k1": 10, "k2": 20}
        # scattered data feeds tasks
        assert await (await c.submit(add, named["k1"], one)) == 133
        # content-addressed by default
        assert (await c.scatter(123)).key == one.key
        assert (await c.scatter(123, hash=False)).key != one.key
        # a list spreads over the workers
        holders = await c.who_has(many)
        assert len({a for addrs in holders.values() for a in addrs}) == 2


async def test_scatter_broadcast(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        f = await c.scatter("everywhere", broadcast=True)
        addrs = {w.address for w in cluster.workers}
        assert set((await c.who_has([f]))[f.key]) == addrs
        for w in cluster.workers:
            assert w.data[f.key] == "everywhere"


async def test_scatter_workers_restriction(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0, w1 = cluster.workers
    with trio.fail_after(10):
        fs = await c.scatter([1, 2, 3, 4], workers=[w1.address])
        who = await c.who_has(fs)
        assert all(v == [w1.address] for v in who.values())
        assert all(f.key in w1.data and f.key not in w0.data for f in fs)
        by_name = await c.scatter({"named": 5}, workers=w0.name)
        assert (await c.who_has(by_name))["named"] == [w0.address]
        with pytest.raises(ValueError, match="no workers"):
            await c.scatter(1, workers=["tcp://127.0.0.1:1"])


# ---------------------------------------------------------------- cancel


async def test_cancel(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        f = await c.submit(blocked, 1)
        dep = await c.submit(inc, f)
        await wait_until(lambda: f.key in processing_keys(cluster), what="task running")
        await c.cancel([f])
        assert f.status == "cancelled" and f.cancelled() and f.done()
        with pytest.raises(CancelledError):
            await f
        # what depends on a cancelled task is cancelled too
        await wait_until(lambda: dep.done(), what="dependent cancelled")
        assert dep.status == "cancelled"
        await wait_until(lambda: f.key not in cluster.scheduler.state.tasks, what="scheduler forgets")
        _gate.set()
        # the worker is free again
        assert await (await c.submit(inc, 41)) == 42
        # resubmitting the same pure call computes it afresh
        again = await c.submit(blocked, 1)
        assert await again == 1


async def test_future_cancel_method(c: AsyncClient) -> None:
    with trio.fail_after(10):
        f = await c.submit(blocked, 2)
        await f.cancel()
        assert f.cancelled()
        with pytest.raises(CancelledError):
            await f.result()


# ---------------------------------------------------------------- introspection


async def test_who_has_has_what_nthreads(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0, w1 = cluster.workers
    with trio.fail_after(10):
        f = await c.submit(inc, 1, workers=[w0.address])
        g = await c.submit(inc, 2, workers=[w1.address])
        await c.gather([f, g])
        assert await c.who_has([f, g]) == {f.key: [w0.address], g.key: [w1.address]}
        assert (await c.who_has())[f.key] == [w0.address]
        hw = await c.has_what()
        assert set(hw) == {w0.address, w1.address}
        assert f.key in hw[w0.address] and g.key in hw[w1.address]
        assert f.key not in hw[w1.address]
        assert await c.has_what([w1.address]) == {w1.address: [g.key]}
        assert await c.nthreads() == {w0.address: 1, w1.address: 1}


@pytest.mark.trioflow_cluster(n_workers=2, threads_per_worker=2, memory_limit="1GB", resources={"GPU": 2})
async def test_scheduler_info(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        info = await c.scheduler_info()
        assert info["address"] == cluster.scheduler_address
        assert info["id"] == cluster.scheduler.id
        assert set(info["workers"]) == {w.address for w in cluster.workers}
        for w in cluster.workers:
            wi = info["workers"][w.address]
            assert wi["name"] == w.name
            assert wi["nthreads"] == 2
            assert wi["memory_limit"] == 1_000_000_000
            assert wi["resources"] == {"GPU": 2}
        assert await c.nthreads() == {w.address: 2 for w in cluster.workers}


async def test_run_on_workers(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0, w1 = cluster.workers
    with trio.fail_after(10):
        everywhere = await c.run(worker_name)
        assert everywhere == {w0.address: w0.name, w1.address: w1.name}
        assert await c.run(add, 1, y=2, workers=[w1.address]) == {w1.address: 3}
        assert await c.run(worker_name, workers=[w0.name]) == {w0.address: w0.name}
        with pytest.raises(Boom):
            await c.run(fail, 3)


async def test_get_worker_inside_task(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        for w in cluster.workers:
            name, address = await (await c.submit(whoami, workers=[w.address], pure=False))
            assert (name, address) == (w.name, w.address)
    with pytest.raises(ValueError, match="outside"):
        get_worker()


# ---------------------------------------------------------------- dependencies


async def test_futures_nested_in_arguments(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        a = await c.submit(inc, 1)  # 2
        b = await c.submit(inc, 2)  # 3
        d = await c.submit(inc, 3)  # 4
        f = await c.submit(total, [a, (b, 1)], {"k": d}, extra={"deep": [[a]]})
        assert await f == 2 + 3 + 1 + 4 + 2
        deps = {t.key for t in cluster.scheduler.state.tasks[f.key].dependencies} if f.key in cluster.scheduler.state.tasks else None
        assert deps == {a.key, b.key, d.key}


async def test_chain_across_workers(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0, w1 = cluster.workers
    with trio.fail_after(10):
        x = await c.submit(inc, 1, workers=[w0.address])
        y = await c.submit(inc, x, workers=[w1.address])  # fetched from w0
        z = await c.submit(add, x, y, workers=[w0.address])
        assert await z == 2 + 3
        assert [k for k, *_ in w1.task_log] == [y.key]
        assert {x.key, z.key} == {k for k, *_ in w0.task_log}
        who = await c.who_has([x, y])
        assert set(who[y.key]) == {w0.address, w1.address}, who  # y was copied to w0


async def test_future_of_another_client_is_refused_as_argument(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        async with open_client(cluster) as c2:
            other = await c2.submit(inc, 1, pure=False)
            with pytest.raises(ValueError, match="does not belong"):
                await c.submit(inc, other)
            assert await other == 2


# ---------------------------------------------------------------- the Future API


async def test_future_api(c: AsyncClient) -> None:
    with trio.fail_after(10):
        f = await c.submit(blocked, 5)
        assert not f.done()
        assert f.status == "pending"
        assert f.key.startswith("blocked-")
        with pytest.raises(TimeoutError):
            await f.traceback(timeout=0.05)
        with pytest.raises(TimeoutError):
            await f.result(timeout=0.05)
        with pytest.raises(TimeoutError):
            await f.exception(timeout=0.05)
        _gate.set()
        assert await f.result(timeout=5) == 5
        assert await f.exception() is None
        assert await f.traceback() is None
        assert f.done() and f.status == "finished"
        assert "finished" in repr(f) and f.key in repr(f)
        seen: list[Future] = []
        f.add_done_callback(seen.append)
        assert seen == [f]
        with pytest.raises(TypeError):
            pickle.dumps(f)


async def test_future_exception_and_traceback(c: AsyncClient) -> None:
    with trio.fail_after(10):
        f = await c.submit(fail, 7)
        exc = await f.exception()
        assert isinstance(exc, Boom) and str(exc) == "boom 7"
        assert f.status == "error" and f.done()
        tb = await f.traceback()
        text = "".join(traceback.format_tb(tb))
        assert "in fail" in text and "raise Boom" in text


# ---------------------------------------------------------------- as_completed and wait


async def test_as_completed_async(c: AsyncClient) -> None:
    with trio.fail_after(10):
        slow = await c.submit(blocked, "slow")
        fast = await c.submit(inc, 1)
        order = []
        ac = as_completed([slow, fast])
        async for f in ac:
            order.append(f)
            if f is fast:
                _gate.set()
        assert order == [fast, slow]


async def test_as_completed_with_results_and_add(c: AsyncClient) -> None:
    with trio.fail_after(10):
        fs = await c.map(inc, range(3))
        ac = as_completed(fs, with_results=True)
        results = {}
        added = False
        async for f, r in ac:
            results[f.key] = r
            if not added:
                extra = await c.submit(inc, 100)
                ac.add(extra)
                added = True
        assert sorted(results.values()) == [1, 2, 3, 101]
        assert ac.is_empty()


async def test_as_completed_errors(c: AsyncClient) -> None:
    with trio.fail_after(10):
        bad = await c.submit(fail, 1)
        with pytest.raises(Boom):
            async for _ in as_completed([bad], with_results=True):
                pass
        pairs = [p async for p in as_completed([bad], with_results=True, raise_errors=False)]
        # dask's shape: (future, (type, exception, traceback))
        assert len(pairs) == 1 and pairs[0][1][0] is Boom and isinstance(pairs[0][1][1], Boom)


async def test_wait(c: AsyncClient) -> None:
    with trio.fail_after(10):
        fast = await c.submit(inc, 1)
        slow = await c.submit(blocked, "w")
        done, not_done = await wait([fast, slow], return_when="FIRST_COMPLETED")
        assert fast in done and slow in not_done
        with pytest.raises(TimeoutError):
            await wait([fast, slow], timeout=0.05)
        _gate.set()
        done, not_done = await wait([fast, slow], timeout=5)
        assert done == {fast, slow} and not not_done
        with pytest.raises(ValueError):
            await wait([fast], return_when="SOMETIMES")
        assert await wait([]) == (set(), set())


# ---------------------------------------------------------------- errors


async def test_task_error_reraised_with_remote_traceback(c: AsyncClient) -> None:
    with trio.fail_after(10):
        f = await c.submit(fail, "x")
        with pytest.raises(Boom, match="boom x") as info:
            await f
        notes = "\n".join(getattr(info.value, "__notes__", []))
        assert "Remote traceback" in notes and "in fail" in notes
        assert f.status == "error"
        # raising twice does not duplicate the note
        with pytest.raises(Boom) as info2:
            await f.result()
        assert len(getattr(info2.value, "__notes__", [])) == 1


async def test_dependents_of_erred_task_err(c: AsyncClient) -> None:
    with trio.fail_after(10):
        bad = await c.submit(fail, 1)
        child = await c.submit(inc, bad)
        grandchild = await c.submit(add, child, 1)
        for f in (child, grandchild):
            with pytest.raises(Boom, match="boom 1"):
                await f
            assert f.status == "error"
        # submitted after the failure is known: errs straight away
        late = await c.submit(inc, bad, pure=False)
        with pytest.raises(Boom, match="boom 1"):
            await late


async def test_unpicklable_result(c: AsyncClient) -> None:
    with trio.fail_after(10):
        f = await c.submit(return_lock)
        with pytest.raises(SerializationError) as info:
            await f
        assert "lock" in str(info.value).lower()
        assert "cannot serialize" in str(info.value)
        # the worker carries on
        assert await c.gather(await c.map(inc, range(4))) == [1, 2, 3, 4]


async def test_unpicklable_argument_raises_in_submit(c: AsyncClient) -> None:
    with trio.fail_after(10):
        with pytest.raises(SerializationError, match="lock"):
            await c.submit(inc, threading.Lock())
        assert await (await c.submit(inc, 1)) == 2


async def test_function_from_module_missing_on_worker(c: AsyncClient, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # In-process workers share sys.modules with this test, so make the
    # function bytes while the module is importable, then take it away.
    modname = f"trioflow_vanishing_{time.time_ns()}"
    (tmp_path / f"{modname}.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = __import__(modname)
    fbytes = dumps_function(mod.double)
    assert modname.encode() in fbytes  # pickled by reference
    monkeypatch.undo()
    del sys.modules[modname]
    args = Serialized(kind=0, data=pickle.dumps(((21,), {}), protocol=5))
    spec = m.TaskSpec(key="vanishing-1", function=fbytes, args=args)
    with trio.fail_after(10):
        (f,) = await c.update_graph([spec], ["vanishing-1"])
        with pytest.raises(ImportError, match=f"No module named '{modname}'"):
            await f
        # the worker carries on
        assert await (await c.submit(inc, 1)) == 2


# ---------------------------------------------------------------- reference counting


async def test_released_futures_free_memory(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    sched = cluster.scheduler
    with trio.fail_after(10):
        x = await c.submit(inc, 1)
        y = await c.submit(inc, x)
        fs = await c.map(add, range(5), range(5))
        s = await c.scatter([10, 20, 30])
        b = await c.scatter(40, broadcast=True)
        bad = await c.submit(fail, 1)
        await c.gather([y, fs, s, b])
        await wait([bad])
        assert sched.state.tasks
        assert any(w.data for w in cluster.workers)
        del x, y, fs, s, b, bad
        gc.collect()
        await wait_until(lambda: not sched.state.tasks, what="the scheduler forgets every key")
        await wait_until(lambda: all(not w.data for w in cluster.workers), what="workers free their data")
        assert all(not w.state.tasks for w in cluster.workers)
        assert not c._states and not c._refcount


async def test_refcount_keeps_shared_key(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        a = await c.submit(inc, 1)
        b = await c.submit(inc, 1)  # same key
        assert a.key == b.key and c.refcount(a.key) == 2
        await a
        key = a.key
        del a
        gc.collect()
        await trio.sleep(0.05)
        assert key in cluster.scheduler.state.tasks
        assert await b == 2
        del b
        gc.collect()
        await wait_until(lambda: key not in cluster.scheduler.state.tasks, what="key forgotten")


async def test_intermediate_results_are_freed(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    tasks = cluster.scheduler.state.tasks
    with trio.fail_after(10):
        x = await c.submit(inc, 1)
        y = await c.submit(inc, x)
        xkey, ykey = x.key, y.key
        del x
        gc.collect()
        assert await y == 3
        # x's data goes; its run spec stays while y may need recomputing
        await wait_until(lambda: tasks[xkey].state == "released", what="intermediate released")
        await wait_until(lambda: all(xkey not in w.data for w in cluster.workers), what="intermediate freed")
        del y
        gc.collect()
        await wait_until(lambda: xkey not in tasks and ykey not in tasks, what="both forgotten")


# ---------------------------------------------------------------- retries, resources, restrictions


async def test_retries(c: AsyncClient) -> None:
    with trio.fail_after(10):
        token = f"retry-{time.time_ns()}"
        assert await (await c.submit(flaky, token, 2, retries=2)) == "ok after 3"
        token = f"retry-{time.time_ns()}"
        with pytest.raises(Boom, match="attempt 2"):
            await (await c.submit(flaky, token, 2, retries=1))


@pytest.mark.trioflow_cluster(n_workers=1, threads_per_worker=2)
async def test_resources(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    token = f"res-{time.time_ns()}"
    with trio.fail_after(10):
        plain = cluster.workers[0]
        gpu = await cluster.start_worker(name="gpu-worker", nthreads=3, resources={"GPU": 1})
        fs = await c.map(count_concurrent, [token] * 6, range(6), resources={"GPU": 1})
        assert await c.gather(fs) == list(range(6))
        assert all(v == [gpu.address] for v in (await c.who_has(fs)).values())
        # one unit of GPU: never two of these at once, though it has three threads
        assert _concurrency[f"{token}/gpu-worker"][1] == 1
        assert f"{token}/{plain.name}" not in _concurrency
        # nobody has enough: it waits, and runs once a worker that can joins
        big = await c.submit(inc, 1, resources={"GPU": 2})
        tasks = cluster.scheduler.state.tasks
        await wait_until(lambda: big.key in tasks and tasks[big.key].state == "no-worker", what="the task to wait for a worker")
        assert not big.done()
        big_worker = await cluster.start_worker(name="big-gpu", resources={"GPU": 2})
        assert await big == 2
        assert (await c.who_has([big]))[big.key] == [big_worker.address]


@pytest.mark.trioflow_cluster(n_workers=2, threads_per_worker=2, resources={"slot": 1})
async def test_resources_from_open_cluster(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    token = f"res-{time.time_ns()}"
    with trio.fail_after(10):
        fs = await c.map(count_concurrent, [token] * 8, range(8), resources={"slot": 1})
        assert await c.gather(fs) == list(range(8))
        for w in cluster.workers:
            assert _concurrency.get(f"{token}/{w.name}", [0, 1])[1] == 1


async def test_workers_restriction(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0, w1 = cluster.workers
    with trio.fail_after(10):
        by_address = await c.map(whoami, range(4), workers=[w1.address])
        assert {r[1] for r in await c.gather(by_address)} == {w1.address}
        by_name = await c.map(whoami, range(4, 8), workers=w0.name)
        assert {r[1] for r in await c.gather(by_name)} == {w0.address}
        # nobody matches: the task waits
        nowhere = await c.submit(inc, 1, workers=["no-such-worker"])
        tasks = cluster.scheduler.state.tasks
        await wait_until(lambda: nowhere.key in tasks and tasks[nowhere.key].state == "no-worker", what="the task to wait for its worker")
        assert not nowhere.done()
        late = await cluster.start_worker(name="no-such-worker")
        assert await nowhere == 2
        assert (await c.who_has([nowhere]))[nowhere.key] == [late.address]


async def test_allow_other_workers(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0, w1 = cluster.workers
    with trio.fail_after(10):
        f = await c.submit(whoami, 1, workers=["no-such-worker"], allow_other_workers=True)
        assert (await f)[1] in {w0.address, w1.address}
        # when the named worker is there, it is preferred
        fs = await c.map(whoami, range(4), workers=[w1.name], allow_other_workers=True, pure=False)
        assert {r[1] for r in await c.gather(fs)} == {w1.address}


async def test_priority_runs_first(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0 = cluster.workers[0]
    with trio.fail_after(10):
        first = await c.submit(blocked, "gate", workers=[w0.address])
        await wait_until(lambda: first.key in processing_keys(cluster), what="gate task running")
        # w0 has one thread, busy; queue low then high priority behind it.
        # (The worker hands the first few arrivals to its executor at once,
        # so high may follow some lows, but it overtakes most of them.)
        low = await c.map(inc, range(8), workers=[w0.address], priority=-1)
        high = await c.submit(inc, 100, workers=[w0.address], priority=10)
        await wait_until(lambda: all(w0.state.tasks.get(f.key) is not None for f in [*low, high]), what="tasks on the worker")
        _gate.set()
        await c.gather([first, low, high])
        order = [k for k, *_ in w0.task_log]
        assert sum(order.index(f.key) > order.index(high.key) for f in low) >= len(low) // 2, order


# ---------------------------------------------------------------- client lifecycle


async def test_two_clients_share_keys(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        async with open_client(cluster.scheduler_address) as c2:
            f1 = await c.submit(inc, 10)
            f2 = await c2.submit(inc, 10)
            assert f1.key == f2.key
            assert await f1 == await f2 == 11
            with pytest.raises(ValueError, match="another client"):
                await c.gather([f2])
        # c2 gone: c's claim keeps the key
        assert f1.key in cluster.scheduler.state.tasks
        assert await f1 == 11


async def test_futures_lost_when_client_closes(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, _ = cc
    with trio.fail_after(10):
        async with open_client(cluster) as c2:
            f = await c2.submit(blocked, "lost")
        assert f.status == "lost"
        await wait_until(lambda: f.key not in cluster.scheduler.state.tasks, what="key of a closed client forgotten")


async def test_open_client_by_address_string(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, _ = cc
    with trio.fail_after(10):
        async with open_client(cluster.scheduler_address) as c2:
            assert c2.status == "running"
            assert await (await c2.submit(inc, 1)) == 2
        assert c2.status == "closed"


@pytest.mark.slow
async def test_many_small_tasks(c: AsyncClient) -> None:
    with trio.fail_after(20):
        fs = await c.map(inc, range(500))
        assert await c.gather(fs) == list(range(1, 501))
        total_f = await c.submit(total, fs)
        assert await total_f == sum(range(1, 501))


# ---------------------------------------------------------------- more edges


async def test_scatter_onto_a_running_task_keeps_the_scattered_value(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    # Regression: the worker stored the run's result over the value
    # scattered under the same key while the task ran.  Scattered data is
    # authoritative: the late result is dropped.
    cluster, c = cc
    w0 = cluster.workers[0]
    with trio.fail_after(10):
        f = await c.submit(blocked, "computed", key="running-then-scattered", workers=[w0.address])
        key = f.key
        assert w0.state is not None
        await wait_until(lambda: key in w0.state.tasks and w0.state.tasks[key].state == "executing", what="task running")
        s = await c.scatter({key: "scattered"}, workers=[w0.address])
        assert await f == "scattered"
        _gate.set()
        await wait_until(lambda: any(k == key for k, *_ in w0.task_log), what="the run returns")
        assert w0.data[key] == "scattered" and w0.state.tasks[key].state == "memory"
        assert w0.state.n_executing == 0  # its thread given back
        assert await f == "scattered" and await s[key] == "scattered"
        assert await (await c.submit(add, f, "!")) == "scattered!"
        del f, s
        gc.collect()
        await wait_until(lambda: not w0.data and not w0.state.tasks, what="all freed")


async def test_scatter_onto_a_key_in_flight_keeps_the_scattered_value(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    # The same for a copy being fetched: the worker stored the fetched copy
    # over the value scattered while the transfer was on its way.
    cluster, c = cc
    w0, w1 = cluster.workers
    with trio.fail_after(10):
        x = await c.submit(inc, 1, key="in-flight-then-scattered", workers=[w0.address])
        assert await x == 2
        arrived = trio.Event()
        release = trio.Event()
        assert w1.pool is not None and w1.state is not None
        rpc = w1.pool.rpc

        async def held_back(address: str, request: m.Message, reply_type: Any, **kw: Any) -> Any:
            reply = await rpc(address, request, reply_type, **kw)
            if isinstance(request, m.GetData) and x.key in request.keys:
                arrived.set()
                await release.wait()
            return reply

        w1.pool.rpc = held_back  # type: ignore[method-assign]
        y = await c.submit(add, x, 10, workers=[w1.address])
        await arrived.wait()
        assert w1.state.tasks[x.key].state == "flight"
        await c.scatter({x.key: 100}, workers=[w1.address])
        assert await y == 110  # computed with the scattered value
        release.set()
        await wait_until(lambda: not w1.state.in_flight_workers, what="the transfer returns")
        assert w1.data[x.key] == 100


async def test_scatter_repeated_values(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        fs = await c.scatter([7, 7, 8])
        assert fs[0].key == fs[1].key != fs[2].key
        assert await c.gather(fs) == [7, 7, 8]
        # every worker that got a copy is known, so all copies are freed
        keys = {f.key for f in fs}
        held = {(w.address, k) for w in cluster.workers for k in w.data if k in keys}
        who = await c.who_has(fs)
        assert held == {(a, k) for k, addrs in who.items() for a in addrs}
        del fs
        gc.collect()
        await wait_until(lambda: all(not w.data for w in cluster.workers), what="all copies freed")


class Unpicklable(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable() -> None:
    raise Unpicklable("cannot travel")


def raise_needs_two_args() -> None:
    raise NeedsTwoArgs("x", "y")


async def test_exceptions_that_do_not_travel(c: AsyncClient) -> None:
    from trioflow.client.futures import RemoteException

    with trio.fail_after(10):
        with pytest.raises(RemoteException, match="cannot travel") as info:
            await (await c.submit(raise_unpicklable))
        assert info.value.type_name == "Unpicklable"
        assert "raise_unpicklable" in "\n".join(info.value.__notes__)
        with pytest.raises((RemoteException, NeedsTwoArgs), match="x/y"):
            await (await c.submit(raise_needs_two_args))


async def test_odd_results(c: AsyncClient) -> None:
    with trio.fail_after(10):
        assert await (await c.submit(lambda: None)) is None
        assert await (await c.submit(lambda: b"raw")) == b"raw"
        assert await (await c.submit(lambda: bytearray(b"ba"))) == bytearray(b"ba")
        assert bytes(await (await c.submit(lambda: memoryview(b"mv")))) == b"mv"
        assert await (await c.submit(lambda: {"a": [1, (2, 3)]})) == {"a": [1, (2, 3)]}


async def test_lost_result_is_recomputed(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0, w1 = cluster.workers
    with trio.fail_after(10):
        x = await c.submit(inc, 1, workers=[w0.address], allow_other_workers=True)
        assert await x == 2
        await cluster.remove_worker(w0)
        assert await x == 2
        assert (await c.who_has([x]))[x.key] == [w1.address]


async def test_lost_scattered_data_errs(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0, _ = cluster.workers
    with trio.fail_after(10):
        s = await c.scatter(5, workers=[w0.address])
        await cluster.remove_worker(w0)
        await wait_until(lambda: s.done() and s.status != "finished", what="scattered future errs")
        with pytest.raises(Exception, match="lost"):
            await s
        with pytest.raises(Exception, match="lost"):
            await (await c.submit(inc, s))


@pytest.mark.trioflow_cluster(n_workers=0)
async def test_no_workers_yet(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        f = await c.submit(inc, 1)
        await trio.sleep(0.05)
        assert not f.done()
        await cluster.start_worker()
        assert await f == 2


async def test_invalid_graph_errs_the_futures(c: AsyncClient) -> None:
    args = Serialized(kind=0, data=pickle.dumps(((), {}), protocol=5))
    spec = m.TaskSpec(key="orphan", function=dumps_function(inc), args=args, dependencies=["no-such-key"])
    with trio.fail_after(10):
        (f,) = await c.update_graph([spec], ["orphan"])
        with pytest.raises(ValueError, match="unknown key"):
            await f
        assert await (await c.submit(inc, 1)) == 2


async def test_cancel_then_resubmit_at_once(c: AsyncClient) -> None:
    with trio.fail_after(10):
        for _ in range(3):
            f = await c.submit(blocked, "again")
            await c.cancel(f)
            g = await c.submit(blocked, "again")
            assert f.cancelled() and not g.done()
            _gate.set()
            assert await g == "again"
            _gate.clear()
            del f, g


async def test_cancel_finished_future(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        f = await c.submit(inc, 1)
        await f
        await c.cancel([f])
        with pytest.raises(CancelledError):
            await f
        await wait_until(lambda: f.key not in cluster.scheduler.state.tasks, what="cancelled key forgotten")
        await wait_until(lambda: all(f.key not in w.data for w in cluster.workers), what="cancelled data freed")


async def test_future_after_client_closed(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, _ = cc
    with trio.fail_after(10):
        async with open_client(cluster) as c2:
            f = await c2.submit(inc, 1)
            assert await f == 2
        from trioflow import FutureLostError

        with pytest.raises(FutureLostError):
            await c2.submit(inc, 2)


async def test_concurrent_awaits(c: AsyncClient) -> None:
    with trio.fail_after(10):
        f = await c.submit(blocked, "many")
        results = []

        async def waiter() -> None:
            results.append(await f)

        async with trio.open_nursery() as n:
            for _ in range(5):
                n.start_soon(waiter)
            await trio.sleep(0.01)
            _gate.set()
        assert results == ["many"] * 5


@pytest.mark.slow
@pytest.mark.trioflow_cluster(n_workers=0)
async def test_module_missing_on_a_subprocess_worker(cc: tuple[InProcessCluster, AsyncClient], tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster, c = cc
    """The real thing: the module exists only where the client runs."""
    import os
    import signal
    import subprocess

    modname = f"trioflow_client_only_{time.time_ns()}"
    (tmp_path / f"{modname}.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = __import__(modname)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trioflow.worker", cluster.scheduler_address, "--no-nanny", "--no-dashboard", "--nthreads", "1", "--name", "sub", "--memory-limit", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await c.wait_for_workers(1, timeout=20)
            f = await c.submit(mod.triple, 2)
            with pytest.raises(ModuleNotFoundError, match=modname):
                await f
            assert "Remote traceback" in "\n".join((await f.exception()).__notes__)
            assert await (await c.submit(abs, -4)) == 4  # and it carries on
        finally:
            with trio.move_on_after(10) as scope:
                proc.send_signal(signal.SIGTERM)
                assert await proc.wait() == 0
            if scope.cancelled_caught:
                proc.kill()
                await proc.wait()


async def test_value_missing_from_worker_store_errs(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    w0 = cluster.workers[0]
    with trio.fail_after(10):
        x = await c.submit(inc, 1, workers=[w0.address])
        await x
        del w0.data[x.key]  # the store lost it behind the state machine's back
        y = await c.submit(inc, x, workers=[w0.address])
        with pytest.raises(RuntimeError, match="missing"):
            await y
        assert await (await c.submit(inc, 5, workers=[w0.address])) == 6


_rebuilds: list[int] = []


def _rebuild_once_only() -> str:
    _rebuilds.append(1)
    if len(_rebuilds) == 1:
        raise ValueError("cannot rebuild this here")
    return "rebuilt"


class FailsFirstUnpickle:
    """Unpickling fails the first time only: one worker refuses, one accepts."""

    def __reduce__(self) -> Any:
        return (_rebuild_once_only, ())


async def test_scatter_the_worker_cannot_unpickle(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    _rebuilds.clear()
    with trio.fail_after(10):
        with pytest.raises(SerializationError, match="cannot rebuild this here"):
            await c.scatter(FailsFirstUnpickle(), broadcast=True)
        # the copy that did land is freed, not left behind unknown
        await wait_until(lambda: all(not w.data for w in cluster.workers), what="landed copy freed")
        await wait_until(lambda: not cluster.scheduler.state.tasks, what="scheduler forgets it")
        assert len(_rebuilds) == 2
        assert await (await c.scatter(1)) == 1


async def test_run_errors(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, c = cc
    with trio.fail_after(10):
        with pytest.raises(ValueError, match="no worker"):
            await c.run(inc, 1, workers=["nobody"])
        with pytest.raises(SerializationError, match="(?i)lock"):
            await c.run(return_lock)


async def test_errors_leave_the_context_managers_unwrapped() -> None:
    from trioflow import CommError

    with trio.fail_after(10):
        # not an ExceptionGroup: ``except Boom`` around the block must work
        with pytest.raises(Boom, match="boom 3"):
            async with open_cluster(n_workers=1) as cluster, open_client(cluster) as c:
                await (await c.submit(fail, 3))
        with pytest.raises(KeyError):
            async with open_cluster(n_workers=0):
                raise KeyError("mine")
        with pytest.raises(CommError, match="could not connect"):
            async with open_client("tcp://127.0.0.1:1", timeout=2):
                pass


async def test_cancelled_from_outside(cc: tuple[InProcessCluster, AsyncClient]) -> None:
    cluster, _ = cc
    with trio.fail_after(10):
        with trio.move_on_after(0.05) as scope:
            async with open_client(cluster) as c2:
                f = await c2.submit(blocked, "outside")
                await f
        assert scope.cancelled_caught
        assert c2.status == "closed" and f.status == "lost"


async def test_scheduler_goes_away() -> None:
    from trioflow import FutureLostError

    with trio.fail_after(10):
        async with cluster_client(n_workers=1) as (cluster, c):
            f = await c.submit(blocked, "orphaned")
            await cluster.scheduler.aclose()
            with pytest.raises(FutureLostError, match="scheduler"):
                await f
            assert c.status == "lost"
            with pytest.raises(FutureLostError):
                await c.submit(inc, 1)


@pytest.mark.trioflow_cluster(validate=False)  # 620 tasks: validation after every step takes seconds
async def test_large_graphs_go_in_pieces_under_the_header_cap(trioflow_client: AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    c = trioflow_client
    import trioflow.client.submit as core

    monkeypatch.setattr(core, "GRAPH_PIECE_TASKS", 50)
    with trio.fail_after(30):
        futures = await c.map(inc, range(500))
        assert sum(await c.gather(futures)) == sum(range(1, 501))
        # A chain across piece boundaries: dependencies are sent first.
        prev = None
        for _ in range(120):
            f = await c.submit(add, prev if prev is not None else 0, 1, pure=False)
            prev = f
        assert await prev == 120
