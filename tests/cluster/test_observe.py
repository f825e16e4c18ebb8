"""Observing a running cluster: profile, call stacks, task stream, story."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
import trio
from support import wait_until

from trioflow.worker.profile import Sampler, create, merge, process, task_frames

# ---------------------------------------------------------------- task functions


def _spin_in_named_function(seconds: float) -> int:
    return _burn_here(seconds)


def _burn_here(seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return n


def _wait_on_event_in_named_function(path: str) -> int:
    # Says it started, then blocks until the test creates ``path``.
    open(path + ".started", "w").close()
    while not os.path.exists(path):
        _parked_here()
    return 1


def _parked_here() -> None:
    threading.Event().wait(0.005)


def _answer() -> int:
    return 42


def _names(tree: dict[str, Any]) -> dict[str, int]:
    """Every function name in ``tree`` -> its largest count."""
    out: dict[str, int] = {}
    stack = [tree]
    while stack:
        node = stack.pop()
        name = node["description"]["name"]
        out[name] = max(out.get(name, 0), node["count"])
        stack.extend(node["children"].values())
    return out


# ---------------------------------------------------------------- the tree (no cluster)


def test_tree_counts_and_cap() -> None:
    import sys

    def inner() -> list[Any]:
        return task_frames(sys._getframe(), stop_file=__file__ + "-none")

    frames = inner()
    tree = create()
    budget = [3]
    for _ in range(5):
        process(tree, frames[-3:], budget)
    assert tree["count"] == 5
    assert budget == [0]
    # Capped: a sample of a deeper stack still counts, on the deepest node it has.
    process(tree, frames[-4:], [0])
    assert tree["count"] == 6
    both = merge(tree, tree)
    assert both["count"] == 12 and tree["count"] == 6
    assert _names(both)["inner"] == 10


def test_sampler_attributes_samples_to_the_running_key() -> None:
    running: dict[int, str] = {}
    sampler = Sampler(running, interval=0.001, cycle=0.05)
    done = threading.Event()
    started = threading.Event()

    def work() -> None:
        running[threading.get_ident()] = "burn-abc"
        started.set()
        while not done.is_set():
            _burn_here(0.001)
        running.clear()

    t = threading.Thread(target=work)
    t.start()
    started.wait(5)
    try:
        for _ in range(20):
            sampler.sample()
    finally:
        done.set()
        t.join(5)
    assert sampler.prefixes() == ["burn"]
    tree = sampler.get("burn")
    assert tree["count"] == 20
    assert _names(tree)["_burn_here"] >= 15
    assert sampler.get("other")["count"] == 0
    assert sampler.get(start=time.time() - 60)["count"] == 20
    assert sampler.get(stop=time.time() - 3600)["count"] == 0


# ---------------------------------------------------------------- on a cluster


@pytest.mark.slow
@pytest.mark.trioflow_cluster(n_workers=1, worker_options={"profile_interval": 0.002})
async def test_named_function_dominates_its_prefix(trioflow_cluster: Any, trioflow_client: Any) -> None:
    client = trioflow_client
    with trio.fail_after(30):
        futures = [await client.submit(_spin_in_named_function, 0.15, pure=False, key=f"spin-{i}") for i in range(3)]
        await client.submit(_answer, key="answer-1")
        for f in futures:
            await f
        tree = await client.profile(key="spin")
        assert tree["count"] > 20
        names = _names(tree)
        assert names["_burn_here"] >= 0.8 * tree["count"], names
        assert "_answer" not in names
        everything = await client.profile()
        assert everything["count"] >= tree["count"]
        assert (await client.profile(key="spin", stop=time.time() - 3600))["count"] == 0


@pytest.mark.trioflow_cluster(n_workers=1, dashboard_address="127.0.0.1:0")
async def test_call_stack_of_a_waiting_task_names_its_function(trioflow_cluster: Any, trioflow_client: Any, tmp_path: Any) -> None:
    client = trioflow_client
    flag = str(tmp_path / "go")
    with trio.fail_after(20):
        fut = await client.submit(_wait_on_event_in_named_function, flag)
        await wait_until(lambda: os.path.exists(flag + ".started"), what="the task to start")
        stacks = await client.call_stack(keys=[fut.key])
        ((worker, per_key),) = stacks.items()
        text = "".join(per_key[fut.key])
        assert "_wait_on_event_in_named_function" in text
        assert "_parked_here" in text
        # The live page shows it too, under the worker's address.
        status, page = await _get(trioflow_cluster.scheduler.services["dashboard"], "/call-stacks")
        assert status == 200 and worker in page and fut.key in page and "_parked_here" in page
        open(flag, "w").close()
        assert await fut == 1
        assert await client.call_stack(keys=[fut.key]) == {}


@pytest.mark.trioflow_cluster(n_workers=2)
async def test_task_stream_records_in_dask_shape(trioflow_cluster: Any, trioflow_client: Any) -> None:
    client = trioflow_client
    with trio.fail_after(20):
        t0 = time.time()
        futures = [await client.submit(_answer, pure=False) for _ in range(5)]
        for f in futures:
            await f
        records = await client.get_task_stream(start=t0 - 1)
        mine = [r for r in records if r["key"] in {f.key for f in futures}]
        assert len(mine) == 5
        r = mine[0]
        assert set(r) == {"key", "worker", "thread", "startstops", "status", "nbytes", "type"}
        (ss,) = r["startstops"]
        assert ss["action"] == "compute" and ss["start"] <= ss["stop"]
        assert r["status"] == "OK" and r["type"] == "int" and r["nbytes"] > 0
        assert len(await client.get_task_stream(count=2)) == 2
        assert await client.get_task_stream(stop=t0 - 3600) == []


@pytest.mark.trioflow_cluster(n_workers=1)
async def test_story_joins_scheduler_and_worker(trioflow_cluster: Any, trioflow_client: Any) -> None:
    client = trioflow_client
    with trio.fail_after(20):
        x = await client.submit(_answer)
        assert await x == 42
        story = await client.story(x)
        sched = [(a, b) for k, a, b, where, *_ in story if where == "scheduler"]
        assert ("processing", "memory") in sched
        whats = [a for k, a, b, where, *_ in story if where != "scheduler"]
        assert "compute-task" in whats and "memory" in whats
        times = [e[4] for e in story]
        assert times == sorted(times)


# ---------------------------------------------------------------- notebook views


def test_future_html_and_notebook_progress_bar_updates(tmp_path: Any) -> None:
    from trioflow import Client, LocalCluster
    from trioflow.progress import _notebook_progress

    flag = str(tmp_path / "go")
    shown: list[str] = []

    class Handle:
        def update(self, obj: Any) -> None:
            shown.append(obj)
            open(flag, "w").close()  # the first view is up: let the task finish

    def display(obj: Any, display_id: bool = False) -> Handle:
        assert display_id
        return Handle()

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        quick = client.submit(_answer, key="answer-<b>")
        assert quick.result(timeout=10) == 42
        slow = client.submit(_wait_on_event_in_named_function, flag, key="wait-1")
        _notebook_progress([quick, slow], client, 0.001, display=display, html=str)
        assert slow.result(timeout=10) == 1
        page = quick._repr_html_()
    assert "status: finished" in page and "answer-&lt;b&gt;" in page and "<b>" not in page
    assert "1 / 1" in shown[0] and "0 / 1" in shown[0] and "1/2" in shown[0]
    assert "2/2" in shown[-1] and "wait" in shown[-1]


# ---------------------------------------------------------------- the live page's profile view


async def _get(port: int, path: str) -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


@pytest.mark.slow
@pytest.mark.trioflow_cluster(
    n_workers=2, dashboard_address="127.0.0.1:0", worker_options={"profile_interval": 0.002, "dashboard_address": "127.0.0.1:0"}
)
async def test_page_profile_view_filters_by_prefix_and_window(trioflow_cluster: Any, trioflow_client: Any) -> None:
    cluster, client = trioflow_cluster, trioflow_client
    port = cluster.scheduler.services["dashboard"]
    with trio.fail_after(30):
        for f in [await client.submit(_spin_in_named_function, 0.1, pure=False, key=f"spin-{i}") for i in range(4)]:
            await f
        status, page = await _get(port, "/profile?prefix=spin&last=60")
        assert status == 200
        assert "_burn_here" in page and 'value="spin" selected' in page
        assert '<script src="/static/profile.js">' in page  # the zoom (inline scripts are refused by the CSP)
        status, page = await _get(port, "/profile?prefix=nothing")
        assert status == 200 and "_burn_here" not in page and "(0 samples)" in page
        assert (await _get(port, "/profile?last=soon"))[0] == 400
        # A worker's own page shows its own threads.
        pages = [(await _get(w.services["dashboard"], "/profile?prefix=spin"))[1] for w in cluster.workers]
        assert any("_burn_here" in page for page in pages)
        status, js = await _get(port, "/static/profile.js")
        assert status == 200 and "addEventListener" in js


def _blob(i: int) -> bytes:
    return bytes([i]) * 600_000


@pytest.mark.trioflow_cluster(
    n_workers=1, worker_options={"memory_limit": 100_000_000, "memory_target_fraction": 0.01, "memory_pause_fraction": None}
)
async def test_task_stream_shows_spilling_to_disk_and_back(trioflow_cluster: Any, trioflow_client: Any) -> None:
    client = trioflow_client
    with trio.fail_after(20):
        blobs = [await client.submit(_blob, i) for i in range(4)]
        for b in blobs:
            await b
        # The oldest went to disk (1 MB target); a task that needs it reads it back.
        assert await (await client.submit(len, blobs[0])) == 600_000
        actions = {ss["action"]: r for r in await client.get_task_stream() for ss in r["startstops"]}
        assert actions["disk-write"]["nbytes"] >= 600_000
        assert actions["disk-read"]["key"] == blobs[0].key
