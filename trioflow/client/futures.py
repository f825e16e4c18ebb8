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
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import sniffio
import trio

from ..durations import parse_timedelta
from ..errors import CancelledError, FutureLostError, RemoteError, RemoteException
from ..keys import key_prefix
from ..protocol.serialize import SerializationError, Serialized, loads
from .bridge import in_trio
from .tracebacks import remote_traceback, with_remote_traceback

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
                # Raised with the task's own frames (see .tracebacks).
                exc._trioflow_tb_text = self.traceback_text  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            with_remote_traceback(exc)
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
        timeout = parse_timedelta(timeout)
        if self._blocking():
            return self.client._sync_call(self.client._result_async, self, timeout)
        return self.client._awaitable(self.client._result_async, self, timeout)

    def exception(self, timeout: float | None = None) -> Any:
        """The task's exception, or None if it succeeded (waits like :meth:`result`)."""
        timeout = parse_timedelta(timeout)
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

    def traceback(self, timeout: Any = None) -> Any:
        """The failed task's traceback (a traceback object of the task's own
        frames: ``traceback.print_tb(future.traceback())``), or None if it
        did not fail.  Waits for the task like :meth:`result` (an awaitable
        for asynchronous clients).

        Raises:
            TimeoutError: not done within ``timeout``.
        """
        timeout = parse_timedelta(timeout)

        def tb() -> Any:
            if self._state.status != "error" or not self._state.traceback_text:
                return None
            return remote_traceback(self._state.traceback_text)

        if self._blocking():
            if not self._state.wait_sync(timeout):
                raise TimeoutError(f"future {self.key!r} not done after {timeout}s")
            return tb()

        async def _tb() -> Any:
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                await self._state.wait()
            if not self._state.done():
                raise TimeoutError(f"future {self.key!r} not done after {timeout}s")
            return tb()

        return self.client._awaitable(_tb)

    def retry(self) -> Any:
        """Run this failed future's task again (see ``Client.retry``)."""
        if self._blocking():
            return self.client._sync_call(self.client.retry, [self])
        return self.client._awaitable(self.client.retry, [self])

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
    timeout = parse_timedelta(timeout)
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

    A plain iterator with blocking clients, an async iterator in Trio or
    asyncio code.  A future added twice is yielded twice.

    Args:
        futures: the futures to watch (more with :meth:`add`/:meth:`update`).
        with_results: yield ``(future, result)`` pairs; a cancelled future
            comes with a :class:`CancelledError` as its result.
        raise_errors: with ``with_results``, raise a failed future's
            exception (else yield ``(future, (type, exception, traceback))``).
        timeout: how long (from now) iteration may take in total; after it,
            the iterator raises ``TimeoutError``.
    """

    def __init__(
        self,
        futures: Iterable[Future] | None = None,
        loop: Any = None,
        with_results: bool = False,
        raise_errors: bool = True,
        *,
        timeout: Any = None,
    ) -> None:
        self.with_results = with_results
        self.raise_errors = raise_errors
        t = parse_timedelta(timeout)
        self._deadline = None if t is None else time.monotonic() + t
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ready: collections.deque[Future] = collections.deque()
        #: future -> how many times it is still to be yielded once done.
        self._pending: dict[Future, int] = {}
        self._event: trio.Event | None = None
        self._client: Any = None
        if futures is not None:
            self.update(futures)

    def __repr__(self) -> str:
        with self._lock:
            return f"<as_completed: waiting={len(self._pending)} done={len(self._ready)}>"

    def add(self, future: Future) -> None:
        """Add a future; it is yielded once it finishes."""
        self.update((future,))

    def update(self, futures: Iterable[Future]) -> None:
        """Add several futures.

        Raises:
            TypeError: something that is not a Future.
        """
        futures = list(futures)
        for f in futures:
            if not isinstance(f, Future):
                raise TypeError(f"Input must be a future, got {f!r}")
        for f in futures:
            if self._client is None:
                self._client = f.client
            with self._lock:
                first = f not in self._pending
                self._pending[f] = self._pending.get(f, 0) + 1
            if first:
                f.add_done_callback(self._on_done)

    def _on_done(self, fut: Future) -> None:
        with self._cond:
            n = self._pending.pop(fut, 0)
            self._ready.extend([fut] * n)
            self._cond.notify_all()
        if self._event is not None:
            self._event.set()

    def count(self) -> int:
        """Futures yet to be yielded: still running, or done and not yet taken."""
        with self._lock:
            return sum(self._pending.values()) + len(self._ready)

    def is_empty(self) -> bool:
        """No futures running or waiting to be yielded."""
        return self.count() == 0

    def has_ready(self) -> bool:
        """Some finished future waits to be yielded."""
        with self._lock:
            return bool(self._ready)

    def clear(self) -> None:
        """Forget every future, running or done."""
        with self._lock:
            self._pending.clear()
            self._ready.clear()

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _item(self, fut: Future, value: Any = None) -> Any:
        """What the iterator yields for ``fut`` (``value``: its result)."""
        if not self.with_results:
            return fut
        if fut.status == "cancelled":
            return fut, CancelledError(fut.key)
        if fut.status in ("error", "lost"):
            exc = fut._state.make_exception()
            if self.raise_errors:
                raise exc
            return fut, (type(exc), exc, exc.__traceback__)
        return fut, value

    # sync iteration
    def __iter__(self) -> Iterator[Any]:
        return self

    def _take(self, block: bool) -> Future | None:
        with self._cond:
            while not self._ready:
                if not block or not self._pending:
                    return None
                left = self._remaining()
                if left is not None and left <= 0:
                    raise TimeoutError("as_completed() timed out")
                self._cond.wait(0.1 if left is None else min(0.1, left))
            return self._ready.popleft()

    def __next__(self) -> Any:
        fut = self._take(True)
        if fut is None:
            raise StopIteration
        if self.with_results and fut.status == "finished":
            return self._item(fut, fut.result())
        return self._item(fut)

    next = __next__

    def next_batch(self, block: bool = True) -> list[Any]:
        """Every finished future not yet yielded (at least one with
        ``block=True``, waiting for it; possibly none with ``block=False``).

        Raises:
            StopIteration: ``block=True`` and nothing is left.
        """
        batch = [next(self)] if block else []
        while True:
            fut = self._take(False)
            if fut is None:
                return batch
            if self.with_results and fut.status == "finished":
                batch.append(self._item(fut, fut.result()))
            else:
                batch.append(self._item(fut))

    def batches(self) -> Iterator[list[Any]]:
        """Lists of the futures finished since the last list, until none is left."""
        while True:
            try:
                yield self.next_batch(block=True)
            except StopIteration:
                return

    # async iteration
    def __aiter__(self) -> as_completed:
        return self

    async def __anext__(self) -> Any:
        if self._client is None:
            raise StopAsyncIteration
        return await self._client._across(self._anext_in_loop)

    async def _anext_in_loop(self) -> Any:
        left = self._remaining()
        try:
            with trio.fail_after(float("inf") if left is None else max(left, 0)):
                while True:
                    with self._lock:
                        if self._ready:
                            fut = self._ready.popleft()
                            break
                        if not self._pending:
                            raise StopAsyncIteration
                        self._event = trio.Event()
                    await self._event.wait()
        except trio.TooSlowError:
            raise TimeoutError("as_completed() timed out") from None
        if self.with_results and fut.status == "finished":
            return self._item(fut, await fut.client._result_async(fut, None))
        return self._item(fut)


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
