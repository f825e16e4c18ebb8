"""The Trio side of the primitives: requests in, replies out.

Theory of operation
-------------------
The scheduler server hands every primitive request (a message class in
:data:`HANDLED`) to :meth:`PrimitivesServer.handle` together with the
connection it came on.  The request becomes an extension event with a fresh
request number; the instructions the extensions return are carried out in
three passes: :class:`Hold` first (pseudo-client ``PRIMITIVES`` wants the
keys), then replies, then :class:`Unhold`.  Keys handed to a client in a
reply stay held *in transit* until the client's ``KeysReceived`` shows its
stream wants them (the stream may still carry a release of an older future
of the same key, which would undo a want the scheduler set on its behalf),
or until the client leaves.

Requests naming futures wait (briefly) until the scheduler knows them: the
client's graph travels on its stream and can be overtaken by the request.

A request that has to wait parks a slot; a deadline loop (:meth:`run`)
calls ``tick`` when the earliest deadline comes.  While a request waits,
the connection is watched: a client that hangs up (gave up, was cancelled)
withdraws its request, so a lock is never granted to nobody.  Client and
worker departures reach the extensions through :meth:`remove_client` and
:meth:`remove_worker`, which the server calls.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ...comm import CommClosedError
from ...protocol import messages as m
from ...protocol.codec import ProtocolError
from .. import state as ss
from . import Primitives
from . import datasets as d
from . import event as e
from . import lock as lk
from . import multi_lock as ml
from . import pubsub as ps
from . import queue as q
from . import semaphore as sm
from . import variable as v
from ._base import TIMED_OUT, ExtensionError, Hold, Item, Reply, Unhold

if TYPE_CHECKING:
    from ...comm import Comm
    from ..server import Scheduler

logger = logging.getLogger("trioflow.scheduler.extensions")

__all__ = ["HANDLED", "PRIMITIVES", "PrimitivesServer"]

#: Pseudo-client that wants the keys primitives keep.
PRIMITIVES = "primitives"
#: How long a request naming futures the scheduler does not know yet waits
#: for their graph (sent on the client's stream) to arrive.
KNOWN_KEYS_WAIT = 2.0


def _item(msg: Any) -> Item:
    return Item(data=msg.data, keys=tuple(msg.keys))


# message class -> (event factory(request, msg), reply kind)
_TABLE: dict[type, tuple[Callable[[int, Any], Any], str]] = {
    m.VariableSet: (lambda r, x: v.VariableSet(request=r, client=x.client, name=x.name, item=_item(x)), "ok"),
    m.VariableGet: (lambda r, x: v.VariableGet(request=r, client=x.client, name=x.name, timeout=x.timeout), "item"),
    m.VariableDelete: (lambda r, x: v.VariableDelete(request=r, client=x.client, name=x.name), "ok"),
    m.QueueCreate: (lambda r, x: q.QueueCreate(request=r, client=x.client, name=x.name, maxsize=x.maxsize), "int"),
    m.QueueRelease: (lambda r, x: q.QueueRelease(request=r, client=x.client, name=x.name), "ok"),
    m.QueuePut: (lambda r, x: q.QueuePut(request=r, client=x.client, name=x.name, item=_item(x), timeout=x.timeout), "ok"),
    m.QueueGet: (lambda r, x: q.QueueGet(request=r, client=x.client, name=x.name, timeout=x.timeout, batch=x.batch), "item"),
    m.QueueSize: (lambda r, x: q.QueueSize(request=r, client=x.client, name=x.name), "int"),
    m.LockAcquire: (lambda r, x: lk.LockAcquire(request=r, client=x.client, name=x.name, id=x.id, timeout=x.timeout), "ok"),
    m.LockRelease: (lambda r, x: lk.LockRelease(request=r, client=x.client, name=x.name, id=x.id), "ok"),
    m.LockLocked: (lambda r, x: lk.LockLocked(request=r, client=x.client, name=x.name), "bool"),
    m.MultiLockAcquire: (
        lambda r, x: ml.MultiLockAcquire(request=r, client=x.client, id=x.id, names=tuple(x.names), num_locks=x.num_locks, timeout=x.timeout),
        "ok",
    ),
    m.MultiLockRelease: (lambda r, x: ml.MultiLockRelease(request=r, client=x.client, id=x.id), "ok"),
    m.EventSet: (lambda r, x: e.EventSet(request=r, client=x.client, name=x.name), "ok"),
    m.EventClear: (lambda r, x: e.EventClear(request=r, client=x.client, name=x.name), "ok"),
    m.EventIsSet: (lambda r, x: e.EventIsSet(request=r, client=x.client, name=x.name), "bool"),
    m.EventWait: (lambda r, x: e.EventWait(request=r, client=x.client, name=x.name, timeout=x.timeout), "bool"),
    m.SemaphoreCreate: (lambda r, x: sm.SemaphoreCreate(request=r, client=x.client, name=x.name, max_leases=x.max_leases), "int"),
    m.SemaphoreAcquire: (
        lambda r, x: sm.SemaphoreAcquire(request=r, client=x.client, name=x.name, lease_id=x.lease_id, timeout=x.timeout, worker=x.worker),
        "ok",
    ),
    m.SemaphoreRelease: (lambda r, x: sm.SemaphoreRelease(request=r, client=x.client, name=x.name, lease_id=x.lease_id), "bool"),
    m.SemaphoreRefresh: (lambda r, x: sm.SemaphoreRefresh(request=r, client=x.client, name=x.name, lease_ids=tuple(x.lease_ids)), "ok"),
    m.SemaphoreValue: (lambda r, x: sm.SemaphoreValue(request=r, client=x.client, name=x.name), "int"),
    m.SemaphoreClose: (lambda r, x: sm.SemaphoreClose(request=r, client=x.client, name=x.name), "ok"),
    m.Publish: (lambda r, x: ps.Publish(request=r, client=x.client, name=x.name, data=Item(data=x.data)), "int"),
    m.SubscribeAdd: (lambda r, x: ps.SubscribeAdd(request=r, client=x.client, name=x.name, id=x.id), "ok"),
    m.SubscribeRemove: (lambda r, x: ps.SubscribeRemove(request=r, client=x.client, id=x.id), "ok"),
    m.SubscribeGet: (lambda r, x: ps.SubscribeGet(request=r, client=x.client, id=x.id, timeout=x.timeout), "item"),
    m.DatasetPublish: (
        lambda r, x: d.DatasetPublish(request=r, client=x.client, name=x.name, item=_item(x), override=x.override),
        "ok",
    ),
    m.DatasetGet: (lambda r, x: d.DatasetGet(request=r, client=x.client, name=x.name), "item"),
    m.DatasetUnpublish: (lambda r, x: d.DatasetUnpublish(request=r, client=x.client, name=x.name), "ok"),
    m.DatasetList: (lambda r, x: d.DatasetList(request=r, client=x.client), "names"),
}

#: The request classes :class:`PrimitivesServer` answers.
HANDLED: frozenset[type] = frozenset(_TABLE) | {m.KeysReceived}
#: How long the hold on keys handed to a client lasts at most without its
#: KeysReceived being borne out by its stream.
TRANSIT_WAIT = 10.0


def _reply(value: Any, kind: str) -> m.Message:
    if value is TIMED_OUT:
        return m.PrimitiveTimedOut()
    if isinstance(value, ExtensionError):
        return m.ErrorReply(message=str(value))
    if kind == "bool":
        return m.BoolReply(value=bool(value))
    if kind == "int":
        return m.IntReply(value=int(value))
    if kind == "names":
        return m.NamesReply(names=list(value))
    if kind == "item":
        if isinstance(value, list):
            return m.ItemsReply(items=[m.PrimitiveItem(data=i.data, keys=list(i.keys)) for i in value])
        if value is None:
            return m.ItemReply(data=None)
        return m.ItemReply(data=value.data, keys=list(value.keys))
    return m.Ok()


class _Slot:
    __slots__ = ("client", "done", "kind", "reply")

    def __init__(self, client: str, kind: str) -> None:
        self.client = client
        self.kind = kind
        self.reply: m.Message | None = None
        self.done = trio.Event()


class PrimitivesServer:
    """The primitives of one :class:`~trioflow.scheduler.server.Scheduler`."""

    def __init__(self, scheduler: Scheduler, *, lease_timeout: float = 30.0) -> None:
        self.scheduler = scheduler
        self.prims = Primitives(lease_timeout=lease_timeout)
        self._slots: dict[int, _Slot] = {}
        #: Keys handed to a client and still held for it until its stream
        #: says it wants them: client -> key -> count.
        self._transit: dict[str, dict[str, int]] = {}
        self._next = 0
        self._wakeup = trio.Event()

    # ------------------------------------------------------------ server hooks

    async def serve_request(self, comm: Comm, msg: m.Message) -> None:
        """Answer one primitive request on ``comm`` (waiting if it has to).

        If the answer cannot be delivered (the asker hung up), what it
        granted (a lock, a lease) is given back.

        Raises:
            CommClosedError: the connection is closed.
        """
        if type(msg) is m.KeysReceived:
            await self._keys_received(msg)
            await comm.send(m.Ok())
            return
        factory, kind = _TABLE[type(msg)]
        keys = getattr(msg, "keys", None)
        if keys:
            await self._until_known(keys)
        self._next += 1
        request = self._next
        event = factory(request, msg)
        slot = self._slots[request] = _Slot(msg.client, kind)  # type: ignore[attr-defined]
        try:
            try:
                self._apply(self.prims.handle(event, trio.current_time()))
            except ExtensionError as exc:
                slot.reply = m.ErrorReply(message=str(exc))
            # A new deadline maybe (a wait, or a lease granted at once).
            self._wakeup.set()
            if slot.reply is None:
                await self._wait(comm, request, slot)
        finally:
            del self._slots[request]
        assert slot.reply is not None
        try:
            await comm.send(slot.reply)
        except CommClosedError:
            self._apply(self.prims.abandon(event, trio.current_time()))
            raise

    def remove_client(self, client: str) -> None:
        self._apply(self.prims.remove_client(client, trio.current_time()))
        gone = self._transit.pop(client, None)
        if gone:
            self._release(list(gone))

    def remove_worker(self, worker: str) -> None:
        self._apply(self.prims.remove_worker(worker, trio.current_time()))

    async def run(self) -> None:
        """Answer timed-out waits and expire leases, at their deadlines."""
        while True:
            self._wakeup = trio.Event()
            when = self.prims.next_deadline()
            with trio.move_on_at(when if when is not None else math.inf):
                await self._wakeup.wait()
            now = trio.current_time()
            if when is not None and now >= when:
                self._apply(self.prims.tick(now))

    # ------------------------------------------------------------ internals

    async def _until_known(self, keys: list[str]) -> None:
        """Wait (briefly) until the scheduler knows ``keys``.

        The client sends a future's graph on its stream and the request
        naming it on another connection: the request can overtake the
        graph.  Holding an unknown key would silently hold nothing, and the
        key would be forgotten when the client drops its future.
        """
        tasks = self.scheduler.state.tasks
        with trio.move_on_after(KNOWN_KEYS_WAIT):
            while not all(k in tasks for k in keys):
                await trio.sleep(0.002)

    async def _wait(self, comm: Comm, request: int, slot: _Slot) -> None:
        async def watch(cancel_scope: trio.CancelScope) -> None:
            try:
                msg = await comm.recv()
                logger.warning("request %s sent while a primitive request waits; dropping the wait", msg.op)
            except (CommClosedError, ProtocolError):
                pass
            cancel_scope.cancel()

        try:
            async with trio.open_nursery() as n:
                n.start_soon(watch, n.cancel_scope)
                await slot.done.wait()
                n.cancel_scope.cancel()
        finally:
            if slot.reply is None:
                # Nobody will read the answer: withdraw the request.
                self._apply(self.prims.cancel(request))
                slot.reply = m.ErrorReply(message="request withdrawn")

    def _apply(self, instructions: list[Any]) -> None:
        holds = [i for i in instructions if type(i) is Hold]
        replies = [i for i in instructions if type(i) is Reply]
        unholds = [i for i in instructions if type(i) is Unhold]
        if holds:
            self._want(PRIMITIVES, [k for h in holds for k in h.keys])
        for r in replies:
            slot = self._slots.get(r.request)
            if slot is None:
                logger.warning("reply to request %d nobody waits for", r.request)
                continue
            value = r.value
            keys = [k for it in (value if isinstance(value, list) else [value]) if isinstance(it, Item) for k in it.keys]
            if keys and slot.client in self.scheduler.state.clients:
                # Held for the receiver until it says it wants them (see
                # KeysReceived): wanting them on its behalf now could be
                # undone by a release of an older future of the same key
                # still in flight on its stream.
                t = self._transit.setdefault(slot.client, {})
                for k in keys:
                    t[k] = t.get(k, 0) + 1
            slot.reply = _reply(value, slot.kind)
            slot.done.set()
        if unholds:
            self._release([k for u in unholds for k in u.keys])

    def _release(self, keys: list[str]) -> None:
        """Drop the PRIMITIVES want of ``keys`` no extension nor transit holds."""
        in_transit = {k for t in self._transit.values() for k in t}
        state = self.scheduler.state
        keys = [k for k in keys if k in state.tasks and k not in self.prims.holds.counts and k not in in_transit]
        if keys and PRIMITIVES in state.clients:
            self.scheduler._handle(ss.ReleaseKeysEvent(client=PRIMITIVES, keys=keys))

    def _end_transit(self, client: str, keys: list[str]) -> None:
        t = self._transit.get(client)
        if t is None:
            return
        done = []
        for k in keys:
            n = t.get(k, 0) - 1
            if n > 0:
                t[k] = n
            elif k in t:
                del t[k]
                done.append(k)
        if not t:
            del self._transit[client]
        self._release(done)

    async def _keys_received(self, msg: m.KeysReceived) -> None:
        """Wait until the client's stream has told the scheduler it wants
        ``msg.keys`` (or they are gone), then drop the transit hold."""
        state = self.scheduler.state

        def settled() -> bool:
            cs = state.clients.get(msg.client)
            if cs is None:
                return True
            return all(k not in state.tasks or state.tasks[k] in cs.wants_what for k in msg.keys)

        try:
            with trio.move_on_after(TRANSIT_WAIT):
                while not settled():
                    await trio.sleep(0.002)
        finally:
            self._end_transit(msg.client, msg.keys)

    def _want(self, client: str, keys: list[str]) -> None:
        state = self.scheduler.state
        if client not in state.clients:
            if client != PRIMITIVES:
                return  # not a registered client (a bare rpc peer): nothing to keep for it
            self.scheduler._handle(ss.AddClientEvent(client=PRIMITIVES))
        known = [k for k in dict.fromkeys(keys) if k in state.tasks]
        if known:
            self.scheduler._handle(ss.UpdateGraphEvent(client=client, tasks=[], keys=known))
