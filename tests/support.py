"""What the tests share: waiting on a condition, comm test servers, and real
processes (a daemon with its output in a file, stopped with a SIGTERM ->
SIGKILL ladder together with everything it started).

Import it as ``from support import ...`` (``tests/conftest.py`` puts the
tests directory on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from trioflow.comm import Comm, CommClosedError, Listener, listen
from trioflow.protocol import messages as m

# ---------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], Any], timeout: float = 10, what: str | None = None, interval: float = 0.01) -> Any:
    """Wait until ``predicate()`` is true and return its value; fail the test
    with "timed out after {timeout}s waiting for {what}" otherwise.

    One helper for both kinds of test: inside Trio it returns an awaitable
    (``await wait_until(...)``, polling with ``trio.sleep``); in plain code it
    blocks (``wait_until(...)``, polling with ``time.sleep``).  A predicate
    may raise to fail at once (a process that exited, say).
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return _wait_blocking(predicate, timeout, what, interval)
    return _wait_trio(predicate, timeout, what, interval)


def _timed_out(predicate: Callable[[], Any], timeout: float, what: str | None) -> AssertionError:
    name = what or getattr(predicate, "__qualname__", repr(predicate))
    return AssertionError(f"timed out after {timeout}s waiting for {name}")


def _wait_blocking(predicate: Callable[[], Any], timeout: float, what: str | None, interval: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(predicate, timeout, what)
        time.sleep(interval)


async def _wait_trio(predicate: Callable[[], Any], timeout: float, what: str | None, interval: float) -> Any:
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(interval)
    raise _timed_out(predicate, timeout, what)


# ---------------------------------------------------------------- comms (plain and TLS)

Handler = Callable[[Comm], Awaitable[None]]


async def echo(comm: Comm) -> None:
    while True:
        try:
            msg = await comm.recv()
        except CommClosedError as exc:
            if exc.clean:
                return  # hung up between messages: fine
            raise  # cut short: let listen() log it
        await comm.send(msg)


async def start(nursery: trio.Nursery, address: str, handler: Handler = echo, **kwargs: Any) -> Listener:
    kwargs.setdefault("role", "scheduler")
    kwargs.setdefault("name", "sched")
    return await nursery.start(functools.partial(listen, address, handler, **kwargs))


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("trioflow")]


async def echo_once(comm: Comm, msg: m.Message) -> m.Message:
    await comm.send(msg)
    return await comm.recv()


# ---------------------------------------------------------------- real processes

BIN = Path(sys.executable).parent
SCHEDULER = str(BIN / "trioflow-scheduler")
WORKER = str(BIN / "trioflow-worker")
LOCAL = ["--host", "127.0.0.1"]


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
            return _wait_blocking(found, timeout, f"{pattern!r} in the output of {' '.join(self.args)}", 0.05)
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

    return _wait_blocking(load, timeout, f"scheduler file {path}", 0.05)


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
