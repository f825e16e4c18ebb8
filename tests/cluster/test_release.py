"""Released values really go: no worker frame keeps the last task's result,
arguments or the data it last sent to a peer alive."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pytest
import trio

from trioflow import AsyncClient
from trioflow.deploy import InProcessCluster

pytestmark = pytest.mark.timeout(60)

REFS: list[weakref.ref[Any]] = []


def _produce(n: int) -> np.ndarray:
    x = np.ones(n)
    REFS.append(weakref.ref(x))
    return x


def _consume(x: np.ndarray) -> float:
    REFS.append(weakref.ref(x))
    return float(x.sum())


async def test_released_result_and_transferred_copy_are_freed(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    REFS.clear()
    with trio.fail_after(30):
        a, b = (w.address for w in cluster.workers)
        x = await client.submit(_produce, 100_000, workers=[a], pure=False)
        y = await client.submit(_consume, x, workers=[b], pure=False)
        assert await y == 100_000.0
        assert len(REFS) == 2 and all(r() is not None for r in REFS)
        del x, y
        while any(w.data for w in cluster.workers):
            await trio.sleep(0.01)
        await trio.sleep(0.05)
        # The producer's array was served to b from a's peer loop, run by
        # a's executor thread; b's copy was the argument of b's last job.
        # Both threads and loops now sit idle: neither value may be alive.
        assert [r() is None for r in REFS] == [True, True]
