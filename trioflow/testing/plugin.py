"""pytest plugin (registered through the ``pytest11`` entry point).

Fixtures, available in any project that installs trioflow:

``trioflow_cluster``
    An in-process cluster (scheduler + two single-thread workers over real
    TCP on 127.0.0.1, state validation on) for Trio tests (pytest-trio).
    Other options for :func:`~trioflow.open_cluster` come from the marker
    ``@pytest.mark.trioflow_cluster(n_workers=1, ...)`` (on the test, its
    class or module), or from an indirect parametrisation,
    ``@pytest.mark.parametrize("trioflow_cluster", [{"n_workers": 1}],
    indirect=True)``; the parameter wins over the marker, both over the
    defaults.
``trioflow_client``
    An :class:`~trioflow.AsyncClient` connected to ``trioflow_cluster``.
``trioflow_no_leaks``
    Fails the test if it leaves a thread, socket or child process behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

# This module is loaded by every pytest run in an environment where trioflow
# is installed, with or without its test extra: import nothing here beyond
# pytest and the standard library; each fixture imports what it needs.

#: What ``trioflow_cluster`` passes to ``open_cluster`` unless told otherwise.
DEFAULT_CLUSTER_OPTIONS: dict[str, Any] = {"n_workers": 2, "threads_per_worker": 1, "validate": True}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "trioflow_cluster(**options): options for open_cluster() in the trioflow_cluster fixture",
    )


def cluster_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The options ``trioflow_cluster`` gives ``open_cluster`` for this test:
    the defaults, then the closest ``trioflow_cluster`` marker's keywords,
    then an indirect parameter (a dict)."""
    options = dict(DEFAULT_CLUSTER_OPTIONS)
    marker = request.node.get_closest_marker("trioflow_cluster")
    if marker is not None:
        if marker.args:
            raise TypeError("@pytest.mark.trioflow_cluster takes keyword arguments only (options for open_cluster)")
        options.update(marker.kwargs)
    param = getattr(request, "param", None)
    if param is not None:
        if not isinstance(param, dict):
            raise TypeError(f"an indirect trioflow_cluster parameter is a dict of open_cluster options, not {param!r}")
        options.update(param)
    return options


@pytest.fixture
def trioflow_no_leaks() -> Iterator[None]:
    from .leaks import LeakChecker

    checker = LeakChecker()
    yield
    checker.check()


@pytest.fixture
async def trioflow_cluster(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    from ..deploy import open_cluster

    async with open_cluster(**cluster_options(request)) as cluster:
        yield cluster


@pytest.fixture
async def trioflow_client(trioflow_cluster: Any) -> AsyncIterator[Any]:
    from ..client import open_client

    async with open_client(trioflow_cluster) as client:
        yield client
