"""Reschedule, events (log_event, get_events, subscribe_topic) and
trioflow.print / trioflow.warn from tasks, against real clusters."""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Any

import cloudpickle
import pytest
import trio

import trioflow
from trioflow import Client, LocalCluster, Reschedule, get_worker, open_client, open_cluster

_lock = threading.Lock()
_seen: dict[str, list[str]] = {}


def moody(tag: str) -> str:
    """Raise Reschedule on its first run, then succeed."""
    addr = get_worker().address
    with _lock:
        runs = _seen.setdefault(tag, [])
        runs.append(addr)
        first = len(runs) == 1
    if first:
        raise Reschedule()
    return addr


def chatty(x: int) -> int:
    get_worker().log_event("progress", {"x": x})
    trioflow.print("hello from", x)
    trioflow.print("to stderr", x, file=sys.stderr)
    trioflow.warn(f"careful {x}", RuntimeWarning)
    return x


def chatty_by_value(x: int) -> int:
    """chatty, for process workers: never pickled before the module is
    registered by value (a function's pickle is cached)."""
    return chatty(x)


async def test_reschedule_runs_the_task_again() -> None:
    with trio.fail_after(20):
        async with open_cluster(n_workers=2, validate=True) as cluster, open_client(cluster) as client:
            fut = await client.submit(moody, "a")
            assert await fut in {w.address for w in cluster.workers}
            assert len(_seen["a"]) == 2
            # Depending on it works too.
            fut2 = await client.submit(moody, "b", pure=False)
            dep = await client.submit(len, fut2)
            assert await dep > 0


async def test_events_from_tasks_and_clients() -> None:
    got: list[tuple[float, Any]] = []
    done = trio.Event()

    def handler(event: tuple[float, Any]) -> None:
        got.append(event)
        if len(got) == 3:
            done.set()

    with trio.fail_after(20):
        async with open_cluster(n_workers=1, validate=True) as cluster, open_client(cluster) as client:
            await client.subscribe_topic("progress", handler)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the worker's own warning, in this process
                futs = [await client.submit(chatty, i) for i in range(2)]
                await client.gather(futs)
            await client.log_event("progress", {"x": "client"})
            await done.wait()
            assert sorted(str(e[1]["x"]) for e in got) == ["0", "1", "client"]
            events = await client.get_events("progress")
            assert len(events) == 3 and all(isinstance(t, float) for t, _ in events)
            everything = await client.get_events()
            assert len(everything["print"]) == 4 and len(everything["warn"]) == 2
            assert await client.get_events("nothing-here") == ()
            cluster.scheduler.log_event("from-the-scheduler", [1, 2])
            assert [e[1] for e in await client.get_events("from-the-scheduler")] == [[1, 2]]
            await client.unsubscribe_topic("progress")
            await client.log_event(["progress", "other"], "late")
            # (Logged over the client's stream, read over another connection.)
            while not await client.get_events("other"):
                await trio.sleep(0.01)
            assert len(await client.get_events("progress")) == 4
            assert len(got) == 3


def test_print_and_warn_reach_the_blocking_client(capsys: pytest.CaptureFixture[str]) -> None:
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert client.submit(chatty, 7).result(timeout=30) == 7
            # The events arrive after the result: wait until both are in.
            for _ in range(500):
                if sum(1 for w in caught if "careful 7" in str(w.message)) >= 2:
                    break
                threading.Event().wait(0.01)
        # Once here (the worker's own warn, same process), once from the client.
        assert sum(1 for w in caught if "careful 7" in str(w.message) and w.category is RuntimeWarning) == 2
        out = capsys.readouterr()
        assert out.out.count("hello from 7") == 2  # the worker's print and the client's
        assert out.err.count("to stderr 7") == 2
        assert client.get_events("print")[0][1]["args"] == ("hello from", 7)


@pytest.mark.slow
def test_print_from_process_workers(capfd: pytest.CaptureFixture[str]) -> None:
    # Process workers cannot import this module: send chatty by value (only
    # here: moody's shared state must stay shared in the other tests).
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        _print_from_process_workers(capfd)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _print_from_process_workers(capfd: pytest.CaptureFixture[str]) -> None:
    with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert client.submit(chatty_by_value, 3).result(timeout=60) == 3
            for _ in range(1000):
                if any("careful 3" in str(w.message) for w in caught):
                    break
                threading.Event().wait(0.01)
        assert any("careful 3" in str(w.message) for w in caught)
        assert "hello from 3" in capfd.readouterr().out
