"""Placement, queuing, stealing, resources, priorities and retries on a live cluster."""

import threading
import time
from typing import Any

import numpy as np
import pytest
import trio
from support import wait_until

from trioflow import AsyncClient, get_worker, open_client, open_cluster
from trioflow.deploy import InProcessCluster
from trioflow.protocol import messages as m


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
@pytest.mark.trioflow_cluster(n_workers=3)
async def test_task_runs_where_its_large_dependency_is(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    with trio.fail_after(30):
        for w in cluster.workers:
            big = await client.submit(_big, 50_000_000, workers=[w.address], pure=False)
            nbytes, where = await (await client.submit(_nbytes_and_where, big))
            assert nbytes == 50_000_000
            assert where == w.address


@pytest.mark.slow
@pytest.mark.trioflow_cluster(n_workers=1, validate=False)
async def test_pinned_load_spreads_when_a_second_worker_joins(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    with trio.fail_after(60):
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
@pytest.mark.trioflow_cluster(n_workers=1)
async def test_dependent_tasks_are_stolen_by_an_idle_worker(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    with trio.fail_after(60):
        seed = await client.submit(_slow, 0, 0.0)
        await seed
        # Tasks with a dependency are not queued: all go to the only worker.
        futures = [await client.submit(_slow, seed, 0.03, pure=False) for _ in range(60)]
        await trio.sleep(0.05)
        second = await cluster.start_worker()
        await client.gather(futures)
        assert cluster.scheduler.state.steal_count > 0
        assert len(second.task_log) > 5


@pytest.mark.trioflow_cluster(n_workers=1)
async def test_resources_wait_for_a_worker_with_capacity(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    with trio.fail_after(30):
        f = await client.submit(_where, resources={"GPU": 1}, pure=False)
        tasks = cluster.scheduler.state.tasks
        await wait_until(lambda: f.key in tasks and tasks[f.key].state == "no-worker", what="the task to wait for a GPU")
        assert f.status == "pending"  # waits, never fails, for lack of a GPU
        gpu = await cluster.start_worker(resources={"GPU": 2})
        assert await f == gpu.address


_LOG: list[int] = []
_GATE = threading.Event()


def _record(i: int) -> int:
    _LOG.append(i)
    return i


def _wait_gate() -> bool:
    return _GATE.wait(10)


@pytest.mark.trioflow_cluster(n_workers=1, scheduler_options={"worker_saturation": float("inf")})
async def test_higher_priority_runs_first(trioflow_client: AsyncClient) -> None:
    client = trioflow_client
    _LOG.clear()
    _GATE.clear()
    with trio.fail_after(30):
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


@pytest.mark.trioflow_cluster(n_workers=1)
async def test_retries_rerun_then_err(trioflow_client: AsyncClient) -> None:
    client = trioflow_client
    with trio.fail_after(30):
        assert await (await client.submit(_flaky, "a", 2, retries=2)) == "ok after 3"
        f = await client.submit(_flaky, "b", 5, retries=2)
        with pytest.raises(RuntimeError, match="attempt 3"):
            await f


@pytest.mark.slow
async def test_retire_workers_moves_data_only_they_hold(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    with trio.fail_after(30):
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
async def test_scheduler_learns_of_transfers_from_heartbeats(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    with trio.fail_after(30):
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


def _fail_at_gate() -> None:
    _GATE.wait(10)
    raise RuntimeError("a stale run fails")


async def test_retire_workers_copies_a_key_the_receiver_is_computing(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    # Regression: retire_workers asked b for a copy of x (only a held it)
    # while a stale run of x went on on b.  b only marked x wanted; the run
    # failed, b forgot x, and the retirement waited for the copy in vain
    # (60 s, then closed a and lost x).  Now b fetches x when its run fails.
    _GATE.clear()
    with trio.fail_after(30):
        a, b = cluster.workers
        try:
            x = await client.submit(_fail_at_gate, key="x-on-retiring", workers=[b.address])
            assert b.state is not None
            while x.key not in b.state.tasks or b.state.tasks[x.key].state != "executing":
                await trio.sleep(0.01)
            # x turns up on a (scattered there): the scheduler has it
            # in memory on a only, while b's run of it goes on.
            await client.scatter({x.key: "value"}, workers=[a.address])
            asked = trio.Event()
            handle = b._handle

            def spy(event: object) -> None:
                handle(event)
                if type(event).__name__ == "AcquireReplicasEvent":
                    asked.set()

            b._handle = spy  # type: ignore[method-assign]
            retired: list[str] = []

            async def retire() -> None:
                retired.extend(await client.retire_workers([a.address]))

            async with trio.open_nursery() as n:
                n.start_soon(retire)
                await asked.wait()
                _GATE.set()  # now the run fails
            assert retired == [a.address]
            while a.address in cluster.scheduler.state.workers:
                await trio.sleep(0.01)
            assert (await client.who_has([x]))[x.key] == [b.address]
            assert await x == "value"
        finally:
            _GATE.set()


async def test_retire_workers_keeps_a_worker_whose_data_could_not_be_copied(trioflow_cluster: InProcessCluster, trioflow_client: AsyncClient) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    # The copy never arrives (b's requests for it hang): retire_workers
    # gives up after its timeout, and rather than lose x it leaves a running
    # and does not list it as retired.
    with trio.fail_after(30):
        a, b = cluster.workers
        x = await client.submit(_slow, 1, 0.0, workers=[a.address], pure=False)
        assert await x == 1
        assert b.pool is not None
        rpc = b.pool.rpc

        async def stuck(address: str, request: m.Message, reply_type: Any, **kw: Any) -> Any:
            if isinstance(request, m.GetData):
                await trio.sleep_forever()
            return await rpc(address, request, reply_type, **kw)

        b.pool.rpc = stuck  # type: ignore[method-assign]
        start = trio.current_time()
        assert await client.retire_workers([a.address], timeout=0.5) == []
        assert trio.current_time() - start < 5
        await trio.sleep(0.1)
        assert a.status == "running" and a.address in cluster.scheduler.state.workers
        assert await x == 1


async def test_scheduler_welcomes_acks_and_drops_a_worker_gone_silent(autojump_clock: trio.testing.MockClock) -> None:
    # The state machine decides (held keys to forget, the pace, who is silent
    # for too long, on the liveness loop's ticks); the shell only carries it out.
    from trioflow.comm import CommClosedError, connect
    from trioflow.scheduler import Scheduler

    scheduler = Scheduler("inproc://silent-worker-scheduler", worker_ttl=3.0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.serve)
            comm = await connect(scheduler.address, role="worker")
            await comm.send(m.RegisterWorker(address="inproc://fake-worker", name="fake", nthreads=1, memory_limit=0, nbytes={"stale": 1}))
            welcome = await comm.recv()
            assert isinstance(welcome, m.WorkerRegistered)
            assert (welcome.scheduler_id, welcome.worker_ttl, welcome.forget) == (scheduler.id, 3.0, ["stale"])
            await comm.send(m.Heartbeat(memory=0, managed=0, spilled=0, cpu=0.0, executing=0, ready=0, in_memory=0, bandwidth=0.0))
            ack = await comm.recv()
            assert isinstance(ack, m.HeartbeatAck) and ack.worker_ttl == 3.0
            seen = trio.current_time()
            with pytest.raises(CommClosedError):
                while True:
                    await comm.recv()  # until the scheduler closes the stream
            assert 3.0 < trio.current_time() - seen <= 5.0
            assert "inproc://fake-worker" not in scheduler.state.workers
            await comm.aclose()
            scheduler.close()


async def test_fire_and_forget_runs_to_completion_after_the_future_is_dropped() -> None:
    from trioflow import fire_and_forget

    with trio.fail_after(30):
        async with open_cluster(n_workers=1) as cluster:
            async with open_client(cluster) as client:
                gate = await client.submit(_slow, 1, 0.2, pure=False)
                f = await client.submit(_slow, gate, 0.0, pure=False)
                key = f.key
                fire_and_forget(f)
                del gate, f  # the client releases both keys
                state = cluster.scheduler.state
                # Dropped, it still runs (after its dependency, 0.2 s away) ...
                while not any(k == key for k, *_ in cluster.workers[0].task_log):
                    await trio.sleep(0.01)
                # ... and then nothing keeps it.
                while key in state.tasks:
                    await trio.sleep(0.01)
                assert not state.fire_and_forget.wants_what and "fire-and-forget" not in state.clients


def test_the_server_carries_out_every_kind_of_instruction() -> None:
    from typing import get_args

    from trioflow.scheduler import Scheduler
    from trioflow.scheduler import state as ss

    handled = set(Scheduler()._instruction_handlers) | {ss.ToWorker, ss.ToClient}
    assert handled == set(get_args(ss.Instruction))
