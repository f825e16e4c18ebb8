"""The worker's sans-IO state machine, driven directly.

A hypothesis ``RuleBasedStateMachine`` plays the scheduler (compute-task,
free-keys), the executor (each ``Execute`` answered once, by success or
failure), the peers (each ``GatherDep`` answered once: done, partly missing,
or failed) and scatter (data put), against :class:`WorkerState`.  Next to the
state it keeps what the shell would hold: the data store, the executions and
transfers in progress.  After every step ``validate()`` must hold, and the
state must agree with that model: no more executions than slots or
resources allow, every dependency in the store when its task is executed,
the store holding exactly the keys in memory.  At the end, once every
execution and transfer has come back, each task the scheduler still wants
has an answer, and freeing everything leaves nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trioflow.protocol.messages import (
    AddKeys,
    ComputeTask,
    LongRunning,
    MissingData,
    ReleaseWorkerData,
    Reschedule,
    StealResponse,
    TaskErred,
    TaskFinished,
)
from trioflow.protocol.serialize import dumps
from trioflow.worker.state import (
    HANDLERS,
    PREFETCH_MAX,
    TRANSITIONS,
    AcquireReplicasEvent,
    ComputeTaskEvent,
    DataPutEvent,
    DisconnectScheduler,
    DropData,
    Execute,
    ExecuteFailureEvent,
    ExecuteRescheduleEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDep,
    GatherDepDoneEvent,
    GatherDepFailedEvent,
    GrantRejoin,
    HeartbeatAckEvent,
    InvalidWorkerEvent,
    MemorySampleEvent,
    PauseEvent,
    RegisteredEvent,
    RejoinEvent,
    ReportPause,
    SchedulerTimerEvent,
    SecedeEvent,
    SendMsg,
    StealRequestEvent,
    WorkerState,
    WorkerTask,
)
from trioflow.worker.state import events as events_module

_STATE_SLOT = WorkerTask.state  # the slot under the checked property below


class CheckedTask(WorkerTask):
    """A WorkerTask whose every change of state is checked against the
    transition table (installed for every test of this module)."""

    __slots__ = ()

    @property  # type: ignore[override]
    def state(self) -> str:
        return _STATE_SLOT.__get__(self)  # type: ignore[no-any-return]

    @state.setter
    def state(self, new: str) -> None:
        try:
            old = _STATE_SLOT.__get__(self)
        except AttributeError:  # being made
            old = None
        if old is not None and new != old:
            assert new in TRANSITIONS[old], f"{self.key!r}: {old} -> {new} is not in TRANSITIONS"
        _STATE_SLOT.__set__(self, new)


@pytest.fixture(autouse=True)
def _checked_transitions(monkeypatch: pytest.MonkeyPatch) -> None:
    import trioflow.worker.state.execution
    import trioflow.worker.state.fetching
    import trioflow.worker.state.link

    for module in (trioflow.worker.state.execution, trioflow.worker.state.fetching, trioflow.worker.state.link):
        if hasattr(module, "WorkerTask"):
            monkeypatch.setattr(module, "WorkerTask", CheckedTask)


ME = "tcp://me"
PEERS = ["tcp://p0", "tcp://p1", "tcp://p2"]
# Two key prefixes ("s", "l"): durations are learnt per prefix, for prefetching.
KEYS = [f"{'sl'[i % 2]}-{i}" for i in range(8)]
FUNC = b"function"
ARGS = dumps(())


def compute(key: str, who_has: dict[str, list[str]] | None = None, *, priority=(0, 0, 0), resources=None, nbytes=None) -> ComputeTaskEvent:
    who_has = who_has or {}
    return ComputeTaskEvent(
        msg=ComputeTask(
            key=key,
            function=FUNC,
            args=ARGS,
            who_has=who_has,
            nbytes=nbytes if nbytes is not None else dict.fromkeys(who_has, 10),
            priority=priority,
            resources=resources or {},
        )
    )


def success(key: str, nbytes: int = 10, seconds: float = 1.0) -> ExecuteSuccessEvent:
    return ExecuteSuccessEvent(key=key, nbytes=nbytes, type_name="int", start=1.0, stop=1.0 + seconds)


def failure(key: str) -> ExecuteFailureEvent:
    return ExecuteFailureEvent(key=key, exception=None, exception_text="bad", traceback_text="", type_name="ValueError")


def snapshot(w: WorkerState) -> dict:
    def keys(ts):
        return sorted(t.key for t in ts)

    return {
        "tasks": {
            k: (
                t.state,
                keys(t.dependencies),
                keys(t.dependents),
                keys(t.waiting_for),
                list(t.who_has),
                t.coming_from,
                t.nbytes,
                t.wanted,
                t.cancelled,
                t.priority,
            )
            for k, t in w.tasks.items()
        },
        "ready": sorted((p, s, t.key, t.state) for p, s, t in w.ready),
        "constrained": sorted((p, s, t.key, t.state) for p, s, t in w.constrained),
        "executing": keys(w.executing),
        "superseded": dict(w.superseded),
        "fetch": {a: keys(g) for a, g in w.fetch_by_worker.items()},
        "flight": {a: keys(g) for a, g in w.in_flight_workers.items()},
        "resources": dict(w.available_resources),
        "paused": w.paused,
        "nbytes": w.nbytes_in_memory,
        "out": list(w._out),
        "pending": dict(w._pending_add_keys),
    }


def expect_invalid(w: WorkerState, event) -> None:
    before = snapshot(w)
    with pytest.raises(InvalidWorkerEvent):
        w.handle(event)
    assert snapshot(w) == before


def sent(out: list, kind: type) -> list:
    return [i.msg for i in out if isinstance(i, SendMsg) and isinstance(i.msg, kind)]


# ---------------------------------------------------------------- the machine


class WorkerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.w: WorkerState
        self.deps: dict[str, list[str]] = {}
        self.store: set[str] = set()  # keys whose values the shell holds
        self.running: set[str] = set()  # Execute given, not answered yet
        self.flights: dict[str, tuple[str, ...]] = {}  # peer -> keys asked for
        self.wanted: set[str] = set()  # compute-task sent and not freed
        self.answered: set[str] = set()  # wanted keys the worker reported on
        self.acquired: set[str] = set()  # keys asked for as replicas, not freed or computed since
        self.missing: set[str] = set()  # keys a peer did not have (MissingData)
        self.rejoin_waiting: set[str] = set()  # seceded runs blocked in rejoin()

    @initialize(
        nthreads=st.integers(1, 3),
        prefetch=st.sampled_from([None, 0, 1]),
        gpu=st.integers(0, 2),
        max_fetches=st.integers(1, 3),
        max_bytes=st.sampled_from([1, 50, 10**9]),
        graph=st.lists(st.lists(st.integers(0, len(KEYS) - 1), max_size=3), min_size=len(KEYS), max_size=len(KEYS)),
    )
    def setup(self, nthreads, prefetch, gpu, max_fetches, max_bytes, graph) -> None:
        self.w = WorkerState(
            address=ME,
            nthreads=nthreads,
            prefetch=prefetch,
            resources={"GPU": float(gpu)} if gpu else {},
            max_concurrent_fetches=max_fetches,
            max_transfer_bytes=max_bytes,
        )
        # A fixed DAG: a key depends only on keys before it, the same every time.
        self.deps = {k: sorted({KEYS[j] for j in graph[i] if j < i}) for i, k in enumerate(KEYS)}

    # ------------------------------------------------------------ plumbing

    def handle(self, event) -> list:
        out = self.w.handle(event)
        self.apply(out)
        return out

    def apply(self, out: list) -> None:
        w = self.w
        for ins in out:
            if isinstance(ins, Execute):
                assert ins.key not in self.running, ins
                missing = set(ins.dependencies) - self.store
                assert not missing, f"executing {ins.key} without {missing}"
                assert set(ins.dependencies) == set(self.deps[ins.key]), ins
                self.running.add(ins.key)
            elif isinstance(ins, GatherDep):
                assert ins.worker != ME and ins.worker not in self.flights, ins
                assert ins.keys and not set(ins.keys) & self.store, ins
                self.flights[ins.worker] = ins.keys
            elif isinstance(ins, DropData):
                assert ins.key in self.store, ins
                self.store.discard(ins.key)
            elif isinstance(ins, ReportPause):
                assert ins.paused == w.paused, ins
            elif isinstance(ins, GrantRejoin):
                assert ins.key in self.rejoin_waiting, ins
                self.rejoin_waiting.discard(ins.key)
            else:
                msg = ins.msg
                if isinstance(msg, (TaskFinished, TaskErred)):
                    # Also for a freed key still run as a local dependency:
                    # the scheduler takes or drops such a stale report.
                    if isinstance(msg, TaskFinished):
                        assert msg.key in self.store, msg
                    self.answered.add(msg.key)
                elif isinstance(msg, AddKeys):
                    assert set(msg.nbytes) <= self.store, msg
                elif isinstance(msg, ReleaseWorkerData):
                    # Copies dropped on the worker's own account are announced.
                    assert not set(msg.keys) & {t for t, s in self.w.tasks.items() if s.state == "memory"}, msg
                elif isinstance(msg, Reschedule):
                    # (A key asked for as a replica counts as wanted too.)
                    assert msg.key in self.wanted | self.acquired, msg
                    self.answered.add(msg.key)
                elif isinstance(msg, StealResponse):
                    if msg.stolen:
                        # Given back: the scheduler sends it elsewhere.
                        assert msg.key not in w.tasks or w.tasks[msg.key].state == "memory", msg
                        self.wanted.discard(msg.key)
                elif isinstance(msg, LongRunning):
                    assert msg.key in self.running and msg.key in w.seceded, msg
                else:
                    assert isinstance(msg, MissingData), msg
                    self.missing.add(msg.key)
        assert w.n_executing <= w.slots

    # ------------------------------------------------------------ invariants

    @invariant()
    def valid(self) -> None:
        self.w.validate()

    @invariant()
    def agrees_with_the_shell(self) -> None:
        w = self.w
        # Superseded runs (their key was put meanwhile) still hold a thread.
        assert {t.key for t in w.executing} | set(w.superseded) == self.running
        assert not {t.key for t in w.executing} & set(w.superseded)
        # A transfer stays in flight until its peer answers, even when the
        # state has stopped caring for some of its keys.
        assert set(self.flights) == set(w.in_flight_workers)
        for peer, group in w.in_flight_workers.items():
            assert {t.key for t in group} <= set(self.flights[peer])
        assert {k for k, t in w.tasks.items() if t.state == "memory"} == self.store
        assert w.nbytes_in_memory == sum(max(t.nbytes, 0) for t in w.tasks.values() if t.state == "memory")
        # A seceded run holds no slot until granted one back.
        assert w.seceded <= self.running and set(w.rejoining) == self.rejoin_waiting
        assert w.n_executing == len(self.running) - len(w.seceded)
        # A run waiting to rejoin gets the first free thread.
        assert not w.rejoining or w.n_executing >= w.nthreads, (w.rejoining, w.n_executing)

    @invariant()
    def resources_respected(self) -> None:
        w = self.w
        for name, total in w.total_resources.items():
            used = sum(t.resources.get(name, 0) for t in w.executing)
            used += sum(held.get(name, 0) for held in w.superseded.values())
            assert used <= total + 1e-9
            assert abs(w.available_resources[name] - (total - used)) < 1e-9

    @invariant()
    def nothing_stuck(self) -> None:
        w = self.w
        for t in w.tasks.values():
            if t.state == "fetch":
                assert any(t in g for g in w.fetch_by_worker.values()), f"{t!r} is never fetched"
            if t.state == "ready":
                assert any(r is t for _, _, r in w.ready + w.constrained), t
            # Reported, then forgotten: the scheduler never frees it here.
            assert t.state != "erred", t

    # ------------------------------------------------------------ the scheduler

    @rule(data=st.data(), priority=st.integers(-2, 2), gpu=st.integers(0, 2))
    def compute_task(self, data: st.DataObject, priority: int, gpu: int) -> None:
        key = data.draw(st.sampled_from(KEYS), label="key")
        who_has = {}
        for dep in self.deps[key]:
            who_has[dep] = data.draw(st.lists(st.sampled_from(PEERS + [ME]), min_size=1, max_size=3, unique=True), label=f"holders of {dep}")
        nbytes = {d: data.draw(st.integers(0, 100)) for d in who_has}
        resources = {"GPU": float(gpu)} if gpu and gpu <= self.w.total_resources.get("GPU", 0) else {}
        self.wanted.add(key)
        self.answered.discard(key)
        self.acquired.discard(key)
        self.handle(compute(key, who_has, priority=(-priority, 0, KEYS.index(key)), resources=resources, nbytes=nbytes))

    @rule(data=st.data())
    def free_keys(self, data: st.DataObject) -> None:
        keys = data.draw(st.lists(st.sampled_from(KEYS + ["unknown"]), min_size=1, max_size=3, unique=True), label="keys")
        self.handle(FreeKeysEvent(keys=keys))
        self.wanted -= set(keys)
        self.acquired -= set(keys)

    @rule(data=st.data())
    def data_put(self, data: st.DataObject) -> None:
        # Also over a key being executed here: the put value wins, and the
        # shell will not store that run's result (see execution_done).
        keys = data.draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True), label="keys")
        nbytes = {k: data.draw(st.integers(0, 100)) for k in keys}
        # The shell stores first, then tells the state (it may drop again).
        self.store |= set(keys)
        self.handle(DataPutEvent(nbytes=nbytes))

    @rule(data=st.data())
    def steal_request(self, data: st.DataObject) -> None:
        self.handle(StealRequestEvent(key=data.draw(st.sampled_from(KEYS + ["unknown"]), label="key")))

    @rule(data=st.data())
    def acquire_replicas(self, data: st.DataObject) -> None:
        keys = data.draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=2, unique=True), label="keys")
        who_has = {k: data.draw(st.lists(st.sampled_from(PEERS), min_size=1, max_size=2, unique=True)) for k in keys}
        # The scheduler has these in memory elsewhere: it waits for a copy
        # here (or to hear that the holders had none), not for a run's
        # outcome any more.
        self.acquired |= set(keys)
        self.wanted -= set(keys)
        self.missing -= set(keys)
        self.handle(AcquireReplicasEvent(who_has=who_has, nbytes=dict.fromkeys(keys, 10)))

    @rule(paused=st.booleans())
    def pause(self, paused: bool) -> None:
        self.handle(PauseEvent(paused=paused))

    @rule(rss=st.integers(0, 150))
    def memory_sample(self, rss: int) -> None:
        self.handle(MemorySampleEvent(rss=rss, pause_at=100.0))

    # ------------------------------------------------------------ the executor

    @precondition(lambda self: self.running - self.rejoin_waiting)
    @rule(data=st.data(), ok=st.booleans(), nbytes=st.integers(0, 100), seconds=st.sampled_from([1e-4, 1.0]), reschedule=st.booleans())
    def execution_done(self, data: st.DataObject, ok: bool, nbytes: int, seconds: float, reschedule: bool) -> None:
        # (A run blocked in rejoin() cannot return.)
        key = data.draw(st.sampled_from(sorted(self.running - self.rejoin_waiting)), label="key")
        self.running.discard(key)
        if not ok and reschedule:
            self.handle(ExecuteRescheduleEvent(key=key))
        elif ok:
            # The shell stores the result only for the task's current run.
            if self.w.is_current_run(key):
                self.store.add(key)
            else:
                assert key in self.w.superseded, key
            self.handle(success(key, nbytes, seconds))
        else:
            self.handle(failure(key))

    @precondition(lambda self: self.running - self.w.seceded)
    @rule(data=st.data())
    def secede(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.running - self.w.seceded)), label="key")
        self.handle(SecedeEvent(key=key))
        assert key in self.w.seceded

    @precondition(lambda self: self.w.seceded - self.rejoin_waiting)
    @rule(data=st.data())
    def rejoin(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.w.seceded - self.rejoin_waiting)), label="key")
        self.rejoin_waiting.add(key)
        self.handle(RejoinEvent(key=key))

    # ------------------------------------------------------------ the peers

    @precondition(lambda self: self.flights)
    @rule(data=st.data())
    def gather_done(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(sorted(self.flights)), label="peer")
        keys = self.flights.pop(peer)
        got = data.draw(st.lists(st.sampled_from(keys), unique=True), label="received")
        nbytes = {k: data.draw(st.integers(0, 100)) for k in got}
        self.store |= set(got)
        self.handle(GatherDepDoneEvent(worker=peer, nbytes=nbytes, missing=[k for k in keys if k not in got]))

    @precondition(lambda self: self.flights)
    @rule(data=st.data())
    def gather_failed(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(sorted(self.flights)), label="peer")
        keys = self.flights.pop(peer)
        self.handle(GatherDepFailedEvent(worker=peer, keys=list(keys)))
        # Keys queued for that peer, with no other holder, are given up
        # without a MissingData (the peer is likely gone, and the scheduler
        # learns that on its own).
        self.missing |= {k for k in self.acquired if k not in self.w.tasks}

    # ------------------------------------------------------------ bad input

    @rule(data=st.data())
    def invalid_event(self, data: st.DataObject) -> None:
        w = self.w
        not_running = [k for k in KEYS if k not in self.running]
        cases = [
            GatherDepDoneEvent(worker="tcp://idle", nbytes={}, missing=[]),
            GatherDepFailedEvent(worker="tcp://idle", keys=[KEYS[0]]),
            DataPutEvent(nbytes={KEYS[0]: 1, KEYS[1]: -1}),
            compute(KEYS[5], {KEYS[0]: ["tcp://p0"]}, nbytes={KEYS[0]: -7}),
        ]
        if not_running:
            k = data.draw(st.sampled_from(not_running), label="key")
            cases += [success(k), failure(k)]
        for peer in PEERS:
            if peer not in self.flights:
                cases.append(GatherDepDoneEvent(worker=peer, nbytes={}, missing=[]))
        cases += [SecedeEvent(key=k) for k in sorted(w.seceded)] + [RejoinEvent(key=k) for k in not_running]
        expect_invalid(w, data.draw(st.sampled_from(cases), label="event"))

    # ------------------------------------------------------------ the end

    def settle(self) -> None:
        """Answer every execution (success) and transfer (all there)."""
        for _ in range(200):
            if self.running:
                key = sorted(self.running)[0]
                self.running.discard(key)
                self.rejoin_waiting.discard(key)
                if self.w.is_current_run(key):
                    self.store.add(key)
                self.handle(success(key))
            elif self.flights:
                peer = sorted(self.flights)[0]
                keys = self.flights.pop(peer)
                self.store |= set(keys)
                self.handle(GatherDepDoneEvent(worker=peer, nbytes=dict.fromkeys(keys, 5), missing=[]))
            else:
                return
            self.w.validate()
        raise AssertionError("executions and transfers never stop")

    def teardown(self) -> None:
        w = getattr(self, "w", None)
        if w is None:
            return
        w.validate()
        self.handle(PauseEvent(paused=False))
        self.settle()
        w.validate()
        for key in self.wanted:
            t = w.tasks.get(key)
            assert key in self.answered or (t is not None and t.state in ("memory", "erred")), (key, t)
            if t is not None:
                assert t.state in ("memory", "erred"), (key, t)
        for key in self.acquired:
            # A copy is here, announced, or its holders had none.
            t = w.tasks.get(key)
            assert (t is not None and t.state == "memory") or key in self.missing, (key, t)
        self.handle(FreeKeysEvent(keys=KEYS))
        self.settle()
        w.validate()
        assert not w.tasks and not self.store and w.nbytes_in_memory == 0, w.tasks
        assert all(t.state != "ready" for _, _, t in w.ready + w.constrained)
        assert not w.fetch_by_worker and not w.in_flight_workers and not w.executing
        assert w.available_resources == w.total_resources


WorkerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_worker_machine = WorkerMachine.TestCase


# ---------------------------------------------------------------- focused tests


def worker(nthreads: int = 1, **kw) -> WorkerState:
    return WorkerState(address=ME, nthreads=nthreads, validate=True, **kw)


def of(out: list, kind: type) -> list:
    return [i for i in out if isinstance(i, kind)]


def test_remote_dependency_is_gathered_then_executed() -> None:
    w = worker()
    out = w.handle(compute("y", {"x": ["tcp://p0", ME]}, nbytes={"x": 30}))
    assert of(out, GatherDep) == [GatherDep("tcp://p0", ("x",), 30)] and not of(out, Execute)
    assert w.tasks["y"].state == "waiting" and w.tasks["x"].state == "flight"
    out = w.handle(GatherDepDoneEvent(worker="tcp://p0", nbytes={"x": 30}, missing=[]))
    assert [(e.key, e.dependencies) for e in of(out, Execute)] == [("y", ("x",))]
    assert sent(out, AddKeys) == [AddKeys(nbytes={"x": 30})]
    out = w.handle(success("y"))
    assert [m.key for m in sent(out, TaskFinished)] == ["y"]
    assert w.tasks["x"].state == "memory"  # a copy the scheduler counts: kept until freed
    out = w.handle(FreeKeysEvent(keys=["x", "y"]))
    assert {d.key for d in of(out, DropData)} == {"x", "y"} and not w.tasks


def test_failed_gather_tries_the_next_holder_then_reschedules() -> None:
    w = worker()
    w.handle(compute("y", {"x": ["tcp://p0", "tcp://p1"]}))
    [first] = w.in_flight_workers
    second = "tcp://p1" if first == "tcp://p0" else "tcp://p0"
    out = w.handle(GatherDepFailedEvent(worker=first, keys=["x"]))
    assert sent(out, MissingData) == [MissingData(key="x", worker=first)]
    assert of(out, GatherDep) == [GatherDep(second, ("x",), 10)]
    # The other holder does not have it either: nobody left to ask.
    out = w.handle(GatherDepDoneEvent(worker=second, nbytes={}, missing=["x"]))
    assert sent(out, MissingData) == [MissingData(key="x", worker=second)]
    assert sent(out, Reschedule) == [Reschedule(key="y")]
    assert not w.tasks and not of(out, Execute)


def test_freed_while_executing_drops_the_result() -> None:
    w = worker()
    w.handle(compute("x"))
    assert w.tasks["x"].state == "executing"
    assert w.handle(FreeKeysEvent(keys=["x"])) == []
    out = w.handle(success("x"))
    assert out == [DropData("x")] and not w.tasks and w.nbytes_in_memory == 0
    # Failing instead: nothing to drop, nothing to say.
    w.handle(compute("z"))
    w.handle(FreeKeysEvent(keys=["z"]))
    assert w.handle(failure("z")) == [] and not w.tasks


def test_resources_limit_concurrent_executions() -> None:
    w = worker(nthreads=4, resources={"GPU": 2})
    out = []
    for i in range(5):
        out += w.handle(compute(f"g{i}", resources={"GPU": 1}, priority=(0, 0, i)))
    assert [e.key for e in of(out, Execute)] == ["g0", "g1"]
    assert w.available_resources == {"GPU": 0}
    out = w.handle(success("g0"))
    assert [e.key for e in of(out, Execute)] == ["g2"]
    out = w.handle(failure("g1"))
    assert [e.key for e in of(out, Execute)] == ["g3"]
    assert w.available_resources == {"GPU": 0}
    w.handle(success("g2"))
    w.handle(success("g3"))
    out = w.handle(success("g4"))
    assert not w.executing and w.available_resources == {"GPU": 2}


def test_executing_never_exceeds_slots() -> None:
    w = worker(nthreads=2, prefetch=1)
    w.durations["t"] = 1e-4  # measured short: prefetching allowed
    out = []
    for i in range(6):
        out += w.handle(compute(f"t-{i}", priority=(0, 0, i)))
    assert [e.key for e in of(out, Execute)] == ["t-0", "t-1", "t-2"]
    out = w.handle(ExecuteSuccessEvent(key="t-1", nbytes=1, type_name="int", start=1.0, stop=1.0001))
    assert [e.key for e in of(out, Execute)] == ["t-3"]


def test_prefetch_only_for_tasks_measured_short() -> None:
    # A task handed to the executor early runs before whatever arrives
    # meanwhile: for long tasks that is run-ahead (memory), not speed.
    w = worker(nthreads=2, prefetch=1)
    out = []
    for i in range(6):
        out += w.handle(compute(f"t-{i}", priority=(0, 0, i)))
    assert [e.key for e in of(out, Execute)] == ["t-0", "t-1"]  # unmeasured: one per thread
    out = w.handle(ExecuteSuccessEvent(key="t-1", nbytes=1, type_name="int", start=1.0, stop=1.0001))
    assert [e.key for e in of(out, Execute)] == ["t-2", "t-3"]  # short: the free thread's and a prefetch
    assert w.n_executing == w.slots == 3
    out = w.handle(success("t-0"))  # one second: the average is long again
    assert of(out, Execute) == []
    assert w.n_executing == 2
    out = w.handle(success("t-2"))
    assert [e.key for e in of(out, Execute)] == ["t-4"]  # a thread is free


@pytest.mark.parametrize(
    ("nthreads", "duration", "in_executor"),
    [
        (1, 1e-5, 1 + PREFETCH_MAX),  # microseconds: as deep as allowed
        (1, 2e-4, 1 + 10),  # 10 x 0.2 ms = PREFETCH_HORIZON
        (1, 3e-3, 1 + 2),  # milliseconds: the usual two ahead
        (2, 1e-3, 2 + 2 * 2),  # two per thread
        (4, 4e-3, 4 + 4),  # one per thread
        (1, 6e-3, 1),  # not short: none ahead
    ],
)
def test_prefetch_depth_covers_a_horizon_of_work(nthreads: int, duration: float, in_executor: int) -> None:
    w = worker(nthreads=nthreads)
    w.durations["t"] = duration
    out = []
    for i in range(40):
        out += w.handle(compute(f"t-{i}", priority=(0, 0, i)))
    assert len(of(out, Execute)) == w.n_executing == in_executor


def test_short_task_waits_behind_a_long_one_in_priority_order() -> None:
    # Regression: validation asserted that no ready task anywhere could take
    # a prefetch slot, but priority order keeps a short task behind a long
    # one that may not be prefetched.
    w = worker(nthreads=1, prefetch=1)
    w.durations["t"] = 1e-4
    out = []
    for i, key in enumerate(["big-0", "big-1", "t-0"]):
        out += w.handle(compute(key, priority=(0, 0, i)))  # validates after each event
    assert [e.key for e in of(out, Execute)] == ["big-0"]
    out = w.handle(success("big-0"))
    # big-1 gets the free thread; t-0, first in line now and short, still
    # waits: big-1 may run long (one second last time).
    assert [e.key for e in of(out, Execute)] == ["big-1"]
    out = w.handle(success("big-1"))
    assert [e.key for e in of(out, Execute)] == ["t-0"]


def test_nothing_is_prefetched_behind_a_long_run() -> None:
    """A task in the executor can no longer be stolen: tiny tasks queued
    behind a minute-long run would wait the minute while other workers idle."""
    w = worker(nthreads=1)
    w.durations["long"] = 60.0
    w.durations["t"] = 1e-5
    out = w.handle(compute("long-0", priority=(0, 0, 0)))
    for i in range(40):
        out += w.handle(compute(f"t-{i}", priority=(0, 0, i + 1)))
    assert [e.key for e in of(out, Execute)] == ["long-0"]
    out = w.handle(ExecuteSuccessEvent(key="long-0", nbytes=1, type_name="int", start=0.0, stop=60.0))
    assert len(of(out, Execute)) == 1 + PREFETCH_MAX  # then as deep as they are short


def test_invalid_events_change_nothing() -> None:
    w = worker()
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    for ev in [
        success("y"),  # waiting, not executing
        failure("nope"),
        GatherDepDoneEvent(worker="tcp://p9", nbytes={}, missing=[]),
        GatherDepFailedEvent(worker="tcp://p9", keys=[]),
        DataPutEvent(nbytes={"a": 1, "b": -1}),
        compute("z", {"x": ["tcp://p0"]}, nbytes={"x": -2}),
    ]:
        expect_invalid(w, ev)


# ---------------------------------------------------------------- regressions


def test_same_events_same_decisions() -> None:
    # Regression: tasks hashed by id(), so which of several tasks became
    # ready first (and ran first) changed from run to run.
    def run() -> list:
        w = worker(nthreads=1, prefetch=0)
        out = w.handle(compute("d0"))
        for i in range(12):
            out += w.handle(compute(f"t{i}", {"d1": ["tcp://p0"]}, priority=(0, 0, 0)))
        out += w.handle(GatherDepDoneEvent(worker="tcp://p0", nbytes={"d1": 1}, missing=[]))
        for _ in range(12):
            out += w.handle(success(next(iter(w.executing)).key))
        junk = [[object() for _ in range(i)] for i in range(50)]  # move the allocator on
        return [i for i in out if not isinstance(i, SendMsg)] + [len(junk)]

    assert run() == run()


def test_data_put_over_a_key_in_memory_recounts_its_size() -> None:
    w = worker()
    w.handle(DataPutEvent(nbytes={"k": 100}))
    w.handle(DataPutEvent(nbytes={"k": 10}))
    assert w.nbytes_in_memory == 10


def test_dependency_held_only_here_reschedules_instead_of_running_without_it() -> None:
    # Regression: the scheduler thought we still held x.  With no other
    # holder the fetch gave up while y was not 'waiting' yet, so y lost the
    # dependency and was executed without it.
    w = worker()
    out = w.handle(compute("y", {"x": [ME]}))
    assert not of(out, Execute) and sent(out, Reschedule) == [Reschedule(key="y")]
    assert not w.tasks


def test_local_run_of_a_dependency_wakes_its_dependents() -> None:
    # Regression: a finished execution never woke local tasks waiting for it
    # (they wait for it when a stale run of a key they need is still going
    # on here), so they waited for ever.
    w = worker(nthreads=1, prefetch=0)
    w.handle(compute("x"))
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    assert w.tasks["y"].state == "waiting" and not w.in_flight_workers
    out = w.handle(success("x"))
    assert [e.key for e in of(out, Execute)] == ["y"]


def test_freed_run_needed_by_a_new_task_is_kept() -> None:
    # Regression: x was freed while running, then y arrived needing it; the
    # cancelled result was dropped and y lost its dependency.
    w = worker(nthreads=2)
    w.handle(compute("x"))
    w.handle(FreeKeysEvent(keys=["x"]))
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    out = w.handle(success("x", nbytes=7))
    assert not of(out, DropData) and not sent(out, TaskFinished)
    assert sent(out, AddKeys) == [AddKeys(nbytes={"x": 7})]
    assert [e.key for e in of(out, Execute)] == ["y"]


def test_cancelled_run_releases_its_dependencies() -> None:
    # Regression: a freed task's fetched dependencies stayed for ever.
    w = worker()
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    w.handle(GatherDepDoneEvent(worker="tcp://p0", nbytes={"x": 1}, missing=[]))
    w.handle(FreeKeysEvent(keys=["x", "y"]))
    assert w.tasks["y"].cancelled
    out = w.handle(failure("y"))
    assert of(out, DropData) == [DropData("x")] and not w.tasks


def test_failed_stale_run_is_fetched_for_waiting_dependents() -> None:
    w = worker(nthreads=1, prefetch=0)
    w.handle(compute("x"))
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    out = w.handle(failure("x"))
    assert of(out, GatherDep) == [GatherDep("tcp://p0", ("x",), 0)]
    assert w.tasks["x"].state == "flight" and w.tasks["y"].state == "waiting"


def test_rescheduling_a_task_reschedules_what_waits_for_it_here() -> None:
    # Regression: z waited (locally) for y; y was rescheduled and dropped,
    # and z was left 'waiting' with nothing to wait for.
    w = worker()
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    w.handle(compute("z", {"y": ["tcp://p1"]}))
    out = w.handle(GatherDepFailedEvent(worker="tcp://p0", keys=["x"]))
    assert sorted(m.key for m in sent(out, Reschedule)) == ["y", "z"]
    assert not w.tasks


def test_cancelled_fetch_needed_again_is_kept() -> None:
    w = worker()
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    w.handle(FreeKeysEvent(keys=["y"]))
    assert w.tasks["x"].cancelled
    w.handle(compute("z", {"x": ["tcp://p0"]}))
    out = w.handle(GatherDepDoneEvent(worker="tcp://p0", nbytes={"x": 1}, missing=[]))
    assert not of(out, DropData) and [e.key for e in of(out, Execute)] == ["z"]


def test_data_taken_off_a_transfer_is_dropped_when_it_arrives() -> None:
    # Regression: x was to be computed here after its fetch had started;
    # the copy that still arrived stayed in the store, unknown to the state.
    w = worker()
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    w.handle(compute("x"))
    assert w.tasks["x"].state == "executing"
    out = w.handle(GatherDepDoneEvent(worker="tcp://p0", nbytes={"x": 1}, missing=[]))
    assert out == [DropData("x")]


def test_task_wanted_again_after_free_is_reported() -> None:
    # Regression: freed but kept as a local dependency, then sent again by
    # the scheduler: it stayed unwanted and was dropped unreported.
    w = worker(nthreads=1, prefetch=1)
    w.handle(compute("x"))  # executing
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    w.handle(FreeKeysEvent(keys=["x"]))  # kept: y waits for it
    w.handle(compute("x"))
    w.handle(FreeKeysEvent(keys=["y"]))
    out = w.handle(success("x"))
    assert [m.key for m in sent(out, TaskFinished)] == ["x"]


def test_copy_dropped_in_the_event_it_arrived_is_not_announced() -> None:
    # The shell hands a batch of events to handle_many; a copy fetched and
    # freed in one batch is neither announced (AddKeys) nor released.
    w = worker(nthreads=1, prefetch=0)
    w.handle(compute("busy"))
    w.handle(compute("y", {"a": ["tcp://p0"]}))
    out = w.handle_many([GatherDepDoneEvent(worker="tcp://p0", nbytes={"a": 1}, missing=[]), FreeKeysEvent(keys=["y", "a"])])
    assert not sent(out, AddKeys) and not sent(out, ReleaseWorkerData)
    assert of(out, DropData) == [DropData("a")] and set(w.tasks) == {"busy"}


def test_steal_refused_for_a_task_a_local_task_waits_for() -> None:
    w = worker(nthreads=1)
    w.handle(PauseEvent(paused=True))
    w.handle(compute("x"))
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    out = w.handle(StealRequestEvent(key="x"))
    assert sent(out, StealResponse) == [StealResponse(key="x", stolen=False)]
    out = w.handle(StealRequestEvent(key="y"))
    assert sent(out, StealResponse) == [StealResponse(key="y", stolen=True)]


def test_resource_blocked_task_does_not_hold_up_the_ready_queue() -> None:
    # Regression: the head of the ready queue needed a GPU that was taken,
    # and _schedule stopped there: threads stayed idle while tasks that
    # needed no GPU (or a resource still free) waited behind it.
    w = worker(nthreads=2, prefetch=0, resources={"GPU": 1, "MEM": 1})
    out = w.handle(compute("g0", resources={"GPU": 1}, priority=(0, 0, 0)))
    assert [e.key for e in of(out, Execute)] == ["g0"]
    out = w.handle(compute("g1", resources={"GPU": 1}, priority=(0, 0, 1)))
    assert not of(out, Execute)  # the GPU is taken
    out = w.handle(compute("m", resources={"MEM": 1}, priority=(0, 0, 2)))
    assert [e.key for e in of(out, Execute)] == ["m"]
    out = w.handle(success("m"))
    assert not of(out, Execute)
    # Free slot: the higher-priority of the runnable ones goes first.
    out = w.handle_many([compute("c3", priority=(0, 0, 3)), compute("c2", priority=(0, 0, 2))])
    assert [e.key for e in of(out, Execute)] == ["c2"]
    # The GPU comes back: g1 overtakes c3, queued behind it all along.
    out = w.handle(success("g0"))
    assert [e.key for e in of(out, Execute)] == ["g1"]
    out = w.handle(success("c2"))
    assert [e.key for e in of(out, Execute)] == ["c3"]
    w.handle(success("g1"))
    w.handle(success("c3"))
    assert not w.executing and w.available_resources == {"GPU": 1, "MEM": 1}


def test_data_put_over_a_running_task_wins_and_its_late_result_is_dropped() -> None:
    # Regression: a put (scatter) over a key being computed here only
    # marked the run cancelled; its result then replaced the put value (or
    # was dropped with it, or a failure forgot the key with the value still
    # stored).  The put value is authoritative: the key is in memory at
    # once, and the run keeps its thread and resources until it returns,
    # its result unwanted.
    w = worker(nthreads=2, prefetch=1, resources={"GPU": 1})
    w.handle(compute("x", resources={"GPU": 1}))
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    assert w.tasks["x"].state == "executing" and w.tasks["y"].state == "waiting"
    out = w.handle(DataPutEvent(nbytes={"x": 5}))
    assert w.tasks["x"].state == "memory" and w.nbytes_in_memory == 5
    assert [e.key for e in of(out, Execute)] == ["y"]  # with the put value
    out = w.handle(compute("g", resources={"GPU": 1}))
    assert not of(out, Execute) and w.tasks["g"].state == "ready"  # the run still holds the GPU
    out = w.handle(success("x", nbytes=99))
    assert not of(out, DropData) and not sent(out, TaskFinished) and not sent(out, AddKeys)
    assert w.tasks["x"].state == "memory" and w.tasks["x"].nbytes == 5 and w.nbytes_in_memory == 5
    assert [e.key for e in of(out, Execute)] == ["g"]
    w.handle(success("y"))
    w.handle(success("g"))
    assert not w.executing and w.available_resources == {"GPU": 1}
    # Failing instead: the put value stays, and nothing is reported.
    w.handle(compute("z"))
    w.handle(DataPutEvent(nbytes={"z": 3}))
    out = w.handle(failure("z"))
    assert not sent(out, TaskErred) and not of(out, DropData) and w.tasks["z"].state == "memory"


def test_run_going_on_under_a_put_value_is_taken_up_when_computed_again() -> None:
    # The put value is freed, then the scheduler sends the key again while
    # the old run still goes on: that run is the task's run, not a second
    # one of the same key (whose results the shell could not tell apart).
    w = worker(nthreads=2, prefetch=0)
    w.handle(compute("x"))
    w.handle(DataPutEvent(nbytes={"x": 5}))
    w.handle(FreeKeysEvent(keys=["x"]))
    assert "x" not in w.tasks and len(w.executing) == 0
    out = w.handle(compute("x"))
    assert not of(out, Execute) and w.tasks["x"].state == "executing"
    out = w.handle(success("x", nbytes=7))
    assert [m.key for m in sent(out, TaskFinished)] == ["x"] and w.tasks["x"].nbytes == 7


def test_replica_asked_of_a_key_run_here_is_fetched_if_the_run_fails() -> None:
    # Regression: retire_workers asked us (AcquireReplicas) for a copy of x
    # while a stale run of x went on here.  x was only marked wanted; the
    # run failed, x was forgotten, never fetched nor reported, and the
    # retirement waited for that copy in vain.
    w = worker()
    w.handle(compute("x"))
    out = w.handle(AcquireReplicasEvent(who_has={"x": ["tcp://p0"]}, nbytes={"x": 10}))
    assert not of(out, GatherDep)  # the run may yet give it
    out = w.handle(failure("x"))
    assert not sent(out, TaskErred)  # a stale run: the scheduler has x already
    assert of(out, GatherDep) == [GatherDep("tcp://p0", ("x",), 10)]
    out = w.handle(GatherDepDoneEvent(worker="tcp://p0", nbytes={"x": 10}, missing=[]))
    assert sent(out, AddKeys) == [AddKeys(nbytes={"x": 10})] and w.tasks["x"].state == "memory"
    # Freed while it ran, then asked for: the same.
    w.handle(compute("z"))
    w.handle(FreeKeysEvent(keys=["z"]))
    w.handle(AcquireReplicasEvent(who_has={"z": ["tcp://p1"]}, nbytes={"z": 10}))
    out = w.handle(failure("z"))
    assert of(out, GatherDep) == [GatherDep("tcp://p1", ("z",), 10)]


def test_replica_asked_of_a_key_run_here_is_reported_when_the_run_succeeds() -> None:
    w = worker()
    w.handle(compute("x"))
    w.handle(FreeKeysEvent(keys=["x"]))
    w.handle(AcquireReplicasEvent(who_has={"x": ["tcp://p0"]}, nbytes={"x": 10}))
    out = w.handle(success("x", nbytes=7))
    assert sent(out, AddKeys) == [AddKeys(nbytes={"x": 7})] and not of(out, DropData)
    assert w.tasks["x"].state == "memory"


def test_replica_asked_of_a_key_waiting_here_is_fetched() -> None:
    # Regression: x waited here for a dependency (a stale compute: the
    # scheduler has x elsewhere); when that dependency could not be had, x
    # was rescheduled (ignored by the scheduler) and dropped: no copy.
    w = worker()
    w.handle(compute("x", {"a": ["tcp://p1"]}))
    out = w.handle(AcquireReplicasEvent(who_has={"x": ["tcp://p0"]}, nbytes={"x": 10}))
    assert w.tasks["x"].state == "flight" and of(out, GatherDep) == [GatherDep("tcp://p0", ("x",), 10)]
    out = w.handle(GatherDepDoneEvent(worker="tcp://p1", nbytes={}, missing=["a"]))
    assert not sent(out, Reschedule) and "a" not in w.tasks
    out = w.handle(GatherDepDoneEvent(worker="tcp://p0", nbytes={"x": 10}, missing=[]))
    assert sent(out, AddKeys) == [AddKeys(nbytes={"x": 10})] and not of(out, Execute)


def test_replica_asked_of_a_key_held_here_unannounced_is_announced() -> None:
    # x stays here after the scheduler freed it (y needs it): the scheduler
    # does not count this copy, asks for one, and must hear that it is here.
    w = worker(nthreads=1, prefetch=0)
    w.handle(compute("busy"))
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    w.handle(GatherDepDoneEvent(worker="tcp://p0", nbytes={"x": 3}, missing=[]))
    w.handle(FreeKeysEvent(keys=["x"]))
    assert w.tasks["x"].state == "memory"
    out = w.handle(AcquireReplicasEvent(who_has={"x": ["tcp://p1"]}, nbytes={"x": 3}))
    assert sent(out, AddKeys) == [AddKeys(nbytes={"x": 3})] and not of(out, GatherDep)


# ---------------------------------------------------------------- the package


def test_state_machine_imports_without_trio_ssl_or_sockets() -> None:
    # The real packages this time (trioflow/worker/__init__.py is lazy): the
    # sans-IO core alone, then the server's names on first use.
    root = Path(__file__).resolve().parent.parent
    code = textwrap.dedent(
        """
        import sys
        import trioflow.worker.state
        bad = sorted(m for m in ("trio", "ssl", "socket", "trioflow.worker.server") if m in sys.modules)
        assert not bad, bad
        from trioflow.worker import WorkerState
        assert WorkerState is trioflow.worker.state.WorkerState
        from trioflow.worker import Worker
        assert "trio" in sys.modules and Worker.__module__ == "trioflow.worker.server"
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env, cwd=root)


def test_every_event_ends_in_event_and_has_a_handler() -> None:
    names = [n for n in events_module.__all__ if n not in ("Event", "InvalidWorkerEvent")]
    assert all(n.endswith("Event") for n in names), names
    assert {getattr(events_module, n) for n in names} == set(HANDLERS)


# ---------------------------------------------------------------- the scheduler link


def test_erred_task_is_reported_then_forgotten() -> None:
    # The scheduler never frees a task that erred here (a retry comes as a
    # new task): the state forgets it once reported, and its inputs with it.
    w = worker()
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    w.handle(GatherDepDoneEvent(worker="tcp://p0", nbytes={"x": 1}, missing=[]))
    out = w.handle(failure("y"))
    assert [e.key for e in sent(out, TaskErred)] == ["y"]
    assert "y" not in w.tasks and w.tasks["x"].state == "memory"  # x: the scheduler's replica
    # In a batch too.
    w.handle_many([compute("a"), compute("b")])
    out = w.handle_many([failure("a")])
    assert [e.key for e in sent(out, TaskErred)] == ["a"] and "a" not in w.tasks


def test_registration_sets_the_link_and_drops_unwanted_keys() -> None:
    w = worker()
    w.handle(DataPutEvent(nbytes={"kept": 1, "unwanted": 2}))
    out = w.handle(RegisteredEvent(now=5.0, heartbeat_interval=0.5, worker_ttl=3.0, forget=["unwanted"]))
    assert out == [DropData("unwanted")] and set(w.tasks) == {"kept"}
    assert (w.heartbeat_interval, w.scheduler_ttl, w.scheduler_heard_at) == (0.5, 3.0, 5.0)
    w.handle(HeartbeatAckEvent(heartbeat_interval=0.25, worker_ttl=2.0))
    assert (w.heartbeat_interval, w.scheduler_ttl) == (0.25, 2.0)
    assert w.rejoin_deadline(10.0) == 10.0 + 2 * 2.0 + 5


def test_silent_scheduler_is_given_up_after_its_ttl_and_two_heartbeats() -> None:
    w = worker()
    w.handle(RegisteredEvent(now=100.0, heartbeat_interval=1.0, worker_ttl=10.0, forget=[]))
    assert w.handle(SchedulerTimerEvent(now=112.0)) == []  # silent 12 s: limit 10 + 2 x 1
    assert w.scheduler_timer_delay(112.0) == pytest.approx(0.01)
    w.scheduler_heard_at = 105.0  # the shell heard something meanwhile
    assert w.handle(SchedulerTimerEvent(now=112.5)) == []
    assert w.scheduler_timer_delay(112.5) == pytest.approx(1.01)  # at least once a heartbeat
    (out,) = w.handle(SchedulerTimerEvent(now=117.5))
    assert isinstance(out, DisconnectScheduler) and "silent for 12.5s (limit 12.0s)" in out.reason


def test_state_after_scheduler_lost_keeps_only_data_and_settings() -> None:
    w = worker(nthreads=2, resources={"GPU": 1}, prefetch=1, max_concurrent_fetches=2)
    w.handle(RegisteredEvent(now=1.0, heartbeat_interval=0.5, worker_ttl=3.0, forget=[]))
    w.handle(DataPutEvent(nbytes={"x": 7}))
    w.handle(compute("y", {"z": ["tcp://p0"]}))
    w.handle(compute("r", resources={"GPU": 1}))
    new = w.after_scheduler_lost()
    assert type(new) is WorkerState and new is not w
    assert {k: (t.state, t.nbytes) for k, t in new.tasks.items()} == {"x": ("memory", 7)}
    assert new.nbytes_in_memory == 7 and new.available_resources == {"GPU": 1} and not new.executing
    assert (new.heartbeat_interval, new.scheduler_ttl, new.validate_after_each) == (0.5, 3.0, True)
    assert (new.slots, new.max_concurrent_fetches, new.max_transfer_bytes) == (3, 2, w.max_transfer_bytes)


def test_memory_pauses_over_the_threshold_and_resumes_well_under_it() -> None:
    w = worker(nthreads=1, prefetch=0)
    assert w.handle(MemorySampleEvent(rss=100, pause_at=100.0)) == []  # at it: not over
    assert w.handle(MemorySampleEvent(rss=101, pause_at=100.0)) == [ReportPause(True, 101)] and w.paused
    assert not of(w.handle(compute("x")), Execute)  # paused: nothing starts
    assert w.handle(MemorySampleEvent(rss=150, pause_at=100.0)) == []  # told once
    assert w.handle(MemorySampleEvent(rss=95, pause_at=100.0)) == []  # under, not well under
    out = w.handle(MemorySampleEvent(rss=89, pause_at=100.0))
    assert out[0] == ReportPause(False, 89) and [e.key for e in of(out, Execute)] == ["x"] and not w.paused



def test_fetched_value_does_not_replace_a_put_one() -> None:
    w = worker()
    w.handle(compute("y", {"x": ["tcp://p0"]}))
    assert w.takes_fetched_value("x")  # in flight
    w.handle(DataPutEvent(nbytes={"x": 3}))
    assert not w.takes_fetched_value("x") and w.takes_fetched_value("unknown")


def test_state_changes_are_checked_against_the_transition_table() -> None:
    w = worker()
    w.handle(DataPutEvent(nbytes={"x": 1}))
    assert type(w.tasks["x"]) is CheckedTask
    with pytest.raises(AssertionError, match="memory -> executing"):
        w.tasks["x"].state = "executing"

