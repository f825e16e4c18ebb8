"""``client.get_executor()``: the client as a ``concurrent.futures.Executor``.

Each ``submit`` is a client submit; the returned
``concurrent.futures.Future`` is completed from the trioflow future's done
callback, so ``concurrent.futures.wait`` and ``as_completed`` work on it.
Cancelling it cancels the task.  Tasks are impure by default (an executor
runs a call each time it is asked, as dask's does).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import CancelledError
from .futures import Future

__all__ = ["ClientExecutor"]


class ClientExecutor(cf.Executor):
    def __init__(self, client: Any, **kwargs: Any) -> None:
        self._client = client
        self._kwargs = {"pure": False, **kwargs}
        self._futures: set[cf.Future[Any]] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        # Never hold the lock while calling into the client: the done
        # callback runs in the client's loop and takes it.
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        future = self._client.submit(fn, *args, **{**self._kwargs, **kwargs})
        return self._wrap(future)

    def _wrap(self, future: Future) -> cf.Future[Any]:
        cff: cf.Future[Any] = cf.Future()
        cff.set_running_or_notify_cancel()
        cff._trioflow_future = future  # type: ignore[attr-defined]  # for cancel()
        with self._lock:
            self._futures.add(cff)

        def done(f: Future) -> None:
            with self._lock:
                self._futures.discard(cff)
            if cff.done():
                return
            st = f._state
            nursery = f.client._nursery
            if st.status == "finished" and nursery is not None:
                nursery.start_soon(self._fetch, f, cff)
            elif st.status == "finished":
                cff.set_exception(RuntimeError("the client closed before the result was fetched"))
            elif st.status == "cancelled":
                cff.set_exception(CancelledError(f.key))
            else:
                cff.set_exception(st.make_exception())

        future.add_done_callback(done)
        return cff

    @staticmethod
    async def _fetch(f: Future, cff: cf.Future[Any]) -> None:
        # In the client's loop (done callbacks run there): fetch, then hand over.
        try:
            cff.set_result(await f.client._result_async(f, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            if not cff.done():
                cff.set_exception(exc)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        end = None if timeout is None else time.monotonic() + timeout
        fs = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]

        def results() -> Iterator[Any]:
            try:
                for f in fs:
                    yield f.result(None if end is None else max(end - time.monotonic(), 0))
            finally:
                for f in fs:
                    if not f.done():
                        self._cancel(f)

        return results()

    def _cancel(self, cff: cf.Future[Any]) -> None:
        fut = getattr(cff, "_trioflow_future", None)
        if fut is not None and self._client.status == "running":
            self._client.cancel([fut])

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for f in pending:
                self._cancel(f)
        if wait and pending:
            cf.wait(pending)
