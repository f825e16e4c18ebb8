"""joblib's ``Parallel`` and scikit-learn's ``n_jobs`` on a trioflow cluster."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator

import joblib
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.naive_bayes import GaussianNB
from sklearn.svm import SVC

import trioflow
from trioflow import Client, get_worker


class Boom(Exception):
    pass


def whoami(i: int) -> tuple[int, str]:
    return i, get_worker().address


def boom(i: int) -> int:
    if i == 3:
        raise Boom(f"task {i}")
    return i


@pytest.fixture
def client() -> Iterator[Client]:
    with Client(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c


def _ran_on_cluster(client: Client, name: str) -> bool:
    return any(name in prefix for prefix in client.cluster.scheduler.state.prefix_durations)


def test_parallel_runs_every_call_on_the_workers(client: Client) -> None:
    workers = set(client.scheduler_info()["workers"])
    with joblib.parallel_backend("trioflow"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(whoami)(i) for i in range(20))
    assert [i for i, _ in out] == list(range(20))
    assert {a for _, a in out} <= workers
    assert _ran_on_cluster(client, "whoami")


def test_a_failing_call_raises_its_own_exception(client: Client) -> None:
    with joblib.parallel_backend("trioflow"), pytest.raises(Boom, match="task 3"):
        joblib.Parallel(n_jobs=-1, batch_size=1)(joblib.delayed(boom)(i) for i in range(8))
    # The backend stays usable after an abort.
    with joblib.parallel_backend("trioflow"):
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(boom)(i) for i in range(3)) == [0, 1, 2]


def test_grid_search_on_the_cluster_matches_the_local_result(client: Client) -> None:
    X, y = make_classification(n_samples=150, n_features=6, random_state=0)
    grid = {"C": [0.1, 1.0, 10.0], "gamma": ["scale", 0.1]}
    local = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_backend("trioflow"):
        remote = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    assert remote.best_params_ == local.best_params_
    assert list(remote.cv_results_["mean_test_score"]) == list(local.cv_results_["mean_test_score"])
    assert _ran_on_cluster(client, "fit_and_score")


def test_dask_name_means_trioflow_without_dask_distributed(client: Client) -> None:
    assert importlib.util.find_spec("distributed") is None  # never installed in our environment
    X, y = make_classification(n_samples=120, n_features=5, random_state=1)
    estimators = [("lr", LogisticRegression()), ("nb", GaussianNB()), ("svc", SVC())]
    local = VotingClassifier(estimators, n_jobs=1).fit(X, y).predict(X)
    with joblib.parallel_backend("dask"):
        remote = VotingClassifier(estimators, n_jobs=-1).fit(X, y).predict(X)
    assert list(remote) == list(local)
    assert _ran_on_cluster(client, "fit")


def test_the_backend_needs_a_client() -> None:
    with pytest.raises(ValueError, match="needs a client"), joblib.parallel_backend("trioflow"):
        pass


def test_the_names_are_known_to_joblib_in_this_process() -> None:
    assert trioflow.__version__
    assert {"trioflow", "dask"} <= set(joblib.parallel.EXTERNAL_BACKENDS)


@pytest.mark.slow
def test_importing_trioflow_does_not_import_joblib_and_registers_when_joblib_comes() -> None:
    code = (
        "import sys, trioflow; assert 'joblib' not in sys.modules, 'joblib imported'; "
        "import joblib; from joblib.parallel import EXTERNAL_BACKENDS as E; "
        "assert 'trioflow' in E, sorted(E); "
        "assert 'trioflow.joblib' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    code = "import joblib, trioflow; from joblib.parallel import EXTERNAL_BACKENDS as E; assert 'trioflow' in E; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
