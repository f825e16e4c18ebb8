"""The scheduler link: registration, its settings, and its liveness.

A cut link or a frozen host never closes the stream, so silence is the only
sign of a lost scheduler: the shell notes when it last heard anything
(``scheduler_heard_at``) and fires :class:`SchedulerTimerEvent` with the
time; a scheduler silent for longer than it would wait for us (its worker
TTL plus two heartbeats) is given up (:class:`DisconnectScheduler`).

After a loss, :meth:`SchedulerLink.after_scheduler_lost` makes the state a
new scheduler starts from: the keys in memory, nothing else.
"""

from __future__ import annotations

from typing import Self

from .entities import WorkerTask
from .events import FreeKeysEvent, HeartbeatAckEvent, RegisteredEvent, SchedulerTimerEvent
from .execution import Execution
from .instructions import DisconnectScheduler

__all__ = ["SchedulerLink"]


class SchedulerLink(Execution):
    """Scheduler-link handling of :class:`~trioflow.worker.state.WorkerState`."""

    def _registered(self, ev: RegisteredEvent) -> None:
        self.heartbeat_interval = ev.heartbeat_interval
        self.scheduler_ttl = ev.worker_ttl
        self.scheduler_heard_at = ev.now
        if ev.forget:
            # Keys we reported holding that the scheduler does not want.
            self._free_keys(FreeKeysEvent(keys=ev.forget))

    def _heartbeat_ack(self, ev: HeartbeatAckEvent) -> None:
        self.heartbeat_interval = ev.heartbeat_interval
        self.scheduler_ttl = ev.worker_ttl

    @property
    def scheduler_silence_limit(self) -> float:
        """Seconds of silence after which the scheduler is given up."""
        return self.scheduler_ttl + 2 * self.heartbeat_interval

    def _scheduler_timer(self, ev: SchedulerTimerEvent) -> None:
        limit = self.scheduler_silence_limit
        silent = ev.now - self.scheduler_heard_at
        if silent > limit:
            self._out.append(DisconnectScheduler(f"the scheduler has been silent for {silent:.1f}s (limit {limit:.1f}s)"))

    def scheduler_timer_delay(self, now: float) -> float:
        """When (seconds after ``now``) to fire the next SchedulerTimerEvent:
        just past the silence limit, and at least once a heartbeat period."""
        silent = now - self.scheduler_heard_at
        return min(self.scheduler_silence_limit - silent, self.heartbeat_interval) + 0.01

    def rejoin_deadline(self, now: float) -> float:
        """Until when to ask again a scheduler that refuses our registration
        (at ``now``): one that has not yet noticed our old stream is gone
        refuses the address (or name) as taken, and drops the old entry
        within its worker TTL; so twice that, and 5 s more."""
        return now + 2 * self.scheduler_ttl + 5

    def after_scheduler_lost(self) -> Self:
        """A new state to register with a new scheduler: the same settings,
        the keys held in memory here, nothing else (runs still going finish
        into the void, their keys unknown to the new state)."""
        new = type(self)(
            address=self.address,
            nthreads=self.nthreads,
            resources=self.total_resources,
            prefetch=self.slots - self.nthreads,
            max_transfer_bytes=self.max_transfer_bytes,
            max_concurrent_fetches=self.max_concurrent_fetches,
            validate=self.validate_after_each,
        )
        # The last scheduler's settings hold until the next one's come.
        new.heartbeat_interval = self.heartbeat_interval
        new.scheduler_ttl = self.scheduler_ttl
        for key, t in self.tasks.items():
            if t.state == "memory":
                nt = WorkerTask(key)
                nt.state = "memory"
                nt.nbytes = t.nbytes
                new.tasks[key] = nt
                new.nbytes_in_memory += max(t.nbytes, 0)
        return new
