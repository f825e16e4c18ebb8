"""Dask users' sessions, run unchanged apart from the import line.

Each test is written the way someone coming from dask.distributed writes a
notebook: ``from trioflow import Client, ...`` where they had ``from
dask.distributed import ...``, and nothing else adapted.  The answers are
checked against dask's own local scheduler, computed either before the
client exists or with ``scheduler="sync"`` (a live client makes itself dask's
default scheduler, so a bare ``.compute()`` would not be a reference).

The worker processes cannot import this file: its task functions travel by
value (as a notebook's do).  ``Client()`` may find port 8787 taken by another
cluster on this machine; it then serves its page elsewhere with a warning,
which is not what these tests are about.
"""

from __future__ import annotations

import operator
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import cloudpickle
import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV
from support import wait_until

from trioflow import Client, as_completed, futures_of, wait

pytestmark = pytest.mark.filterwarnings("ignore:Port 8787 is already in use:UserWarning")

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ------------------------------------------------------------ a user's functions


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


def add(x: int, y: int) -> int:
    return x + y


def collatz_steps(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def wait_for_file(x: int, path: str) -> int:
    """A task that runs until ``path`` exists (bounded): work in flight."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return x * 10


def worker_pid() -> int:
    return os.getpid()


# ------------------------------------------------------------ 1. futures: map / submit / gather


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_map_submit_gather_on_two_worker_processes() -> None:
    expected_total = dask.compute(
        sum(dask.delayed(inc)(dask.delayed(double)(i)) for i in range(20)), scheduler="sync"
    )[0]

    client = Client(n_workers=2, threads_per_worker=1)
    try:
        pids = client.run(os.getpid)
        assert len(pids) == 2 and os.getpid() not in pids.values()  # real worker processes

        doubled = client.map(double, range(20))
        incremented = client.map(inc, doubled)
        total = client.submit(sum, incremented)
        assert total.result() == expected_total
        assert client.gather(incremented) == [2 * i + 1 for i in range(20)]

        a = client.submit(add, 1, 2)
        b = client.submit(add, a, 10)
        assert b.result() == 13
        [big] = client.scatter([list(range(1000))])
        assert client.submit(sum, big).result() == sum(range(1000))
        steps = client.map(collatz_steps, range(1, 30))
        assert client.gather(steps) == [collatz_steps(n) for n in range(1, 30)]
    finally:
        client.close()
    assert client.status == "closed"


# ------------------------------------------------------------ 2. dask.array: persist, wait, sum


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_array_persist_then_sum() -> None:
    def make() -> da.Array:
        return da.random.RandomState(1).random_sample((2000, 2000), chunks=(500, 500))

    expected_sum, expected_mean = dask.compute(make().sum(), make().mean(axis=0), scheduler="sync")

    client = Client(n_workers=2, threads_per_worker=1)
    try:
        x = make()
        x = x.persist()
        wait(x)
        assert len(futures_of(x)) == 16 and all(f.status == "finished" for f in futures_of(x))
        assert x.sum().compute() == pytest.approx(expected_sum)
        np.testing.assert_allclose(x.mean(axis=0).compute(), expected_mean)
        y = (x + x.T).sum(axis=1)[:5].compute()
        np.testing.assert_allclose(
            y, dask.compute((make() + make().T).sum(axis=1)[:5], scheduler="sync")[0]
        )
    finally:
        client.close()


# ------------------------------------------------------------ 3. dask.dataframe: groupby, merge, resample


def _frames() -> tuple[dd.DataFrame, dd.DataFrame]:
    rng = np.random.default_rng(7)
    index = pd.date_range("2026-01-01", periods=2000, freq="15min", name="timestamp")
    trades = pd.DataFrame(
        {
            "symbol": rng.choice(["AAA", "BBB", "CCC", "DDD"], size=len(index)),
            "price": rng.uniform(10, 20, len(index)),
            "size": rng.integers(1, 100, len(index)),
        },
        index=index,
    )
    sectors = pd.DataFrame(
        {"symbol": ["AAA", "BBB", "CCC", "DDD"], "sector": ["tech", "tech", "energy", "food"]}
    )
    return dd.from_pandas(trades, npartitions=6), dd.from_pandas(sectors, npartitions=1)


def _dataframe_questions(trades: dd.DataFrame, sectors: dd.DataFrame) -> tuple[object, ...]:
    by_symbol = trades.groupby("symbol").agg({"price": "mean", "size": "sum"})
    by_sector = trades.reset_index().merge(sectors, on="symbol").groupby("sector")["size"].sum()
    daily = trades["price"].resample("1D").mean()
    hourly_volume = trades["size"].resample("6h").sum()
    return by_symbol, by_sector, daily, hourly_volume


@pytest.mark.timeout(60)
def test_dataframe_groupby_merge_resample() -> None:
    expected = dask.compute(*_dataframe_questions(*_frames()), scheduler="sync")

    with Client(processes=False) as client:
        trades, sectors = _frames()
        trades = trades.persist()
        got = dask.compute(*_dataframe_questions(trades, sectors))
        assert client.who_has()  # the pieces live on the cluster
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, pd.DataFrame):
            pd.testing.assert_frame_equal(g.sort_index(), e.sort_index())
        else:
            pd.testing.assert_series_equal(g.sort_index(), e.sort_index())


# ------------------------------------------------------------ 4. dask.bag pipeline


LINES = [
    "The quick brown fox jumps over the lazy dog",
    "the dog sleeps; the fox runs off into the woods",
    "A lazy afternoon in the woods, 3 foxes and 2 dogs",
    "Quick thinking: the brown dog wakes up!",
] * 40


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_bag_pipeline() -> None:
    # Builtins only: the graph pickles by reference, and the worker
    # processes can import what it names (a notebook's own functions live
    # in __main__ and travel by value; this file's cannot, see above).
    def pipeline() -> tuple[db.Item, db.Item, db.Bag]:
        lines = db.from_sequence(LINES, npartitions=8)
        words = lines.map(str.lower).map(str.split).flatten().filter(str.isalpha)
        letters = words.map(len).fold(operator.add, initial=0)
        return letters, words.count(), words.frequencies()

    expected = dask.compute(*pipeline(), scheduler="sync")

    client = Client(n_workers=2, threads_per_worker=1)
    try:
        letters, count, frequencies = dask.compute(*pipeline())
        assert (
            client.run_on_scheduler(
                lambda dask_scheduler: len(dask_scheduler.state.prefix_durations)
            )
            > 0
        )
    finally:
        client.close()
    assert (letters, count) == expected[:2]
    assert dict(frequencies) == dict(expected[2])
    local = Counter(w for line in LINES for w in line.lower().split() if w.isalpha())
    assert dict(frequencies) == dict(local) and count == sum(local.values())


# ------------------------------------------------------------ 5. an evolving workflow: as_completed + add


def _local_evolution(seeds: list[int], limit: int) -> Counter[int]:
    results: Counter[int] = Counter()
    todo = list(seeds)
    while todo:
        y = inc(double(todo.pop()))
        results[y] += 1
        if y < limit:
            todo.append(y)
    return results


@pytest.mark.timeout(60)
def test_futures_chain_grows_with_as_completed_add() -> None:
    seeds, limit = list(range(8)), 200
    expected = _local_evolution(seeds, limit)

    with Client(n_workers=2, threads_per_worker=2, processes=False) as client:
        futures = [client.submit(inc, client.submit(double, s)) for s in seeds]
        seq = as_completed(futures)
        results: Counter[int] = Counter()
        for future in seq:
            y = future.result()
            results[y] += 1
            if y < limit:
                seq.add(client.submit(inc, client.submit(double, y)))
        assert seq.is_empty()
    assert results == expected


# ------------------------------------------------------------ 6. asyncio under IPython's top-level await


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_asyncio_session_in_ipython_cells() -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    expected = dask.compute([dask.delayed(inc)(i) for i in range(10)], scheduler="sync")[0]

    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    try:
        shell.user_ns.update(inc=inc, add=add)  # defined in earlier cells
        cells = [
            "from trioflow import Client, as_completed",
            "client = await Client(n_workers=2, threads_per_worker=1, asynchronous=True)",
            "future = client.submit(inc, 10)",
            "one = await future",
            "futures = client.map(inc, range(10))",
            "results = await client.gather(futures)",
            "total = await client.submit(sum, futures)",
            "order = [f async for f in as_completed(futures)]",
            "[x] = await client.scatter([5])\nsummed = await client.submit(add, x, 1)",
            "await client.close()",
        ]
        for cell in cells:
            shell.run_cell(cell).raise_error()
        ns = shell.user_ns
        assert ns["one"] == 11
        assert ns["results"] == expected
        assert ns["total"] == sum(expected)
        assert set(ns["order"]) == set(ns["futures"])
        assert ns["summed"] == 6
        assert ns["client"].status == "closed"
    finally:
        client = shell.user_ns.get("client")
        if client is not None and client.status != "closed":
            shell.run_cell("await client.close()")
        InteractiveShell.clear_instance()
        from IPython.core import async_helpers

        loop = async_helpers._asyncio_event_loop  # IPython keeps its loop for the next cell
        if loop is not None:
            loop.close()


# ------------------------------------------------------------ 7. joblib with scikit-learn


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["dask", "trioflow"])
def test_scikit_learn_grid_search_through_joblib(backend: str) -> None:
    X, y = make_classification(n_samples=200, n_features=8, random_state=0)
    grid = {"max_depth": [2, 4], "n_estimators": [5, 10]}
    local = GridSearchCV(RandomForestClassifier(random_state=0), grid, cv=3, n_jobs=1).fit(X, y)

    with Client(processes=False) as client:
        with joblib.parallel_backend(backend):
            search = GridSearchCV(
                RandomForestClassifier(random_state=0), grid, cv=3, n_jobs=-1
            ).fit(X, y)
        ran = client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.state.prefix_durations)
        )
    assert search.best_params_ == local.best_params_
    np.testing.assert_array_equal(
        search.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"]
    )
    assert any("fit_and_score" in name for name in ran)  # the fits ran on the cluster


# ------------------------------------------------------------ 8. a worker process dies mid-computation


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_killing_a_worker_process_mid_computation(tmp_path: Path) -> None:
    go = str(tmp_path / "go")
    expected = dask.compute(
        sum(dask.delayed(lambda x: x * 10)(inc(i)) for i in range(40)), scheduler="sync"
    )[0]

    client = Client()
    try:
        client.wait_for_workers(1)
        first = client.map(inc, range(40))
        wait(first)
        second = client.map(wait_for_file, first, path=go)
        total = client.submit(sum, second)

        def victim() -> str | None:
            holds = client.has_what()
            busy = client.processing()
            return next((w for w in busy if busy[w] and holds.get(w)), None)

        address = wait_until(
            victim, timeout=30, what="a worker busy with the second round and holding results"
        )
        pid = client.run(os.getpid)[address]
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: address not in client.scheduler_info()["workers"],
            timeout=30,
            what="the scheduler to notice the death",
        )
        Path(go).touch()
        assert total.result(timeout=60) == expected
        assert pid not in client.run(os.getpid).values()  # it did die (and its nanny replaced it)
        assert client.gather(second) == [10 * inc(i) for i in range(40)]
    finally:
        Path(go).touch()
        client.close()
