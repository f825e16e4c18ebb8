"""The nanny inside ``open_cluster(processes=True)``: real worker processes.

Trio tests: the scheduler and the nannies run in the test's own loop, the
workers are child processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import sys

import cloudpickle
import pytest
import trio
from support import wait_until

from trioflow import open_client, open_cluster
from trioflow.process.nanny import Nanny, NannyStartError

pytestmark = pytest.mark.slow

# Task functions travel by value: the worker processes cannot import this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _pid() -> int:
    return os.getpid()


async def test_open_cluster_processes_kill_and_restart() -> None:
    with trio.fail_after(60):
        async with open_cluster(2, processes=True) as cluster, open_client(cluster) as client:
            nannies = list(cluster.workers)
            assert all(isinstance(n, Nanny) for n in nannies)
            assert all(n.address.startswith("tcp://127.0.0.1:") for n in nannies)
            pids = {n.pid for n in nannies}
            assert len(pids) == 2 and os.getpid() not in pids
            await client.wait_for_workers(2, timeout=20)
            info = (await client.scheduler_info())["workers"]
            assert {w["pid"] for w in info.values()} == pids
            assert {w["nanny"] for w in info.values()} == {n.address for n in nannies}

            # kill -9 the worker process: the nanny starts another one.
            victim = nannies[0]
            old_pid, old_addr = victim.pid, victim.worker_address
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)
            await wait_until(lambda: victim.pid != old_pid and victim.status == "running", what="the killed worker to be replaced", timeout=20)
            assert victim.restarts == 1
            await wait_until(lambda: old_addr not in cluster.scheduler.state.workers and len(cluster.scheduler.state.workers) == 2, what="the scheduler to see the new worker", timeout=20)
            fut = await client.submit(_pid, workers=[victim.worker_address], pure=False)
            assert await fut == victim.pid

            # A requested restart: clean stop (exit 0 is not a crash), new process.
            other = nannies[1]
            old_pid = other.pid
            await other.restart(timeout=20)
            assert other.pid != old_pid and other.status == "running"
            assert other.restarts == 0
            await wait_until(lambda: len(cluster.scheduler.state.workers) == 2, what="the restarted worker to register", timeout=20)
            fut = await client.submit(_pid, workers=[other.worker_address], pure=False)
            assert await fut == other.pid
        assert all(n.status == "closed" for n in nannies)


async def test_nanny_start_error_is_one_line() -> None:
    """A worker that cannot reach its scheduler within death_timeout is not restarted."""
    nanny = Nanny("tcp://127.0.0.1:1", listen_address="tcp://127.0.0.1:0", death_timeout=0.5)
    with trio.fail_after(30):
        with pytest.raises(NannyStartError, match="death-timeout") as info:
            await nanny.serve()
    assert "\n" not in str(info.value)
    # It never served: failed, not closed.
    assert nanny.status == "failed" and nanny.process is not None and nanny.process.returncode == 3
