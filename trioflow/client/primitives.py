"""Coordination primitives, client side: ``Variable``, ``Queue``, ``Lock``,
``MultiLock``, ``Event``, ``Semaphore``, ``Pub`` and ``Sub``.

Theory of operation
-------------------
Each object is a name plus a way to reach the scheduler; its state lives in
the scheduler's extensions (:mod:`trioflow.scheduler.extensions`).  Every
operation is one request on a pooled connection; a wait (``get``,
``acquire``, ``wait``) is a request the scheduler answers later, with the
timeout enforced there, so an abandoned wait is withdrawn (the scheduler
watches the connection) and never grants a lock to nobody.

The API is dask's: from a blocking ``Client`` (or a thread), methods block;
in Trio code, with an ``AsyncClient``, they return awaitables.  Values are
pickled here with futures replaced by references; the scheduler keeps those
futures' keys alive while it keeps the value, and a client receiving the
value gets live futures.  Objects pickle by name, so they can be passed to
tasks.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import trio

from ..errors import RemoteError
from ..protocol import messages as m
from ..protocol.serialize import Serialized, dumps, dumps_with_deps, loads, loads_with_deps
from ._current import _current_client
from .futures import Future, _in_trio

__all__ = ["Event", "Lock", "MultiLock", "Pub", "Queue", "Semaphore", "Sub", "Variable"]

#: Seconds between renewals of a semaphore's leases; the scheduler expires a
#: lease not renewed for its lease timeout (30 s by default).
LEASE_REFRESH_INTERVAL = 5.0


def _encode(value: Any) -> tuple[Serialized, list[str]]:
    return dumps_with_deps(value, Future)


async def _decode(core: Any, data: Serialized, keys: list[str]) -> Any:
    """A received value, with live futures for the keys it references.

    The scheduler holds those keys for us until we want them on our stream
    (ordered after any release of older futures of the same keys), which
    ``KeysReceived`` lets it wait for.
    """
    if not keys:
        return loads_with_deps(data, {})
    futures = {k: Future(k, core) for k in keys}
    core._send(m.UpdateGraph(tasks=[], keys=list(futures)))
    await core._rpc(m.KeysReceived(client=core.id, keys=list(futures)), m.Ok)
    return loads_with_deps(data, futures)


def _rpc_timeout(core: Any, timeout: float | None) -> float:
    return math.inf if timeout is None else max(timeout, 0) + max(core.timeout, 10)


async def _acquire_or_withdraw(core: Any, acquire: m.Message, withdraw: m.Message, timeout: float | None) -> m.Message:
    """Send an acquire request; if this wait ends any other way than by
    its answer (cancelled, connection lost), send ``withdraw``: it releases
    what a grant in flight gave us, or takes our wait out of the queue."""
    try:
        return await core._rpc(acquire, m.Message, timeout=_rpc_timeout(core, timeout))  # type: ignore[no-any-return]
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(max(core.timeout, 5)):
            try:
                await core._rpc(withdraw, m.Message, timeout=core.timeout)
            except Exception:  # noqa: BLE001 - not held and not waiting, or no scheduler left
                pass
        raise


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, str):
        raise TypeError("timeout must be a number of seconds or None")
    return float(timeout)


class _Primitive:
    """Shared plumbing: the client, blocking-or-awaitable calls, rpc."""

    _prefix = "primitive"

    def __init__(self, name: str | None, client: Any) -> None:
        self.name = name or f"{self._prefix}-{uuid.uuid4().hex}"
        self._client_arg = client

    @property
    def client(self) -> Any:
        return self._client_arg if self._client_arg is not None else _current_client()

    def _core(self) -> Any:
        return _current_client(self._client_arg)

    def _call(self, afn: Callable[..., Any], *args: Any) -> Any:
        """Block (blocking client, outside the loop) or return the awaitable."""
        core = self._core()
        if core._portal is not None and not _in_trio():
            return core._portal.call(functools.partial(afn, core, *args))
        return afn(core, *args)

    @staticmethod
    async def _request(core: Any, msg: m.Message, timeout: float | None = 0.0) -> m.Message:
        return await core._rpc(msg, m.Message, timeout=_rpc_timeout(core, timeout))  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"

    def __reduce__(self) -> Any:
        return (type(self), (self.name,))


class Variable(_Primitive):
    """A named value shared by all clients (dask's ``Variable``).

    Holding a future keeps its key alive, also after the setting client leaves.
    """

    _prefix = "variable"

    def __init__(self, name: str | None = None, client: Any = None) -> None:
        super().__init__(name, client)

    def set(self, value: Any, timeout: Any = None) -> Any:
        """Set the value (a future, or any picklable value)."""
        return self._call(self._set, value)

    async def _set(self, core: Any, value: Any) -> None:
        data, keys = _encode(value)
        await self._request(core, m.VariableSet(client=core.id, name=self.name, data=data, keys=keys))

    def get(self, timeout: Any = None) -> Any:
        """The value; waits until one is set (``TimeoutError`` after ``timeout``)."""
        return self._call(self._get, _check_timeout(timeout))

    async def _get(self, core: Any, timeout: float | None) -> Any:
        reply = await self._request(core, m.VariableGet(client=core.id, name=self.name, timeout=timeout), timeout)
        if isinstance(reply, m.PrimitiveTimedOut):
            raise TimeoutError(f"variable {self.name!r} not set within {timeout}s")
        assert isinstance(reply, m.ItemReply) and reply.data is not None
        return await _decode(core, reply.data, reply.keys)

    def delete(self) -> Any:
        """Delete the variable (releasing the future it held)."""
        return self._call(self._delete)

    async def _delete(self, core: Any) -> None:
        await self._request(core, m.VariableDelete(client=core.id, name=self.name))


class Queue(_Primitive):
    """A distributed FIFO queue (dask's ``Queue``); items may be futures.

    The queue lives while a client using it is connected (or until
    :meth:`close`).
    """

    _prefix = "queue"

    def __init__(self, name: str | None = None, client: Any = None, maxsize: int = 0) -> None:
        super().__init__(name, client)
        self.maxsize = maxsize
        self._registered: Any = None

    def __reduce__(self) -> Any:
        return (type(self), (self.name, None, self.maxsize))

    async def _register(self, core: Any) -> None:
        if self._registered is not core:
            reply = await self._request(core, m.QueueCreate(client=core.id, name=self.name, maxsize=self.maxsize))
            assert isinstance(reply, m.IntReply)
            self.maxsize = reply.value
            self._registered = core

    def put(self, value: Any, timeout: Any = None) -> Any:
        """Put ``value`` in the queue, waiting for room if it has a maxsize."""
        return self._call(self._put, value, _check_timeout(timeout))

    async def _put(self, core: Any, value: Any, timeout: float | None) -> None:
        await self._register(core)
        data, keys = _encode(value)
        reply = await self._request(core, m.QueuePut(client=core.id, name=self.name, data=data, keys=keys, timeout=timeout), timeout)
        if isinstance(reply, m.PrimitiveTimedOut):
            raise TimeoutError(f"queue {self.name!r} still full after {timeout}s")

    def get(self, timeout: Any = None, batch: bool | int = False) -> Any:
        """One item; ``batch=True``: all items there are now (a list, maybe
        empty, without waiting); ``batch=n``: a list of ``n`` items, taken
        together once there are ``n``."""
        if batch is True:
            n = -1
        elif batch is False:
            n = 0
        else:
            n = int(batch)
            if n < 1:
                raise ValueError(f"batch must be True, False or a positive number, not {batch!r}")
        return self._call(self._get, _check_timeout(timeout), n)

    async def _get(self, core: Any, timeout: float | None, batch: int) -> Any:
        await self._register(core)
        reply = await self._request(core, m.QueueGet(client=core.id, name=self.name, timeout=timeout, batch=batch), timeout)
        if isinstance(reply, m.PrimitiveTimedOut):
            raise TimeoutError(f"nothing to get from queue {self.name!r} within {timeout}s")
        if isinstance(reply, m.ItemsReply):
            return [await _decode(core, it.data, it.keys) for it in reply.items]
        assert isinstance(reply, m.ItemReply) and reply.data is not None
        return await _decode(core, reply.data, reply.keys)

    def qsize(self) -> Any:
        """The number of items in the queue."""
        return self._call(self._qsize)

    async def _qsize(self, core: Any) -> int:
        await self._register(core)
        reply = await self._request(core, m.QueueSize(client=core.id, name=self.name))
        assert isinstance(reply, m.IntReply)
        return reply.value

    def close(self) -> Any:
        """Stop using the queue (it goes when its last user does)."""
        return self._call(self._close)

    async def _close(self, core: Any) -> None:
        if self._registered is core:
            self._registered = None
            await self._request(core, m.QueueRelease(client=core.id, name=self.name))


class Lock(_Primitive):
    """A distributed lock (dask's ``Lock``): one holder at a time, waiting
    acquirers served in order.  A lock whose holding client leaves is
    released."""

    _prefix = "lock"

    def __init__(self, name: str | None = None, client: Any = None) -> None:
        super().__init__(name, client)
        self.id = uuid.uuid4().hex

    def acquire(self, blocking: bool = True, timeout: Any = None) -> Any:
        """Acquire the lock; True, or False if ``timeout`` passed first.
        ``blocking=False`` does not wait at all."""
        timeout = _check_timeout(timeout)
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0.0
        return self._call(self._acquire, timeout)

    async def _acquire(self, core: Any, timeout: float | None) -> bool:
        acquire = m.LockAcquire(client=core.id, name=self.name, id=self.id, timeout=timeout)
        reply = await _acquire_or_withdraw(core, acquire, m.LockRelease(client=core.id, name=self.name, id=self.id), timeout)
        return not isinstance(reply, m.PrimitiveTimedOut)

    def release(self) -> Any:
        """Release the lock (``RuntimeError`` if this instance does not hold it)."""
        return self._call(self._release)

    async def _release(self, core: Any) -> None:
        try:
            await self._request(core, m.LockRelease(client=core.id, name=self.name, id=self.id))
        except RemoteError as exc:
            raise RuntimeError(str(exc)) from None

    def locked(self) -> Any:
        return self._call(self._locked)

    async def _locked(self, core: Any) -> bool:
        reply = await self._request(core, m.LockLocked(client=core.id, name=self.name))
        assert isinstance(reply, m.BoolReply)
        return reply.value

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()


class MultiLock(_Primitive):
    """Several locks acquired together (dask's ``MultiLock``)."""

    _prefix = "multilock"

    def __init__(self, names: list[str] | None = None, client: Any = None) -> None:
        super().__init__("multilock", client)
        self.names = list(names or [])
        self.id = uuid.uuid4().hex

    def __reduce__(self) -> Any:
        return (type(self), (self.names,))

    def acquire(self, blocking: bool = True, timeout: Any = None, num_locks: int | None = None) -> Any:
        """Acquire the locks (at least ``num_locks`` of them; all by default);
        True, or False if ``timeout`` passed first."""
        timeout = _check_timeout(timeout)
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking call")
            timeout = 0.0
        return self._call(self._acquire, timeout, num_locks)

    async def _acquire(self, core: Any, timeout: float | None, num_locks: int | None) -> bool:
        msg = m.MultiLockAcquire(client=core.id, id=self.id, names=self.names, num_locks=num_locks, timeout=timeout)
        reply = await _acquire_or_withdraw(core, msg, m.MultiLockRelease(client=core.id, id=self.id), timeout)
        return not isinstance(reply, m.PrimitiveTimedOut)

    def release(self) -> Any:
        return self._call(self._release)

    async def _release(self, core: Any) -> None:
        try:
            await self._request(core, m.MultiLockRelease(client=core.id, id=self.id))
        except RemoteError as exc:
            raise RuntimeError(str(exc)) from None

    def __enter__(self) -> MultiLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    async def __aenter__(self) -> MultiLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()


class Event(_Primitive):
    """A distributed event (dask's ``Event``): set, clear, wait."""

    _prefix = "event"

    def __init__(self, name: str | None = None, client: Any = None) -> None:
        super().__init__(name, client)

    def wait(self, timeout: Any = None) -> Any:
        """Wait until the event is set: True, or False after ``timeout``."""
        return self._call(self._wait, _check_timeout(timeout))

    async def _wait(self, core: Any, timeout: float | None) -> bool:
        reply = await self._request(core, m.EventWait(client=core.id, name=self.name, timeout=timeout), timeout)
        return isinstance(reply, m.BoolReply) and reply.value

    def set(self) -> Any:
        return self._call(self._simple, m.EventSet)

    def clear(self) -> Any:
        return self._call(self._simple, m.EventClear)

    def is_set(self) -> Any:
        return self._call(self._is_set)

    async def _simple(self, core: Any, cls: Any) -> None:
        await self._request(core, cls(client=core.id, name=self.name))

    async def _is_set(self, core: Any) -> bool:
        reply = await self._request(core, m.EventIsSet(client=core.id, name=self.name))
        assert isinstance(reply, m.BoolReply)
        return reply.value


class Semaphore(_Primitive):
    """A distributed semaphore (dask's ``Semaphore``): at most
    ``max_leases`` holders.  Leases are renewed in the background while held;
    a lease whose client or worker dies (or stops renewing) expires."""

    _prefix = "semaphore"

    def __init__(self, max_leases: int = 1, name: str | None = None, client: Any = None) -> None:
        super().__init__(name, client)
        if max_leases < 1:
            raise ValueError(f"max_leases must be at least 1, not {max_leases}")
        self.max_leases = max_leases
        self.id = uuid.uuid4().hex
        self._leases: list[str] = []
        self._registered: Any = None
        self._refreshing = False

    def __reduce__(self) -> Any:
        return (type(self), (self.max_leases, self.name))

    async def _register(self, core: Any) -> None:
        if self._registered is not core:
            reply = await self._request(core, m.SemaphoreCreate(client=core.id, name=self.name, max_leases=self.max_leases))
            assert isinstance(reply, m.IntReply)
            self.max_leases = reply.value
            self._registered = core

    def acquire(self, timeout: Any = None) -> Any:
        """Take a lease: True, or False if ``timeout`` passed first."""
        return self._call(self._acquire, _check_timeout(timeout))

    async def _acquire(self, core: Any, timeout: float | None) -> bool:
        await self._register(core)
        lease_id = uuid.uuid4().hex
        worker = ""
        try:
            from ..worker import get_worker

            worker = get_worker().address
        except Exception:  # noqa: BLE001 - not in a task
            pass
        msg = m.SemaphoreAcquire(client=core.id, name=self.name, lease_id=lease_id, timeout=timeout, worker=worker)
        withdraw = m.SemaphoreRelease(client=core.id, name=self.name, lease_id=lease_id)
        reply = await _acquire_or_withdraw(core, msg, withdraw, timeout)
        if isinstance(reply, m.PrimitiveTimedOut):
            return False
        self._leases.append(lease_id)
        if not self._refreshing and core._nursery is not None:
            self._refreshing = True
            core._nursery.start_soon(self._refresh_loop, core)
        return True

    async def _refresh_loop(self, core: Any) -> None:
        try:
            while self._leases and core.status == "running":
                await trio.sleep(LEASE_REFRESH_INTERVAL)
                if self._leases:
                    try:
                        await self._request(core, m.SemaphoreRefresh(client=core.id, name=self.name, lease_ids=list(self._leases)))
                    except Exception:  # noqa: BLE001 - retried next round; the lease may expire
                        pass
        finally:
            self._refreshing = False

    def release(self) -> Any:
        """Give back the oldest lease this object holds.

        Returns:
            True; False when the lease had expired meanwhile.
        Raises:
            RuntimeError: this object holds no lease.
        """
        if not self._leases:
            raise RuntimeError("Released too often")
        return self._call(self._release)

    async def _release(self, core: Any) -> bool:
        lease_id = self._leases.pop(0)
        reply = await self._request(core, m.SemaphoreRelease(client=core.id, name=self.name, lease_id=lease_id))
        assert isinstance(reply, m.BoolReply)
        return reply.value

    def get_value(self) -> Any:
        """The number of leases held now."""
        return self._call(self._get_value)

    async def _get_value(self, core: Any) -> int:
        await self._register(core)
        reply = await self._request(core, m.SemaphoreValue(client=core.id, name=self.name))
        assert isinstance(reply, m.IntReply)
        return reply.value

    def close(self) -> Any:
        """Delete the semaphore on the scheduler (its waiters get an error)."""
        return self._call(self._close)

    async def _close(self, core: Any) -> None:
        self._leases.clear()
        self._registered = None
        await self._request(core, m.SemaphoreClose(client=core.id, name=self.name))

    def __enter__(self) -> Semaphore:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    async def __aenter__(self) -> Semaphore:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()


class Pub(_Primitive):
    """Publish messages on a topic (dask's ``Pub``); each reaches every
    :class:`Sub` of the topic that exists when it is published."""

    _prefix = "topic"

    def __init__(self, name: str | None = None, worker: Any = None, client: Any = None) -> None:
        # ``worker`` is dask's second argument; here a task's messages go
        # through its client like everyone's, so it is not needed.
        super().__init__(name, client)

    def put(self, msg: Any) -> Any:
        """Publish ``msg`` (any picklable value); returns the number of
        subscribers reached."""
        return self._call(self._put, msg)

    async def _put(self, core: Any, msg: Any) -> int:
        reply = await self._request(core, m.Publish(client=core.id, name=self.name, data=dumps(msg)))
        assert isinstance(reply, m.IntReply)
        return reply.value


class Sub(_Primitive):
    """Receive the messages published on a topic from now on (dask's ``Sub``);
    iterate over it, or :meth:`get` with a timeout."""

    _prefix = "topic"

    def __init__(self, name: str | None = None, worker: Any = None, client: Any = None) -> None:
        super().__init__(name, client)
        self.id = uuid.uuid4().hex
        self._registered: Any = None
        # A blocking client subscribes now, so nothing published from here on
        # is missed; Trio code (and an object unpickled where no client runs
        # yet) subscribes at the first get.
        try:
            core = self._core()
        except ValueError:
            return
        if core._portal is not None and not _in_trio():
            self._call(self._register)

    async def _register(self, core: Any) -> None:
        if self._registered is not core:
            await self._request(core, m.SubscribeAdd(client=core.id, name=self.name, id=self.id))
            self._registered = core

    def get(self, timeout: Any = None) -> Any:
        """The next message (``TimeoutError`` after ``timeout``)."""
        return self._call(self._get, _check_timeout(timeout))

    async def _get(self, core: Any, timeout: float | None) -> Any:
        await self._register(core)
        reply = await self._request(core, m.SubscribeGet(client=core.id, id=self.id, timeout=timeout), timeout)
        if isinstance(reply, m.PrimitiveTimedOut):
            raise TimeoutError(f"no message on topic {self.name!r} within {timeout}s")
        assert isinstance(reply, m.ItemReply) and reply.data is not None
        return loads(reply.data)

    def close(self) -> Any:
        return self._call(self._close)

    async def _close(self, core: Any) -> None:
        if self._registered is core:
            self._registered = None
            await self._request(core, m.SubscribeRemove(client=core.id, id=self.id))

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.get()

    def __aiter__(self) -> Sub:
        return self

    async def __anext__(self) -> Any:
        return await self.get()
