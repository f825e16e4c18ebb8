"""Execution: tasks sent to compute, their runs, and the prefetch.

Ready tasks start in priority order, but a task whose resources are taken
does not hold up those behind it: it is set aside (``constrained``) until a
task holding resources finishes, and the next task whose needs fit goes.

Executor slots: the executor runs ``nthreads`` tasks at once but is handed up
to ``nthreads + prefetch`` of them, so a thread that finishes a task starts
the next one without a round trip through the event loop (a thread hand-off
per task costs more than a small task).  Only tasks whose prefix has been
measured to run shorter than ``prefetch_below`` (:data:`PREFETCH_BELOW`) take a prefetch slot,
only as many as ``prefetch_horizon`` (:data:`PREFETCH_HORIZON`) of their work, and only while
everything already in the executor is measured short too (a task handed over
cannot be stolen any more, so none may wait behind a long run).  For longer
tasks the round trip is noise, and a task handed over early is committed to
run before whatever arrives meanwhile, such as the dependent that would have
consumed (and let go of) the last result.

Data put here directly (scatter, :class:`DataPutEvent`) is authoritative:
over a key being executed, the run goes on *superseded* (see the package
docstring).  A task that erred is reported, then forgotten at the end of
the event: the scheduler never frees it (a retry comes as a new task).
"""

from __future__ import annotations

import heapq

from ...keys import key_prefix
from ...protocol.messages import (
    ComputeTask,
    LongRunning,
    Reschedule,
    StealResponse,
    TaskErred,
    TaskFinished,
)
from .entities import WorkerTask
from .events import (
    ComputeTaskEvent,
    DataPutEvent,
    ExecuteFailureEvent,
    ExecuteRescheduleEvent,
    ExecuteSuccessEvent,
    InvalidWorkerEvent,
    MemorySampleEvent,
    PauseEvent,
    RejoinEvent,
    SecedeEvent,
    StealRequestEvent,
)
from .fetching import Fetching
from .instructions import DropData, Execute, GrantRejoin, ReportPause, SendMsg

__all__ = ["Execution"]


class Execution(Fetching):
    """Task execution of :class:`~trioflow.worker.state.WorkerState`."""

    def _compute_task(self, ev: ComputeTaskEvent) -> None:
        msg = ev.msg
        for k, n in msg.nbytes.items():
            if n < -1:
                raise InvalidWorkerEvent(f"compute-task {msg.key!r}: negative size for {k!r}")
        ts = self.tasks.get(msg.key)
        if ts is not None:
            if self._compute_again(ts):
                return
            if ts.state == "erred":
                self._drop(ts)
                ts = None
        held = self.superseded.pop(msg.key, None)
        if ts is None:
            ts = self.tasks[msg.key] = WorkerTask(msg.key)
        ts.function = msg.function
        ts.args = msg.args
        ts.priority = msg.priority
        ts.resources = dict(msg.resources) if held is None else held
        ts.wanted = True
        ts.cancelled = False
        ts.waiting_for.clear()
        if held is not None:
            # A run of this key still goes on here, superseded by a value
            # put meanwhile (freed since): it becomes this task's run, with
            # the resources it holds.  Starting a second run of the same key
            # would leave two results that the shell cannot tell apart.
            ts.state = "executing"
            self.executing.add(ts)
            return
        to_fetch = self._add_dependencies(ts, msg) if msg.who_has else ()
        if ts.waiting_for:
            ts.state = "waiting"
        else:
            self._make_ready(ts)
        # Queue the fetches only now that the task is 'waiting': a dependency
        # with no holder but us (the scheduler thinks we still have it) makes
        # _missing reschedule its waiting dependents.  Queued from inside the
        # loop, the task was not waiting yet, so it lost the dependency
        # instead and ran without it.
        for dts in to_fetch:
            if dts.state == "fetch" and self.tasks.get(dts.key) is dts:
                self._queue_fetch(dts)

    def _compute_again(self, ts: WorkerTask) -> bool:
        """A key known here is sent to compute: True if that is all done
        (reported, or the run or wait already under way will report)."""
        if ts.state == "memory":
            # Already have it (fetched earlier): report it as done.
            self._out.append(SendMsg(TaskFinished(key=ts.key, nbytes=ts.nbytes, type_name="", start=0.0, stop=0.0)))
            ts.wanted = True
            return True
        # Sent to compute: the scheduler expects this run's outcome
        # reported, not a copy fetched instead.
        ts.replica = False
        if ts.state in ("waiting", "ready", "executing") and not ts.cancelled:
            # A duplicate, or wanted again after a free-keys that kept it
            # only as a local dependency: it must be reported this time
            # (left unwanted, it was dropped silently once that
            # dependent went, and the scheduler waited for ever).
            ts.wanted = True
            return True
        if ts.state == "executing" and ts.cancelled:
            ts.cancelled = False
            ts.wanted = True
            return True
        if ts.state in ("fetch", "flight"):
            # The scheduler now wants us to compute it rather than fetch it.
            self._forget_fetch(ts)
        return False

    def _add_dependencies(self, ts: WorkerTask, msg: ComputeTask) -> list[WorkerTask]:
        """Link ``ts`` to its dependencies; return those to fetch."""
        to_fetch: list[WorkerTask] = []
        for dep_key, holders in msg.who_has.items():
            dts = self.tasks.get(dep_key)
            if dts is None:
                dts = self.tasks[dep_key] = WorkerTask(dep_key)
                dts.wanted = False  # only needed locally, as a dependency
                dts.nbytes = max(msg.nbytes.get(dep_key, 0), 0)
                dts.state = "fetch"
            ts.dependencies.add(dts)
            dts.dependents.add(ts)
            if dts.state != "memory":
                ts.waiting_for.add(dts)
                if dts.state in ("fetch", "flight", "waiting", "ready", "executing"):
                    # Also for a dependency computed here: should that run
                    # fail, the key is fetched from where the scheduler says.
                    for w in holders:
                        if w not in dts.who_has and w != self.address:
                            dts.who_has.append(w)
                    if dts.state == "fetch":
                        to_fetch.append(dts)
                elif dts.state == "erred":
                    # A stale failure of ours: fetch it from where the scheduler says.
                    dts.state = "fetch"
                    dts.who_has = [w for w in holders if w != self.address]
                    to_fetch.append(dts)
        return to_fetch

    def _execute_success(self, ev: ExecuteSuccessEvent) -> None:
        ts = self._run_returned(ev.key)
        if ts is None:
            return
        self._measured(ts.prefix, ev.start, ev.stop)
        ts.nbytes = ev.nbytes
        self._release_deps_of(ts)
        if ts.cancelled:
            ts.cancelled = False
            self._set_memory(ts)
            if not self._needed(ts):
                self._out.append(DropData(ts.key))
                self._set_gone(ts)
                return
            # Freed while it ran, but a task sent here since needs it as a
            # dependency: keep it, and tell the scheduler we hold it.
            self._pending_add_keys[ts.key] = ts.nbytes
        else:
            self._set_memory(ts)
            self._out.append(
                SendMsg(TaskFinished(key=ts.key, nbytes=ev.nbytes, type_name=ev.type_name, start=ev.start, stop=ev.stop, thread=ev.thread))
            )
        # Local tasks may wait for this one: a task is sent here with a
        # dependency that the scheduler has from elsewhere while a stale run
        # of that dependency still goes on here.  Without this they waited
        # for ever.
        self._wake_dependents(ts)

    def _run_returned(self, key: str) -> WorkerTask | None:
        """A run of ``key`` returned: give back its slot and resources.

        Returns:
            The task, out of 'executing'; None for a superseded run (its
            result, which the shell did not store, or error is of no use:
            the key has a put value).

        Raises:
            InvalidWorkerEvent: no run of ``key`` goes on; nothing changed.
        """
        if key in self.seceded:
            self.seceded.discard(key)
            if key in self.rejoining:
                self.rejoining.remove(key)
        held = self.superseded.pop(key, None)
        if held is not None:
            self.executed_count += 1
            self._give_back(held)
            return None
        ts = self.tasks.get(key)
        if ts is None or ts.state != "executing":
            raise InvalidWorkerEvent(f"execution result for {key!r}, which is not executing")
        self.executing.discard(ts)
        self._give_back(ts.resources)
        self.executed_count += 1
        return ts

    def _execute_failure(self, ev: ExecuteFailureEvent) -> None:
        ts = self._run_returned(ev.key)
        if ts is None:
            return
        # (Dependencies were not released for a cancelled run before: they
        # stayed in memory, unwanted, for ever.)
        self._release_deps_of(ts)
        # Fetch the key instead when the scheduler has it elsewhere and
        # needs it here: local tasks wait for it, or it asked for a copy.
        stale, ts.replica = ts.replica, False
        refetch = stale or any(t.state == "waiting" for t in ts.dependents)
        if ts.cancelled:
            ts.cancelled = False
            if not refetch:
                self._set_gone(ts)
                return
        elif not stale:
            # (Not for a run that the scheduler's request for a copy showed
            # to be stale: it has the key in memory, the error is moot.)
            ts.state = "erred"
            self._erred_now.append(ts.key)  # forgotten once reported: see handle
            self._out.append(
                SendMsg(
                    TaskErred(
                        key=ts.key,
                        exception=ev.exception,
                        exception_text=ev.exception_text,
                        traceback_text=ev.traceback_text,
                        type_name=ev.type_name,
                        start=ev.start,
                        stop=ev.stop,
                        thread=ev.thread,
                    )
                )
            )
        if refetch:
            # Local tasks wait for this key, or the scheduler asked for a
            # copy: either way it says the key is in memory elsewhere, and
            # this run was a stale one.  Fetch the key instead (or, with no
            # holder left, reschedule those tasks).
            ts.state = "fetch"
            self._queue_fetch(ts)

    def _execute_reschedule(self, ev: ExecuteRescheduleEvent) -> None:
        ts = self._run_returned(ev.key)
        if ts is None:
            return
        self._release_deps_of(ts)
        cancelled, ts.cancelled = ts.cancelled, False
        # A stale run (the scheduler has the key elsewhere and asked for a
        # copy) has nothing to reschedule: fetch the copy, as after a failure.
        stale, ts.replica = ts.replica, False
        if stale or any(t.state == "waiting" for t in ts.dependents):
            # Local tasks wait for it too: fetch it from wherever the
            # scheduler has or computes it (with no holder, _queue_fetch
            # reschedules them).
            ts.state = "fetch"
            self._queue_fetch(ts)
        else:
            self._set_gone(ts)
        if not cancelled and not stale:
            self._out.append(SendMsg(Reschedule(key=ev.key)))

    def _data_put(self, ev: DataPutEvent) -> None:
        for key, n in ev.nbytes.items():
            if n < 0:
                raise InvalidWorkerEvent(f"negative size for {key!r}")
        for key, n in ev.nbytes.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = WorkerTask(key)
            elif ts.state == "executing":
                # The put value wins over the run's result to come (and
                # error): the run goes on, superseded, holding its slot and
                # resources until it returns.  Its inputs are not needed
                # here any more (the run holds its own references).
                self.executing.discard(ts)
                self.superseded[key] = ts.resources
                ts.resources = {}
                ts.cancelled = False
                self._release_deps_of(ts)
            elif ts.state in ("fetch", "flight"):
                self._forget_fetch(ts)
            elif ts.state == "memory":
                # A new value replaces the old: _set_memory below counts
                # only keys that were not in memory yet.
                self.nbytes_in_memory += max(n, 0) - max(ts.nbytes, 0)
            ts.nbytes = n
            ts.wanted = True
            self._set_memory(ts)
            self._wake_dependents(ts)

    def _steal_request(self, ev: StealRequestEvent) -> None:
        # Only a task that has not started may go: one already handed to the
        # executor cannot be taken back from its thread.
        ts = self.tasks.get(ev.key)
        stolen = ts is not None and ts.state in ("waiting", "ready") and not ts.cancelled
        # Nor one that a task here waits for: dropping it stranded that task
        # 'waiting' for nothing (it has no holder to fetch the key from).
        stolen = stolen and ts is not None and not any(t.state == "waiting" for t in ts.dependents)
        if stolen:
            assert ts is not None
            self._drop(ts)
        self._out.append(SendMsg(StealResponse(key=ev.key, stolen=stolen)))


    def _secede(self, ev: SecedeEvent) -> None:
        ts = self.tasks.get(ev.key)
        running = ev.key in self.superseded or (ts is not None and ts.state == "executing")
        if not running or ev.key in self.seceded:
            raise InvalidWorkerEvent(f"secede from {ev.key!r}, which is not a run holding a slot here")
        self.seceded.add(ev.key)
        if ts is not None and ts.state == "executing":
            # The scheduler counts it out of this worker's load too: tasks
            # it waits for (submitted from inside it) must be sent here.
            self._out.append(SendMsg(LongRunning(key=ev.key)))

    def _rejoin(self, ev: RejoinEvent) -> None:
        if ev.key not in self.seceded or ev.key in self.rejoining:
            raise InvalidWorkerEvent(f"rejoin of {ev.key!r}, which has not seceded")
        self.rejoining.append(ev.key)

    def _grant_rejoins(self) -> None:
        """Give free slots to seceded runs asking to rejoin, before ready
        tasks (as a thread pool serves a rejoining thread first)."""
        while self.rejoining and self.n_executing < self.nthreads:
            key = self.rejoining.pop(0)
            self.seceded.discard(key)
            self._out.append(GrantRejoin(key))

    def _pause(self, ev: PauseEvent) -> None:
        self.paused = ev.paused

    def _memory_sample(self, ev: MemorySampleEvent) -> None:
        # Over the threshold: start nothing new (the shell has spilled what
        # it could first).  Resume only well under it.
        if ev.rss > ev.pause_at and not self.paused:
            self.paused = True
            self._out.append(ReportPause(True, ev.rss))
        elif ev.rss < ev.pause_at * self.memory_resume_fraction and self.paused:
            self.paused = False
            self._out.append(ReportPause(False, ev.rss))


    def _give_back(self, resources: dict[str, float]) -> None:
        for name, need in resources.items():
            self.available_resources[name] = self.available_resources.get(name, 0.0) + need
        if resources and self.constrained:
            # Resources came back: the tasks set aside for want of them
            # compete again, by priority (less those dropped meanwhile).
            self.ready.extend(e for e in self.constrained if e[2].state == "ready")
            self.constrained.clear()
            heapq.heapify(self.ready)


    def _short(self, prefix: str) -> float | None:
        """The measured run time of a key prefix if under ``prefetch_below``."""
        d = self.durations.get(prefix)
        return d if d is not None and d < self.prefetch_below else None

    def _runs_only_short(self) -> bool:
        """Is every run in the executor (superseded ones too) measured short?"""
        return all(self._short(t.prefix) is not None for t in self.executing) and all(
            self._short(key_prefix(k)) is not None for k in self.superseded
        )

    def _may_start(self, ts: WorkerTask, only_short: bool | None = None) -> bool:
        """May ``ts`` be handed to the executor now (a slot being free)?

        Beyond one per thread, only a task measured short, and only while
        everything in the executor is too: a task handed over can no longer
        be stolen, so nothing queues behind a run that may take long.
        ``only_short`` is :meth:`_runs_only_short`, if the caller knows it.
        """
        if self.n_executing < self.nthreads:
            return True
        d = self._short(ts.prefix)
        if d is None or not (self._runs_only_short() if only_short is None else only_short):
            return False
        per_thread = min(self.prefetch_max, max(1, int(self.prefetch_horizon / d))) if d > 0 else self.prefetch_max
        return self.n_executing < self.nthreads + max(2, per_thread * self.nthreads)

    def _measured(self, prefix: str, start: float, stop: float) -> None:
        if stop <= start:
            return  # no timing (or a clock step): learn nothing
        old = self.durations.get(prefix)
        if old is None and len(self.durations) >= 10_000:
            self.durations.clear()  # keys without a shared prefix: keep it bounded
        d = stop - start
        self.durations[prefix] = d if old is None else 0.5 * (old + d)


    def _start_runs(self) -> None:
        """Hand ready tasks to the executor, by priority, while slots allow."""
        if self.rejoining:
            self._grant_rejoins()
        if self.paused:
            return
        only_short = self._runs_only_short()
        while self.ready and self.n_executing < self.slots:
            entry = self.ready[0]
            ts = entry[2]
            if ts.state != "ready":
                heapq.heappop(self.ready)
                continue
            if not self._may_start(ts, only_short):
                break  # no thread free, and not known to be short
            heapq.heappop(self.ready)
            if ts.resources and not self._take_resources(ts):
                # Its resources are taken: set it aside rather than
                # stop here, or the tasks behind it (needing nothing,
                # or resources still free) waited while threads idled.
                self.constrained.append(entry)
                continue
            ts.state = "executing"
            self.executing.add(ts)
            only_short = only_short and self._short(ts.prefix) is not None
            assert ts.function is not None and ts.args is not None
            self._out.append(Execute(ts.key, ts.function, ts.args, tuple(d.key for d in ts.dependencies)))

    def _fits(self, ts: WorkerTask) -> bool:
        return all(self.available_resources.get(name, 0.0) >= need for name, need in ts.resources.items())

    def _take_resources(self, ts: WorkerTask) -> bool:
        if not self._fits(ts):
            return False
        for name, need in ts.resources.items():
            self.available_resources[name] -= need
        return True
