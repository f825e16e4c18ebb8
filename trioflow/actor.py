"""Actors: a stateful object living on one worker, called from anywhere.

Theory of operation
-------------------
``client.submit(Counter, actor=True)`` submits a task whose function is
:class:`_ActorCreate`: on the worker it makes the instance, keeps it in the
worker's ``actors`` table under the task's key, and returns an
:class:`Actor` proxy (class, worker address, key) as the task's value.  The
proxy is what travels: ``future.result()`` on the client, or the future
passed to other tasks as an argument, gives the proxy.  The instance stays
on its worker as long as the key does (dropping the key's value drops the
instance).

A method call on the proxy (``counter.increment(2)``) sends
:class:`~trioflow.protocol.messages.ActorCall` straight to the worker
holding the instance and returns an :class:`ActorFuture` at once (the call
is under way): ``.result()`` blocks, ``await`` waits.  Reading an
attribute that is not a method (``counter.n``) returns its value (a
blocking call; in a Trio loop an awaitable, and only for names the class
itself has, since generic code probing for attributes must not block the
loop).  On the worker (:func:`serve_actor_call`), plain methods run
in a thread, one call at a time per actor (a one-slot limiter), so the
object needs no locks; ``async def`` methods run in the worker's Trio loop,
concurrently.

Which loop sends the call: inside a task (or an actor method), the
worker's own loop and connection pool; elsewhere, the default blocking
client's loop; in a Trio loop with no blocking client, the caller's loop
over a fresh connection (no TLS: use a blocking client for a TLS cluster).
"""

from __future__ import annotations

import functools
import inspect
import threading
import traceback
from typing import Any

import trio

from .errors import RemoteError, TrioflowError
from .protocol import messages as m
from .protocol.serialize import SerializationError, Serialized, dumps, loads

__all__ = ["Actor", "ActorFuture", "serve_actor_call"]


class _ActorCreate:
    """The function of an actor task: make the instance, keep it on this
    worker, return its proxy."""

    def __init__(self, cls: Any) -> None:
        self.cls = cls
        self.__name__ = getattr(cls, "__name__", "actor")

    def __call__(self, *args: Any, **kwargs: Any) -> Actor:
        from .worker.executor import thread_state

        worker = thread_state.worker
        key = thread_state.key
        instance = self.cls(*args, **kwargs)
        worker.actors[key] = _Held(instance)
        return Actor(self.cls, worker.address, key)


class _Held:
    """An instance on its worker, with the limiter that serializes calls."""

    __slots__ = ("instance", "limiter")

    def __init__(self, instance: Any) -> None:
        self.instance = instance
        self.limiter: trio.CapacityLimiter | None = None  # made in the loop


class ActorFuture:
    """The outcome of a method call on an :class:`Actor`: ``.result()``
    blocks until it is there, ``await`` waits for it (asyncio or Trio)."""

    __slots__ = ("_done", "_value", "_error", "_trio_event", "_token")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._trio_event: trio.Event | None = None
        self._token: Any = None

    def _set(self, value: Any = None, error: BaseException | None = None) -> None:
        """Called in the loop that ran the call."""
        self._value, self._error = value, error
        self._done.set()
        if self._trio_event is not None:
            self._trio_event.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """The method's return value (or its exception, raised).

        Raises:
            TimeoutError: not done within ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"actor call not done after {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value

    async def _wait(self) -> Any:
        from .client.bridge import in_trio

        if not self._done.is_set():
            if in_trio() and trio.lowlevel.current_trio_token() is self._token:
                if self._trio_event is None:
                    self._trio_event = trio.Event()
                if not self._done.is_set():
                    await self._trio_event.wait()
            else:
                import anyio.to_thread

                await anyio.to_thread.run_sync(self._done.wait)
        return self.result()

    def __await__(self) -> Any:
        return self._wait().__await__()

    def __repr__(self) -> str:
        return f"<ActorFuture {'done' if self.done() else 'pending'}>"


#: Attributes that generic code probes values for (``sizeof`` looks for
#: ``nbytes`` on every task result): answered here, not by a call to the
#: worker, unless the actor's class has them.
_PROBED = frozenset({"nbytes"})


class Actor:
    """A proxy for an object living on one worker (see the module docstring).

    Method calls return :class:`ActorFuture`; other attributes read their
    value on the worker.
    """

    def __init__(self, cls: Any, address: str, key: str, *, _future: Any = None) -> None:
        self._cls = cls
        self._address = address
        self._key = key
        #: Keeps the actor's key (so its instance) alive while this proxy is
        #: held on a client.
        self._future = _future

    def __reduce__(self) -> Any:
        return (_rebuild_actor, (self._cls, self._address, self._key))

    def __repr__(self) -> str:
        return f"<Actor: {getattr(self._cls, '__name__', self._cls)}, key={self._key}>"

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | set(dir(self._cls)))

    @property
    def key(self) -> str:
        return self._key

    @property
    def address(self) -> str:
        """The worker that holds the instance."""
        return self._address

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or (name in _PROBED and not hasattr(self._cls, name)):
            raise AttributeError(name)
        attr = getattr(self._cls, name, None)
        if callable(attr) and not isinstance(attr, property):
            return functools.partial(self._call, name)
        from .client.bridge import in_trio

        if in_trio():
            # An event loop must not block on a worker: there, only names
            # the class has read (as an awaitable); anything else (sizeof or
            # pickling probing for ``nbytes``, say) is not there.
            if not hasattr(self._cls, name):
                raise AttributeError(name)
            return self._call_kind("getattr", name, (), {})
        return self._call_kind("getattr", name, (), {}).result()

    def _call(self, name: str, *args: Any, **kwargs: Any) -> ActorFuture:
        return self._call_kind("call", name, args, kwargs)

    def _call_kind(self, kind: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ActorFuture:
        msg = m.ActorCall(key=self._key, name=name, kind=kind, args=dumps((args, kwargs)))
        fut = ActorFuture()
        token, pool, security = _host()
        fut._token = token
        address = self._address

        async def run() -> None:
            try:
                if pool is not None:
                    reply = await pool.rpc(address, msg, m.RunReply)
                else:
                    reply = await _one_off_rpc(address, msg, security)
                value = _reply_value(reply)
            except trio.Cancelled:
                fut._set(error=TrioflowError("the loop running this actor call closed"))
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut._set(error=exc)
            else:
                fut._set(value)

        def spawn() -> None:
            trio.lowlevel.spawn_system_task(run, name=f"actor-call-{name}")

        if _in_loop(token):
            spawn()
        else:
            token.run_sync_soon(spawn)
        return fut


def _in_loop(token: Any) -> bool:
    try:
        return trio.lowlevel.current_trio_token() is token
    except RuntimeError:
        return False


def _host() -> tuple[Any, Any, Any]:
    """The loop to send an actor call from: (its token, a connection pool
    in it or None, security)."""
    from .worker.executor import thread_state

    worker = getattr(thread_state, "worker", None)
    if worker is not None and worker.executor is not None:
        return worker.executor._token, worker.pool, worker.security
    from .client.sync import default_client

    try:
        client = default_client()
    except ValueError:
        client = None
    if client is not None and getattr(client, "_core", None) is not None and client._core._token is not None:
        core = client._core
        return core._token, core._pool, core.security
    try:
        token = trio.lowlevel.current_trio_token()
    except RuntimeError:
        raise ValueError("calling an actor needs a running trio Client (or a Trio loop)") from None
    return token, None, None


async def _one_off_rpc(address: str, msg: m.Message, security: Any) -> Any:
    from .comm import connect

    comm = await connect(address, security=security, role="client", name="actor-call")
    try:
        await comm.send(msg)
        reply = await comm.recv()
    finally:
        await comm.aclose()
    if isinstance(reply, m.ErrorReply):
        raise RemoteError(reply.message)
    return reply


def _reply_value(reply: m.RunReply) -> Any:
    if reply.result is not None:
        return loads(reply.result)
    from .client.futures import FutureState

    st = FutureState()
    st.err(reply.exception, reply.exception_text, reply.traceback_text, reply.type_name)
    raise st.make_exception()


def _rebuild_actor(cls: Any, address: str, key: str) -> Actor:
    """Unpickle a proxy; on a client that holds the key, the proxy holds a
    future for it, so that dropping the future alone keeps the actor."""
    from .worker.executor import thread_state

    future = None
    if getattr(thread_state, "worker", None) is None:
        from .client.sync import default_client

        try:
            core = default_client()._core
        except (ValueError, AttributeError):
            core = None
        if core is not None and core.refcount(key) > 0:
            from .client.futures import Future

            future = Future(key, core)
    return Actor(cls, address, key, _future=future)


# ---------------------------------------------------------------- the worker's side


def _error_reply(exc: BaseException) -> m.RunReply:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        ser: Serialized | None = dumps(exc)
    except SerializationError:
        ser = None
    return m.RunReply(result=None, exception=ser, exception_text=f"{type(exc).__name__}: {exc}", traceback_text=tb, type_name=type(exc).__name__)


async def serve_actor_call(worker: Any, msg: m.ActorCall) -> m.Message:
    """Run one call on an instance held by ``worker`` (see the module docstring)."""
    held: _Held | None = worker.actors.get(msg.key)
    if held is None:
        return m.ErrorReply(message=f"no actor {msg.key!r} on {worker.address}")
    try:
        args, kwargs = loads(msg.args)
        if msg.kind == "getattr":
            value = getattr(held.instance, msg.name)
        else:
            method = getattr(held.instance, msg.name)
            if inspect.iscoroutinefunction(method):
                value = await method(*args, **kwargs)
            else:
                if held.limiter is None:
                    held.limiter = trio.CapacityLimiter(1)
                value = await trio.to_thread.run_sync(_in_actor_thread, worker, method, args, kwargs, limiter=held.limiter)
        return m.RunReply(result=dumps(value))
    except Exception as exc:  # noqa: BLE001 - the caller gets it
        return _error_reply(exc)


def _in_actor_thread(worker: Any, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from .worker.executor import thread_state

    thread_state.worker = worker  # get_worker() and other actors' calls work in methods
    try:
        return method(*args, **kwargs)
    finally:
        thread_state.worker = None
