"""The worker's state machine and the scheduler's, driven directly:
secede / rejoin (a run gives its slot back while it waits, and gets one
again before any ready task), a run that asks to be rescheduled, and the
scheduler counting a long-running task out of its worker's load."""

from __future__ import annotations

import pytest

from trioflow.protocol.messages import ComputeTask, LongRunning, Reschedule, TaskSpec
from trioflow.protocol.serialize import dumps
from trioflow.scheduler import state as ss
from trioflow.worker.state import (
    ComputeTaskEvent,
    Execute,
    ExecuteRescheduleEvent,
    ExecuteSuccessEvent,
    GrantRejoin,
    InvalidWorkerEvent,
    RejoinEvent,
    SecedeEvent,
    SendMsg,
    WorkerState,
)

ARGS = dumps(())


def compute(key: str, deps: dict[str, list[str]] | None = None) -> ComputeTaskEvent:
    deps = deps or {}
    return ComputeTaskEvent(
        msg=ComputeTask(key=key, function=b"f", args=ARGS, who_has=deps, nbytes=dict.fromkeys(deps, 10), priority=(0, 0, 0), resources={})
    )


def success(key: str) -> ExecuteSuccessEvent:
    return ExecuteSuccessEvent(key=key, nbytes=10, type_name="int", start=1.0, stop=2.0)


def executed(out: list) -> list[str]:
    return [i.key for i in out if isinstance(i, Execute)]


def worker() -> WorkerState:
    return WorkerState(address="tcp://me", nthreads=1, validate=True)


def test_a_seceded_run_frees_its_slot_and_rejoins_before_ready_tasks() -> None:
    w = worker()
    assert executed(w.handle(compute("a"))) == ["a"]
    assert executed(w.handle(compute("b"))) == []  # one thread, taken
    out = w.handle(SecedeEvent(key="a"))
    assert executed(out) == ["b"] and [i.msg for i in out if isinstance(i, SendMsg)] == [LongRunning(key="a")]
    assert w.n_executing == 1
    w.handle(compute("c"))
    # a wants its slot back: not before b returns, and then before c.
    assert not [i for i in w.handle(RejoinEvent(key="a")) if isinstance(i, GrantRejoin)]
    out = w.handle(success("b"))
    assert [i for i in out if isinstance(i, GrantRejoin)] == [GrantRejoin("a")] and executed(out) == []
    out = w.handle(success("a"))
    assert executed(out) == ["c"] and not w.seceded


def test_secede_and_rejoin_that_do_not_fit_change_nothing() -> None:
    w = worker()
    with pytest.raises(InvalidWorkerEvent):
        w.handle(SecedeEvent(key="nothing"))
    w.handle(compute("a"))
    with pytest.raises(InvalidWorkerEvent):
        w.handle(RejoinEvent(key="a"))  # never seceded
    w.handle(SecedeEvent(key="a"))
    with pytest.raises(InvalidWorkerEvent):
        w.handle(SecedeEvent(key="a"))
    # A seceded run that ends without rejoining leaves nothing behind.
    w.handle(RejoinEvent(key="a"))
    w.handle(compute("b"))
    w.handle(success("a"))
    assert not w.seceded and not w.rejoining


def test_a_run_that_asks_to_be_rescheduled_is_dropped_and_reported() -> None:
    w = worker()
    w.handle(compute("a"))
    out = w.handle(ExecuteRescheduleEvent(key="a"))
    assert [i.msg for i in out if isinstance(i, SendMsg)] == [Reschedule(key="a")]
    assert "a" not in w.tasks and w.n_executing == 0


def test_the_scheduler_sends_more_root_tasks_to_a_worker_whose_task_seceded() -> None:
    s = ss.SchedulerState(validate=True)
    s.handle(ss.AddWorkerEvent(address="tcp://w", name="w", nthreads=1, memory_limit=0), now=0.0)
    s.handle(ss.AddClientEvent(client="c"), now=0.0)

    def submit(key: str) -> list:
        spec = TaskSpec(key=key, function=b"f", args=ARGS)
        return s.handle(ss.UpdateGraphEvent(client="c", tasks=[spec], keys=[key]), now=0.0)

    def sent(out: list) -> list[str]:
        return [i.msg.key for i in out if isinstance(i, ss.ToWorker) and isinstance(i.msg, ComputeTask)]

    assert sent(submit("a")) == ["a"]
    assert sent(submit("b")) == ["b"]  # saturation: ceil(1 * 1.1) = 2
    assert sent(submit("c")) == []  # queued
    assert sent(s.handle(ss.LongRunningEvent(worker="tcp://w", key="a"), now=0.0)) == ["c"]
    ws = s.workers["tcp://w"]
    assert [t.key for t in ws.long_running] == ["a"]
    s.handle(ss.TaskFinishedEvent(worker="tcp://w", key="a", nbytes=1, type_name="int", start=0.0, stop=1.0), now=1.0)
    assert not ws.long_running
