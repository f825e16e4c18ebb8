"""The test suite's shared setup.

Layout: ``unit/`` runs the sans-IO parts alone (the scheduler's and the
worker's state machines, the codec, records, addresses); ``cluster/`` runs
servers, comms and clusters inside this interpreter (the shipped
``trioflow_cluster`` / ``trioflow_client`` fixtures where the shape fits);
``system/`` starts real processes (command line, nannies, TLS, docs examples,
packaging, the browser, cut network links).  ``support.py`` holds what they
share (``wait_until``, comm test servers, daemons); this directory is put on
``sys.path`` here so that every test module can ``from support import ...``.
"""

import logging
import sys
from pathlib import Path

import pytest

from trioflow.testing.leaks import LeakChecker

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest):
    """Every test in this suite must leave no thread, socket or child behind."""
    checker = LeakChecker()
    yield
    checker.check()


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="trioflow")
    yield
