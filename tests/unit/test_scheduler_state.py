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
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trioflow.protocol.messages import (
    AcquireReplicas,
    CloseWorker,
    ComputeTask,
    FreeKeys,
    HeartbeatAck,
    KeyCancelled,
    KeyErred,
    KeyInMemory,
    StealRequest,
    TaskSpec,
    WorkerRegistered,
)
from trioflow.protocol.serialize import dumps, loads
from trioflow.scheduler.state import (
    AddClientEvent,
    AddKeysEvent,
    AddWorkerEvent,
    CancelKeysEvent,
    DropWorker,
    FireAndForgetEvent,
    HeartbeatEvent,
    InvalidEvent,
    InvalidTransition,
    KilledWorker,
    LongRunningEvent,
    MissingDataEvent,
    NannyRestartedEvent,
    ReleaseKeysEvent,
    ReleaseWorkerDataEvent,
    RemoveClientEvent,
    RemoveWorkerEvent,
    RescheduleEvent,
    RestartDone,
    RestartEvent,
    RestartNanny,
    RetirementDone,
    RetireWorkersEvent,
    SchedulerState,
    StealResponseEvent,
    TaskErredEvent,
    TaskFinishedEvent,
    TickEvent,
    ToClient,
    ToWorker,
    UpdateDataEvent,
    UpdateGraphEvent,
    pack_priority,
    unpack_priority,
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
        self.steal_requests: set[tuple[str, str]] = set()  # (victim, key) not answered yet
        self.open_requests: set[str] = set()  # retirements and restarts not answered yet
        self.closing: set[str] = set()  # workers told to close
        self.acquires: list[tuple[str, dict[str, int]]] = []  # AcquireReplicas not carried out yet
        self.nanny_calls: set[tuple[str, str]] = set()  # (request, nanny) not answered yet

    @initialize(saturation=st.sampled_from([1.1, 0.5, float("inf")]), workers=st.integers(1, 3))
    def setup(self, saturation: float, workers: int) -> None:
        # Start with a client and some workers, so that steps go to work;
        # a low saturation queues root tasks early, inf turns queuing off.
        self.s = SchedulerState(allowed_failures=1, worker_saturation=saturation)
        self.handle(AddClientEvent(client=CLIENTS[0]))
        self.wants[CLIENTS[0]] = set()
        for name in NAMES[:workers]:
            self.assigned[addr(name)] = set()
            self.handle(AddWorkerEvent(address=addr(name), name=name, nthreads=1, memory_limit=10**9))

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
        # A worker told to close that is gone (or back as a new one) is not closing.
        self.closing &= s.told_to_close
        sent: set[tuple[str, str]] = set()
        for ins in out:
            if isinstance(ins, ToWorker):
                assert ins.address in s.workers, ins
                msg = ins.msg
                if isinstance(msg, ComputeTask):
                    # Paused and retiring workers get no new tasks.
                    assert s.workers[ins.address].status == "running", ins
                    sent.add((ins.address, msg.key))
                    ts = s.tasks[msg.key]
                    ws = s.workers[ins.address]
                    if ts.workers and not ts.allow_other_workers:
                        assert ws.address in ts.workers or ws.name in ts.workers, (ts, ws)
                    for name, need in ts.resources.items():
                        assert ws.resources.get(name, 0) >= need, (ts, ws)
                    assert msg.priority == unpack_priority(ts.priority)
                    for dep, holders in msg.who_has.items():
                        assert holders, (msg.key, dep)
                        assert msg.nbytes[dep] >= 0, (msg.key, dep)
                    self.assigned.setdefault(ins.address, set()).add(msg.key)
                    self.history.setdefault(ins.address, set()).add(msg.key)
                elif isinstance(msg, StealRequest):
                    assert s.tasks[msg.key].processing_on is s.workers[ins.address], ins
                    self.steal_requests.add((ins.address, msg.key))
                elif isinstance(msg, FreeKeys):
                    # Sending a task and taking it back in one go is wasted work.
                    assert not sent & {(ins.address, k) for k in msg.keys}, (out, sent)
                    self.assigned.get(ins.address, set()).difference_update(msg.keys)
                elif isinstance(msg, AcquireReplicas):
                    assert s.workers[ins.address].status == "running", ins
                    self.acquires.append((ins.address, dict(msg.nbytes)))
                elif isinstance(msg, CloseWorker):
                    assert ins.address in s.told_to_close and s.workers[ins.address].status == "closing", ins
                    self.closing.add(ins.address)
                elif isinstance(msg, WorkerRegistered):
                    for k in msg.forget:
                        ts = s.tasks.get(k)
                        assert ts is None or s.workers[ins.address] not in ts.who_has, (ins, ts)
            elif isinstance(ins, DropWorker):
                assert ins.address not in s.workers, ins
                self.assigned.pop(ins.address, None)
            elif isinstance(ins, RestartNanny):
                self.nanny_calls.add((ins.request, ins.nanny))
            elif isinstance(ins, (RetirementDone, RestartDone)):
                assert ins.request in self.open_requests, ins
                self.open_requests.discard(ins.request)
                if isinstance(ins, RetirementDone):
                    assert not set(ins.retired) & set(ins.stuck), ins
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
            expect_invalid(self.s, AddClientEvent(client=c))
            return
        self.handle(AddClientEvent(client=c))
        self.wants[c] = set()

    @rule(i=st.integers(0, len(CLIENTS) - 1))
    def remove_client(self, i: int) -> None:
        c = CLIENTS[i]
        self.handle(RemoveClientEvent(client=c))
        self.wants.pop(c, None)

    @precondition(lambda self: self.s.clients)
    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        s = self.s
        client = data.draw(st.sampled_from(sorted(s.clients)), label="client")
        existing = sorted(s.tasks)
        n = data.draw(st.integers(1, 6), label="n_new")
        specs: list[TaskSpec] = []
        new_keys: list[str] = []
        for _ in range(n):
            key = self.fresh("t")
            deps = set()
            if data.draw(st.booleans(), label="has deps"):
                if existing:
                    deps |= set(data.draw(st.lists(st.sampled_from(existing), max_size=2), label="old deps"))
                if new_keys:
                    deps |= set(data.draw(st.lists(st.sampled_from(new_keys), max_size=2), label="new deps"))
            # Mostly unrestricted tasks, so that most of them can run.
            workers = []
            if data.draw(st.sampled_from([False, False, False, True]), label="restricted"):
                workers = data.draw(st.lists(st.sampled_from(NAMES + [addr(n) for n in NAMES]), min_size=1, max_size=2), label="workers")
            specs.append(
                spec(
                    key,
                    sorted(deps),
                    priority=data.draw(st.integers(-1, 1), label="priority"),
                    retries=data.draw(st.integers(0, 1), label="retries"),
                    resources=data.draw(st.sampled_from([{}] * 4 + [{"GPU": 1}, {"GPU": MAX_GPU}]), label="resources"),
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
            expect_invalid(s, AddWorkerEvent(address=addr(name), name=name + "-other", nthreads=1, memory_limit=0))
            expect_invalid(s, AddWorkerEvent(address=addr(name) + ":2", name=name, nthreads=1, memory_limit=0))
            return
        # A worker that reconnects may say it already holds some keys.
        held = {}
        if s.tasks and data.draw(st.booleans(), label="holds keys"):
            for k in data.draw(st.lists(st.sampled_from(sorted(s.tasks)), max_size=2, unique=True)):
                held[k] = data.draw(st.integers(0, 1000))
        held["unknown-key"] = 1
        resources = {"GPU": float(gpu)} if gpu else {}
        nanny = f"tcp://nanny-{name}" if data.draw(st.booleans(), label="nanny") else ""
        self.assigned[addr(name)] = set()
        self.handle(
            AddWorkerEvent(address=addr(name), name=name, nthreads=nthreads, memory_limit=10**9, resources=resources, nbytes=held, nanny=nanny)
        )

    @rule(jump=st.sampled_from([0.0, 4.0, 12.0]))
    def tick(self, jump: float) -> None:
        s = self.s
        self.now += jump
        ttl = s.worker_ttl_now()
        silent = {a for a, ws in s.workers.items() if self.now + 1 - ws.last_seen > ttl}
        out = self.handle(TickEvent())
        assert {i.address for i in out if isinstance(i, DropWorker)} == silent
        assert not silent & set(s.workers)

    @precondition(lambda self: self.s.workers)
    @rule(data=st.data(), timeout=st.sampled_from([0.0, 5.0]))
    def retire(self, data: st.DataObject, timeout: float) -> None:
        s = self.s
        names = sorted(s.workers) + [ws.name for ws in s.workers.values()] + ["nobody"]
        workers = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2), label="retire")
        request = self.fresh("retire")
        self.open_requests.add(request)
        self.handle(RetireWorkersEvent(request=request, workers=workers, timeout=timeout))

    @precondition(lambda self: self.acquires)
    @rule(data=st.data())
    def acquire_replicas(self, data: st.DataObject) -> None:
        # A worker asked for copies gets them (those whose holders are still there).
        s = self.s
        target, nbytes = self.acquires.pop(data.draw(st.integers(0, len(self.acquires) - 1), label="acquire"))
        got = {k: n for k, n in nbytes.items() if k in s.tasks and s.tasks[k].who_has and s.tasks[k].nbytes == n}
        if target in s.workers and got:
            self.handle(AddKeysEvent(worker=target, nbytes=got))

    @precondition(lambda self: self.closing & set(self.s.workers))
    @rule(data=st.data())
    def worker_closes(self, data: st.DataObject) -> None:
        # A worker told to close goes (its connection just drops: still clean).
        a = data.draw(st.sampled_from(sorted(self.closing & set(self.s.workers))), label="closing")
        tasks = list(self.s.workers[a].processing)
        suspicious = {t.key: t.suspicious for t in tasks}
        self.handle(RemoveWorkerEvent(address=a))
        self.assigned.pop(a, None)
        assert all(t.suspicious == suspicious[t.key] for t in tasks)

    @rule()
    def restart(self) -> None:
        request = self.fresh("restart")
        self.open_requests.add(request)
        self.handle(RestartEvent(request=request, timeout=5.0))
        self.sync_wants()
        assert all(not cs.wants_what for cs in self.s.clients.values())

    @precondition(lambda self: self.nanny_calls)
    @rule(data=st.data(), ok=st.booleans())
    def nanny_answers(self, data: st.DataObject, ok: bool) -> None:
        call = data.draw(st.sampled_from(sorted(self.nanny_calls)), label="nanny call")
        self.nanny_calls.discard(call)
        self.handle(NannyRestartedEvent(request=call[0], nanny=call[1], error="" if ok else "refused"))

    @precondition(lambda self: self.s.tasks)
    @rule(data=st.data())
    def fire_and_forget(self, data: st.DataObject) -> None:
        s = self.s
        keys = data.draw(st.lists(st.sampled_from(sorted(s.tasks) + ["never-heard-of"]), min_size=1, max_size=3, unique=True))
        self.handle(FireAndForgetEvent(keys=keys))
        for k in keys:
            ts = s.tasks.get(k)
            if ts is not None and ts.state not in ("memory", "erred"):
                assert ts in s.fire_and_forget.wants_what, ts

    @precondition(lambda self: self.s.workers)
    @rule(data=st.data(), safe=st.booleans())
    def remove_worker(self, data: st.DataObject, safe: bool) -> None:
        a = data.draw(st.sampled_from(sorted(self.s.workers)), label="worker")
        self.handle(RemoveWorkerEvent(address=a, safe=safe, reason="test"))
        self.assigned.pop(a, None)
        # Removal is idempotent (a request past its deadline may end on any event).
        assert [i for i in self.handle(RemoveWorkerEvent(address=a)) if not isinstance(i, (RetirementDone, RestartDone))] == []

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
        only_fire_and_forget = ts.who_wants == {self.s.fire_and_forget}
        self.handle(TaskFinishedEvent(worker=ws.address, key=ts.key, nbytes=nbytes, type_name="int", start=1.0, stop=1.5))
        # Done, a fire-and-forget key nothing else wants is released (kept
        # as lineage while it has dependents).
        assert ts.state in ("memory", "forgotten") or (only_fire_and_forget and ts.state == "released"), ts
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

    @precondition(lambda self: any(ts.state == "processing" for ts in self.s.tasks.values()))
    @rule(data=st.data())
    def long_running(self, data: st.DataObject) -> None:
        # The task seceded on its worker: counted out of that worker's load.
        ts = data.draw(st.sampled_from(self.processing()), label="task")
        ws = ts.processing_on
        self.handle(LongRunningEvent(worker=ws.address, key=ts.key))
        assert ts in ws.long_running or ts.state != "processing"

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

    @precondition(lambda self: self.steal_requests)
    @rule(data=st.data(), stolen=st.booleans())
    def steal_response(self, data: st.DataObject, stolen: bool) -> None:
        victim, key = data.draw(st.sampled_from(sorted(self.steal_requests)), label="request")
        self.steal_requests.discard((victim, key))
        if victim not in self.s.workers:
            return  # died before answering
        if stolen:
            self.assigned.get(victim, set()).discard(key)
        self.handle(StealResponseEvent(worker=victim, key=key, stolen=stolen))

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
            AddWorkerEvent(address="tcp://bad", name="bad", nthreads=0, memory_limit=0),
            AddWorkerEvent(address="tcp://bad", name="bad", nthreads=1, memory_limit=0, nbytes={"k": -1}),
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
        early = SchedulerState(allowed_failures=s.allowed_failures, worker_saturation=s.worker_saturation)
        for ev, now in self.events:
            early.handle(ev, now)
        assert snapshot(early) == snapshot(s)
        # ... and dropping every client right now, mid-flight, forgets
        # everything but the fire-and-forget keys and what they need.
        for c in list(early.clients):
            early.handle(RemoveClientEvent(client=c), self.now + 1)
        early.validate()
        needed: set[str] = set()
        stack = list(early.fire_and_forget.wants_what)
        while stack:
            t = stack.pop()
            if t.key not in needed:
                needed.add(t.key)
                stack.extend(t.dependencies)
        assert set(early.tasks) <= needed, early.tasks

        # Let the retirements and restarts under way end (their deadlines
        # pass), and the workers told to close go.
        for a in list(s.workers):
            self.handle(HeartbeatEvent(worker=a, metrics={}))
        self.now += 6.0
        self.handle(TickEvent())
        assert not s.retirements and not s.restarts and not self.open_requests
        for a in sorted(self.closing & set(s.workers)):
            self.handle(RemoveWorkerEvent(address=a))
            self.assigned.pop(a, None)
        assert not s.told_to_close and all(ws.status in ("running", "paused") for ws in s.workers.values())

        # Give every restriction a worker that can run it, unpause the rest,
        # then let the workers finish all they are given.
        for name in NAMES:
            ws = s.workers.get(addr(name))
            if ws is not None and ws.resources.get("GPU", 0) < MAX_GPU:
                self.handle(RemoveWorkerEvent(address=ws.address, safe=True))
                self.assigned.pop(ws.address, None)
                ws = None
            if ws is None:
                self.assigned[addr(name)] = set()
                self.handle(AddWorkerEvent(address=addr(name), name=name, nthreads=2, memory_limit=10**9, resources={"GPU": MAX_GPU}))
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
            self.handle(RemoveClientEvent(client=c))
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


# ---------------------------------------------------------------- focused tests


class Sim:
    """A SchedulerState with one client and helpers that name things briefly."""

    def __init__(self, allowed_failures: int = 3, client: str = "c", worker_saturation: float = float("inf")) -> None:
        # Focused tests see every ready task sent at once unless they ask for
        # root-task queuing (the stateful machine above runs with it on).
        self.s = SchedulerState(allowed_failures=allowed_failures, validate=True, worker_saturation=worker_saturation)
        self.now = 0.0
        self.client = client
        self.handle(AddClientEvent(client=client))

    def handle(self, ev) -> list:
        self.now += 1
        out = self.s.handle(ev, self.now)
        assert_no_churn(out)
        return out

    def worker(self, name: str, nthreads: int = 1, **kw) -> list:
        return self.handle(AddWorkerEvent(address=addr(name), name=name, nthreads=nthreads, memory_limit=0, **kw))

    def submit(self, *specs: TaskSpec, keys: list[str] | None = None) -> list:
        return self.handle(UpdateGraphEvent(client=self.client, tasks=list(specs), keys=[sp.key for sp in specs] if keys is None else keys))

    def finish(self, key: str, nbytes: int = 8, worker: str | None = None) -> list:
        worker = worker or self.s.tasks[key].processing_on.address
        return self.handle(TaskFinishedEvent(worker=worker, key=key, nbytes=nbytes, type_name="int"))

    def err(self, key: str) -> list:
        return self.handle(
            TaskErredEvent(
                worker=self.s.tasks[key].processing_on.address,
                key=key,
                exception=dumps(ValueError("bad")),
                exception_text="bad",
                traceback_text="",
                type_name="ValueError",
            )
        )

    def state(self, key: str) -> str:
        ts = self.s.tasks.get(key)
        return "forgotten" if ts is None else ts.state


def computes(out: list) -> list[tuple[str, str]]:
    """(worker, key) of every ComputeTask in ``out``, in order."""
    return [(i.address, i.msg.key) for i in out if isinstance(i, ToWorker) and isinstance(i.msg, ComputeTask)]


def frees(out: list) -> list[tuple[str, str]]:
    return [(i.address, k) for i in out if isinstance(i, ToWorker) and isinstance(i.msg, FreeKeys) for k in i.msg.keys]


def to_client(out: list, kind: type) -> dict:
    return {i.msg.key: i.msg for i in out if isinstance(i, ToClient) and isinstance(i.msg, kind)}


def assert_no_churn(out: list) -> None:
    sent: set[tuple[str, str]] = set()
    for i in out:
        if isinstance(i, ToWorker) and isinstance(i.msg, ComputeTask):
            sent.add((i.address, i.msg.key))
        elif isinstance(i, ToWorker) and isinstance(i.msg, FreeKeys):
            assert not sent & {(i.address, k) for k in i.msg.keys}, f"sent and taken back in one batch: {out}"


def test_illegal_transition_raises_and_changes_nothing() -> None:
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"), spec("y", ["x"]), spec("z"), spec("r"), spec("q", ["r"]), keys=["x", "y", "z", "q"])
    sim.finish("x")
    sim.finish("r")
    sim.finish("q")
    s = sim.s
    assert [sim.state(k) for k in "xyzrq"] == ["memory", "processing", "processing", "released", "memory"]
    before = snapshot(s)
    for key, finish in [("x", "processing"), ("x", "no-worker"), ("y", "bogus"), ("z", "no-worker"), ("r", "processing")]:
        with pytest.raises(InvalidTransition):
            s._transitions({s.tasks[key]: finish})
        assert snapshot(s) == before
    # A table edge whose own precondition fails raises before changing anything.
    with pytest.raises(InvalidTransition, match="no holder"):
        s._transitions({s.tasks["r"]: "memory"})
    assert snapshot(s) == before
    s.handle(RemoveWorkerEvent(address=addr("a")), sim.now + 1)  # x lost, to run again
    assert sim.state("x") == "no-worker" and not s.tasks["x"].who_has
    before = snapshot(s)
    with pytest.raises(InvalidTransition, match="no holder"):
        s._transitions({s.tasks["x"]: "memory"})
    assert snapshot(s) == before
    s.validate()


def _populated() -> Sim:
    sim = Sim()
    sim.worker("a")
    sim.worker("b", resources={"GPU": 1})
    sim.submit(spec("x"), spec("y", ["x"]), spec("g", resources={"GPU": 5}))
    sim.finish("x")
    sim.handle(UpdateDataEvent(client="c", who_has={"s": [addr("a")]}, nbytes={"s": 10}))
    sim.submit(spec("u", ["s"]))
    return sim


INVALID_EVENTS = {
    "duplicate worker address": AddWorkerEvent(address=addr("a"), name="other", nthreads=1, memory_limit=0),
    "duplicate worker name": AddWorkerEvent(address="tcp://elsewhere", name="a", nthreads=1, memory_limit=0),
    "no threads": AddWorkerEvent(address="tcp://new", name="new", nthreads=0, memory_limit=0),
    "negative worker resource": AddWorkerEvent(address="tcp://new", name="new", nthreads=1, memory_limit=0, resources={"GPU": -1}),
    "worker holds negative size": AddWorkerEvent(address="tcp://new", name="new", nthreads=1, memory_limit=0, nbytes={"x": -1}),
    "unknown dependency": UpdateGraphEvent(client="c", tasks=[spec("n", ["nope"])], keys=["n"]),
    "unknown wanted key": UpdateGraphEvent(client="c", tasks=[spec("n")], keys=["n", "nope"]),
    "cycle": UpdateGraphEvent(client="c", tasks=[spec("n1", ["n3"]), spec("n2", ["n1"]), spec("n3", ["n2"])], keys=["n1"]),
    "self dependency": UpdateGraphEvent(client="c", tasks=[spec("n", ["n"])], keys=["n"]),
    "duplicate task": UpdateGraphEvent(client="c", tasks=[spec("n"), spec("n")], keys=["n"]),
    "negative retries": UpdateGraphEvent(client="c", tasks=[spec("n", retries=-1)], keys=["n"]),
    "negative task resource": UpdateGraphEvent(client="c", tasks=[spec("n", resources={"GPU": -1})], keys=["n"]),
    "unknown client graph": UpdateGraphEvent(client="nobody", tasks=[spec("n")], keys=["n"]),
    "unknown client scatter": UpdateDataEvent(client="nobody", who_has={"n": [addr("a")]}, nbytes={"n": 1}),
    "duplicate client": AddClientEvent(client="c"),
    "negative result size": TaskFinishedEvent(worker=addr("a"), key="y", nbytes=-1),
    "report from unknown worker": TaskFinishedEvent(worker="tcp://ghost", key="y", nbytes=1),
    "error from unknown worker": TaskErredEvent(worker="tcp://ghost", key="y", exception=None, exception_text="", traceback_text="", type_name=""),
    "add-keys negative size": AddKeysEvent(worker=addr("a"), nbytes={"x": -3}),
    "add-keys unknown worker": AddKeysEvent(worker="tcp://ghost", nbytes={"x": 3}),
    "scatter negative size": UpdateDataEvent(client="c", who_has={"n": [addr("a")]}, nbytes={"n": -1}),
    "scatter unknown worker": UpdateDataEvent(client="c", who_has={"n": ["tcp://ghost"]}, nbytes={"n": 1}),
    "scatter no worker": UpdateDataEvent(client="c", who_has={"n": []}, nbytes={"n": 1}),
    "scatter no size": UpdateDataEvent(client="c", who_has={"n": [addr("a")]}, nbytes={}),
    "heartbeat unknown worker": HeartbeatEvent(worker="tcp://ghost", metrics={}),
}


@pytest.mark.parametrize("event", list(INVALID_EVENTS.values()), ids=list(INVALID_EVENTS))
def test_invalid_event_raises_and_changes_nothing(event) -> None:
    sim = _populated()
    expect_invalid(sim.s, event)


def test_cycle_through_known_scattered_key_is_invalid() -> None:
    # Regression: a run spec sent for released/erred scattered data is
    # adopted with its dependencies, which could close a cycle through
    # tasks already known; only cycles among the new keys were checked.
    sim = Sim()
    sim.worker("a")
    sim.handle(UpdateDataEvent(client="c", who_has={"s": [addr("a")]}, nbytes={"s": 1}))
    sim.submit(spec("t", ["s"]))
    sim.handle(RemoveWorkerEvent(address=addr("a")))
    assert (sim.state("s"), sim.state("t")) == ("erred", "erred")
    expect_invalid(sim.s, UpdateGraphEvent(client="c", tasks=[spec("s", ["t"])], keys=[]))
    expect_invalid(sim.s, UpdateGraphEvent(client="c", tasks=[spec("u", ["t"]), spec("s", ["u"])], keys=[]))


def test_killed_worker_after_allowed_failures() -> None:
    sim = Sim(allowed_failures=2)
    sim.submit(spec("x"))
    for i in range(3):
        sim.worker(f"w{i}")
        assert sim.state("x") == "processing"
        out = sim.handle(RemoveWorkerEvent(address=addr(f"w{i}"), safe=False))
    assert sim.state("x") == "erred"
    err = to_client(out, KeyErred)["x"]
    assert err.type_name == "KilledWorker"
    exc = loads(err.exception)
    assert isinstance(exc, KilledWorker) and exc.key == "x" and exc.last_worker == addr("w2")
    assert "died 3 times" in err.exception_text


def test_safe_removals_are_not_held_against_a_task() -> None:
    sim = Sim(allowed_failures=0)
    sim.submit(spec("x"))
    for i in range(3):
        sim.worker(f"w{i}")
        sim.handle(RemoveWorkerEvent(address=addr(f"w{i}"), safe=True))
    sim.worker("last")
    assert sim.state("x") == "processing"


def test_retries_run_again_then_err() -> None:
    # Regression: the processing -> waiting edge (used by every retry) was a
    # lambda naming a deleted module global, so a retry raised NameError.
    sim = Sim()
    sim.worker("a")
    out = sim.submit(spec("x", retries=2))
    runs = len(computes(out))
    for _ in range(2):
        out = sim.err("x")
        assert not to_client(out, KeyErred)
        assert sim.state("x") == "processing"
        runs += len(computes(out))
    assert runs == 3
    out = sim.err("x")
    assert sim.state("x") == "erred"
    assert to_client(out, KeyErred)["x"].exception_text == "bad"
    assert not computes(out)


def test_lost_data_is_recomputed_from_lineage() -> None:
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"), spec("y", ["x"]), keys=["y"])
    sim.finish("x")
    assert sim.state("y") == "processing"
    sim.worker("b")
    out = sim.handle(RemoveWorkerEvent(address=addr("a")))
    # x had no other holder and y still needs it: x runs again, once, on b.
    assert computes(out) == [(addr("b"), "x")]
    assert sim.state("y") == "waiting" and sim.s.tasks["y"].waiting_on == {sim.s.tasks["x"]}
    out = sim.finish("x")
    [ct] = [i.msg for i in out if isinstance(i.msg, ComputeTask)]
    assert ct.key == "y" and ct.who_has == {"x": [addr("b")]}
    sim.finish("y")
    # x's data is dropped, its run spec kept for y's lineage.
    assert sim.state("y") == "memory" and sim.state("x") == "released"
    assert frees(out := sim.handle(ReleaseKeysEvent(client="c", keys=["y"]))) == [(addr("b"), "y")]
    assert not sim.s.tasks


def test_lost_scattered_data_errs_saying_so() -> None:
    sim = Sim()
    sim.worker("a")
    sim.worker("b")
    sim.handle(UpdateDataEvent(client="c", who_has={"s": [addr("a")]}, nbytes={"s": 1}))
    sim.submit(spec("t", ["s"], workers=["b"]))
    sim.finish("t")
    sim.submit(spec("u", ["s"], workers=["b"]))  # still needs s
    assert sim.state("u") == "processing"
    out = sim.handle(RemoveWorkerEvent(address=addr("a")))
    errs = to_client(out, KeyErred)
    assert sim.state("s") == "erred" and sim.state("u") == "erred"
    assert sim.state("t") == "memory"  # computed already: unaffected
    for key in ("s", "u"):
        assert "scattered data 's' was lost" in errs[key].exception_text
        assert errs[key].type_name == "LostData"


@pytest.mark.parametrize("big_on", ["a", "b"])
def test_placement_prefers_the_holder_of_the_large_dependency(big_on: str) -> None:
    sim = Sim()
    sim.worker("a")
    sim.worker("b")
    small_on = "b" if big_on == "a" else "a"
    sim.handle(UpdateDataEvent(client="c", who_has={"big": [addr(big_on)], "small": [addr(small_on)]}, nbytes={"big": 10**9, "small": 10}))
    out = sim.submit(spec("z", ["big", "small"]))
    assert computes(out) == [(addr(big_on), "z")]


def test_resources_wait_in_no_worker_until_capacity_exists() -> None:
    sim = Sim()
    sim.worker("cpu")
    out = sim.submit(spec("g1", resources={"GPU": 1}), spec("g2", resources={"GPU": 1}))
    assert not computes(out)
    assert sim.state("g1") == sim.state("g2") == "no-worker"
    out = sim.worker("gpu", nthreads=4, resources={"GPU": 1})
    assert len(computes(out)) == 1  # only one fits at a time
    first = computes(out)[0][1]
    other = "g2" if first == "g1" else "g1"
    assert sim.state(other) == "no-worker"
    out = sim.finish(first)
    assert computes(out) == [(addr("gpu"), other)]
    assert sim.s.workers[addr("gpu")].used_resources == {"GPU": 1.0}
    sim.finish(other)
    assert sim.s.workers[addr("gpu")].used_resources == {"GPU": 0.0}


def test_priority_travels_with_the_task_and_orders_sending() -> None:
    sim = Sim()
    sim.worker("a", nthreads=8)
    out = sim.submit(spec("low", priority=-5), spec("mid"), spec("high", priority=10), spec("high2", priority=10))
    sent = [i.msg for i in out if isinstance(i.msg, ComputeTask)]
    assert [m.key for m in sent] == ["high", "high2", "mid", "low"]
    # Smaller sorts first on the worker: user priority is negated, then
    # graph generation, then order within the graph.
    assert [m.priority for m in sent] == sorted(m.priority for m in sent)
    assert dict((m.key, m.priority) for m in sent)["high"] == (-10, 1, 2)
    out = sim.submit(spec("later", priority=10))
    assert computes(out) and sim.s.tasks["later"].priority > sim.s.tasks["high2"].priority


@given(
    a=st.tuples(st.integers(), st.integers(0, 2**40 - 1), st.integers(0, 2**40 - 1)),
    b=st.tuples(st.integers(), st.integers(0, 2**40 - 1), st.integers(0, 2**40 - 1)),
)
def test_packed_priority_sorts_like_the_tuple_and_unpacks_to_it(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    pa, pb = pack_priority(*a), pack_priority(*b)
    ta, tb = (-a[0], a[1], a[2]), (-b[0], b[1], b[2])
    assert unpack_priority(pa) == ta and unpack_priority(pb) == tb
    assert (pa < pb) == (ta < tb) and (pa == pb) == (ta == tb)


@pytest.mark.slow  # a fresh interpreter
def test_state_modules_import_no_trio() -> None:
    # trioflow/__init__ imports the servers (and so trio): load the two state
    # modules under empty stand-in packages instead.
    root = Path(__file__).resolve().parents[2]
    code = textwrap.dedent(
        f"""
        import sys, types
        for name in ("trioflow", "trioflow.scheduler", "trioflow.worker"):
            pkg = types.ModuleType(name)
            pkg.__path__ = [{str(root / "trioflow")!r} + name[len("trioflow"):].replace(".", "/")]
            sys.modules[name] = pkg
        import trioflow.scheduler.state, trioflow.worker.state
        bad = sorted(m for m in sys.modules if m == "trio" or m.startswith(("trio.", "anyio", "sniffio")))
        assert not bad, bad
        assert "trioflow.scheduler.server" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_scheduler_state_imports_no_io_through_the_real_packages() -> None:
    # No stand-ins: trioflow/__init__ and trioflow/scheduler/__init__ load
    # their names lazily, so the state machine alone pulls in no IO.
    code = textwrap.dedent(
        """
        import sys
        import trioflow.scheduler.state
        from trioflow.scheduler.state import SchedulerState, AddWorkerEvent
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("trio", "ssl", "socket", "anyio", "sniffio", "_ssl", "_socket"))
        assert not bad, bad
        assert "trioflow.scheduler.server" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- regressions


def test_same_events_same_decisions() -> None:
    # Regression: tasks, workers and clients hashed by id(), so set order and
    # with it the order of transitions and worker choices changed between
    # runs of the same events.
    def run() -> list:
        sim = Sim()
        for i in range(4):
            sim.worker(f"w{i}", nthreads=2)
        out = sim.submit(*[spec(f"a-{i}") for i in range(20)], *[spec(f"b-{i}", [f"a-{i}", f"a-{(i + 1) % 20}"]) for i in range(20)])
        for i in range(20):
            out += sim.finish(f"a-{i}", nbytes=i)
        out += sim.handle(RemoveWorkerEvent(address=addr("w1")))
        junk = [[object() for _ in range(i)] for i in range(50)]  # move the allocator on
        return out + [len(junk)]

    assert run() == run()


def test_invalid_event_does_not_move_the_clock() -> None:
    sim = Sim()
    before = sim.s.now
    with pytest.raises(InvalidEvent):
        sim.s.handle(AddClientEvent(client="c"), before + 100)
    assert sim.s.now == before


def test_unwanted_tasks_in_a_graph_are_forgotten() -> None:
    # Regression: tasks sent along that nobody wanted stayed 'released'.
    sim = Sim()
    sim.submit(spec("a"), spec("b", ["a"]), spec("c"), keys=["c"])
    assert set(sim.s.tasks) == {"c"}


def test_worker_bytes_follow_a_changed_size() -> None:
    # Regression: a second report of a key with another size changed
    # ts.nbytes but not the totals of the workers already holding it.
    sim = Sim()
    sim.worker("a")
    sim.worker("b")
    sim.handle(UpdateDataEvent(client="c", who_has={"s": [addr("a")]}, nbytes={"s": 100}))
    sim.handle(AddKeysEvent(worker=addr("b"), nbytes={"s": 40}))
    assert sim.s.workers[addr("a")].nbytes == sim.s.workers[addr("b")].nbytes == 40
    sim.handle(ReleaseWorkerDataEvent(worker=addr("a"), keys=["s"]))
    assert sim.s.workers[addr("a")].nbytes == 0


def test_new_worker_holding_an_unrunnable_task_puts_it_in_memory() -> None:
    # Regression: the key went to memory and was then overwritten with
    # 'processing', so it ran although its result was there.
    sim = Sim()
    sim.submit(spec("x"))
    assert sim.state("x") == "no-worker"
    out = sim.worker("a", nbytes={"x": 5})
    assert sim.state("x") == "memory" and not computes(out)
    assert to_client(out, KeyInMemory).keys() == {"x"}


def test_unwanted_dependency_is_released_whatever_its_state() -> None:
    # Regression: once its last dependent went, a dependency that was not in
    # memory (waiting, no-worker, processing) stayed so for ever.
    sim = Sim()
    sim.submit(spec("x"), spec("y", ["x"]))
    sim.handle(RemoveClientEvent(client="c"))
    assert not sim.s.tasks
    sim.handle(AddClientEvent(client="c"))
    sim.worker("a")
    sim.submit(spec("p"), spec("q", ["p"]), keys=["q"])
    assert sim.state("p") == "processing"
    out = sim.handle(ReleaseKeysEvent(client="c", keys=["q"]))
    assert not sim.s.tasks and frees(out) == [(addr("a"), "p")]


def test_add_keys_for_a_task_being_computed_takes_the_copy() -> None:
    # Regression: the scheduler answered with FreeKeys, which also cancels
    # the run the worker was sent: the task stayed 'processing' for ever.
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"))
    out = sim.handle(AddKeysEvent(worker=addr("a"), nbytes={"x": 3}))
    assert not frees(out) and sim.state("x") == "memory"
    # Dependency and dependent at once: both memory, nothing runs.
    sim.submit(spec("p"), spec("q", ["p"]), keys=["q"])
    out = sim.handle(AddKeysEvent(worker=addr("a"), nbytes={"q": 1, "p": 1}))
    assert sim.state("q") == "memory" and not computes(out)


def test_lost_dependency_moves_waiting_counts() -> None:
    # Regression: a no-worker dependent sent back to waiting was not counted.
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"), spec("y", ["x"], workers=["elsewhere"]), keys=["y"])
    sim.finish("x")
    assert sim.state("y") == "no-worker"
    sim.handle(MissingDataEvent(worker=addr("a"), key="x", errant_worker=addr("a")))
    assert sim.s.task_counts["waiting"] == 1 and sim.s.task_counts["no-worker"] == 0


def test_cancel_releases_dependents_before_dependencies() -> None:
    # Regression: releasing the dependency first sent it to run again for
    # the dependent that was about to go too.
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"), spec("y", ["x"]))
    out = sim.handle(CancelKeysEvent(client="c", keys=["x"]))
    assert not computes(out) and frees(out) == [(addr("a"), "x")]
    assert set(to_client(out, KeyCancelled)) == {"x", "y"}
    assert not sim.s.tasks


def test_releasing_a_task_frees_resources_without_starting_a_released_one() -> None:
    # Regression: freed resources started a no-worker task that the same
    # event was releasing; it stayed 'processing' with no client.
    sim = Sim()
    sim.worker("a", resources={"GPU": 2})
    sim.submit(spec("g1", resources={"GPU": 1}), spec("g2", resources={"GPU": 2}))
    out = sim.handle(RemoveClientEvent(client="c"))
    assert not computes(out) and not sim.s.tasks


def test_rescheduled_task_keeps_its_dependency_in_memory() -> None:
    # Regression: the dependency, released as unwanted while its dependent
    # was between states, lost its data and had to run again.
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"), spec("y", ["x"]))
    sim.finish("x")
    sim.handle(ReleaseKeysEvent(client="c", keys=["x"]))
    out = sim.handle(RescheduleEvent(worker=addr("a"), key="y"))
    assert sim.state("x") == "memory" and ("tcp://a", "x") not in frees(out)
    assert computes(out) == [(addr("a"), "y")]


def test_task_with_erred_dependency_errs_without_starting_the_others() -> None:
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("bad"), keys=["bad"])
    sim.err("bad")
    out = sim.submit(spec("fine"), spec("z", ["fine", "bad"]), keys=["z"])
    assert not computes(out) and sim.state("z") == "erred"
    assert to_client(out, KeyErred)["z"].exception_text == "bad"


def test_dependency_of_a_task_on_a_lost_worker_runs_once() -> None:
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"), spec("y", ["x"]), keys=["y"])
    sim.finish("x")
    sim.worker("b", nthreads=1)
    out = sim.handle(RemoveWorkerEvent(address=addr("a"), safe=True))
    assert computes(out) == [(addr("b"), "x")]


def test_new_worker_holding_a_dependent_does_not_start_its_dependency() -> None:
    sim = Sim()
    sim.submit(spec("x"), spec("y", ["x"]), keys=["y"])
    out = sim.worker("a", nbytes={"y": 1})
    assert sim.state("y") == "memory" and sim.state("x") == "released" and not computes(out)


def test_data_for_erred_dependency_reruns_dependents_with_real_errors() -> None:
    # Regression: a dependent retried before its erred dependency was
    # re-released failed again, blaming an error that had been cleared
    # (a KeyErred with no text at all).
    sim = Sim()
    sim.worker("a")
    sim.handle(UpdateDataEvent(client="c", who_has={"s": [addr("a")]}, nbytes={"s": 1}))
    sim.submit(spec("t", ["s"]), spec("u", ["s", "t"]), keys=["t", "u"])
    sim.handle(MissingDataEvent(worker=addr("a"), key="s", errant_worker=addr("a")))
    assert sim.state("u") == "erred"
    out = sim.handle(UpdateDataEvent(client="c", who_has={"s": [addr("a")]}, nbytes={"s": 1}))
    for msg in to_client(out, KeyErred).values():
        assert msg.exception_text
    assert sim.state("t") == "processing" and sim.state("u") == "waiting"


def test_freed_resources_do_not_start_a_task_about_to_be_released() -> None:
    sim = Sim()
    sim.worker("a")
    sim.worker("g", resources={"GPU": 1})
    sim.handle(UpdateDataEvent(client="c", who_has={"s": [addr("a")]}, nbytes={"s": 1}))
    # d needs the GPU and only feeds t, which also needs s; e holds the GPU.
    sim.submit(spec("e", ["s"], resources={"GPU": 1}), spec("d", resources={"GPU": 1}), spec("t", ["s", "d"]), keys=["e", "t"])
    assert sim.state("e") == "processing" and sim.state("d") == "no-worker"
    out = sim.handle(MissingDataEvent(worker=addr("a"), key="s", errant_worker=addr("a")))
    assert sim.state("e") == sim.state("t") == "erred" and sim.state("d") == "released"
    assert not computes(out)


def test_cancelling_several_keys_starts_none_of_them() -> None:
    # Regression: keys were cancelled one after another, and the resources
    # the first one freed started the next one in between.
    sim = Sim()
    sim.worker("a", resources={"GPU": 1})
    sim.submit(spec("g1", resources={"GPU": 1}, priority=1), spec("g2", resources={"GPU": 1}))
    assert (sim.state("g1"), sim.state("g2")) == ("processing", "no-worker")
    out = sim.handle(CancelKeysEvent(client="c", keys=["g1", "g2"]))
    assert not computes(out) and not sim.s.tasks


def test_data_for_an_erred_root_reruns_the_whole_failed_chain() -> None:
    # Regression: an unwanted erred task between the root and a wanted one
    # stayed erred, so the wanted one failed again with an empty error.
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("r"), spec("mid", ["r"]), spec("top", ["mid"]), keys=["top"])
    sim.err("r")
    assert [sim.state(k) for k in ("r", "mid", "top")] == ["erred"] * 3
    out = sim.handle(UpdateDataEvent(client="c", who_has={"r": [addr("a")]}, nbytes={"r": 1}))
    assert not to_client(out, KeyErred)
    assert [sim.state(k) for k in ("r", "mid", "top")] == ["memory", "processing", "waiting"]


# ---------------------------------------------------------------- root-task queuing


def test_root_tasks_queue_at_the_scheduler_and_flow_as_slots_free() -> None:
    sim = Sim(worker_saturation=1.1)
    sim.worker("a", nthreads=2)
    specs = [spec(f"r-{i}") for i in range(100)]
    out = sim.submit(*specs)
    # ceil(2 * 1.1) = 3 tasks go to the worker; the rest wait in order.
    assert [k for _, k in computes(out)] == ["r-0", "r-1", "r-2"]
    assert sim.s.task_counts["queued"] == 97
    out = sim.finish("r-0")
    assert [k for _, k in computes(out)] == ["r-3"]
    # A second worker takes from the queue the moment it joins.
    out = sim.worker("b", nthreads=1)
    assert [k for _, k in computes(out)] == ["r-4", "r-5"]
    assert sim.s.task_counts["queued"] == 94


def test_queued_tasks_spread_to_a_worker_that_joins_later() -> None:
    sim = Sim(worker_saturation=1.1)
    sim.worker("a")
    sim.submit(*[spec(f"r-{i}") for i in range(1000)])
    sim.worker("b")
    done_on = {"a": 0, "b": 0}
    while sim.s.task_counts["queued"] or sim.s.task_counts["processing"]:
        for ts in [t for t in sim.s.tasks.values() if t.state == "processing"]:
            done_on[ts.processing_on.name] += 1
            sim.finish(ts.key)
    assert done_on["a"] + done_on["b"] == 1000
    assert done_on["b"] > 400  # load spread, not pinned to the first worker


def _finish_timed(sim: Sim, key: str, seconds: float) -> list:
    ts = sim.s.tasks[key]
    return sim.handle(TaskFinishedEvent(worker=ts.processing_on.address, key=key, nbytes=8, type_name="int", start=1.0, stop=1.0 + seconds))


def test_short_root_tasks_fill_a_deeper_worker_queue() -> None:
    # Tasks measured at microseconds would leave a thread idle for every
    # scheduler round trip if a worker held only ceil(1.1 * nthreads).
    from trioflow.scheduler.state import QUEUE_HORIZON, QUEUE_SHORT_MAX

    sim = Sim(worker_saturation=1.1)
    sim.worker("a")
    sim.submit(*[spec(f"r-{i}") for i in range(1000)])
    assert sim.s.task_counts["processing"] == 2  # nothing measured yet: ceil(1.1)
    sent: list = []
    for key in ["r-0", "r-1", "r-2"]:  # those sent before the measurement count 0.5 s each
        sent += computes(_finish_timed(sim, key, 50e-6))
    assert len(sent) > 10
    assert sim.s.task_counts["processing"] == QUEUE_SHORT_MAX  # capped, not the whole graph
    assert sim.s.task_counts["queued"] == 1000 - 3 - QUEUE_SHORT_MAX
    # Measured long again: the queue drains back to the usual few.
    for ts in [t for t in sim.s.tasks.values() if t.state == "processing"]:
        _finish_timed(sim, ts.key, 10 * QUEUE_HORIZON)
    assert sim.s.task_counts["processing"] <= 2


def test_long_root_tasks_keep_the_usual_queue() -> None:
    sim = Sim(worker_saturation=1.1)
    sim.worker("a", nthreads=2)
    sim.submit(*[spec(f"r-{i}") for i in range(100)])
    for _ in range(20):
        ts = next(t for t in sim.s.tasks.values() if t.state == "processing")
        _finish_timed(sim, ts.key, 0.1)
        assert sim.s.task_counts["processing"] == 3  # ceil(2 * 1.1)


def test_releasing_a_queued_task_forgets_it() -> None:
    sim = Sim(worker_saturation=1.1)
    sim.worker("a")
    sim.submit(*[spec(f"r-{i}") for i in range(10)])
    sim.handle(ReleaseKeysEvent(client="c", keys=["r-9"]))
    assert sim.state("r-9") == "forgotten"
    assert sim.s.task_counts["queued"] == 7


def test_idle_worker_steals_unstarted_tasks_from_a_busy_one() -> None:
    from trioflow.protocol.messages import StealRequest
    from trioflow.scheduler.state import StealResponseEvent

    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"))
    sim.finish("x")
    # Dependent tasks (not root tasks) all land on the only worker.
    sim.submit(*[spec(f"y-{i}", ["x"]) for i in range(20)])
    assert all(ts.processing_on.name == "a" for ts in sim.s.tasks.values() if ts.state == "processing")
    out = sim.worker("b")
    asks = [i.msg.key for i in out if isinstance(i, ToWorker) and isinstance(i.msg, StealRequest)]
    assert asks and all(i.address == addr("a") for i in out if isinstance(i.msg, StealRequest))
    # The victim gives back the first, had already started the second.
    out = sim.handle(StealResponseEvent(worker=addr("a"), key=asks[0], stolen=True))
    assert computes(out) == [(addr("b"), asks[0])]
    assert sim.s.tasks[asks[0]].processing_on.name == "b"
    sim.handle(StealResponseEvent(worker=addr("a"), key=asks[1], stolen=False))
    assert sim.s.tasks[asks[1]].processing_on.name == "a"
    assert not sim.s.stealing


def test_a_steal_that_frees_a_slot_takes_a_queued_root_task() -> None:
    # Regression: the victim of a steal was not refilled from the root-task
    # queue (validation: "queued tasks while a worker has room").
    from trioflow.scheduler.state import StealResponseEvent

    sim = Sim(worker_saturation=1.1)
    sim.worker("a")
    sim.submit(spec("x"))
    sim.finish("x")
    sim.submit(spec("y-0", ["x"]), spec("y-1", ["x"]))
    sim.submit(*[spec(f"r-{i}") for i in range(4)])  # a holds 2: all queued
    assert sim.s.task_counts["queued"] == 4
    sim.worker("b")  # takes two from the queue
    assert sim.s.task_counts["queued"] == 2
    b = sim.s.workers[addr("b")]
    sim.s.stealing[sim.s.tasks["y-0"]] = b  # as _steal_for_idle would have
    out = sim.handle(StealResponseEvent(worker=addr("a"), key="y-0", stolen=True))
    assert (addr("b"), "y-0") in computes(out)
    assert (addr("a"), "r-2") in computes(out)  # a's freed slot
    assert sim.s.task_counts["queued"] == 1


def test_restricted_tasks_are_not_stolen() -> None:
    from trioflow.protocol.messages import StealRequest

    sim = Sim()
    sim.worker("a")
    sim.submit(*[spec(f"y-{i}", workers=[addr("a")]) for i in range(10)])
    out = sim.worker("b")
    assert not [i for i in out if isinstance(i, ToWorker) and isinstance(i.msg, StealRequest)]


def test_asking_again_for_released_scattered_data_errs() -> None:
    # Regression: the graph asked for 'waiting' on data with no run spec,
    # and InvalidTransition escaped from handle().
    sim = Sim()
    sim.worker("a")
    sim.handle(UpdateDataEvent(client="c", who_has={"s": [addr("a")]}, nbytes={"s": 1}))
    sim.submit(spec("t", ["s"]), spec("u", ["t"]), keys=["u"])
    sim.handle(ReleaseKeysEvent(client="c", keys=["s"]))
    sim.err("t")
    assert sim.state("s") == "released"  # only lineage now
    out = sim.submit(keys=["s"])
    assert sim.state("s") == "erred"
    assert "was released and cannot be recomputed" in to_client(out, KeyErred)["s"].exception_text


def test_queued_tasks_go_to_the_worker_now_on_an_address() -> None:
    # Regression: the queue kept the WorkerState of a worker that left and
    # checked liveness by address, so when a worker came back on the same
    # address, queued tasks went to the removed object and were lost.
    sim = Sim(worker_saturation=1.1)
    sim.worker("a")
    sim.handle(RemoveWorkerEvent(address=addr("a")))
    sim.worker("a")
    out = sim.submit(*[spec(f"r-{i}") for i in range(5)])
    a = sim.s.workers[addr("a")]
    assert {k for _, k in computes(out)} == {t.key for t in a.processing} and len(a.processing) == 2
    assert sorted(t.state for t in sim.s.tasks.values()).count("queued") == 3
    out = sim.finish("r-0")
    assert computes(out) == [(addr("a"), "r-2")] and sim.s.tasks["r-2"].processing_on is a


def test_killed_worker_drops_a_pending_steal() -> None:
    # Regression: a task on a dying worker with a steal under way stayed in
    # ``stealing`` after it erred with KilledWorker.
    sim = Sim(allowed_failures=0)
    sim.worker("a")
    sim.handle(UpdateDataEvent(client="c", who_has={"d": [addr("a")]}, nbytes={"d": 1}))
    sim.submit(*[spec(f"x-{i}", ["d"]) for i in range(4)])
    out = sim.worker("b")
    [steal] = [i for i in out if isinstance(i.msg, StealRequest)]
    assert steal.address == addr("a")
    sim.handle(RemoveWorkerEvent(address=addr("a"), safe=False))
    assert not sim.s.stealing
    assert sim.state(steal.msg.key) == "erred"


# ---------------------------------------------------------------- membership decisions


def test_event_classes_all_end_in_event() -> None:
    from trioflow.scheduler.state import events

    names = [n for n, v in vars(events).items() if isinstance(v, type) and v.__module__ == events.__name__]
    instructions = {"ToWorker", "ToClient", "DropWorker", "RestartNanny", "RetirementDone", "RestartDone"}
    assert {n for n in names if not n.endswith("Event")} == instructions
    assert set(SchedulerState._handlers) == {v for n, v in vars(events).items() if n.endswith("Event") and isinstance(v, type)}


def test_registration_lists_unwanted_held_keys_in_the_welcome() -> None:
    sim = Sim()
    sim.s.scheduler_id = "sched-1"
    sim.submit(spec("x"))
    out = sim.worker("a", nbytes={"stale": 3, "x": 8})
    assert isinstance(out[0], ToWorker) and out[0].address == addr("a")
    welcome = out[0].msg
    assert isinstance(welcome, WorkerRegistered)
    assert (welcome.scheduler_id, welcome.forget) == ("sched-1", ["stale"])
    assert welcome.worker_ttl == sim.s.worker_ttl_now() and welcome.heartbeat_interval == sim.s.heartbeat_interval()
    assert not frees(out)  # folded into the welcome, not a FreeKeys after it
    assert sim.state("x") == "memory"


def test_heartbeats_are_acknowledged_with_the_pace() -> None:
    sim = Sim()
    sim.s.worker_ttl = 7.0
    sim.worker("a")
    out = sim.handle(HeartbeatEvent(worker=addr("a"), metrics={}))
    [ack] = [i.msg for i in out if isinstance(i, ToWorker) and isinstance(i.msg, HeartbeatAck)]
    assert ack.worker_ttl == 7.0 and ack.heartbeat_interval == sim.s.heartbeat_interval()


def test_tick_removes_the_workers_silent_longer_than_the_ttl() -> None:
    sim = Sim()
    sim.s.worker_ttl = 5.0
    sim.worker("a")
    sim.worker("b")
    sim.submit(spec("x", workers=[addr("a")], allow_other_workers=True))
    assert sim.s.tasks["x"].processing_on.address == addr("a")
    sim.now = 5.0
    sim.handle(HeartbeatEvent(worker=addr("b"), metrics={}))  # b seen at 6, a at 2 (its registration)
    sim.now = 6.0
    assert [i for i in sim.handle(TickEvent()) if isinstance(i, DropWorker)] == []  # at 7: a silent 5 s, not more
    sim.now = 10.0
    out = sim.handle(TickEvent())  # at 11: a silent 9 s, b 5 s
    assert [(i.address, "silent" in i.reason) for i in out if isinstance(i, DropWorker)] == [(addr("a"), True)]
    assert set(sim.s.workers) == {addr("b")}
    ts = sim.s.tasks["x"]
    assert ts.processing_on.address == addr("b") and ts.suspicious == 1  # not a clean removal
    assert computes(out) == [(addr("b"), "x")]


def test_fire_and_forget_keeps_a_key_until_it_finishes() -> None:
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"), spec("y", ["x"]))
    out = sim.handle(FireAndForgetEvent(keys=["y", "unknown"]))
    assert out == []
    sim.handle(ReleaseKeysEvent(client="c", keys=["x", "y"]))
    assert sim.state("x") == "processing"  # y still needs it: y is wanted
    sim.finish("x")
    assert sim.state("y") == "processing"
    out = sim.finish("y")
    assert [i for i in out if isinstance(i, ToClient)] == []  # nobody to tell
    assert sim.s.tasks == {} and not sim.s.fire_and_forget.wants_what
    assert "fire-and-forget" not in sim.s.clients


def test_fire_and_forget_lets_an_error_go_and_leaves_finished_keys_alone() -> None:
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"), spec("m"))
    sim.finish("m")
    sim.handle(FireAndForgetEvent(keys=["x", "m"]))
    assert sim.s.fire_and_forget.wants_what == {sim.s.tasks["x"]}
    sim.handle(ReleaseKeysEvent(client="c", keys=["x", "m"]))
    assert sim.state("m") == "forgotten" and sim.state("x") == "processing"
    sim.err("x")
    assert sim.s.tasks == {} and not sim.s.fire_and_forget.wants_what


def test_a_client_may_not_pose_as_fire_and_forget_wants() -> None:
    # The fire-and-forget wants are not a client: a client with that id is
    # an ordinary client, and dropping it keeps the fire-and-forget keys.
    sim = Sim(client="fire-and-forget")
    sim.worker("a")
    sim.submit(spec("x"))
    sim.handle(FireAndForgetEvent(keys=["x"]))
    sim.handle(RemoveClientEvent(client="fire-and-forget"))
    assert sim.state("x") == "processing"
    sim.finish("x")
    assert sim.s.tasks == {}


def test_retiring_worker_gets_no_new_tasks_and_closes_once_its_data_is_copied() -> None:
    sim = Sim(worker_saturation=1.1)
    sim.worker("a", nthreads=2)
    sim.worker("b", nthreads=1)
    sim.submit(spec("x", workers=[addr("a")]), spec("shared", workers=[addr("a")]))
    sim.finish("x", nbytes=100)
    sim.finish("shared", nbytes=5)
    sim.handle(AddKeysEvent(worker=addr("b"), nbytes={"shared": 5}))
    out = sim.handle(RetireWorkersEvent(request="r1", workers=["a"], timeout=5))  # by name
    # Only what nobody else holds is copied, to a worker that stays.
    [acq] = [i for i in out if isinstance(i, ToWorker) and isinstance(i.msg, AcquireReplicas)]
    assert acq.address == addr("b") and acq.msg.who_has == {"x": [addr("a")]} and acq.msg.nbytes == {"x": 100}
    assert sim.s.workers[addr("a")].status == "retiring"
    assert not [i for i in out if isinstance(i, (RetirementDone, ToWorker)) and not isinstance(getattr(i, "msg", None), AcquireReplicas)]
    out = sim.submit(*[spec(f"r-{i}") for i in range(3)])
    assert {w for w, _ in computes(out)} == {addr("b")}  # a has room but is leaving
    out = sim.handle(AddKeysEvent(worker=addr("b"), nbytes={"x": 100}))
    closes = [i.address for i in out if isinstance(i, ToWorker) and isinstance(i.msg, CloseWorker)]
    assert closes == [addr("a")]
    assert [i for i in out if isinstance(i, RetirementDone)] == [RetirementDone("r1", [addr("a")], {})]
    assert not sim.s.retirements and addr("a") in sim.s.told_to_close
    # Its connection then closes without a goodbye: still a clean removal.
    sim.handle(RemoveWorkerEvent(address=addr("a"), safe=False))
    assert not sim.s.told_to_close and sim.state("x") == "memory"


def test_retirement_keeps_a_worker_whose_data_was_not_copied_by_the_deadline() -> None:
    sim = Sim()
    sim.s.worker_ttl = 100.0
    sim.worker("a")
    sim.worker("b")
    sim.submit(spec("x", workers=[addr("a")]), spec("pinned", workers=[addr("a")]))
    sim.finish("x")
    assert sim.state("pinned") == "processing"
    sim.handle(RetireWorkersEvent(request="r1", workers=[addr("a"), "nobody"], timeout=5))
    out = sim.handle(TickEvent())  # before the deadline: nothing yet
    assert not [i for i in out if isinstance(i, RetirementDone)]
    sim.now += 5
    out = sim.handle(TickEvent())
    assert [i for i in out if isinstance(i, RetirementDone)] == [RetirementDone("r1", [], {addr("a"): ["x"]})]
    assert not [i for i in out if isinstance(i, ToWorker) and isinstance(i.msg, CloseWorker)]
    assert sim.s.workers[addr("a")].status == "running" and not sim.s.told_to_close


def test_retiring_every_worker_closes_them_all() -> None:
    # Nowhere to copy to: nothing is waited for (as before the machine decided).
    sim = Sim()
    sim.worker("a")
    sim.submit(spec("x"))
    sim.finish("x")
    out = sim.handle(RetireWorkersEvent(request="r1", workers=[addr("a")], timeout=5))
    assert [i for i in out if isinstance(i, RetirementDone)] == [RetirementDone("r1", [addr("a")], {})]


def test_restart_cancels_everything_and_waits_for_the_nannied_workers() -> None:
    sim = Sim()
    sim.worker("a", nanny="tcp://nanny-a")
    sim.worker("b")
    sim.submit(spec("x"), spec("y", ["x"]))
    sim.handle(FireAndForgetEvent(keys=["y"]))
    out = sim.handle(RestartEvent(request="r1", timeout=10))
    assert set(to_client(out, KeyCancelled)) == {"x", "y"}
    assert [i.address for i in out if isinstance(i, ToWorker) and isinstance(i.msg, CloseWorker)] == [addr("b")]
    assert [i for i in out if isinstance(i, RestartNanny)] == [RestartNanny("r1", "tcp://nanny-a")]
    assert sim.s.tasks == {} and not sim.s.fire_and_forget.wants_what
    sim.handle(RemoveWorkerEvent(address=addr("a")))
    sim.handle(RemoveWorkerEvent(address=addr("b")))
    out = sim.handle(NannyRestartedEvent(request="r1", nanny="tcp://nanny-a"))
    assert not [i for i in out if isinstance(i, RestartDone)]  # its worker is not back yet
    out = sim.handle(AddWorkerEvent(address=addr("a2"), name="a2", nthreads=1, memory_limit=0, nanny="tcp://nanny-a"))
    assert [i for i in out if isinstance(i, RestartDone)] == [RestartDone("r1", "")]
    assert not sim.s.restarts


def test_restart_starts_none_of_the_tasks_it_cancels() -> None:
    # Found by the stateful machine: restart cancelled one client's keys after
    # another, so the slot the first client's task freed started the second
    # client's queued task (on a worker about to close, and forgotten right
    # after in the same batch).
    sim = Sim(worker_saturation=0.5)
    sim.handle(AddClientEvent(client="c2"))
    sim.worker("a")
    sim.submit(spec("x"))
    sim.handle(UpdateGraphEvent(client="c2", tasks=[spec("y"), spec("z")], keys=["y", "z"]))
    assert (sim.state("x"), sim.state("y"), sim.state("z")) == ("processing", "queued", "queued")
    out = sim.handle(RestartEvent(request="r1", timeout=5))
    assert not computes(out)
    assert set(to_client(out, KeyCancelled)) == {"x", "y", "z"}
    assert frees(out) == [(addr("a"), "x")]
    assert [i.address for i in out if isinstance(i, ToWorker) and isinstance(i.msg, CloseWorker)] == [addr("a")]
    assert sim.s.tasks == {} and sim.s.workers[addr("a")].status == "closing"


def test_restart_reports_failed_nannies_and_workers_not_back_in_time() -> None:
    sim = Sim()
    sim.worker("a", nanny="tcp://nanny-a")
    sim.worker("b", nanny="tcp://nanny-b")
    sim.handle(RestartEvent(request="r1", timeout=10))
    sim.handle(NannyRestartedEvent(request="r1", nanny="tcp://nanny-a", error="refused"))
    out = sim.handle(NannyRestartedEvent(request="r1", nanny="tcp://nanny-b"))
    [done] = [i for i in out if isinstance(i, RestartDone)]
    assert done.error == "restart failed for tcp://nanny-a: refused"
    # A late answer to a finished restart is ignored.
    assert sim.handle(NannyRestartedEvent(request="r1", nanny="tcp://nanny-b")) == []

    sim.handle(RestartEvent(request="r2", timeout=10))
    sim.now += 10
    out = sim.handle(TickEvent())
    [done] = [i for i in out if isinstance(i, RestartDone)]
    assert done.error == "restart: workers did not come back within 10s"


def test_a_tick_removing_several_workers_sends_nothing_to_them() -> None:
    # Found by the stateful machine: removing the first silent worker sent its
    # task to the second (about to go too, and then blamed for its death), and
    # a dependent's FreeKeys to a worker gone by the end of the tick.
    sim = Sim(allowed_failures=1)
    sim.worker("a")
    sim.worker("b")
    sim.submit(spec("x", workers=[addr("a")]), spec("y", ["x"], workers=[addr("b")]), spec("z", workers=[addr("a")], allow_other_workers=True))
    sim.finish("x")
    assert sim.s.tasks["y"].processing_on.address == addr("b")
    sim.now += 20
    out = sim.handle(TickEvent())
    assert {i.address for i in out if isinstance(i, DropWorker)} == {addr("a"), addr("b")}
    assert [i for i in out if isinstance(i, ToWorker)] == []
    assert sim.state("z") == "no-worker" and sim.s.tasks["z"].suspicious == 1
