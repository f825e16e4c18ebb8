"""Observing a real cluster (worker processes, headless Chromium): a story
across a worker's death, and the performance report."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import cloudpickle
import pytest
import trio
from support import wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _answer() -> int:
    return 42


@pytest.mark.slow
@pytest.mark.trioflow_cluster(n_workers=2, processes=True)
async def test_story_after_a_worker_death_shows_both_runs(trioflow_cluster: Any, trioflow_client: Any) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    with trio.fail_after(60):
        a = cluster.workers[0]
        x = await client.submit(_answer, workers=[a.worker_address], allow_other_workers=True)
        assert await x == 42
        dead_addr, dead_pid = a.worker_address, a.pid
        os.kill(dead_pid, signal.SIGKILL)
        await wait_until(lambda: dead_addr not in cluster.scheduler.state.workers, what="the scheduler to drop the worker", timeout=20)
        assert await x == 42
        story = await client.story(x)
        runs = [e for e in story if e[3] == "scheduler" and e[1] == "processing" and e[2] == "memory"]
        assert len(runs) == 2, story
        assert runs[0][5] == dead_addr and runs[1][5] != dead_addr
