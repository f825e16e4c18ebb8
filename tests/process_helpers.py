"""Real processes for tests: a daemon with its output in a file, stopped
with a SIGTERM -> SIGKILL ladder together with everything it started."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

BIN = Path(sys.executable).parent
SCHEDULER = str(BIN / "trioflow-scheduler")
WORKER = str(BIN / "trioflow-worker")
LOCAL = ["--host", "127.0.0.1"]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


class Daemon:
    """One command-line process, its stderr in a file."""

    def __init__(self, args: list[str], log: Path, cwd: Path) -> None:
        self.args = args
        self.log = log
        self._f = open(log, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._f, stderr=subprocess.STDOUT, cwd=cwd)
        self.known: dict[int, psutil.Process] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_text(self, pattern: str, timeout: float = 20, count: int = 1) -> re.Match[str]:
        def found() -> Any:
            matches = list(re.finditer(pattern, self.text()))
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args[0]} exited ({self.proc.returncode}) before printing {pattern!r}:\n{self.text()}")
            return None

        try:
            return wait_for(found, timeout, f"{pattern!r} in the output of {' '.join(self.args)}")  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- output:\n{self.text()}") from None

    def children(self) -> list[psutil.Process]:
        kids = _descendants(self.pid)
        for k in kids:
            self.known[k.pid] = k
        return kids

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{' '.join(self.args)} still running after {timeout}s:\n{self.text()}") from None

    def stop(self) -> None:
        """terminate -> bounded wait -> kill, for the process and what it started."""
        self.children()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for p in self.known.values():
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.kill()
        psutil.wait_procs([p for p in self.known.values()], timeout=3)
        self._f.close()


@contextlib.contextmanager
def daemons() -> Iterator[Callable[..., Daemon]]:
    """``start(args, log)`` starts a daemon in ``log``'s directory; all are
    stopped at exit, last first."""
    started: list[Daemon] = []

    def start(args: list[str], log: Path) -> Daemon:
        d = Daemon(args, log, cwd=log.parent)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in reversed(started):
            d.stop()


def read_scheduler_file(path: Path, timeout: float = 20) -> dict[str, Any]:
    def load() -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    return wait_for(load, timeout, f"scheduler file {path}")  # type: ignore[no-any-return]


def start_scheduler(start: Callable[..., Daemon], tmp: Path, *extra: str, port: int = 0, name: str = "scheduler") -> tuple[Daemon, str, Path]:
    sfile = tmp / f"{name}.json"
    d = start([SCHEDULER, *LOCAL, "--port", str(port), "--no-dashboard", "--scheduler-file", str(sfile), *extra], tmp / f"{name}.log")
    d.wait_for_text(r"Scheduler at:\s+\S+")
    info = read_scheduler_file(sfile)
    return d, info["address"], sfile


def start_worker(start: Callable[..., Daemon], tmp: Path, address: str, *extra: str, name: str = "worker", wait: bool = True, count: int = 1) -> Daemon:
    d = start([WORKER, address, *LOCAL, "--no-dashboard", *extra], tmp / f"{name}.log")
    if wait:
        d.wait_for_text(r"Start worker at:\s+\S+", count=count)
    return d
