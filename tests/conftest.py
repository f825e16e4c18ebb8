import logging

import pytest

from trioflow.testing.leaks import LeakChecker


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
