"""dask collections on trioflow give what dask's synchronous scheduler gives."""

import sys

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from trioflow import Client, LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def sync(x):
    return dask.compute(x, scheduler="sync")[0]


def test_importing_trioflow_does_not_import_dask() -> None:
    import subprocess

    code = "import sys, trioflow; assert 'dask' not in sys.modules, 'dask imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_array_blockwise_reduction_transpose_rechunk(client: Client) -> None:
    x = da.random.RandomState(42).random((600, 600), chunks=(100, 100))
    for expr in [x + 1, (x + x.T).sum(), x.mean(axis=0), (x @ x.T)[:10, :10], x.rechunk((150, 40))]:
        np.testing.assert_allclose(expr.compute(), sync(expr))


def test_dataframe_groupby_merge_set_index(client: Client) -> None:
    pdf = pd.DataFrame({"a": np.arange(2000) % 13, "b": np.arange(2000.0), "c": np.arange(2000) % 7})
    ddf = dd.from_pandas(pdf, npartitions=6)
    pd.testing.assert_series_equal(
        ddf.groupby("a").b.mean().compute().sort_index(), sync(ddf.groupby("a").b.mean()).sort_index()
    )
    merged = ddf.merge(ddf[["c", "b"]].rename(columns={"b": "b2"}), on="c")
    assert merged.b2.sum().compute() == sync(merged.b2.sum())
    indexed = ddf.set_index("b")
    pd.testing.assert_frame_equal(indexed.compute().sort_index(), sync(indexed).sort_index())


def test_bag(client: Client) -> None:
    b = db.from_sequence(range(1000), npartitions=10).map(lambda v: v * 3).filter(lambda v: v % 2 == 0)
    assert b.sum().compute() == sync(b.sum())
    assert sorted(b.frequencies().compute()) == sorted(sync(b.frequencies()))


def test_delayed_get_compute_persist(client: Client) -> None:
    d = dask.delayed(lambda a, b: a * b)(6, 7)
    assert d.compute() == 42
    assert client.get({"x": 1, "y": (lambda v: v + 1, "x"), ("z", 0): (sum, ["x", "y"])}, ["y", [("z", 0)]]) == [2, [3]]
    x = da.arange(100, chunks=10)
    fut = client.compute(x.sum())
    assert fut.result() == 4950
    [f1, f2] = client.compute([x.sum(), x.max()])
    assert (f1.result(), f2.result()) == (4950, 99)
    assert client.compute(x.sum(), sync=True) == 4950
    p = client.persist(x * 2)
    assert type(p) is da.Array
    assert (p + 1).sum().compute() == 2 * 4950 + 100
    pdf = pd.DataFrame({"v": range(100)})
    pd_persisted = client.persist(dd.from_pandas(pdf, npartitions=4))
    assert pd_persisted.v.sum().compute() == 4950


def test_set_as_default_ends_with_the_client() -> None:
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as c:
            assert dask.config.get("scheduler") == c._dask_get  # client.get, or dask locally inside a task
        assert dask.config.get("scheduler", None) != c._dask_get


def test_wait_on_a_persisted_collection_waits_for_its_pieces(client: Client) -> None:
    """wait() reads the futures out of the collection's graph; it never
    iterates the collection (element by element: 2**20 getitems for this one)."""
    from trioflow import futures_of, wait

    x = da.arange(2**20, chunks=2**18).persist()
    assert len(futures_of(x)) == 4
    done, not_done = wait(x, timeout=20)
    assert len(done) == 4 and not not_done
    y = (x + 1).persist()
    done, not_done = wait([x, {"y": y}], timeout=20)
    assert len(done) == 8 and not not_done
    assert int(y.sum().compute()) == sync((da.arange(2**20, chunks=2**18) + 1).sum())


def _compute_inside_a_task(n: int) -> int:
    import dask.array as da

    return int(da.arange(n, chunks=max(n // 4, 1)).sum().compute())


def test_a_task_on_a_thread_worker_can_compute_a_collection() -> None:
    """The client installs itself as dask's scheduler process-wide; a task on
    the only thread of an in-process worker computing a collection must not
    wait for that thread (it runs on dask's local synchronous scheduler)."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as c:
        assert c.submit(_compute_inside_a_task, 100).result(timeout=20) == sum(range(100))
        # The client itself still computes through the cluster.
        assert int(da.arange(10, chunks=5).sum().compute()) == 45
