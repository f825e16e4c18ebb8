"""Long-lived executor threads fed by a queue, reporting back in batches.

Theory of operation
-------------------
``trio.to_thread.run_sync`` costs 130-165 µs per call on this class of
machine: more than a small task.  So each worker keeps ``nthreads``
long-lived threads that pull jobs from one queue.  The worker's state machine
hands the executor more jobs than it has threads when they are measured short
(up to about 2 ms of work per thread; see ``_may_start`` in
:mod:`trioflow.worker.state`), so a thread that finishes a task starts the
next immediately, without waiting for the event loop.

Completed jobs go into a deque.  The first completion after the loop last
drained the deque schedules one wake-up with ``TrioToken.run_sync_soon``;
completions that arrive before the loop gets to it ride along.  The loop side
(:meth:`ThreadExecutor.next_batch`) therefore receives results in batches
and turns each batch into one round of state-machine events and one batched
write to the scheduler.

Jobs are plain callables returning a result record; they run with the
``trioflow`` thread-local set so ``get_worker()`` works inside tasks.

A task may leave the pool while it waits (:func:`trioflow.secede`):
:meth:`ThreadExecutor.secede` starts a thread to take its place, so the
pool keeps ``nthreads`` threads pulling jobs, and the seceded thread ends
once its job returns (a rejoined task only holds a slot of the worker's
state machine until then, not a thread of the pool).

.. warning::
   A running Python function cannot be cancelled.  :meth:`aclose` stops the
   threads after their current job; it waits a bounded time and then
   abandons (daemon) threads still stuck in user code.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["ThreadExecutor", "thread_state"]

thread_state = threading.local()

_STOP = object()


class ThreadExecutor:
    def __init__(self, nthreads: int, *, name: str = "trioflow-executor", context: Any = None) -> None:
        self.nthreads = nthreads
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._done: collections.deque[Any] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._event = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._context = context
        self._closed = False
        self.submitted = 0
        #: Thread ident -> key of the task it runs now (for the profiler
        #: and call_stack; written by the jobs, read by anyone).
        self.running: dict[int, str] = {}
        self._name = name
        self._threads: list[threading.Thread] = []
        for _ in range(nthreads):
            self._add_thread()

    def _add_thread(self) -> None:
        index = len(self._threads)
        t = threading.Thread(target=self._loop, args=(index,), name=f"{self._name}-{index}", daemon=True)
        self._threads.append(t)
        t.start()

    def secede(self) -> None:
        """The calling executor thread leaves the pool: a new thread takes
        its place, and the caller ends once its current job returns.

        Raises:
            RuntimeError: not called from a thread of this executor in the
                pool (or the executor is closed).
        """
        if getattr(thread_state, "executor", None) is not self:
            raise RuntimeError("secede() called outside of a task running in this executor")
        if thread_state.seceded:
            return  # out of the pool already (seceded before, then rejoined)
        thread_state.seceded = True
        with self._lock:
            if self._closed:
                return
            self._add_thread()

    def submit(self, job: Callable[[], Any]) -> None:
        """Queue ``job``; its return value arrives through :meth:`next_batch`."""
        if self._closed:
            raise RuntimeError("executor is closed")
        self.submitted += 1
        self._queue.put(job)

    def _loop(self, index: int) -> None:
        thread_state.worker = self._context
        thread_state.thread_index = index
        thread_state.executor = self
        thread_state.seceded = False
        thread_state.running = self.running
        q = self._queue
        done = self._done
        while True:
            if thread_state.seceded:
                return  # replaced in the pool (secede): end after the job
            job = q.get()
            if job is _STOP:
                return
            try:
                result = job()
            except BaseException as exc:  # jobs catch user errors; this is our bug
                result = exc
            done.append(result)
            # Keep neither while waiting for the next job: a finished job's
            # arguments and result (say a 256 MiB array) would otherwise stay
            # alive in this frame after the worker has released them.
            del job, result
            with self._lock:
                if self._wake_pending:
                    continue
                self._wake_pending = True
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                return

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._event.set()

    async def next_batch(self) -> list[Any]:
        """Wait for at least one completed job; return all completed so far."""
        while not self._done:
            await self._event.wait()
            self._event = trio.Event()
        out = []
        done = self._done
        while done:
            out.append(done.popleft())
        return out

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop the threads (after their current job), waiting at most ``timeout``."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        # Drop queued jobs that have not started.
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        for _ in threads:
            self._queue.put(_STOP)
        # Join in real time (not Trio's clock, which may be a MockClock).
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._join, timeout)

    def _join(self, timeout: float) -> None:
        import time

        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(deadline - time.monotonic(), 0))
