"""Actors: an object on one worker, called from the client and from tasks."""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
import pytest
import trio

from trioflow import Actor, ActorFuture, Client, LocalCluster, get_worker, open_client, open_cluster

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def increment(self, by: int = 1) -> int:
        # Not atomic: correct only because calls run one at a time.
        n = self.n
        self.n = n + by
        return self.n

    def where(self) -> str:
        return get_worker().address  # type: ignore[no-any-return]

    def fail(self) -> None:
        raise KeyError("nope")

    async def aget(self) -> int:
        await trio.sleep(0)
        return self.n


def bump(counter: Actor) -> int:
    return counter.increment().result()  # type: ignore[no-any-return]


def test_counter_from_100_tasks() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        fut = client.submit(Counter, actor=True)
        counter = fut.result(timeout=30)
        assert isinstance(counter, Actor)
        futures = [client.submit(bump, fut, pure=False) for _ in range(100)]
        client.gather(futures)
        assert counter.n == 100
        call = counter.increment(5)
        assert isinstance(call, ActorFuture)
        assert call.result(timeout=10) == 105
        assert counter.where().result(timeout=10) == counter.address
        with pytest.raises(KeyError, match="nope"):
            counter.fail().result(timeout=10)
        assert counter.aget().result(timeout=10) == 105
        # The proxy itself as an argument, too.
        assert client.submit(bump, counter, pure=False).result(timeout=10) == 106
        assert not hasattr(counter, "nbytes")  # (answered here: see _PROBED)
        # The proxy alone keeps the actor: the future may go.
        key = fut.key
        del fut, futures
        assert counter._future is not None and counter._future.key == key and client._core.refcount(key) >= 1
        assert counter.increment().result(timeout=10) == 107


async def test_actor_in_trio() -> None:
    with trio.fail_after(20):
        async with open_cluster(n_workers=1, threads_per_worker=2) as cluster, open_client(cluster) as client:
            fut = await client.submit(Counter, 10, actor=True)
            counter = await fut
            assert await counter.increment(2) == 12
            futures = [await client.submit(bump, fut, pure=False) for _ in range(10)]
            await client.gather(futures)
            assert await counter.increment(0) == 22


@pytest.mark.slow
def test_actor_on_process_workers() -> None:
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        fut = client.submit(Counter, actor=True)
        counter: Any = fut.result(timeout=60)
        futures = [client.submit(bump, fut, pure=False) for _ in range(20)]
        client.gather(futures)
        assert counter.n == 20
