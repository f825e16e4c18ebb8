"""The primitives' sans-IO state machines (trioflow.scheduler.extensions):
hypothesis machines with every invariant checked after each step, and unit
tests on a fake clock (time is an argument: no sleeping, no Trio)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trioflow.scheduler.extensions import (
    TIMED_OUT,
    ExtensionError,
    Hold,
    Item,
    Primitives,
    Reply,
    Unhold,
)
from trioflow.scheduler.extensions import datasets as d
from trioflow.scheduler.extensions import event as e
from trioflow.scheduler.extensions import lock as lk
from trioflow.scheduler.extensions import multi_lock as ml
from trioflow.scheduler.extensions import pubsub as ps
from trioflow.scheduler.extensions import queue as q
from trioflow.scheduler.extensions import semaphore as sm
from trioflow.scheduler.extensions import variable as v

CLIENTS = st.sampled_from(["c1", "c2", "c3"])
NAMES = st.sampled_from(["a", "b"])
TIMEOUTS = st.sampled_from([None, 0.0, 0.5, 1.0, 2.5])
KEYS = st.lists(st.sampled_from(["k1", "k2", "k3"]), max_size=2).map(tuple)
MACHINE_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def replies(out: list[Any]) -> dict[int, Any]:
    return {i.request: i.value for i in out if type(i) is Reply}


# ---------------------------------------------------------------- a base machine


class PrimitivesMachine(RuleBasedStateMachine):
    """Drives one :class:`Primitives`; subclasses add the operations.

    Checks after every step: each extension's ``validate()`` (including the
    key holds agreeing with the items kept), every reply answers a request
    that is outstanding (never twice, never a withdrawn one), and nothing is
    left due after a tick."""

    def __init__(self) -> None:
        super().__init__()
        self.p = Primitives(lease_timeout=3.0)
        self.now = 0.0
        self.next = 0
        #: request -> (client, kind, info)
        self.outstanding: dict[int, tuple[str, str, Any]] = {}
        self.ticked = False

    def send(self, make: Any, client: str, kind: str, info: Any = None) -> int | None:
        self.next += 1
        r = self.next
        try:
            out = self.p.handle(make(r), self.now)
        except ExtensionError:
            return None
        self.outstanding[r] = (client, kind, info)
        self.apply(out)
        return r

    def apply(self, out: list[Any], gone: str | None = None) -> None:
        for i in out:
            if type(i) is Reply:
                assert i.request in self.outstanding, f"reply to unknown or withdrawn request {i.request}"
                client, kind, info = self.outstanding.pop(i.request)
                assert client != gone, "reply to a request of a client that left"
                self.on_reply(client, kind, info, i.value)
            else:
                assert type(i) in (Hold, Unhold), i

    def on_reply(self, client: str, kind: str, info: Any, value: Any) -> None:
        pass

    def on_leave(self, client: str) -> None:
        pass

    @rule(dt=st.sampled_from([0.25, 0.5, 1.0, 3.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.apply(self.p.tick(self.now))
        self.ticked = True

    @rule(client=CLIENTS)
    def leave(self, client: str) -> None:
        out = self.p.remove_client(client, self.now)
        for r in [r for r, (c, _, _) in self.outstanding.items() if c == client]:
            del self.outstanding[r]
        self.on_leave(client)
        self.apply(out, gone=client)

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        r = data.draw(st.sampled_from(sorted(self.outstanding)))
        client, kind, info = self.outstanding.pop(r)
        self.apply(self.p.cancel(r))
        self.on_withdraw(client, kind, info)

    def on_withdraw(self, client: str, kind: str, info: Any) -> None:
        pass

    @invariant()
    def valid(self) -> None:
        self.p.validate()
        if self.ticked:
            when = self.p.next_deadline()
            assert when is None or when > self.now, "a deadline passed without its tick"
            self.ticked = False
        waiting = {r for ext in self.p.all for r in ext.waiters.names}
        assert waiting <= set(self.outstanding), "a waiter nobody expects an answer for"


class LockMachine(PrimitivesMachine):
    def __init__(self) -> None:
        super().__init__()
        self.holder: dict[str, tuple[str, str]] = {}  # model: name -> (id, client)
        self.ids = 0

    @rule(client=CLIENTS, name=NAMES, timeout=TIMEOUTS)
    def acquire(self, client: str, name: str, timeout: float | None) -> None:
        self.ids += 1
        lid = f"{client}-{self.ids}"
        self.send(lambda r: lk.LockAcquire(request=r, client=client, name=name, id=lid, timeout=timeout), client, "acquire", (name, lid))

    @rule(name=NAMES)
    def release(self, name: str) -> None:
        if name in self.holder:
            lid, client = self.holder.pop(name)
            assert self.send(lambda r: lk.LockRelease(request=r, client=client, name=name, id=lid), client, "release") is not None
        else:
            with pytest.raises(ExtensionError):
                self.p.handle(lk.LockRelease(request=-1, client="c1", name=name, id="nobody"), self.now)

    def on_reply(self, client: str, kind: str, info: Any, value: Any) -> None:
        if kind == "acquire" and value is True:
            name, lid = info
            assert name not in self.holder, f"lock {name!r} granted twice"
            self.holder[name] = (lid, client)

    def on_leave(self, client: str) -> None:
        self.holder = {n: h for n, h in self.holder.items() if h[1] != client}

    @invariant()
    def agrees(self) -> None:
        assert self.p.locks.holders == {n: (lid, c) for n, (lid, c) in self.holder.items()}


class SemaphoreMachine(PrimitivesMachine):
    MAX = 2

    def __init__(self) -> None:
        super().__init__()
        self.leases = 0

    @rule(client=CLIENTS)
    def create(self, client: str) -> None:
        self.send(lambda r: sm.SemaphoreCreate(request=r, client=client, name="s", max_leases=self.MAX), client, "create")

    @rule(client=CLIENTS, timeout=TIMEOUTS, worker=st.sampled_from(["", "w1"]))
    def acquire(self, client: str, timeout: float | None, worker: str) -> None:
        self.next += 1
        self.send(lambda r: sm.SemaphoreAcquire(request=r, client=client, name="s", lease_id=f"l{r}", timeout=timeout, worker=worker), client, "acquire")

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        s = self.p.semaphores.sems.get("s")
        if s is None or not s.leases:
            return
        lid = data.draw(st.sampled_from(sorted(s.leases)))
        client = s.leases[lid].client
        self.send(lambda r: sm.SemaphoreRelease(request=r, client=client, name="s", lease_id=lid), client, "release")

    @rule(client=CLIENTS)
    def refresh(self, client: str) -> None:
        s = self.p.semaphores.sems.get("s")
        mine = tuple(lid for lid, lease in s.leases.items() if lease.client == client) if s else ()
        self.send(lambda r: sm.SemaphoreRefresh(request=r, client=client, name="s", lease_ids=mine), client, "refresh")

    @rule()
    def worker_dies(self) -> None:
        self.apply(self.p.remove_worker("w1", self.now))
        s = self.p.semaphores.sems.get("s")
        assert s is None or all(lease.worker != "w1" for lease in s.leases.values())

    @invariant()
    def leases_never_outlive_their_timeout(self) -> None:
        s = self.p.semaphores.sems.get("s")
        if s is not None and self.ticked:
            assert all(lease.renewed + 3.0 > self.now for lease in s.leases.values())


class QueueMachine(PrimitivesMachine):
    def __init__(self) -> None:
        super().__init__()
        self.put_id = 0
        self.last_out: dict[str, int] = {}
        self.delivered: set[int] = set()

    @rule(client=CLIENTS, name=NAMES, maxsize=st.sampled_from([0, 1, 2]))
    def create(self, client: str, name: str, maxsize: int) -> None:
        self.send(lambda r: q.QueueCreate(request=r, client=client, name=name, maxsize=maxsize), client, "create")

    @rule(client=CLIENTS, name=NAMES)
    def release(self, client: str, name: str) -> None:
        self.send(lambda r: q.QueueRelease(request=r, client=client, name=name), client, "release")

    @rule(client=CLIENTS, name=NAMES, timeout=TIMEOUTS, keys=KEYS)
    def put(self, client: str, name: str, timeout: float | None, keys: tuple[str, ...]) -> None:
        self.put_id += 1
        item = Item(data=self.put_id, keys=keys)
        self.send(lambda r: q.QueuePut(request=r, client=client, name=name, item=item, timeout=timeout), client, "put")

    @rule(client=CLIENTS, name=NAMES, timeout=TIMEOUTS, batch=st.sampled_from([0, 0, -1, 2]))
    def get(self, client: str, name: str, timeout: float | None, batch: int) -> None:
        self.send(lambda r: q.QueueGet(request=r, client=client, name=name, timeout=timeout, batch=batch), client, "get", (name, batch))

    def on_reply(self, client: str, kind: str, info: Any, value: Any) -> None:
        if kind != "get" or value is TIMED_OUT or isinstance(value, ExtensionError):
            return
        name, batch = info
        items = value if isinstance(value, list) else [value]
        if batch == 2:
            assert len(items) == 2
        for it in items:
            assert it.data not in self.delivered, "an item delivered twice"
            self.delivered.add(it.data)
            # FIFO: per queue, items come out in the order they were put.
            assert it.data > self.last_out.get(name, 0)
            self.last_out[name] = it.data


class VariableMachine(PrimitivesMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, Item] = {}
        self.n = 0

    @rule(client=CLIENTS, name=NAMES, keys=KEYS)
    def set(self, client: str, name: str, keys: tuple[str, ...]) -> None:
        self.n += 1
        item = Item(data=self.n, keys=keys)
        self.model[name] = item
        self.send(lambda r: v.VariableSet(request=r, client=client, name=name, item=item), client, "set")

    @rule(client=CLIENTS, name=NAMES, timeout=TIMEOUTS)
    def get(self, client: str, name: str, timeout: float | None) -> None:
        self.send(lambda r: v.VariableGet(request=r, client=client, name=name, timeout=timeout), client, "get", name)

    @rule(client=CLIENTS, name=NAMES)
    def delete(self, client: str, name: str) -> None:
        self.send(lambda r: v.VariableDelete(request=r, client=client, name=name), client, "delete")
        self.model.pop(name, None)

    def on_reply(self, client: str, kind: str, info: Any, value: Any) -> None:
        if kind == "get" and value is not TIMED_OUT:
            assert value == self.model[info], "get answered with a value that is not the variable's"


class EventPubSubDatasetMachine(PrimitivesMachine):
    """Events, pub/sub and datasets share a machine: each is small."""

    def __init__(self) -> None:
        super().__init__()
        self.is_set: set[str] = set()
        self.subs: dict[str, tuple[str, str]] = {}  # sub id -> (client, topic)
        self.expected: dict[str, list[int]] = {}
        self.n = 0
        self.datasets: dict[str, Item] = {}

    @rule(client=CLIENTS, name=NAMES)
    def event_set(self, client: str, name: str) -> None:
        self.is_set.add(name)
        self.send(lambda r: e.EventSet(request=r, client=client, name=name), client, "ok")

    @rule(client=CLIENTS, name=NAMES)
    def event_clear(self, client: str, name: str) -> None:
        self.send(lambda r: e.EventClear(request=r, client=client, name=name), client, "ok")
        self.is_set.discard(name)

    @rule(client=CLIENTS, name=NAMES, timeout=TIMEOUTS)
    def event_wait(self, client: str, name: str, timeout: float | None) -> None:
        self.send(lambda r: e.EventWait(request=r, client=client, name=name, timeout=timeout), client, "wait", name)

    @rule(client=CLIENTS, name=NAMES)
    def subscribe(self, client: str, name: str) -> None:
        sid = f"s{self.next + 1}"
        if self.send(lambda r: ps.SubscribeAdd(request=r, client=client, name=name, id=sid), client, "ok") is not None:
            self.subs[sid] = (client, name)
            self.expected[sid] = []

    @rule(client=CLIENTS, name=NAMES)
    def publish(self, client: str, name: str) -> None:
        self.n += 1
        for sid, (_, topic) in self.subs.items():
            if topic == name:
                self.expected[sid].append(self.n)
        self.send(lambda r: ps.Publish(request=r, client=client, name=name, data=Item(data=self.n)), client, "publish", name)

    @precondition(lambda self: self.subs)
    @rule(data=st.data(), timeout=TIMEOUTS)
    def sub_get(self, data: st.DataObject, timeout: float | None) -> None:
        sid = data.draw(st.sampled_from(sorted(self.subs)))
        client = self.subs[sid][0]
        self.send(lambda r: ps.SubscribeGet(request=r, client=client, id=sid, timeout=timeout), client, "sub-get", sid)

    @rule(client=CLIENTS, name=NAMES, keys=KEYS, override=st.booleans())
    def ds_publish(self, client: str, name: str, keys: tuple[str, ...], override: bool) -> None:
        item = Item(data=self.next, keys=keys)
        if self.send(lambda r: d.DatasetPublish(request=r, client=client, name=name, item=item, override=override), client, "ok") is not None:
            self.datasets[name] = item
        else:
            assert name in self.datasets and not override

    @rule(client=CLIENTS, name=NAMES)
    def ds_unpublish(self, client: str, name: str) -> None:
        self.send(lambda r: d.DatasetUnpublish(request=r, client=client, name=name), client, "ok")
        self.datasets.pop(name, None)

    @rule(client=CLIENTS, name=NAMES)
    def ds_get(self, client: str, name: str) -> None:
        self.send(lambda r: d.DatasetGet(request=r, client=client, name=name), client, "ds-get", name)

    def on_reply(self, client: str, kind: str, info: Any, value: Any) -> None:
        if kind == "wait" and value is True:
            assert info in self.is_set
        elif kind == "sub-get" and value is not TIMED_OUT and not isinstance(value, ExtensionError):
            assert self.expected[info] and value.data == self.expected[info].pop(0), "messages out of order or invented"
        elif kind == "ds-get":
            assert value == self.datasets.get(info)

    def on_leave(self, client: str) -> None:
        for sid in [s for s, (c, _) in self.subs.items() if c == client]:
            del self.subs[sid]
        # Datasets outlive their publisher.
        assert set(self.p.datasets.datasets) == set(self.datasets)


class MultiLockMachine(PrimitivesMachine):
    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, tuple[str, tuple[str, ...]]] = {}  # id -> (client, names held)
        self.ids = 0

    @rule(client=CLIENTS, names=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True), timeout=TIMEOUTS, partial=st.booleans())
    def acquire(self, client: str, names: list[str], timeout: float | None, partial: bool) -> None:
        self.ids += 1
        mid = f"m{self.ids}"
        n = 1 if partial else None
        self.send(lambda r: ml.MultiLockAcquire(request=r, client=client, id=mid, names=tuple(names), num_locks=n, timeout=timeout), client, "acquire", mid)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(sorted(self.held)))
        client, _ = self.held.pop(mid)
        assert self.send(lambda r: ml.MultiLockRelease(request=r, client=client, id=mid), client, "release") is not None

    def on_reply(self, client: str, kind: str, info: Any, value: Any) -> None:
        if kind == "acquire" and value is True:
            names = self.p.multi_locks.requests[info][0]
            for _, other in self.held.values():
                assert not set(other) & set(names), "a lock name held twice"
            self.held[info] = (client, names)

    def on_leave(self, client: str) -> None:
        self.held = {i: h for i, h in self.held.items() if h[0] != client}

    @invariant()
    def agrees(self) -> None:
        assert set(self.held) == self.p.multi_locks.held


for _m in (LockMachine, SemaphoreMachine, QueueMachine, VariableMachine, EventPubSubDatasetMachine, MultiLockMachine):
    _m.TestCase.settings = MACHINE_SETTINGS
TestLock = LockMachine.TestCase
TestSemaphore = SemaphoreMachine.TestCase
TestQueue = QueueMachine.TestCase
TestVariable = VariableMachine.TestCase
TestEventPubSubDatasets = EventPubSubDatasetMachine.TestCase
TestMultiLock = MultiLockMachine.TestCase


# ---------------------------------------------------------------- unit tests on a fake clock


def test_variable_get_waits_for_set_and_times_out() -> None:
    p = Primitives()
    assert p.handle(v.VariableGet(request=1, client="a", name="x", timeout=2.0), 0.0) == []
    assert p.handle(v.VariableGet(request=2, client="a", name="x", timeout=None), 0.0) == []
    assert replies(p.tick(2.0)) == {1: TIMED_OUT}
    item = Item(data=b"v", keys=("k",))
    out = p.handle(v.VariableSet(request=3, client="b", name="x", item=item), 2.5)
    assert Hold(("k",)) in out and replies(out) == {2: item, 3: None}
    # Replacing the value releases the old future's key.
    out = p.handle(v.VariableSet(request=4, client="b", name="x", item=Item(data=b"w")), 3.0)
    assert Unhold(("k",)) in out
    p.validate()


def test_variable_outlives_its_setter_and_delete_releases() -> None:
    p = Primitives()
    p.handle(v.VariableSet(request=1, client="a", name="x", item=Item(data=1, keys=("k",))), 0)
    assert p.remove_client("a", 1.0) == []
    assert p.holds.counts == {"k": 1}
    assert Unhold(("k",)) in p.handle(v.VariableDelete(request=2, client="b", name="x"), 2)
    assert p.holds.counts == {}


def test_queue_maxsize_blocks_putters_fifo_and_get_batches() -> None:
    p = Primitives()
    p.handle(q.QueueCreate(request=0, client="a", name="q", maxsize=2), 0)
    for i in (1, 2):
        assert replies(p.handle(q.QueuePut(request=i, client="a", name="q", item=Item(data=i)), 0)) == {i: True}
    assert p.handle(q.QueuePut(request=3, client="a", name="q", item=Item(data=3), timeout=5), 0) == []
    assert replies(p.handle(q.QueuePut(request=4, client="a", name="q", item=Item(data=4), timeout=0), 0)) == {4: TIMED_OUT}
    out = replies(p.handle(q.QueueGet(request=5, client="b", name="q"), 1))
    assert out == {5: Item(data=1), 3: True}  # the waiting putter got in
    assert replies(p.handle(q.QueueSize(request=6, client="b", name="q"), 1)) == {6: 2}
    assert replies(p.handle(q.QueueGet(request=7, client="b", name="q", batch=-1), 1)) == {7: [Item(data=2), Item(data=3)]}
    # A batch of two waits for both items and takes them together.
    assert p.handle(q.QueueGet(request=8, client="b", name="q", batch=2, timeout=3), 1) == []
    p.handle(q.QueuePut(request=9, client="a", name="q", item=Item(data=9)), 2)
    out = replies(p.handle(q.QueuePut(request=10, client="a", name="q", item=Item(data=10)), 2))
    assert out == {10: True, 8: [Item(data=9), Item(data=10)]}
    with pytest.raises(ExtensionError):
        p.handle(q.QueueGet(request=11, client="b", name="q", batch=3), 2)  # more than maxsize: never
    p.validate()


def test_queue_goes_with_its_last_user_and_releases_its_futures() -> None:
    p = Primitives()
    p.handle(q.QueueCreate(request=0, client="a", name="q"), 0)
    p.handle(q.QueueCreate(request=1, client="b", name="q"), 0)
    p.handle(q.QueuePut(request=2, client="a", name="q", item=Item(data=1, keys=("k",))), 0)
    assert p.remove_client("a", 1) == []
    out = p.remove_client("b", 2)
    assert Unhold(("k",)) in out and "q" not in p.queues.queues


def test_lock_fifo_timeout_and_release_on_client_departure() -> None:
    p = Primitives()
    assert replies(p.handle(lk.LockAcquire(request=1, client="a", name="L", id="i1"), 0)) == {1: True}
    assert p.handle(lk.LockAcquire(request=2, client="b", name="L", id="i2", timeout=1.0), 0) == []
    assert p.handle(lk.LockAcquire(request=3, client="c", name="L", id="i3"), 0) == []
    assert replies(p.handle(lk.LockAcquire(request=4, client="c", name="L", id="i4", timeout=0), 0)) == {4: TIMED_OUT}
    assert p.next_deadline() == 1.0
    assert replies(p.tick(1.0)) == {2: TIMED_OUT}
    with pytest.raises(ExtensionError):
        p.handle(lk.LockRelease(request=5, client="c", name="L", id="nobody"), 1.0)
    # The holder's client dies: the next waiter gets the lock.
    assert replies(p.remove_client("a", 2.0)) == {3: True}
    assert p.locks.holders == {"L": ("i3", "c")}
    p.validate()


def test_withdrawn_lock_request_is_never_granted() -> None:
    p = Primitives()
    p.handle(lk.LockAcquire(request=1, client="a", name="L", id="i1"), 0)
    p.handle(lk.LockAcquire(request=2, client="b", name="L", id="i2"), 0)
    p.cancel(2)
    assert replies(p.handle(lk.LockRelease(request=3, client="a", name="L", id="i1"), 1)) == {3: None}
    assert p.locks.holders == {}
    # An acquirer that gave up releases to withdraw: its wait goes.
    p.handle(lk.LockAcquire(request=4, client="a", name="L", id="i1"), 2)
    p.handle(lk.LockAcquire(request=5, client="b", name="L", id="i2"), 2)
    assert replies(p.handle(lk.LockRelease(request=6, client="b", name="L", id="i2"), 2)) == {5: TIMED_OUT, 6: None}
    assert replies(p.handle(lk.LockRelease(request=7, client="a", name="L", id="i1"), 3)) == {7: None}
    assert p.locks.holders == {}


def test_multilock_partial_and_full() -> None:
    p = Primitives()
    assert replies(p.handle(ml.MultiLockAcquire(request=1, client="a", id="m1", names=("x", "y")), 0)) == {1: True}
    assert p.handle(ml.MultiLockAcquire(request=2, client="b", id="m2", names=("y", "z"), num_locks=2), 0) == []
    # Needs one of x/w: w is free (it keeps only w).
    assert replies(p.handle(ml.MultiLockAcquire(request=3, client="c", id="m3", names=("x", "w"), num_locks=1), 0)) == {3: True}
    assert p.multi_locks.requests["m3"][0] == ("w",)
    # m2 is first in z's queue already; when m1 lets y go, it has both.
    assert p.handle(ml.MultiLockRelease(request=4, client="a", id="m1"), 1) == [Reply(2, True), Reply(4, None)]
    p.validate()


def test_event_wait_set_clear() -> None:
    p = Primitives()
    assert replies(p.handle(e.EventWait(request=1, client="a", name="E", timeout=0), 0)) == {1: False}
    assert p.handle(e.EventWait(request=2, client="a", name="E", timeout=5), 0) == []
    assert replies(p.handle(e.EventSet(request=3, client="b", name="E"), 1)) == {2: True, 3: None}
    assert replies(p.handle(e.EventIsSet(request=4, client="b", name="E"), 1)) == {4: True}
    p.handle(e.EventClear(request=5, client="b", name="E"), 1)
    assert p.events.set_names == set()


def test_semaphore_leases_expire_without_renewal_and_with_their_worker() -> None:
    p = Primitives(lease_timeout=10.0)
    assert replies(p.handle(sm.SemaphoreCreate(request=1, client="a", name="S", max_leases=2), 0)) == {1: 2}
    assert replies(p.handle(sm.SemaphoreCreate(request=2, client="b", name="S", max_leases=5), 0)) == {2: 2}
    p.handle(sm.SemaphoreAcquire(request=3, client="a", name="S", lease_id="l1"), 0)
    p.handle(sm.SemaphoreAcquire(request=4, client="b", name="S", lease_id="l2", worker="w1"), 0)
    assert p.handle(sm.SemaphoreAcquire(request=5, client="b", name="S", lease_id="l3"), 0) == []
    # The worker holding l2 dies: l3 gets its place.
    assert replies(p.remove_worker("w1", 1.0)) == {5: True}
    p.handle(sm.SemaphoreRefresh(request=6, client="b", name="S", lease_ids=("l3",)), 8.0)
    assert p.next_deadline() == 10.0
    p.tick(10.0)  # l1 was never renewed
    assert set(p.semaphores.sems["S"].leases) == {"l3"}
    assert replies(p.handle(sm.SemaphoreRelease(request=7, client="a", name="S", lease_id="l1"), 11)) == {7: False}
    assert replies(p.handle(sm.SemaphoreValue(request=8, client="a", name="S"), 11)) == {8: 1}
    p.remove_client("a", 12)
    assert "S" in p.semaphores.sems  # b still uses it
    p.remove_client("b", 12)
    assert p.semaphores.sems == {}
    p.validate()


def test_pubsub_reaches_subscribers_of_the_moment() -> None:
    p = Primitives()
    assert replies(p.handle(ps.Publish(request=1, client="a", name="T", data=Item(data=0)), 0)) == {1: 0}
    p.handle(ps.SubscribeAdd(request=2, client="b", name="T", id="s1"), 0)
    assert p.handle(ps.SubscribeGet(request=3, client="b", id="s1", timeout=1), 0) == []
    assert replies(p.handle(ps.Publish(request=4, client="a", name="T", data=Item(data=1)), 0.5)) == {3: Item(data=1), 4: 1}
    p.handle(ps.Publish(request=5, client="a", name="T", data=Item(data=2)), 0.5)
    assert replies(p.handle(ps.SubscribeGet(request=6, client="b", id="s1"), 0.5)) == {6: Item(data=2)}
    p.remove_client("b", 1)
    assert p.pubsub.topics == {} and p.pubsub.subscribers == {}


def test_datasets_outlive_the_publisher() -> None:
    p = Primitives()
    item = Item(data=b"x", keys=("k1", "k2"))
    assert Hold(("k1", "k2")) in p.handle(d.DatasetPublish(request=1, client="a", name="ds", item=item), 0)
    with pytest.raises(ExtensionError):
        p.handle(d.DatasetPublish(request=2, client="a", name="ds", item=item), 0)
    p.remove_client("a", 1)
    assert replies(p.handle(d.DatasetGet(request=3, client="b", name="ds"), 1)) == {3: item}
    assert replies(p.handle(d.DatasetList(request=4, client="b"), 1)) == {4: ["ds"]}
    assert Unhold(("k1", "k2")) in p.handle(d.DatasetUnpublish(request=5, client="b", name="ds"), 1)
    assert replies(p.handle(d.DatasetGet(request=6, client="b", name="ds"), 1)) == {6: None}


def test_bad_requests_change_nothing() -> None:
    p = Primitives()
    with pytest.raises(ExtensionError):
        p.handle(q.QueuePut(request=1, client="a", name="nope", item=Item(data=1, keys=("k",))), 0)
    with pytest.raises(ExtensionError):
        p.handle(lk.LockAcquire(request=2, client="a", name="L", id="i", timeout=-1), 0)
    with pytest.raises(ExtensionError):
        p.handle(sm.SemaphoreCreate(request=3, client="a", name="S", max_leases=0), 0)
    assert p.holds.counts == {} and p.locks.holders == {} and p.semaphores.sems == {}
    p.validate()


@pytest.mark.slow  # a fresh interpreter
def test_extensions_import_no_trio() -> None:
    root = Path(__file__).resolve().parents[2]  # the checkout (tests/unit/ is two below)
    code = textwrap.dedent(
        f"""
        import sys, types
        for name in ("trioflow", "trioflow.scheduler"):
            pkg = types.ModuleType(name)
            pkg.__path__ = [{str(root / "trioflow")!r} + name[len("trioflow"):].replace(".", "/")]
            sys.modules[name] = pkg
        import trioflow.scheduler.extensions
        for mod in ("variable", "queue", "lock", "multi_lock", "event", "semaphore", "pubsub", "datasets"):
            __import__("trioflow.scheduler.extensions." + mod)
        bad = sorted(m for m in sys.modules if m == "trio" or m.startswith(("trio.", "anyio", "sniffio")))
        assert not bad, bad
        assert "trioflow.scheduler.extensions.serve" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
