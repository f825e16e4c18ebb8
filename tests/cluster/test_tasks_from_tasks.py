"""Tasks that launch tasks: get_client / get_worker, secede / rejoin,
worker_client, against real clusters (thread workers in this process, and
nanny-supervised worker processes)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle
import pytest
import trio

import trioflow
from trioflow import (
    Client,
    LocalCluster,
    get_client,
    get_worker,
    open_client,
    open_cluster,
    rejoin,
    secede,
    worker_client,
)

# Process workers cannot import this module: send its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fib(n: int) -> int:
    """Recursive fibonacci of futures: each level submits its two children
    and waits for them outside the worker's pool."""
    if n < 2:
        return n
    client = get_client()
    a = client.submit(fib, n - 1, pure=False)
    b = client.submit(fib, n - 2, pure=False)
    secede()
    x, y = client.gather([a, b])
    rejoin()
    return x + y


def fib_wc(n: int) -> int:
    if n < 2:
        return n
    with worker_client() as client:
        a = client.submit(fib_wc, n - 1, pure=False)
        b = client.submit(fib_wc, n - 2, pure=False)
        return a.result() + b.result()  # type: ignore[no-any-return]


def inc(x: int) -> int:
    return x + 1


def submit_and_wait(x: int) -> tuple[int, str, str]:
    """Submit from a task and wait for the result without seceding (two
    threads): the client reaches the same scheduler, no configuration."""
    client = get_client()
    w = get_worker()
    fut = client.submit(inc, x)
    return fut.result(timeout=30), client.scheduler_address, w.scheduler_address


def own_client(x: int) -> tuple[int, str]:
    """A blocking Client made in a task, with no address: the worker's scheduler."""
    with Client() as client:
        return client.submit(inc, x).result(timeout=30), client.scheduler_address


def addresses() -> tuple[str, str]:
    return get_client().scheduler_address, get_worker().scheduler_address


def one_future_left(x: int) -> int:
    client = get_client()
    fut = client.submit(inc, x, key=f"inner-{x}")
    return fut.result()  # type: ignore[no-any-return]


def test_names_exported() -> None:
    for name in ("get_client", "worker_client", "secede", "rejoin", "get_worker"):
        assert name in trioflow.__all__
        assert getattr(trioflow, name) is not None


def test_outside_a_task() -> None:
    with pytest.raises(ValueError, match="outside"):
        secede()
    with pytest.raises(ValueError, match="outside"):
        rejoin()
    with pytest.raises(ValueError, match="outside"), worker_client():
        pass


async def test_fibonacci_on_one_single_thread_worker() -> None:
    """Every level waits outside the pool: on ONE thread, fib(8) (dozens of
    tasks waiting on each other at once) finishes."""
    with trio.fail_after(40):
        async with open_cluster(n_workers=1, threads_per_worker=1, validate=True) as cluster, open_client(cluster) as client:
            assert await (await client.submit(fib, 8)) == 21
            assert await (await client.submit(fib_wc, 6)) == 8


async def test_a_task_submits_and_waits_in_an_in_process_cluster() -> None:
    with trio.fail_after(20):
        async with open_cluster(n_workers=1, threads_per_worker=2) as cluster, open_client(cluster) as client:
            value, seen, sched = await (await client.submit(submit_and_wait, 1))
            assert value == 2 and seen == sched == cluster.scheduler_address


async def test_futures_of_a_task_are_released_when_it_ends() -> None:
    with trio.fail_after(20):
        async with open_cluster(n_workers=1, threads_per_worker=2) as cluster, open_client(cluster) as client:
            assert await (await client.submit(one_future_left, 1, key="outer")) == 2
            # The inner key is forgotten once the task's future is collected.
            state = cluster.scheduler.state
            while "inner-1" in state.tasks:
                gc.collect()
                await trio.sleep(0.01)
            assert "outer" in state.tasks


def test_thread_workers_blocking_client() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        assert client.submit(fib, 7).result(timeout=30) == 13
        assert client.submit(fib_wc, 5).result(timeout=30) == 5
        a, b = client.submit(addresses).result(timeout=30)
        assert a == b == cluster.scheduler_address
        with worker_client_cluster() as (cluster2, client2):
            assert client2.submit(own_client, 1).result(timeout=30) == (2, cluster2.scheduler_address)


@pytest.mark.slow
def test_process_workers() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        assert client.submit(fib, 6).result(timeout=60) == 8
        assert client.submit(fib_wc, 5).result(timeout=60) == 5
        a, b = client.submit(addresses).result(timeout=60)
        assert a == b == cluster.scheduler_address
    with worker_client_cluster(processes=True) as (cluster2, client2):
        assert client2.submit(own_client, 1).result(timeout=60) == (2, cluster2.scheduler_address)


@contextmanager
def worker_client_cluster(processes: bool = False) -> Iterator[tuple[LocalCluster, Client]]:
    """Two threads: a task waits for its own client's task without seceding."""
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=processes, dashboard_address=None) as cluster, Client(cluster) as client:
        yield cluster, client


def _get_client_outside(address: str) -> Any:
    return get_client(address)


def test_get_client_outside_a_task_is_the_default_client() -> None:
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        assert get_client() is client
        assert _get_client_outside(client.scheduler_address) is client
