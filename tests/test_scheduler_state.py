"""The scheduler's sans-IO state machine, driven directly.

A hypothesis ``RuleBasedStateMachine`` plays clients and simulated workers
against :class:`SchedulerState`: it submits random graphs, scatters, releases
and cancels, and answers the ``ComputeTask`` instructions the state sends with
results, errors, stale and duplicate reports, while workers join, pause and
die.  After every step ``validate()`` must hold, together with the checks in
this file (what the clients want, what the workers were told).  At the end
every wanted key must settle in memory or erred once the workers run, and
removing every client must leave no task behind.

The focused tests below pin down single behaviours and the bugs the machine
found.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trioflow.protocol.messages import ComputeTask, FreeKeys, KeyCancelled, KeyErred, KeyInMemory, TaskSpec
from trioflow.protocol.serialize import dumps, loads
from trioflow.scheduler.state import (
    AddClient,
    AddKeysEvent,
    AddWorker,
    CancelKeysEvent,
    HeartbeatEvent,
    InvalidEvent,
    InvalidTransition,
    KilledWorker,
    MissingDataEvent,
    ReleaseKeysEvent,
    ReleaseWorkerDataEvent,
    RemoveClient,
    RemoveWorker,
    RescheduleEvent,
    SchedulerState,
    TaskErredEvent,
    TaskFinishedEvent,
    ToClient,
    ToWorker,
    UpdateDataEvent,
    UpdateGraphEvent,
)

FUNC = b"function"
ARGS = dumps(())
NAMES = ["w0", "w1", "w2", "w3"]
CLIENTS = ["c0", "c1", "c2"]
MAX_GPU = 2


def addr(name: str) -> str:
    return f"tcp://{name}"


def spec(key: str, deps: tuple[str, ...] | list[str] = (), **kw) -> TaskSpec:
    return TaskSpec(key=key, function=FUNC, args=ARGS, dependencies=list(deps), **kw)


def snapshot(s: SchedulerState) -> dict:
    """Everything observable about ``s``, as plain data, to compare before/after."""

    def keys(tss):
        return sorted(t.key for t in tss)

    return {
        "tasks": {
            k: (
                ts.state,
                keys(ts.dependencies),
                keys(ts.dependents),
                sorted(w.address for w in ts.who_has),
                ts.processing_on.address if ts.processing_on else None,
                keys(ts.waiting_on),
                keys(ts.waiters),
                sorted(c.client_id for c in ts.who_wants),
                ts.nbytes,
                ts.retries,
                ts.suspicious,
                ts.priority,
                ts.function,
                ts.exception_text,
                ts.exception_blame.key if ts.exception_blame else None,
            )
            for k, ts in s.tasks.items()
        },
        "workers": {
            a: (
                ws.name,
                keys(ws.processing),
                keys(ws.has_what),
                ws.nbytes,
                ws.occupancy,
                dict(ws.used_resources),
                ws.status,
                ws.last_seen,
            )
            for a, ws in s.workers.items()
        },
        "clients": {c: keys(cs.wants_what) for c, cs in s.clients.items()},
        "unrunnable": keys(s.unrunnable),
        "names": dict(s.names),
        "counts": dict(s.task_counts),
        "prefix_counts": copy.deepcopy(s.prefix_counts),
        "generation": s.generation,
        "now": s.now,
        "out": list(s._out),
    }


def expect_invalid(s: SchedulerState, event, now: float = 1e6) -> None:
    before = snapshot(s)
    with pytest.raises(InvalidEvent):
        s.handle(event, now)
    assert snapshot(s) == before
    s.validate()


def has_cycle(edges: dict[str, set[str]]) -> bool:
    color: dict[str, int] = {}

    def visit(k: str) -> bool:
        color[k] = 1
        for d in edges.get(k, ()):
            c = color.get(d)
            if c == 1 or (c is None and visit(d)):
                return True
        color[k] = 2
        return False

    return any(color.get(k) is None and visit(k) for k in list(edges))


# ---------------------------------------------------------------- the machine


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = SchedulerState(allowed_failures=1)
        self.now = 0.0
        self.counter = 0
        # Simulated workers: what each was asked to compute and not told to
        # drop, and every key it was ever asked for (for stale reports).
        self.assigned: dict[str, set[str]] = {}
        self.history: dict[str, set[str]] = {}
        # Model of what each client wants, and the last thing it was told.
        self.wants: dict[str, set[str]] = {}
        self.told: dict[tuple[str, str], str] = {}
        self.events: list = []  # accepted events, to replay

    # ------------------------------------------------------------ plumbing

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def handle(self, event) -> list:
        self.now += 1.0
        out = self.s.handle(event, self.now)
        self.events.append((event, self.now))
        self.apply(out)
        return out

    def apply(self, out: list) -> None:
        s = self.s
        sent: set[tuple[str, str]] = set()
        for ins in out:
            if isinstance(ins, ToWorker):
                assert ins.address in s.workers, ins
                msg = ins.msg
                if isinstance(msg, ComputeTask):
                    sent.add((ins.address, msg.key))
                    ts = s.tasks[msg.key]
                    ws = s.workers[ins.address]
                    if ts.workers and not ts.allow_other_workers:
                        assert ws.address in ts.workers or ws.name in ts.workers, (ts, ws)
                    for name, need in ts.resources.items():
                        assert ws.resources.get(name, 0) >= need, (ts, ws)
                    assert msg.priority == ts.priority
                    for dep, holders in msg.who_has.items():
                        assert holders, (msg.key, dep)
                        assert msg.nbytes[dep] >= 0, (msg.key, dep)
                    self.assigned.setdefault(ins.address, set()).add(msg.key)
                    self.history.setdefault(ins.address, set()).add(msg.key)
                elif isinstance(msg, FreeKeys):
                    # Sending a task and taking it back in one go is wasted work.
                    assert not sent & {(ins.address, k) for k in msg.keys}, (out, sent)
                    self.assigned.get(ins.address, set()).difference_update(msg.keys)
            else:
                assert isinstance(ins, ToClient)
                assert ins.client in s.clients, ins
                msg = ins.msg
                if isinstance(msg, KeyInMemory):
                    self.told[ins.client, msg.key] = "memory"
                elif isinstance(msg, KeyErred):
                    self.told[ins.client, msg.key] = "erred"
                    assert msg.exception_text or msg.type_name, msg
                elif isinstance(msg, KeyCancelled):
                    self.told[ins.client, msg.key] = "cancelled"

    def sync_wants(self) -> None:
        self.wants = {c: {ts.key for ts in cs.wants_what} for c, cs in self.s.clients.items()}

    def processing(self) -> list:
        return sorted((ts for ts in self.s.tasks.values() if ts.state == "processing"), key=lambda t: t.key)

    # ------------------------------------------------------------ invariants

    @invariant()
    def valid(self) -> None:
        self.s.validate()

    @invariant()
    def wants_match_model(self) -> None:
        assert {c: {ts.key for ts in cs.wants_what} for c, cs in self.s.clients.items()} == self.wants

    @invariant()
    def processing_was_sent(self) -> None:
        for ts in self.processing():
            assert ts.key in self.assigned.get(ts.processing_on.address, ()), ts

    @invariant()
    def clients_told_the_outcome(self) -> None:
        for c, cs in self.s.clients.items():
            for ts in cs.wants_what:
                if ts.state in ("memory", "erred"):
                    assert self.told.get((c, ts.key)) == ts.state, (c, ts)

    @invariant()
    def worker_bytes_add_up(self) -> None:
        for ws in self.s.workers.values():
            assert ws.nbytes == sum(max(ts.nbytes, 0) for ts in ws.has_what), ws

    # ------------------------------------------------------------ clients

    @rule(i=st.integers(0, len(CLIENTS) - 1))
    def add_client(self, i: int) -> None:
        c = CLIENTS[i]
        if c in self.s.clients:
            expect_invalid(self.s, AddClient(client=c))
            return
        self.handle(AddClient(client=c))
        self.wants[c] = set()

    @rule(i=st.integers(0, len(CLIENTS) - 1))
    def remove_client(self, i: int) -> None:
        c = CLIENTS[i]
        self.handle(RemoveClient(client=c))
        self.wants.pop(c, None)

    @precondition(lambda self: self.s.clients)
    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        s = self.s
        client = data.draw(st.sampled_from(sorted(s.clients)), label="client")
        existing = sorted(s.tasks)
        n = data.draw(st.integers(1, 4), label="n_new")
        specs: list[TaskSpec] = []
        new_keys: list[str] = []
        for _ in range(n):
            key = self.fresh("t")
            deps = set()
            if existing:
                deps |= set(data.draw(st.lists(st.sampled_from(existing), max_size=2), label="old deps"))
            if new_keys:
                deps |= set(data.draw(st.lists(st.sampled_from(new_keys), max_size=2), label="new deps"))
            workers = data.draw(
                st.one_of(st.just([]), st.lists(st.sampled_from(NAMES + [addr(n) for n in NAMES]), min_size=1, max_size=2)),
                label="workers",
            )
            specs.append(
                spec(
                    key,
                    sorted(deps),
                    priority=data.draw(st.integers(-1, 1), label="priority"),
                    retries=data.draw(st.integers(0, 1), label="retries"),
                    resources=data.draw(st.sampled_from([{}, {}, {"GPU": 1}, {"GPU": MAX_GPU}]), label="resources"),
                    workers=workers,
                    allow_other_workers=data.draw(st.booleans(), label="loose") if workers else False,
                )
            )
            new_keys.append(key)
        # Sometimes the graph names keys the scheduler already knows, with
        # dependencies of their own (only honoured for data with no run spec).
        if existing and data.draw(st.booleans(), label="resubmit"):
            old = data.draw(st.sampled_from(existing), label="old key")
            deps = data.draw(st.lists(st.sampled_from(existing + new_keys), max_size=2, unique=True), label="deps")
            deps = [d for d in deps if d != old]
            specs.append(spec(old, deps))
        wanted = data.draw(st.lists(st.sampled_from(new_keys + existing), max_size=4, unique=True), label="wanted")
        ev = UpdateGraphEvent(client=client, tasks=specs, keys=wanted)

        # The effective graph after the update: a new spec counts unless it
        # names a known key that keeps its own run spec.
        edges = {k: {d.key for d in ts.dependencies} for k, ts in s.tasks.items()}
        spec_edges = {sp.key: set(sp.dependencies) for sp in specs}
        for sp in specs:
            ts = s.tasks.get(sp.key)
            if ts is None or (ts.state in ("released", "erred") and not ts.runnable):
                edges[sp.key] = edges.get(sp.key, set()) | set(sp.dependencies)
        if has_cycle(spec_edges) or has_cycle(edges):
            expect_invalid(s, ev)
            return
        self.handle(ev)
        self.wants[client] |= set(wanted)

    @precondition(lambda self: self.s.clients and self.s.workers)
    @rule(data=st.data())
    def scatter(self, data: st.DataObject) -> None:
        s = self.s
        client = data.draw(st.sampled_from(sorted(s.clients)), label="client")
        keys = [self.fresh("s")]
        if s.tasks and data.draw(st.booleans(), label="over existing"):
            keys.append(data.draw(st.sampled_from(sorted(s.tasks)), label="existing"))
        who_has, nbytes = {}, {}
        for k in keys:
            who_has[k] = data.draw(st.lists(st.sampled_from(sorted(s.workers)), min_size=1, max_size=2, unique=True))
            nbytes[k] = data.draw(st.integers(0, 10**6))
        self.handle(UpdateDataEvent(client=client, who_has=who_has, nbytes=nbytes))
        self.wants[client] |= set(keys)

    @precondition(lambda self: self.s.clients)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from(sorted(self.s.clients)), label="client")
        pool = sorted(self.wants[client]) + ["never-heard-of"]
        keys = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True), label="keys")
        self.handle(ReleaseKeysEvent(client=client, keys=keys))
        self.wants[client] -= set(keys)

    @precondition(lambda self: self.s.clients and self.s.tasks)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        s = self.s
        client = data.draw(st.sampled_from(sorted(s.clients)), label="client")
        keys = data.draw(st.lists(st.sampled_from(sorted(s.tasks)), min_size=1, max_size=2, unique=True), label="keys")
        # Cancelling may drop claims on the keys and on what depends on them.
        closure: set[str] = set()
        stack = [s.tasks[k] for k in keys]
        while stack:
            t = stack.pop()
            if t.key not in closure:
                closure.add(t.key)
                stack.extend(t.dependents)
        self.handle(CancelKeysEvent(client=client, keys=keys))
        after = {c: {ts.key for ts in cs.wants_what} for c, cs in s.clients.items()}
        for c, ks in after.items():
            assert not ks & set(keys), (c, ks, keys)
            dropped = self.wants[c] - ks
            assert dropped <= closure, (c, dropped, closure)
            assert ks <= self.wants[c], (c, ks)
        self.sync_wants()

    # ------------------------------------------------------------ workers

    @rule(i=st.integers(0, len(NAMES) - 1), nthreads=st.integers(1, 3), gpu=st.integers(0, MAX_GPU), data=st.data())
    def add_worker(self, i: int, nthreads: int, gpu: int, data: st.DataObject) -> None:
        s = self.s
        name = NAMES[i]
        if addr(name) in s.workers:
            expect_invalid(s, AddWorker(address=addr(name), name=name + "-other", nthreads=1, memory_limit=0))
            expect_invalid(s, AddWorker(address=addr(name) + ":2", name=name, nthreads=1, memory_limit=0))
            return
        # A worker that reconnects may say it already holds some keys.
        held = {}
        if s.tasks and data.draw(st.booleans(), label="holds keys"):
            for k in data.draw(st.lists(st.sampled_from(sorted(s.tasks)), max_size=2, unique=True)):
                held[k] = data.draw(st.integers(0, 1000))
        held["unknown-key"] = 1
        resources = {"GPU": float(gpu)} if gpu else {}
        self.assigned[addr(name)] = set()
        self.handle(AddWorker(address=addr(name), name=name, nthreads=nthreads, memory_limit=10**9, resources=resources, nbytes=held))

    @precondition(lambda self: self.s.workers)
    @rule(data=st.data(), safe=st.booleans())
    def remove_worker(self, data: st.DataObject, safe: bool) -> None:
        a = data.draw(st.sampled_from(sorted(self.s.workers)), label="worker")
        self.handle(RemoveWorker(address=a, safe=safe, reason="test"))
        self.assigned.pop(a, None)
        # Removal is idempotent.
        assert self.handle(RemoveWorker(address=a)) == []

    @precondition(lambda self: self.s.workers)
    @rule(data=st.data(), paused=st.booleans())
    def heartbeat(self, data: st.DataObject, paused: bool) -> None:
        a = data.draw(st.sampled_from(sorted(self.s.workers)), label="worker")
        self.handle(HeartbeatEvent(worker=a, metrics={"paused": paused}))

    # ------------------------------------------------------------ task reports

    @precondition(lambda self: any(ts.state == "processing" for ts in self.s.tasks.values()))
    @rule(data=st.data(), nbytes=st.integers(0, 10**6))
    def finish(self, data: st.DataObject, nbytes: int) -> None:
        ts = data.draw(st.sampled_from(self.processing()), label="task")
        ws = ts.processing_on
        self.handle(TaskFinishedEvent(worker=ws.address, key=ts.key, nbytes=nbytes, type_name="int", start=1.0, stop=1.5))
        assert ts.state in ("memory", "forgotten"), ts
        if ts.state == "memory":
            assert ws in ts.who_has

    @precondition(lambda self: any(ts.state == "processing" for ts in self.s.tasks.values()))
    @rule(data=st.data())
    def err(self, data: st.DataObject) -> None:
        ts = data.draw(st.sampled_from(self.processing()), label="task")
        retries = ts.retries
        self.handle(
            TaskErredEvent(
                worker=ts.processing_on.address,
                key=ts.key,
                exception=dumps(ZeroDivisionError("boom")),
                exception_text="boom",
                traceback_text="tb",
                type_name="ZeroDivisionError",
            )
        )
        if retries:
            assert ts.retries == retries - 1
            assert ts.state != "erred"
        else:
            assert ts.state in ("erred", "forgotten"), ts

    @precondition(lambda self: any(self.history.get(a) for a in self.s.workers))
    @rule(data=st.data(), ok=st.booleans())
    def stale_report(self, data: st.DataObject, ok: bool) -> None:
        a = data.draw(st.sampled_from(sorted(a for a in self.s.workers if self.history.get(a))), label="worker")
        key = data.draw(st.sampled_from(sorted(self.history[a])), label="key")
        if ok:
            self.handle(TaskFinishedEvent(worker=a, key=key, nbytes=7, type_name="int"))
        else:
            self.handle(
                TaskErredEvent(worker=a, key=key, exception=None, exception_text="late", traceback_text="", type_name="ValueError")
            )

    @precondition(lambda self: any(ts.state == "memory" for ts in self.s.tasks.values()))
    @rule(data=st.data())
    def missing_data(self, data: st.DataObject) -> None:
        s = self.s
        ts = data.draw(st.sampled_from(sorted((t for t in s.tasks.values() if t.state == "memory"), key=lambda t: t.key)))
        errant = data.draw(st.sampled_from(sorted(w.address for w in ts.who_has)), label="errant")
        reporter = data.draw(st.sampled_from(sorted(s.workers)), label="reporter")
        self.handle(MissingDataEvent(worker=reporter, key=ts.key, errant_worker=errant))
        assert errant not in {w.address for w in ts.who_has}

    @precondition(lambda self: any(ts.state == "processing" for ts in self.s.tasks.values()))
    @rule(data=st.data())
    def reschedule(self, data: st.DataObject) -> None:
        ts = data.draw(st.sampled_from(self.processing()), label="task")
        self.handle(RescheduleEvent(worker=ts.processing_on.address, key=ts.key))

    @precondition(lambda self: any(ws.has_what for ws in self.s.workers.values()))
    @rule(data=st.data())
    def release_worker_data(self, data: st.DataObject) -> None:
        s = self.s
        a = data.draw(st.sampled_from(sorted(a for a, ws in s.workers.items() if ws.has_what)), label="worker")
        keys = data.draw(st.lists(st.sampled_from(sorted(t.key for t in s.workers[a].has_what)), min_size=1, unique=True))
        self.handle(ReleaseWorkerDataEvent(worker=a, keys=keys + ["never-heard-of"]))

    @precondition(lambda self: self.s.workers)
    @rule(data=st.data())
    def add_keys(self, data: st.DataObject) -> None:
        s = self.s
        a = data.draw(st.sampled_from(sorted(s.workers)), label="worker")
        pool = sorted(s.tasks) + ["never-heard-of"]
        keys = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        # A copy of a result has the size of the original.
        nbytes = {k: (s.tasks[k].nbytes if k in s.tasks and s.tasks[k].nbytes >= 0 else 3) for k in keys}
        self.handle(AddKeysEvent(worker=a, nbytes=nbytes))

    # ------------------------------------------------------------ bad input

    @rule(data=st.data())
    def invalid_event(self, data: st.DataObject) -> None:
        s = self.s
        known = sorted(s.tasks)
        cases = [
            UpdateGraphEvent(client="nobody", tasks=[spec("x-1")], keys=["x-1"]),
            TaskFinishedEvent(worker="tcp://nowhere", key=known[0] if known else "k", nbytes=1),
            TaskErredEvent(worker="tcp://nowhere", key="k", exception=None, exception_text="", traceback_text="", type_name=""),
            HeartbeatEvent(worker="tcp://nowhere", metrics={}),
            AddKeysEvent(worker="tcp://nowhere", nbytes={"k": 1}),
            AddWorker(address="tcp://bad", name="bad", nthreads=0, memory_limit=0),
            AddWorker(address="tcp://bad", name="bad", nthreads=1, memory_limit=0, nbytes={"k": -1}),
        ]
        if s.clients:
            c = sorted(s.clients)[0]
            cases += [
                UpdateGraphEvent(client=c, tasks=[spec("x-1", ["no-such-key"])], keys=["x-1"]),
                UpdateGraphEvent(client=c, tasks=[spec("x-1", ["x-2"]), spec("x-2", ["x-1"])], keys=["x-1"]),
                UpdateGraphEvent(client=c, tasks=[spec("x-1", ["x-1"])], keys=[]),
                UpdateGraphEvent(client=c, tasks=[spec("x-1"), spec("x-1")], keys=[]),
                UpdateGraphEvent(client=c, tasks=[spec("x-1", retries=-1)], keys=[]),
                UpdateGraphEvent(client=c, tasks=[], keys=["no-such-key"]),
                UpdateDataEvent(client=c, who_has={"x-1": ["tcp://nowhere"]}, nbytes={"x-1": 1}),
                UpdateDataEvent(client=c, who_has={"x-1": []}, nbytes={"x-1": 1}),
            ]
        if s.workers:
            a = sorted(s.workers)[0]
            cases += [
                TaskFinishedEvent(worker=a, key=known[0] if known else "k", nbytes=-5),
                AddKeysEvent(worker=a, nbytes={"k": -1}),
            ]
            if s.clients:
                cases.append(UpdateDataEvent(client=sorted(s.clients)[0], who_has={"x-1": [a]}, nbytes={"x-1": -1}))
        expect_invalid(s, data.draw(st.sampled_from(cases), label="event"))

    # ------------------------------------------------------------ the end

    def teardown(self) -> None:
        s = self.s
        s.validate()

        # The same events give the same state (no hidden randomness) ...
        early = SchedulerState(allowed_failures=s.allowed_failures)
        for ev, now in self.events:
            early.handle(ev, now)
        assert snapshot(early) == snapshot(s)
        # ... and dropping every client right now, mid-flight, forgets everything.
        for c in list(early.clients):
            early.handle(RemoveClient(client=c), self.now + 1)
        early.validate()
        assert not early.tasks, early.tasks

        # Give every restriction a worker that can run it, unpause the rest,
        # then let the workers finish all they are given.
        for name in NAMES:
            ws = s.workers.get(addr(name))
            if ws is not None and ws.resources.get("GPU", 0) < MAX_GPU:
                self.handle(RemoveWorker(address=ws.address, safe=True))
                self.assigned.pop(ws.address, None)
                ws = None
            if ws is None:
                self.assigned[addr(name)] = set()
                self.handle(AddWorker(address=addr(name), name=name, nthreads=2, memory_limit=10**9, resources={"GPU": MAX_GPU}))
        for a in list(s.workers):
            self.handle(HeartbeatEvent(worker=a, metrics={"paused": False}))
        for _ in range(10 * len(s.tasks) + 10):
            s.validate()
            todo = self.processing()
            if not todo:
                break
            ts = todo[0]
            self.handle(TaskFinishedEvent(worker=ts.processing_on.address, key=ts.key, nbytes=10, type_name="int"))
        else:
            raise AssertionError("tasks keep processing")
        s.validate()
        for c, cs in s.clients.items():
            for ts in cs.wants_what:
                assert ts.state in ("memory", "erred"), f"{c} wants {ts!r}, stuck"
        self.clients_told_the_outcome()

        for c in list(s.clients):
            self.handle(RemoveClient(client=c))
        s.validate()
        assert not s.tasks, s.tasks
        assert all(not ws.has_what and not ws.processing and ws.nbytes == 0 for ws in s.workers.values())
        assert all(v == 0 for v in s.task_counts.values()), s.task_counts


SchedulerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    # The explain phase traces every line on Python < 3.12: far too slow here.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_scheduler_machine = SchedulerMachine.TestCase
