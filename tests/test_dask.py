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
            assert dask.config.get("scheduler") == c.get
        assert dask.config.get("scheduler", None) != c.get
