"""dask.annotate(...) honoured through the client: priority, retries,
resources, workers, allow_other_workers."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

dask = pytest.importorskip("dask")
from dask import delayed  # noqa: E402

from trioflow import Client, Future, LocalCluster, futures_of, open_client, open_cluster, wait  # noqa: E402
from trioflow.daskgraph import collections_graph, graph_to_specs  # noqa: E402

_failures: dict[str, int] = {}
_lock = threading.Lock()


def flaky(tag: str) -> str:
    """Fail the first time for each tag."""
    with _lock:
        n = _failures[tag] = _failures.get(tag, 0) + 1
    if n == 1:
        raise RuntimeError(f"first run of {tag}")
    return tag


def inc(x: int) -> int:
    return x + 1


def _specs(collection: Any, **kwargs: Any) -> dict[str, Any]:
    expr, _ = collections_graph([collection], optimize_graph=True, finalize=False)
    return {s.key: s for s in graph_to_specs(expr, Future, function_bytes=b"f", **kwargs)}


def test_layer_annotations_win_over_the_call_and_the_context() -> None:
    with dask.annotate(priority=3, retries=2, resources={"GPU": 1}, workers="w1", allow_other_workers=True):
        a = delayed(inc)(1, dask_key_name="a")
    b = delayed(inc)(a, dask_key_name="b")
    specs = _specs(b, priority=9, annotations={"retries": 4, "workers": lambda key: [f"{key}-home"]})
    sa, sb = specs["a"], specs["b"]
    assert (sa.priority, sa.retries, sa.resources, sa.workers, sa.allow_other_workers) == (3, 2, {"GPU": 1.0}, ["w1"], True)
    # b has no annotation of its own: the call's options, then the context's.
    assert (sb.priority, sb.retries, sb.workers, sb.allow_other_workers) == (9, 4, ["b-home"], False)


async def test_workers_retries_and_resources_honoured_in_a_cluster() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=2, resources={"GPU": 1}) as cluster, open_client(cluster) as client:
            w1, w2 = (w.address for w in cluster.workers)
            for target in (w1, w2):
                with dask.annotate(workers=[target]):
                    x = delayed(inc)(10)
                (xp,) = await client.persist([x])
                await client.gather(futures_of(xp))
                who = await client.who_has()
                assert who[xp.key] == [target]
            with dask.annotate(retries=1):
                y = delayed(flaky)("y")
            assert await (await client.compute(y)) == "y"
            z = delayed(flaky)("z")
            with pytest.raises(RuntimeError, match="first run of z"):
                await (await client.compute(z))
            with dask.annotate(retries=1):
                fut = await client.submit(flaky, "async-submit")
                futs = await client.map(flaky, ["async-map"])
            assert await fut == "async-submit" and await client.gather(futs) == ["async-map"]
            with dask.annotate(resources={"GPU": 5}):
                big = delayed(inc)(1)
            fut = await client.compute(big)
            state = cluster.scheduler.state
            while fut.key not in state.tasks or state.tasks[fut.key].state != "no-worker":
                await trio.sleep(0.01)  # (nobody has 5 GPUs)
            assert not fut.done()


def test_context_annotations_of_the_calling_thread_with_a_blocking_client() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        addresses = sorted(client.scheduler_info()["workers"])
        for target in addresses:
            with dask.annotate(workers=[target]):
                (xp,) = client.persist([delayed(inc)(1, dask_key_name=f"x-{target}")])
                fut = client.compute(delayed(inc)(2, dask_key_name=f"y-{target}"))
            fut.result(timeout=30)
            wait(xp, timeout=30)
            who = client.who_has()
            assert who[f"x-{target}"] == [target] and who[fut.key] == [target]
        with dask.annotate(retries=1):
            assert dask.compute(delayed(flaky)("dc"))[0] == "dc"
        # Around submit and map too (as dask), for the options not given.
        for target in addresses:
            with dask.annotate(workers=[target]):
                one = client.submit(inc, 1, key=f"one-{target}")
                many = client.map(inc, range(3), key=f"many-{target}")
                other = next(a for a in addresses if a != target)
                mine = client.submit(inc, 2, key=f"mine-{target}", workers=[other])
            wait([one, *many, mine], timeout=30)
            who = client.who_has()
            assert {a for f in [one, *many] for a in who[f.key]} == {target}
            assert who[mine.key] == [other]
        with dask.annotate(retries=1):
            assert client.submit(flaky, "submitted").result(timeout=30) == "submitted"
