"""pytest plugin (registered through the ``pytest11`` entry point).

Fixtures, available in any project that installs trioflow:

``trioflow_cluster``
    An in-process cluster (scheduler + two single-thread workers over real
    TCP on 127.0.0.1) for Trio tests (pytest-trio).
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


@pytest.fixture
def trioflow_no_leaks() -> Iterator[None]:
    from .leaks import LeakChecker

    checker = LeakChecker()
    yield
    checker.check()


@pytest.fixture
async def trioflow_cluster() -> AsyncIterator[Any]:
    from ..deploy import open_cluster

    async with open_cluster(n_workers=2, threads_per_worker=1, validate=True) as cluster:
        yield cluster


@pytest.fixture
async def trioflow_client(trioflow_cluster: Any) -> AsyncIterator[Any]:
    from ..client import open_client

    async with open_client(trioflow_cluster) as client:
        yield client
