"""End to end through the blocking API: ``Client`` + ``LocalCluster``.

Each test gets its own in-process ``LocalCluster`` (a portal thread running
the scheduler and two workers) and a ``Client`` (another portal thread);
the autouse leak checker then proves that closing both leaves no thread or
socket behind.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from support import wait_until

from trioflow import (
    CancelledError,
    Client,
    Future,
    LocalCluster,
    SerializationError,
    as_completed,
    default_client,
    get_worker,
    wait,
)


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


class Boom(Exception):
    pass


def fail(x: Any = None) -> Any:
    raise Boom(f"boom {x}")


def return_lock() -> Any:
    return threading.Lock()


def whoami(*_: Any) -> tuple[str, str]:
    w = get_worker()
    return w.name, w.address


_gate = threading.Event()


def blocked(x: Any = None) -> Any:
    _gate.wait(10)
    return x


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    _gate.clear()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        try:
            yield cluster
        finally:
            _gate.set()  # let blocked tasks end before the workers close


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as client:
        yield client


# ---------------------------------------------------------------- basics


def test_tree_of_submits_dropping_each_layer(client: Client) -> None:
    """submit() hands its task to the loop without waiting; each layer's
    futures are dropped as soon as the next layer names them, so their
    releases race the sends of the tasks that need them."""
    for rep in range(3):
        layer = [client.submit(inc, rep * 1000 + i) for i in range(256)]
        while len(layer) > 1:
            layer = [client.submit(add, layer[i], layer[i + 1]) for i in range(0, len(layer), 2)]
        assert layer[0].result(timeout=20) == sum(rep * 1000 + i + 1 for i in range(256))


def test_submit_from_many_threads(client: Client) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def run(base: int) -> None:
        futures = [client.submit(inc, base + i, pure=False) for i in range(50)]
        values = client.gather(futures)
        with lock:
            results.extend(values)

    threads = [threading.Thread(target=run, args=(1000 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == sorted(1000 * t + i + 1 for t in range(4) for i in range(50))


def test_submit_result(client: Client) -> None:
    f = client.submit(inc, 1)
    assert isinstance(f, Future)
    assert f.result(timeout=5) == 2
    assert f.done() and f.status == "finished"
    assert client.submit(add, 1, y=2).result(timeout=5) == 3
    assert client.status == "running"


def test_pure_keys_and_key_argument(client: Client) -> None:
    assert client.submit(inc, 1).key == client.submit(inc, 1).key
    assert client.submit(inc, 1, pure=False).key != client.submit(inc, 1, pure=False).key
    f = client.submit(inc, 5, key="custom")
    assert f.key == "custom" and f.result(timeout=5) == 6


def test_map_and_gather(client: Client) -> None:
    fs = client.map(inc, range(5))
    assert client.gather(fs) == [1, 2, 3, 4, 5]
    fs = client.map(add, iter([1, 2]), (x for x in [10, 20]))  # generators are fine
    assert client.gather(fs) == [11, 22]
    fs = client.map(inc, [1, 2], key=["k1", "k2"])
    assert [f.key for f in fs] == ["k1", "k2"]
    a, b = client.submit(inc, 1), client.submit(inc, 2)
    assert client.gather({"a": [a, (b,)], "n": 3}) == {"a": [2, (3,)], "n": 3}


def test_gather_errors(client: Client) -> None:
    good, bad = client.submit(inc, 1), client.submit(fail, 2)
    with pytest.raises(Boom, match="boom 2"):
        client.gather([good, bad])
    assert client.gather([good, bad], errors="skip") == [2]


def test_scatter(client: Client, cluster: LocalCluster) -> None:
    one = client.scatter(42)
    assert one.result(timeout=5) == 42
    fs = client.scatter([1, 2, 3])
    assert client.gather(fs) == [1, 2, 3]
    d = client.scatter({"x": 1})
    assert d["x"].key == "x"
    everywhere = client.scatter("b", broadcast=True)
    assert set(client.who_has([everywhere])[everywhere.key]) == {w.address for w in cluster.workers.values()}
    w1 = list(cluster.workers.values())[1]
    only = client.scatter([7, 8], workers=[w1.address])
    assert all(v == [w1.address] for v in client.who_has(only).values())
    assert client.submit(add, one, d["x"]).result(timeout=5) == 43


def test_introspection(client: Client, cluster: LocalCluster) -> None:
    addrs = {w.address for w in cluster.workers.values()}
    assert client.nthreads() == dict.fromkeys(addrs, 1)
    assert client.ncores() == client.nthreads()
    info = client.scheduler_info()
    assert set(info["workers"]) == addrs
    for w in cluster.workers.values():
        wi = info["workers"][w.address]
        assert wi["name"] == w.name and wi["nthreads"] == 1
        assert "memory_limit" in wi and wi["resources"] == {}
    f = client.submit(inc, 1)
    f.result(timeout=5)
    (holder,) = client.who_has([f])[f.key]
    assert f.key in client.has_what()[holder]
    assert client.run(whoami) == {w.address: (w.name, w.address) for w in cluster.workers.values()}
    w0 = list(cluster.workers.values())[0]
    assert client.run(inc, 1, workers=[w0.address]) == {w0.address: 2}
    assert "workers=2" in repr(client)


def test_get_worker_and_restrictions(client: Client, cluster: LocalCluster) -> None:
    for w in cluster.workers.values():
        assert client.submit(whoami, workers=w.name, pure=False).result(timeout=5) == (w.name, w.address)
    f = client.submit(whoami, workers=["nobody"], allow_other_workers=True, pure=False)
    assert f.result(timeout=5)[1] in {w.address for w in cluster.workers.values()}


def test_nested_future_arguments(client: Client) -> None:
    a, b = client.submit(inc, 1), client.submit(inc, 2)
    f = client.submit(lambda d: d["a"] + sum(d["bs"]), {"a": a, "bs": [b, b]})
    assert f.result(timeout=5) == 2 + 3 + 3


# ---------------------------------------------------------------- futures


def test_future_api(client: Client) -> None:
    f = client.submit(blocked, 1)
    assert not f.done() and f.status == "pending"
    with pytest.raises(TimeoutError):
        f.result(timeout=0.05)
    with pytest.raises(TimeoutError):
        f.exception(timeout=0.05)
    _gate.set()
    assert f.result(timeout=5) == 1
    assert f.exception(timeout=5) is None
    assert f.traceback() is None


def test_errors(client: Client) -> None:
    f = client.submit(fail, "s")
    with pytest.raises(Boom, match="boom s") as info:
        f.result(timeout=5)
    assert any("Remote traceback" in n for n in info.value.__notes__)
    assert isinstance(f.exception(timeout=5), Boom)
    assert "raise Boom" in "".join(traceback.format_tb(f.traceback()))
    child = client.submit(inc, f)
    with pytest.raises(Boom, match="boom s"):
        child.result(timeout=5)


def test_unpicklable_result_then_carry_on(client: Client) -> None:
    with pytest.raises(SerializationError, match="(?i)lock"):
        client.submit(return_lock).result(timeout=5)
    assert client.submit(inc, 1).result(timeout=5) == 2


def test_cancel(client: Client, cluster: LocalCluster) -> None:
    f = client.submit(blocked, "c")
    g = client.submit(blocked, "d")
    client.cancel([f])
    assert f.cancelled()
    with pytest.raises(CancelledError):
        f.result(timeout=5)
    g.cancel()
    assert g.status == "cancelled"
    _gate.set()
    assert client.submit(inc, 1).result(timeout=5) == 2
    # the same key submitted again runs afresh
    assert client.submit(blocked, "c").result(timeout=5) == "c"


def test_as_completed(client: Client) -> None:
    slow = client.submit(blocked, "slow")
    fast = client.submit(inc, 1)
    order = []
    for f in as_completed([slow, fast]):
        order.append(f)
        _gate.set()
    assert order == [fast, slow]
    fs = client.map(inc, range(4))
    results = sorted(r for _, r in as_completed(fs, with_results=True))
    assert results == [1, 2, 3, 4]
    ac = as_completed([client.submit(inc, 10)])
    ac.add(client.submit(inc, 20))
    assert sorted(f.result(timeout=5) for f in ac) == [11, 21]


def test_wait(client: Client) -> None:
    fast = client.submit(inc, 1)
    slow = client.submit(blocked, "w")
    done, not_done = wait([fast, slow], return_when="FIRST_COMPLETED", timeout=5)
    assert fast in done and slow in not_done
    with pytest.raises(TimeoutError):
        wait([fast, slow], timeout=0.05)
    _gate.set()
    done, not_done = wait([fast, slow], timeout=5)
    assert done == {fast, slow} and not not_done


def test_reference_counting(client: Client, cluster: LocalCluster) -> None:
    tasks = cluster.scheduler.state.tasks
    x = client.submit(inc, 1)
    y = client.submit(inc, x)
    s = client.scatter([1, 2])
    client.gather([y, s])
    assert tasks
    # __del__ runs in this thread, not the client's event loop
    del x, y, s
    gc.collect()
    wait_until(lambda: not tasks, what="the scheduler forgets every key")
    wait_until(lambda: all(not w.data for w in cluster.workers.values()), what="workers free their data")


# ---------------------------------------------------------------- lifecycle


def test_client_by_address_and_default(cluster: LocalCluster) -> None:
    with Client(cluster.scheduler_address) as client:
        assert default_client() is client
        assert client.submit(inc, 1).result(timeout=5) == 2
    assert client.status == "closed"
    with pytest.raises(RuntimeError, match="closed"):
        client.submit(inc, 1)


def test_two_clients(cluster: LocalCluster) -> None:
    with Client(cluster) as c1, Client(cluster) as c2:
        f1 = c1.submit(inc, 1)
        f2 = c2.submit(inc, 1)
        assert f1.key == f2.key
        assert f1.result(timeout=5) == f2.result(timeout=5) == 2


def test_resources() -> None:
    with LocalCluster(n_workers=1, resources={"GPU": 1}, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        assert client.scheduler_info()["workers"][list(cluster.workers.values())[0].address]["resources"] == {"GPU": 1}
        assert client.submit(inc, 1, resources={"GPU": 1}).result(timeout=5) == 2
        big = client.submit(inc, 2, resources={"GPU": 2})
        time.sleep(0.1)
        assert not big.done()  # no worker has two GPUs
        big.cancel()
        assert big.cancelled()


_calls: list[int] = []  # in-process workers share it with the test
_calls_lock = threading.Lock()


def fail_twice() -> int:
    with _calls_lock:
        _calls.append(1)
        n = len(_calls)
    if n < 3:
        raise Boom(f"attempt {n}")
    return n


def test_retries(client: Client) -> None:
    _calls.clear()
    assert client.submit(fail_twice, retries=2, pure=False).result(timeout=5) == 3
    _calls.clear()
    with pytest.raises(Boom, match="attempt 2"):
        client.submit(fail_twice, retries=1, pure=False).result(timeout=5)


def test_shutdown_closes_the_cluster(caplog: pytest.LogCaptureFixture) -> None:
    cluster = LocalCluster(n_workers=1, processes=False, dashboard_address=None)
    try:
        client = Client(cluster)
        assert client.submit(inc, 1).result(timeout=5) == 2
        client.shutdown()
        assert client.status == "closed"
        assert cluster.scheduler.status == "closed"
        # The scheduler going away was asked for: no warning about it.
        warned = [r.getMessage() for r in caplog.records if r.name.startswith("trioflow.client") and r.levelno >= logging.WARNING]
        assert warned == []
    finally:
        cluster.close()


def test_add_done_callback_from_this_thread(client: Client) -> None:
    threads: list[str] = []
    done = threading.Event()

    def cb(fut: Future) -> None:
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            done.set()

    f = client.submit(inc, 1)
    f.result(timeout=5)
    f.add_done_callback(cb)  # already done
    g = client.submit(blocked, "cb")
    g.add_done_callback(cb)  # pending
    assert len(threads) == 1
    _gate.set()
    assert done.wait(5)
    # both ran in the client's event-loop thread, not this one
    assert threading.current_thread().name not in threads


def test_client_that_cannot_connect() -> None:
    from trioflow import CommError

    with pytest.raises(CommError, match="could not connect"):
        Client("tcp://127.0.0.1:1", timeout=2)
    # and its portal thread is gone (the autouse leak check)


# ---------------------------------------------------------------- exit without close

_EXIT_SCRIPT = """
import atexit, sys

def report():
    # Registered before trioflow is imported, so it runs after trioflow's own
    # exit handler (atexit runs handlers last-registered first).
    print("at exit:", c1.status, c2.status, flush=True)

atexit.register(report)

from trioflow import Client

def inc(x):
    return x + 1

c1 = Client(sys.argv[1])
c1.close()
c2 = Client(sys.argv[1])
done = c2.submit(inc, 1)
assert done.result(timeout=10) == 2
pending = c2.submit(inc, 2, workers=["nowhere"])  # never runs
print("ready", flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["alive", "gone"])
def test_a_forgotten_close_does_not_hang_the_exit(tmp_path: Any, scheduler: str) -> None:
    """Two clients, the first closed, the second left open holding futures
    (one finished, one pending): the interpreter exits promptly, closing the
    second client on the way, whether the scheduler is still there or not."""
    import subprocess
    import sys

    script = tmp_path / "forgot_close.py"
    script.write_text(_EXIT_SCRIPT)
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None)
    try:
        proc = subprocess.Popen(
            [sys.executable, str(script), cluster.scheduler_address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == "ready"
            if scheduler == "gone":
                cluster.close()
            proc.stdin.write("\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        cluster.close()
    assert proc.returncode == 0, err
    assert "at exit: closed closed" in out, (out, err)


def test_sync_runs_functions_in_the_clients_loop(client: Client) -> None:
    import trio

    async def double(x: int) -> int:
        await trio.sleep(0)  # runs in the client's own Trio loop
        return 2 * x

    assert client.sync(double, 4) == 8
    assert client.sync(lambda: 5) == 5
    with pytest.raises(TimeoutError):
        client.sync(trio.sleep_forever, callback_timeout=0.05)
