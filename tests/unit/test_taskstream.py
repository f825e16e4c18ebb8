"""The scheduler's task stream (a ring in flat columns) and the entry point's allocator choice."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from trioflow.diagnostics.sources import _RingTail
from trioflow.process import launch as _launch
from trioflow.scheduler.taskstream import TaskStream

pytestmark = pytest.mark.timeout(30)


def test_ring_keeps_the_newest_in_order() -> None:
    ts = TaskStream(capacity=4)
    assert len(ts) == 0 and ts.newest(10) == []
    for i in range(6):
        ts.append(f"inc-{i}", f"tcp://w{i % 2}:1", float(i), i + 0.5, 100 + i)
    assert ts.total == 6 and len(ts) == 4
    assert ts.newest(10) == [(f"inc-{i}", f"tcp://w{i % 2}:1", float(i), i + 0.5, 100 + i) for i in range(2, 6)]
    assert ts.newest(2) == [(f"inc-{i}", f"tcp://w{i % 2}:1", float(i), i + 0.5, 100 + i) for i in (4, 5)]
    assert ts.newest(0) == []


def test_long_and_non_ascii_keys_are_cut_cleanly() -> None:
    ts = TaskStream(capacity=2, key_bytes=8)
    ts.append("abcdefgh", "w", 0, 1, 0)  # exactly fits
    ts.append("ééééé", "w", 0, 1, 0)  # 10 bytes: cut inside no character, marked
    assert [e[0] for e in ts.newest(2)] == ["abcdefgh", "éééé…"]
    ts.append("abcdefghé", "w", 0, 1, 0)  # cut in the middle of "é": the half character is dropped
    assert ts.newest(1)[0][0] == "abcdefgh…"


def test_worker_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskStream, "MAX_WORKERS", 3)
    ts = TaskStream(capacity=2)
    for i in range(10):
        ts.append(f"k{i}", f"w{i}", 0, 1, 0)
        assert len(ts._workers) <= 3
    assert [e[1] for e in ts.newest(2)] == ["w8", "w9"]


def test_ring_tail_reports_what_is_new() -> None:
    ts = TaskStream(capacity=5)
    for i in range(3):
        ts.append(f"a{i}", "w", 0, 1, 0)
    tail = _RingTail(ts)
    items, n = tail.take(10)
    assert n == 3 and [e[0] for e in items] == ["a0", "a1", "a2"]
    assert tail.take(10) == ([], 0)
    for i in range(8):  # more than the ring holds: all counted, the newest returned
        ts.append(f"b{i}", "w", 0, 1, 0)
    items, n = tail.take(3)
    assert n == 8 and [e[0] for e in items] == ["b5", "b6", "b7"]


def test_nothing_is_allocated_until_first_append_then_columns_double_up_to_capacity() -> None:
    ts = TaskStream(capacity=1000)
    assert len(ts._keys) == 0
    ts.append("k0", "w", 0, 1, 0)
    assert len(ts._keys) == TaskStream.FIRST_SIZE * ts.key_bytes
    for i in range(1, TaskStream.FIRST_SIZE + 1):
        ts.append(f"k{i}", "w", i, i + 1, 0)
    assert len(ts._start) == 2 * TaskStream.FIRST_SIZE
    for i in range(TaskStream.FIRST_SIZE + 1, 2500):
        ts.append(f"k{i}", "w", i, i + 1, i)
    sizes = {len(c) for c in (ts._key_len, ts._start, ts._stop, ts._thread, ts._worker)}
    assert sizes == {1000} and len(ts._keys) == 1000 * ts.key_bytes
    newest = ts.newest(1000)
    assert [e[0] for e in newest] == [f"k{i}" for i in range(1500, 2500)]
    assert newest[-1] == ("k2499", "w", 2499.0, 2500.0, 2499)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        TaskStream(capacity=0)


def test_scheduler_entry_point_re_executes_on_system_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []

    def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> Any:
        calls.append((path, argv, env))

    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(sys, "orig_argv", ["/usr/bin/python3", "/venv/bin/trioflow-scheduler", "--port", "0"])
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    _launch.use_system_malloc()
    if sys.platform.startswith("linux") and "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or ""):
        [(path, argv, env)] = calls
        assert path == sys.executable
        assert argv == ["/usr/bin/python3", "/venv/bin/trioflow-scheduler", "--port", "0"]
        assert env["PYTHONMALLOC"] == "malloc"
    else:
        assert calls == []
    calls.clear()
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")  # the user's choice wins
    _launch.use_system_malloc()
    assert calls == []
