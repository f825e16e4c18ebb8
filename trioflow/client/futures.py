"""Futures, ``wait`` and ``as_completed``.

Theory of operation
-------------------
A :class:`Future` is a handle on one key of one client.  All futures of a key
share a :class:`FutureState` that the client's receive loop updates (in the
Trio thread) when the scheduler reports the key in memory, erred, cancelled
or lost.  Waiting works from both worlds: Trio code awaits a ``trio.Event``;
a thread using the blocking ``Client`` waits on a ``threading.Event``;
asyncio code waits through :mod:`.bridge`.

Futures are reference counted per key: creating one increments the client's
count, garbage collection decrements it (``__del__`` may run in any thread, so
the decrement is lock-protected and the release is handed to the Trio thread
with ``run_sync_soon``).  When the count reaches zero the client tells the
scheduler to release the key, which frees the memory on the workers.

Methods that need IO (``result``, ``exception``, ``cancel``) block when the
future belongs to a blocking ``Client`` and are called outside its event
loop, and return an awaitable otherwise (the dask convention for
asynchronous clients).  The awaitable works in the client's own Trio loop
(a plain coroutine) and in any other loop, asyncio or Trio (it crosses into
the client's loop through :mod:`.bridge`); ``async for`` over
:class:`as_completed` does the same.
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import sniffio
import trio

from ..errors import CancelledError, FutureLostError, RemoteError, RemoteException
from ..keys import key_prefix
from ..protocol.serialize import SerializationError, Serialized, loads
from .bridge import in_trio

if TYPE_CHECKING:
    from .core import AsyncClient

__all__ = ["futures_of", "fire_and_forget", "Future", "FutureState", "CancelledError", "FutureLostError", "wait", "as_completed", "DoneAndNotDone", "RemoteException"]

FIRST_COMPLETED = "FIRST_COMPLETED"
ALL_COMPLETED = "ALL_COMPLETED"


class FutureState:
    __slots__ = (
        "status",
        "exception",
        "exception_text",
        "traceback_text",
        "type_name",
        "who_has",
        "nbytes",
        "_trio_event",
        "_thread_event",
        "callbacks",
    )

    def __init__(self) -> None:
        self.status = "pending"
        self.exception: Serialized | None = None
        self.exception_text = ""
        self.traceback_text = ""
        self.type_name = ""
        #: Where the scheduler said the value was when it finished (a hint).
        self.who_has: list[str] = []
        self.nbytes = -1
        self._trio_event: trio.Event | None = None
        self._thread_event: threading.Event | None = None
        self.callbacks: list[Callable[[], None]] = []

    def done(self) -> bool:
        return self.status != "pending"

    def _set(self, status: str) -> None:
        self.status = status
        if self._trio_event is not None:
            self._trio_event.set()
        if self._thread_event is not None:
            self._thread_event.set()
        if self.callbacks:
            cbs, self.callbacks = self.callbacks, []
            for cb in cbs:
                cb()

    def finish(self) -> None:
        self.exception = None
        self._set("finished")

    def err(self, exception: Serialized | None, text: str, tb: str, type_name: str) -> None:
        self.exception = exception
        self.exception_text = text
        self.traceback_text = tb
        self.type_name = type_name
        self._set("error")

    def cancel(self, reason: str = "cancelled") -> None:
        self.exception_text = reason
        self._set("cancelled")

    def lose(self, reason: str) -> None:
        self.exception_text = reason
        self.type_name = "FutureLostError"
        self._set("lost")

    def reset(self) -> None:
        self.status = "pending"
        self.exception = None
        self._trio_event = None
        if self._thread_event is not None:
            self._thread_event.clear()

    async def wait(self) -> None:
        if self.status != "pending":
            return
        if self._trio_event is None or self._trio_event.is_set():
            self._trio_event = trio.Event()
        await self._trio_event.wait()

    def wait_sync(self, timeout: float | None) -> bool:
        if self.status != "pending":
            return True
        if self._thread_event is None:
            self._thread_event = threading.Event()
            if self.status != "pending":  # set between the check and the event
                return True
        return self._thread_event.wait(timeout)

    def make_exception(self) -> BaseException:
        if self.status == "cancelled":
            return CancelledError(self.exception_text or "cancelled")
        if self.status == "lost":
            return FutureLostError(self.exception_text)
        exc: BaseException | None = None
        if self.exception is not None:
            try:
                exc = loads(self.exception)
            except SerializationError:
                exc = None
            if not isinstance(exc, BaseException):
                exc = None
        if exc is None:
            exc = RemoteError(self.exception_text, type_name=self.type_name)
        if self.traceback_text and not getattr(exc, "_trioflow_noted", False):
            try:
                exc.add_note("Remote traceback:\n" + self.traceback_text.rstrip())
                exc._trioflow_noted = True  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
        return exc


_in_trio = in_trio


def _in_async_loop() -> bool:
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


class Future:
    """A remote result; see the module docstring."""

    __slots__ = ("key", "client", "_state", "__weakref__")
    client: AsyncClient

    def __init__(self, key: str, client: Any, state: FutureState | None = None) -> None:
        self.key = key
        self.client = client
        self._state = client._acquire(key, state)

    def __del__(self) -> None:
        if sys.is_finalizing():  # the client's loop thread may be gone mid-call
            return
        try:
            self.client._dec_ref(self.key)
        except Exception:  # noqa: BLE001 - interpreter shutdown, closed client
            pass

    def __repr__(self) -> str:
        return f"<Future: {self.status}, key: {self.key}>"

    def _repr_html_(self) -> str:
        """Jupyter's view: the status in colour, the key, the error or size when known."""
        from html import escape

        st = self._state
        color = {"finished": "#2a7", "error": "#c33", "pending": "#888", "lost": "#c33"}.get(st.status, "#d80")
        rows = [f"<strong>Future: {escape(key_prefix(self.key))}</strong>", f"<span style='color:{color}'>status: {escape(st.status)}</span>"]
        if st.status == "finished" and st.nbytes >= 0:
            rows.append(f"{st.nbytes:,} bytes")
        if st.exception_text:
            rows.append(f"<span style='color:#c33'>{escape(st.exception_text[:200])}</span>")
        rows.append(f"key: <code>{escape(self.key)}</code>")
        return "<div class='trioflow-future'>" + ", ".join(rows) + "</div>"

    def __dask_tokenize__(self) -> str:
        # A future stands for its key: the same key, the same dask token.
        return self.key

    def __reduce__(self) -> Any:
        raise TypeError("a Future cannot be pickled on its own; pass it as a task argument instead")

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        return self._state.done()

    def cancelled(self) -> bool:
        return self._state.status == "cancelled"

    def _blocking(self) -> bool:
        return self.client._blocking()

    def result(self, timeout: float | None = None) -> Any:
        """The task's value; raises the task's exception if it failed.

        Blocking clients block (up to ``timeout`` seconds, then
        ``TimeoutError``); in Trio code, ``await future`` or
        ``await future.result()``.
        """
        if self._blocking():
            return self.client._sync_call(self.client._result_async, self, timeout)
        return self.client._awaitable(self.client._result_async, self, timeout)

    def exception(self, timeout: float | None = None) -> Any:
        """The task's exception, or None if it succeeded (waits like :meth:`result`)."""
        if self._blocking():
            if not self._state.wait_sync(timeout):
                raise TimeoutError(f"future {self.key!r} not done after {timeout}s")
            return None if self._state.status == "finished" else self._state.make_exception()

        async def _exc() -> Any:
            # TimeoutError, not trio.TooSlowError: the same as result(timeout).
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                await self._state.wait()
            if not self._state.done():
                raise TimeoutError(f"future {self.key!r} not done after {timeout}s")
            return None if self._state.status == "finished" else self._state.make_exception()

        return self.client._awaitable(_exc)

    def traceback(self) -> str | None:
        """The remote traceback text of a failed task, or None."""
        return self._state.traceback_text or None if self._state.status == "error" else None

    def cancel(self) -> Any:
        """Cancel this future's task."""
        if self._blocking():
            return self.client._sync_call(self.client._cancel_async, [self])
        return self.client._awaitable(self.client._cancel_async, [self])

    def add_done_callback(self, fn: Callable[[Future], None]) -> None:
        """Call ``fn(future)`` when done (in the client's event-loop thread)."""
        if self._blocking():
            # Register from the loop's thread: from ours, the future could
            # finish between the done() check and the append, and fn would
            # never be called.
            self.client._sync_call(self._add_done_callback, fn)
        else:
            self.client._call_soon(self._add_done_callback, fn)

    def _add_done_callback(self, fn: Callable[[Future], None]) -> None:
        if self.done():
            fn(self)
        else:
            self._state.callbacks.append(lambda: fn(self))

    def __await__(self) -> Any:
        return self.client._awaitable(self.client._result_async, self, None).__await__()


class DoneAndNotDone(NamedTuple):
    done: set[Future]
    not_done: set[Future]


def _is_dask_collection(x: Any) -> bool:
    return not isinstance(x, type) and callable(getattr(x, "__dask_graph__", None))


def futures_of(obj: Any) -> list[Future]:
    """The futures in ``obj``: a Future, nested lists, tuples, sets and dict
    values, and dask collections (a persisted one holds a future per piece
    in its graph: the graph is read, the collection never iterated)."""
    out: list[Future] = []
    seen: set[int] = set()
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, Future):
            if id(x) not in seen:
                seen.add(id(x))
                out.append(x)
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(reversed(list(x)) if isinstance(x, (list, tuple)) else x)
        elif isinstance(x, dict):
            stack.extend(reversed(list(x.values())))
        elif _is_dask_collection(x):
            graph = x.__dask_graph__()
            if graph:
                stack.extend(reversed(list(graph.values())))
        elif type(x).__name__ == "DataNode":  # dask's task spec: a literal value
            stack.append(getattr(x, "value", None))
    return out


def _flatten_futures(fs: Any) -> list[Future]:
    if isinstance(fs, Future):
        return [fs]
    if _is_dask_collection(fs):
        return futures_of(fs)
    if isinstance(fs, dict):
        fs = fs.values()
    out: list[Future] = []
    for f in fs:
        if isinstance(f, Future):
            out.append(f)
        elif isinstance(f, (list, tuple, set, dict)) or _is_dask_collection(f):
            out.extend(_flatten_futures(f))
    return out


async def _wait_async(futures: list[Future], timeout: float | None, return_when: str) -> DoneAndNotDone:
    if return_when not in (FIRST_COMPLETED, ALL_COMPLETED):
        raise ValueError(f"return_when must be {FIRST_COMPLETED!r} or {ALL_COMPLETED!r}, got {return_when!r}")
    try:
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            if return_when == ALL_COMPLETED:
                for f in futures:
                    await f._state.wait()
            elif futures and not any(f.done() for f in futures):
                event = trio.Event()
                for f in futures:
                    f._state.callbacks.append(event.set)
                await event.wait()
    except trio.TooSlowError:
        raise TimeoutError(f"wait() timed out after {timeout}s") from None
    done = {f for f in futures if f.done()}
    return DoneAndNotDone(done, set(futures) - done)


def wait(fs: Any, timeout: float | None = None, return_when: str = ALL_COMPLETED) -> Any:
    """Wait until futures are done.

    Returns ``DoneAndNotDone(done, not_done)`` (blocking clients) or an
    awaitable of it (Trio code).

    Raises:
        TimeoutError: not done within ``timeout`` seconds.
    """
    futures = _flatten_futures(fs)
    if not futures:
        return DoneAndNotDone(set(), set()) if not _in_async_loop() else _completed(DoneAndNotDone(set(), set()))
    client = futures[0].client
    if client._blocking():
        return client._sync_call(_wait_async, futures, timeout, return_when)
    return client._awaitable(_wait_async, futures, timeout, return_when)


async def _completed(value: Any) -> Any:
    return value


class as_completed:
    """Iterate over futures in the order they finish.

    Works as a plain iterator with blocking clients and as an async iterator
    in Trio code.  ``with_results=True`` yields ``(future, result)`` pairs.
    :meth:`add` adds more futures while iterating.
    """

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False, raise_errors: bool = True) -> None:
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ready: collections.deque[Future] = collections.deque()
        self._pending: set[Future] = set()
        self._event: trio.Event | None = None
        self._client: Any = None
        for f in futures:
            self.add(f)

    def add(self, future: Future) -> None:
        """Add a future to the set being watched."""
        if self._client is None:
            self._client = future.client
        with self._lock:
            self._pending.add(future)

        def on_done(fut: Future) -> None:
            with self._cond:
                self._pending.discard(fut)
                self._ready.append(fut)
                self._cond.notify_all()
            if self._event is not None:
                self._event.set()

        future.add_done_callback(on_done)

    def update(self, futures: Iterable[Future]) -> None:
        for f in futures:
            self.add(f)

    def count(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._ready)

    def is_empty(self) -> bool:
        return self.count() == 0

    # sync iteration
    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        with self._cond:
            while not self._ready:
                if not self._pending:
                    raise StopIteration
                self._cond.wait(0.5)
            fut = self._ready.popleft()
        if self.with_results:
            if fut.status == "error" and not self.raise_errors:
                return fut, fut.exception()
            return fut, fut.result()
        return fut

    # async iteration
    def __aiter__(self) -> as_completed:
        return self

    async def __anext__(self) -> Any:
        if self._client is None:
            raise StopAsyncIteration
        return await self._client._across(self._anext_in_loop)

    async def _anext_in_loop(self) -> Any:
        while True:
            with self._lock:
                if self._ready:
                    fut = self._ready.popleft()
                    break
                if not self._pending:
                    raise StopAsyncIteration
                self._event = trio.Event()
            await self._event.wait()
        if self.with_results:
            if fut.status == "error" and not self.raise_errors:
                return fut, await fut.exception()
            return fut, await fut.client._result_async(fut, None)
        return fut


def fire_and_forget(futures: Any) -> None:
    """Run these futures' tasks to completion even if the futures are dropped
    (dask-compatible).  Works for blocking clients and in Trio code."""
    flat = _flatten_futures(futures)
    if not flat:
        return
    client = flat[0].client
    if client._blocking():
        client._sync_call(client.fire_and_forget, flat)
        return
    client._call_soon(client._send, _ff_message([f.key for f in flat]))


def _ff_message(keys: list[str]) -> Any:
    from ..protocol.messages import FireAndForget

    return FireAndForget(keys=keys)
