"""100 MB through the cluster: scatter in, compute, results out.

These check the zero-copy path end to end (pickle-5 buffers as separate
frames, received into preallocated memory) and that nothing of that size
is left behind once the futures are gone.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import trio
from support import wait_until

from trioflow import AsyncClient, Client, LocalCluster
from trioflow.deploy import InProcessCluster

pytestmark = pytest.mark.slow

N = 100 * 2**20 // 8  # 100 MiB of float64


def total(a: np.ndarray) -> float:
    return float(a.sum())


def make(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


def shift(a: np.ndarray) -> np.ndarray:
    return a + 1


async def _wait_freed(cluster) -> None:
    await wait_until(lambda: not cluster.scheduler.state.tasks and not any(w.data for w in cluster.workers), 10, "the data to be freed")


@pytest.mark.trioflow_cluster(validate=False)
async def test_scatter_100mb(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, c = trioflow_cluster, trioflow_client
    data = np.random.default_rng(0).random(N)
    with trio.fail_after(30):
        f = await c.scatter(data)
        (holder,) = (await c.who_has([f]))[f.key]
        stored = next(w for w in cluster.workers if w.address == holder).data[f.key]
        assert stored.nbytes == data.nbytes
        assert np.shares_memory(stored, data) is False
        assert await (await c.submit(total, f)) == pytest.approx(data.sum())
        back = await f
        assert back.dtype == data.dtype and np.array_equal(back, data)
        del f, back, stored
        gc.collect()
        await _wait_freed(cluster)


async def test_result_100mb_moves_between_workers(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, c = trioflow_cluster, trioflow_client
    with trio.fail_after(30):
        w0, w1 = cluster.workers
        big = await c.submit(make, N, workers=[w0.address])
        # computing on the other worker fetches the 100 MB from w0
        moved = await c.submit(shift, big, workers=[w1.address])
        result = await moved
        assert result.nbytes == N * 8
        assert result[0] == 1.0 and result[-1] == float(N)
        assert set((await c.who_has([big]))[big.key]) == {w0.address, w1.address}
        assert any(t["bytes"] >= N * 8 for t in w1.transfer_log)
        del big, moved, result
        gc.collect()
        await _wait_freed(cluster)


def test_sync_client_100mb_round_trip() -> None:
    data = np.ones(N, dtype=np.float64)
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        f = client.scatter(data)
        g = client.submit(shift, f)
        out = g.result(timeout=30)
        assert out.nbytes == data.nbytes and float(out.sum()) == 2.0 * N
        assert client.gather(f).sum() == N
