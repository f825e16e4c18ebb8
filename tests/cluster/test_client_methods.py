"""The dask ``Client`` methods and arguments (issue #16 item 4), against
in-process clusters: the blocking ``Client`` with a ``LocalCluster``, and the
asynchronous one (``Client(asynchronous=True)`` under Trio and asyncio).

Task functions are at module level so they pickle by reference; tasks that
must stay running wait on ``_gate`` (bounded), which every test opens
before its cluster closes.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import importlib
import json
import logging
import os
import sys
import threading
import time
import traceback
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest
import yaml

import trioflow
from trioflow import (
    CancelledError,
    Client,
    LocalCluster,
    as_completed,
    default_client,
    get_client,
    get_worker,
    wait,
)
from trioflow.durations import parse_timedelta

# ---------------------------------------------------------------- task functions


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


class Boom(Exception):
    pass


def fail(x: Any = None) -> Any:
    raise Boom(f"boom {x}")


_gate = threading.Event()


def blocked(x: Any = None) -> Any:
    _gate.wait(10)
    return x


_flaky_calls: list[int] = []


def flaky(x: int) -> int:
    """Fails on its first call, succeeds after."""
    _flaky_calls.append(x)
    if len(_flaky_calls) == 1:
        raise Boom("first try")
    return x * 10


def scheduler_address_of(dask_scheduler: Any) -> str:
    return dask_scheduler.address  # type: ignore[no-any-return]


async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def worker_name_of(dask_worker: Any) -> str:
    return dask_worker.name  # type: ignore[no-any-return]


_ran = threading.Event()


def set_ran() -> None:
    _ran.set()


def log_on_task(message: str) -> int:
    logging.getLogger("user.tasks").warning(message)
    return 1


def wait_until(predicate: Any, timeout: float = 5, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.005)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    _gate.clear()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        try:
            yield cluster
        finally:
            _gate.set()


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as client:
        yield client


# ---------------------------------------------------------------- durations


def test_parse_timedelta() -> None:
    assert parse_timedelta("10 ms") == pytest.approx(0.01)
    assert parse_timedelta("2s") == 2.0
    assert parse_timedelta("1.5 minutes") == 90.0
    assert parse_timedelta("3") == 3.0
    assert parse_timedelta(4) == 4.0
    assert parse_timedelta(5, "ms") == pytest.approx(0.005)
    assert parse_timedelta(datetime.timedelta(hours=1)) == 3600.0
    assert parse_timedelta(None) is None
    with pytest.raises(ValueError, match="unit"):
        parse_timedelta("3 parsecs")
    with pytest.raises(ValueError):
        parse_timedelta("soon")
    with pytest.raises(TypeError):
        parse_timedelta([1])


def test_duration_strings_as_timeouts(client: Client) -> None:
    f = client.submit(blocked, 1)
    with pytest.raises(TimeoutError):
        f.result(timeout="10 ms")
    with pytest.raises(TimeoutError):
        f.exception(timeout="10ms")
    with pytest.raises(TimeoutError):
        wait([f], timeout="10 ms")
    with pytest.raises(TimeoutError):
        f.traceback(timeout="10ms")
    _gate.set()
    assert f.result(timeout="5s") == 1
    client.wait_for_workers(2, timeout="5 s")


# ---------------------------------------------------------------- running code


def test_run_on_scheduler(client: Client, cluster: LocalCluster) -> None:
    assert client.run_on_scheduler(scheduler_address_of) == cluster.scheduler_address
    assert client.run_on_scheduler(async_double, 21) == 42
    assert client.run_on_scheduler(add, 1, y=2) == 3
    with pytest.raises(Boom, match="boom s"):
        client.run_on_scheduler(fail, "s")
    with pytest.raises(TypeError):
        client.run_on_scheduler(42)  # type: ignore[arg-type]


def test_run_wait_false_coroutines_and_dask_worker(client: Client, cluster: LocalCluster) -> None:
    _ran.clear()
    assert client.run(set_ran, wait=False) is None
    assert _ran.wait(5)
    out = client.run(async_double, 4)
    assert out == {w.address: 8 for w in cluster.workers.values()}
    names = client.run(worker_name_of)
    assert sorted(names.values()) == sorted(w.name for w in cluster.workers.values())
    errors = client.run(fail, 1, on_error="return")
    assert all(isinstance(e, Boom) for e in errors.values()) and len(errors) == 2
    assert client.run(fail, 1, on_error="ignore") == {}
    with pytest.raises(Boom):
        client.run(fail, 1)
    with pytest.raises(ValueError):
        client.run(inc, 1, on_error="sometimes")


# ---------------------------------------------------------------- upload_file


def test_upload_file_py_and_zip_reach_new_workers(client: Client, cluster: LocalCluster, tmp_path: Path) -> None:
    name = f"tf_upload_mod_{os.getpid()}"
    zname = f"tf_zipped_mod_{os.getpid()}"
    src = tmp_path / f"{name}.py"
    src.write_text("def value():\n    return 17\n")
    ename = f"tf_egg_mod_{os.getpid()}"
    archive = tmp_path / "pkg.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(f"{zname}.py", "def value():\n    return 23\n")
    egg = tmp_path / "thing-1.0-py3.egg"
    with zipfile.ZipFile(egg, "w") as zf:
        zf.writestr(f"{ename}/__init__.py", "VALUE = 5\n")
    before = list(sys.path)
    try:
        client.upload_file(str(src))
        client.upload_file(str(archive))
        client.upload_file(str(egg))
        results = client.run(lambda: (importlib.import_module(name).value(), importlib.import_module(zname).value(), importlib.import_module(ename).VALUE))
        assert set(results.values()) == {(17, 23, 5)}
        cluster.scale(3)
        client.wait_for_workers(3, timeout=10)
        newest = list(cluster.workers.values())[-1].address
        f = client.submit(lambda: importlib.import_module(name).value(), workers=[newest], pure=False)
        assert f.result(timeout=5) == 17
        # an upload that fails to import raises here
        bad = tmp_path / f"tf_broken_{os.getpid()}.py"
        bad.write_text("raise ValueError('broken module')\n")
        with pytest.raises(RuntimeError, match="broken module"):
            client.upload_file(str(bad))
    finally:
        sys.path[:] = before
        for mod in (name, zname, ename):
            sys.modules.pop(mod, None)


# ---------------------------------------------------------------- state and data placement


def test_dump_cluster_state_msgpack_and_yaml(client: Client, tmp_path: Path) -> None:
    f = client.submit(inc, 1)
    assert f.result(timeout=5) == 2
    base = str(tmp_path / "dump")
    client.dump_cluster_state(base)
    with gzip.open(base + ".msgpack.gz") as fh:
        state = msgpack.unpackb(fh.read())
    assert f.key in state["scheduler"]["tasks"]
    assert len(state["workers"]) == 2
    client.dump_cluster_state(base, format="yaml")
    with open(base + ".yaml") as fh:
        state = yaml.safe_load(fh)
    assert state["scheduler"]["tasks"][f.key]["state"] == "memory"
    with pytest.raises(ValueError, match="format"):
        client.dump_cluster_state(base, format="xml")


def test_processing_and_nbytes(client: Client) -> None:
    f = client.submit(blocked, 1)
    wait_until(lambda: any(f.key in ks for ks in client.processing().values()), what="processing")
    _gate.set()
    assert f.result(timeout=5) == 1
    x = client.submit(inc, 1, key="inc-0123abcd")
    y = client.submit(inc, 2, key="inc-4567abcd")
    wait([x, y], timeout=5)
    sizes = client.nbytes(summary=False)
    assert sizes[x.key] > 0 and sizes[y.key] > 0
    assert client.nbytes(keys=[x])["inc"] == sizes[x.key]
    assert client.nbytes()["inc"] == sizes[x.key] + sizes[y.key]


def test_replicate_and_rebalance(client: Client, cluster: LocalCluster) -> None:
    a, b = (w.address for w in cluster.workers.values())
    [x] = client.scatter([b"x" * 1000], workers=[a])
    assert client.who_has([x])[x.key] == [a]
    client.replicate([x])
    assert sorted(client.who_has([x])[x.key]) == sorted([a, b])
    assert client.who_has([x], workers=[b])[x.key] == [b]
    data = client.scatter([bytes([i]) * 100_000 for i in range(6)], workers=[a])
    client.rebalance(data)
    held = client.has_what()
    assert any(d.key in held[b] for d in data), held
    assert any(d.key in held[a] for d in data), held
    assert [bytes(v[:1]) for v in client.gather(data)] == [bytes([i]) for i in range(6)]


def test_restart_workers_needs_a_nanny(client: Client, cluster: LocalCluster) -> None:
    with pytest.raises(ValueError, match="nanny"):
        client.restart_workers([list(cluster.workers.values())[0].address])
    with pytest.raises(ValueError, match="no worker"):
        client.restart_workers(["tcp://127.0.0.1:1"])
    with pytest.raises(TypeError):
        client.restart_workers(list(cluster.workers.values())[0].address)


def test_versions_and_scheduler_file(client: Client, tmp_path: Path) -> None:
    v = client.get_versions(check=True)
    assert set(v) == {"scheduler", "workers", "client"}
    assert v["client"]["packages"]["trioflow"] == v["scheduler"]["packages"]["trioflow"]
    assert len(v["workers"]) == 2
    path = str(tmp_path / "sched.json")
    client.write_scheduler_file(path)
    with open(path) as fh:
        assert json.load(fh)["address"] == client.scheduler.address
    with Client(scheduler_file=path) as other:
        assert other.submit(inc, 2).result(timeout=5) == 3
    with pytest.raises(ValueError, match="exists"):
        client.write_scheduler_file(path)


def test_get_versions_check_reports_a_mismatch(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import trioflow.versions

    real = trioflow.versions._version

    def on_client_thread_only(name: str) -> str | None:
        # The scheduler, the workers and the client share this process: the
        # client's loop runs in the thread named "trioflow-client".
        if name == "msgpack" and threading.current_thread().name == "trioflow-client":
            return "0.0.0-elsewhere"
        return real(name)

    monkeypatch.setattr(trioflow.versions, "_version", on_client_thread_only)
    assert client.get_versions()["client"]["packages"]["msgpack"] == "0.0.0-elsewhere"
    with pytest.raises(ValueError, match=r"(?s)Mismatched versions.*msgpack: client=0.0.0-elsewhere"):
        client.get_versions(check=True)


# ---------------------------------------------------------------- logs


def test_scheduler_and_worker_logs(client: Client) -> None:
    client.run_on_scheduler(lambda: logging.getLogger("trioflow.scheduler").warning("scheduler-marker-1"))
    lines = client.get_scheduler_logs()
    assert any("scheduler-marker-1" in line and level == "WARNING" for level, line in lines)
    assert len(client.get_scheduler_logs(n=1)) == 1
    client.run(lambda: logging.getLogger("trioflow.worker").warning("worker-marker-2"))
    logs = client.get_worker_logs()
    assert len(logs) == 2
    assert all(any("worker-marker-2" in line for _, line in ls) for ls in logs.values())


def test_forward_logging(client: Client) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "worker", None):  # replayed by the client
                seen.append(record)

    h = Keep()
    logger = logging.getLogger("user.tasks")
    logger.addHandler(h)
    try:
        client.forward_logging("user.tasks", level=logging.WARNING)
        assert client.submit(log_on_task, "hello from a task").result(timeout=5) == 1
        wait_until(lambda: any(r.getMessage() == "hello from a task" for r in seen), what="forwarded record")
        client.unforward_logging("user.tasks", level=logging.WARNING)
    finally:
        logger.removeHandler(h)


# ---------------------------------------------------------------- errors: retry, recreate, tracebacks


def test_future_retry_and_client_retry(client: Client) -> None:
    _flaky_calls.clear()
    f = client.submit(flaky, 4)
    with pytest.raises(Boom):
        f.result(timeout=5)
    child = client.submit(inc, f)
    with pytest.raises(Boom):
        child.result(timeout=5)
    f.retry()
    assert f.result(timeout=5) == 40
    client.retry([child])
    assert child.result(timeout=5) == 41


def test_recreate_locally(client: Client) -> None:
    x = client.submit(inc, 1)
    y = client.submit(add, x, 10)
    assert client.recreate_task_locally(y) == 12
    bad = client.submit(fail, x)
    child = client.submit(inc, bad)
    with pytest.raises(Boom, match="boom 2"):
        client.recreate_error_locally(child)  # the failure is the dependency's
    with pytest.raises(ValueError, match="did not fail"):
        client.recreate_error_locally(y)


def _our_frames(tb: Any) -> list[str]:
    root = os.path.dirname(trioflow.__file__)
    return [fr.filename for fr in traceback.extract_tb(tb) if fr.filename.startswith(root)]


def test_task_traceback_shows_user_frames(client: Client) -> None:
    f = client.submit(fail, 3)
    with pytest.raises(Boom) as info:
        f.result(timeout=5)
    names = [fr.name for fr in traceback.extract_tb(info.value.__traceback__)]
    assert names[-1] == "fail" and names[0] == "test_task_traceback_shows_user_frames"
    assert len(_our_frames(info.value.__traceback__)) <= 2, traceback.format_tb(info.value.__traceback__)
    with pytest.raises(Boom) as info:
        client.gather([f])
    assert len(_our_frames(info.value.__traceback__)) <= 2
    tb = f.traceback()
    assert [fr.name for fr in traceback.extract_tb(tb)] == ["fail"]
    assert client.submit(inc, 1).traceback(timeout=5) is None


# ---------------------------------------------------------------- as_completed


def test_as_completed_with_results_cancelled_and_batches(client: Client) -> None:
    slow = client.submit(blocked, "slow")
    ok = client.submit(inc, 1)
    ac = as_completed([slow, ok], with_results=True)
    assert ac.count() == 2
    fut, res = next(ac)
    assert fut is ok and res == 2
    slow.cancel()
    fut, res = next(ac)
    assert fut is slow and isinstance(res, CancelledError)
    assert ac.is_empty()
    _gate.set()  # the cancelled task's thread
    with pytest.raises(TypeError):
        ac.update([1])
    fs = client.map(inc, range(6))
    wait(fs, timeout=5)
    ac = as_completed(fs)
    wait_until(ac.has_ready, what="ready futures")
    batches = list(ac.batches())
    assert sorted(f.key for b in batches for f in b) == sorted(f.key for f in fs)
    ac = as_completed([])
    assert ac.next_batch(block=False) == []
    ac.update(fs[:2])
    ac.add(fs[0])  # added twice: yielded twice
    assert ac.count() == 3
    assert len([f for b in ac.batches() for f in b]) == 3
    _gate.clear()
    pending = client.submit(blocked, "never", pure=False)
    with pytest.raises(TimeoutError):
        next(as_completed([pending], timeout="20 ms"))
    _gate.set()


# ---------------------------------------------------------------- which client


def test_current_as_current_and_get_client(cluster: LocalCluster) -> None:
    with Client(cluster) as c1, Client(cluster, set_as_default=False) as c2:
        assert Client.current() is c2
        assert default_client() is c2 and default_client(c1) is c1
        with c1.as_current():
            assert Client.current() is c1
            assert get_client() is c1
        assert get_client(c1.scheduler.address) is c2
        assert c1.scheduler.address == cluster.scheduler_address
    with pytest.raises(ValueError, match="No clients found"):
        Client.current()
    with pytest.raises(ValueError, match="No global client"):
        get_client()


def test_arguments_dask_users_pass(cluster: LocalCluster) -> None:
    with Client(cluster, direct_to_workers=True, timeout="5s") as client:
        a = list(cluster.workers.values())[0].address
        [x] = client.scatter([1], direct=True, workers=[a])
        assert client.gather([x], direct=True) == [1]
        assert client.nthreads(workers=[a]) == {a: 1}
        assert client.nthreads() == {w.address: 1 for w in cluster.workers.values()}
        assert len(client.scheduler_info(n_workers=1)["workers"]) == 1
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        assert client.scheduler_info()["n_workers"] == 2
        with pytest.raises(TypeError):
            client.scatter(x)
        with pytest.raises(ValueError):
            client.gather([x], errors="maybe")
        assert client.futures_of([x]) == [x]


def test_futures_of_a_persisted_collection(client: Client) -> None:
    import dask.array as da

    from trioflow import futures_of

    x = client.persist(da.ones(1000, chunks=100))
    fs = futures_of(x)
    assert len(fs) == 10 and all(isinstance(f, trioflow.Future) for f in fs)
    wait(x, timeout=5)
    assert all(f.status == "finished" for f in fs)
    assert futures_of({"a": [fs[0], (fs[1],)]}) == fs[:2]


# ---------------------------------------------------------------- asynchronous clients


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_async_client_methods(cluster: LocalCluster, backend: str) -> None:
    _gate.clear()
    async def session(address: str) -> None:
        async with Client(address, asynchronous=True) as c:
            assert await c.run_on_scheduler(scheduler_address_of) == address
            assert await c.run_on_scheduler(async_double, 2) == 4
            assert set((await c.run(async_double, 3)).values()) == {6}
            slow = c.submit(blocked, "s", pure=False)
            ok = c.submit(inc, 5)
            ac = as_completed([slow, ok], with_results=True)
            fut, res = await ac.__anext__()
            assert fut.key == ok.key and res == 6
            await slow.cancel()
            fut, res = await ac.__anext__()
            assert isinstance(res, CancelledError)
            _gate.set()  # the cancelled task's thread
            bad = c.submit(fail, "a")
            tb = await bad.traceback()
            assert [fr.name for fr in traceback.extract_tb(tb)] == ["fail"]
            with pytest.raises(Boom) as info:
                await bad
            assert traceback.extract_tb(info.value.__traceback__)[-1].name == "fail"
            assert len(_our_frames(info.value.__traceback__)) <= 2, traceback.format_tb(info.value.__traceback__)
            await c.wait_for_workers(2, timeout="5s")
            with pytest.raises(Boom):
                await c.recreate_error_locally(bad)
            assert await c.recreate_task_locally(ok) == 6
            _flaky_calls.clear()
            f = c.submit(flaky, 1, pure=False)
            with pytest.raises(Boom):
                await f
            await f.retry()
            assert await f.result(timeout="5s") == 10
            assert (await c.nbytes(summary=False))[f.key] > 0
            assert "scheduler" in await c.get_versions()
            assert isinstance(await c.get_scheduler_logs(n=5), list)

    async def limited(address: str) -> None:
        with anyio.fail_after(30):
            await session(address)

    anyio.run(limited, cluster.scheduler_address, backend=backend)


def test_get_worker_inside_run_is_the_worker(client: Client, cluster: LocalCluster) -> None:
    out = client.run(lambda: get_worker().address)
    assert out == {w.address: w.address for w in cluster.workers.values()}


@pytest.mark.slow
def test_restart_workers_through_nannies() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=30)
        before = client.run(os.getpid)
        [first, second] = sorted(before)
        assert client.restart_workers([first], timeout="30s") == {first: "OK"}
        client.wait_for_workers(2, timeout=30)
        after = client.run(os.getpid)
        assert len(after) == 2
        assert before[second] in after.values()  # left alone
        assert before[first] not in after.values()  # a new process
        assert client.submit(abs, -1).result(timeout=10) == 1  # (a builtin: the processes cannot import this module)


async def test_trio_client_methods(tmp_path: Path) -> None:
    """The same methods on the Trio ``AsyncClient`` (``open_client``)."""
    import trio

    from trioflow import open_client, open_cluster
    from trioflow.errors import RemoteError
    from trioflow.protocol import messages as m

    with trio.fail_after(30):
        async with open_cluster(n_workers=2) as cluster, open_client(cluster) as c:
            a, b = sorted(w.address for w in cluster.workers)
            assert await c.run_on_scheduler(scheduler_address_of) == cluster.scheduler_address
            _ran.clear()
            assert await c.run_on_scheduler(set_ran, wait=False) is None
            await trio.to_thread.run_sync(_ran.wait, 5)
            assert _ran.is_set()
            with pytest.raises(RemoteError, match="unknown query"):
                await c._rpc(m.SchedulerQuery(what="everything"), m.QueryReply)
            assert await c.nthreads(workers=[a]) == {a: 1}
            assert len((await c.scheduler_info(n_workers=1))["workers"]) == 1
            [x] = await c.scatter([b"y" * 1000], workers=[a])
            await c.replicate([x], n=2)
            assert sorted((await c.who_has([x]))[x.key]) == [a, b]
            assert (await c.who_has([x], workers=[b]))[x.key] == [b]
            assert (await c.nbytes(keys=[x], summary=False))[x.key] > 0
            assert set(await c.processing()) == {a, b}
            await c.rebalance()
            await c.dump_cluster_state(str(tmp_path / "d"), format="yaml")
            assert (tmp_path / "d.yaml").exists()
            await c.run(lambda: logging.getLogger("trioflow.worker").warning("trio-marker-3"))
            logs = await c.get_worker_logs(n=50, workers=[a])
            assert list(logs) == [a] and any("trio-marker-3" in line for _, line in logs[a])
            _flaky_calls.clear()
            f = await c.submit(flaky, 2, pure=False)
            with pytest.raises(Boom):
                await f
            await c.retry([f])
            assert await f == 20


def test_log_ring_keeps_unconfigured_warnings_on_stderr() -> None:
    """The ring is a handler; Python's last resort must still print
    trioflow's warnings when the program configured no logging."""
    import subprocess

    code = (
        "import logging, trioflow\n"
        "from trioflow.logs import recent_logs\n"
        "logging.getLogger('trioflow.x').warning('ring-warning')\n"
        "assert any('ring-warning' in line for _, line in recent_logs())\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(trioflow.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "ring-warning" in out.stderr
