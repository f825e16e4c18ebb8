"""Batched sending on long-lived streams.

Theory of operation
-------------------
Scheduler <-> worker and scheduler <-> client streams carry many small
messages.  Writing each one separately caps a Trio TCP stream at about 32,000
messages a second; writing two hundred at once gets ten times that.  So a
:class:`BatchedSend` owns the write side of one comm: ``send(msg)`` is sync
and never blocks (it appends to a buffer and wakes the sender task), and the
sender task writes everything buffered in one ``send_many``.

There is no timer.  After being woken the sender yields once, so tasks that
are already runnable in this Trio loop (a burst of completions, say) add
their messages first; then it writes.  While a write is in progress new
messages pile up and go out together in the next write.  Latency for a lone
message is one loop tick; throughput under load is one write per batch.

The sender task is the comm's only writer.  If the comm breaks, ``run``
raises :class:`~trioflow.comm.core.CommClosedError` and later ``send`` calls
raise it too; the owner decides what a broken stream means.
"""

from __future__ import annotations

import trio

from ..protocol.messages import Message
from .core import Comm, CommClosedError

__all__ = ["BatchedSend"]


class BatchedSend:
    def __init__(self, comm: Comm, *, max_batch: int = 10_000) -> None:
        self.comm = comm
        self._buffer: list[Message] = []
        self._wake = trio.Event()
        self._closing = False
        self._broken: BaseException | None = None
        self._max_batch = max_batch
        self._done = trio.Event()
        self.batches = 0
        self.messages = 0

    def send(self, msg: Message) -> None:
        """Queue ``msg``; never blocks.

        Raises:
            CommClosedError: the stream is closed or broke.
        """
        if self._closing or self._broken is not None:
            raise self._closed_error()
        self._buffer.append(msg)
        self._wake.set()

    def send_nowait_many(self, msgs: list[Message]) -> None:
        if self._closing or self._broken is not None:
            raise self._closed_error()
        self._buffer.extend(msgs)
        self._wake.set()

    def _closed_error(self) -> CommClosedError:
        if self._broken is not None and not isinstance(self._broken, trio.Cancelled):
            return CommClosedError(f"batched stream to {self.comm.peer_address} broke: {self._broken}")
        return CommClosedError(f"batched stream to {self.comm.peer_address} is closed", clean=True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until :meth:`close` (then flush) or the comm breaks."""
        task_status.started()
        try:
            while True:
                if not self._buffer:
                    if self._closing:
                        return
                    await self._wake.wait()
                    self._wake = trio.Event()
                    # Let whatever is runnable now add to this batch.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    if not self._buffer:
                        continue
                if len(self._buffer) > self._max_batch:
                    batch = self._buffer[: self._max_batch]
                    del self._buffer[: self._max_batch]
                else:
                    batch, self._buffer = self._buffer, []
                self.batches += 1
                self.messages += len(batch)
                await self.comm.send_many(batch)
        except BaseException as exc:
            self._broken = exc
            raise
        finally:
            self._done.set()

    def close(self) -> None:
        """Stop accepting messages; :meth:`run` returns once the buffer is written."""
        self._closing = True
        self._wake.set()

    async def aclose(self, timeout: float = 5) -> None:
        """Close and wait (bounded) for the buffer to be written."""
        self.close()
        with trio.move_on_after(timeout):
            await self._done.wait()

    @property
    def pending(self) -> int:
        return len(self._buffer)
