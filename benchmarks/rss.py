"""Resident set sizes, read with psutil: once, or the peak over a stretch of time.

The runner reads the idle RSS of every process it started (with a nanny, the
nanny plus its worker process and anything else it spawned); workloads read
the scheduler's before and after holding tasks, and sample the workers' while
a computation runs to report its peak.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType

import psutil

MIB = 2**20


def rss_mib(pid: int, *, descendants: bool = False) -> float:
    """RSS of process ``pid`` in MiB; with ``descendants``, plus its children's, recursively."""
    proc = psutil.Process(pid)
    rss = proc.memory_info().rss
    if descendants:
        for child in proc.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.Error:  # exited in between
                pass
    return rss / MIB


class PeakRSS:
    """Sample the RSS of some processes from a thread; ``peak`` is the largest reading.

    ``with PeakRSS(pids) as peak: ...`` reads every ``interval`` seconds (and on
    entry and exit); ``peak.peak`` is then the maximum over the processes and
    the samples, in MiB.  A process that exits is skipped from then on (the
    workload, not the sampler, reports that).
    """

    def __init__(self, pids: Iterable[int], interval: float = 0.01) -> None:
        self._procs = [psutil.Process(pid) for pid in pids]
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._peak = 0
        self.samples = 0

    @property
    def peak(self) -> float:
        return self._peak / MIB

    def _sample(self) -> None:
        for proc in self._procs:
            try:
                self._peak = max(self._peak, proc.memory_info().rss)
            except psutil.Error:
                pass
        self.samples += 1

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()
        self._sample()
