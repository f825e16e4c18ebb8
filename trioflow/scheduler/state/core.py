"""The state machine's data and the small helpers every layer uses.

:class:`StateCore` holds every table of the state (tasks, workers, clients,
the queue, pending steals, counters) and the bookkeeping that keeps both
sides of a link in step (replicas, counts, errors, client reports).  The
layers above it add the decisions: :mod:`.placement`, :mod:`.queuing`,
:mod:`.transitions`, :mod:`.stealing`, :mod:`.validation` and, on top, the
event handlers of :mod:`.machine`.  Each layer is a base class of the next,
so a call from one to another is an ordinary method lookup (cached by
CPython), not an extra hop.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from ...protocol.messages import KeyErred, KeyInMemory
from ...protocol.serialize import dumps
from .entities import (
    ALL_STATES,
    ClientState,
    Recommendations,
    Restart,
    Retirement,
    TaskState,
    WorkerState,
)
from .events import Instruction, ToClient
from .exceptions import InvalidEvent

#: The client id that stands for fire-and-forget wants (in messages: none).
FIRE_AND_FORGET = "fire-and-forget"
DEFAULT_DURATION = 0.5
DEFAULT_BANDWIDTH = 100e6
#: Transitions kept for ``client.story`` (the newest).
TRANSITION_LOG_LENGTH = 20_000


def _key_in_memory(ts: TaskState) -> KeyInMemory:
    """Tell a client its key is ready, and where: its gather then goes
    straight to a holder instead of asking us first."""
    return KeyInMemory(key=ts.key, type_name=ts.result_type, who_has=[w.address for w in ts.who_has], nbytes=ts.nbytes)


class StateCore:
    """The state's tables and shared bookkeeping (see the module docstring)."""

    def __init__(
        self,
        *,
        allowed_failures: int = 3,
        bandwidth: float = DEFAULT_BANDWIDTH,
        validate: bool = False,
        worker_saturation: float = 1.1,
        scheduler_id: str = "",
        worker_ttl: float | None = None,
    ) -> None:
        if not worker_saturation > 0:
            raise ValueError(f"worker_saturation must be positive, got {worker_saturation}")
        #: Root tasks (no dependencies, no restrictions) go to a worker only
        #: while it runs fewer than ceil(nthreads * worker_saturation) tasks
        #: (more while those are measured short, see QUEUE_HORIZON); the
        #: rest wait in ``queued`` at the scheduler, so a huge graph does
        #: not land on the workers all at once.  ``inf`` turns it off.
        self.worker_saturation = worker_saturation
        self.queued: dict[TaskState, None] = {}
        self._queue_heap: list[tuple[int, int, TaskState]] = []
        self._queue_seq = 0
        self._to_fill: set[WorkerState] = set()
        #: Work stealing: tasks asked back from a busy worker -> the idle
        #: worker that will get them if the busy one had not started them.
        self.stealing: dict[TaskState, WorkerState] = {}
        self._worker_list: list[WorkerState] | None = None
        self._cursor = 0
        self._idle_candidates: set[WorkerState] = set()
        self.steal_count = 0
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.clients: dict[str, ClientState] = {}
        self.unrunnable: set[TaskState] = set()
        self.allowed_failures = allowed_failures
        self.bandwidth = bandwidth
        self.validate_after_each = validate
        self.generation = 0
        self.prefix_durations: dict[str, float] = {}
        self.names: dict[str, str] = {}  # worker name -> address
        self.transition_counter = 0
        #: The newest transitions, for ``client.story``: (key, from, to,
        #: worker it is processing on or "", time of the event).
        self.transition_log: collections.deque[tuple[str, str, str, str, float]] = collections.deque(maxlen=TRANSITION_LOG_LENGTH)
        self.task_counts: dict[str, int] = dict.fromkeys(ALL_STATES[:-1], 0)
        self.now = 0.0
        self._out: list[Instruction] = []
        self._pending_unrunnable: set[TaskState] = set()
        self._maybe_unwanted: set[TaskState] = set()
        self._to_run: set[TaskState] = set()
        # Per-prefix task counts by state, for progress displays.
        self.prefix_counts: dict[str, dict[str, int]] = {}
        #: The id the workers are told at registration.
        self.scheduler_id = scheduler_id
        #: Seconds of silence after which a worker is removed (None: ten
        #: heartbeat intervals, at least 10 s; see :meth:`worker_ttl_now`).
        self.worker_ttl = worker_ttl
        #: The wants of fire-and-forget keys.  Not a connected client (not
        #: in ``clients``, never told anything): a key it wants is kept until
        #: it is in memory, erred or cancelled, and then released.
        self.fire_and_forget = ClientState(FIRE_AND_FORGET)
        #: Workers told to close (retired, or restarted without a nanny):
        #: their removal is a clean one (their tasks are not suspicious).
        self.told_to_close: set[str] = set()
        #: Retirements under way, by request.
        self.retirements: dict[str, Retirement] = {}
        #: Restarts under way, by request.
        self.restarts: dict[str, Restart] = {}

    def heartbeat_interval(self) -> float:
        """Seconds between a worker's heartbeats: slower in a large cluster."""
        return min(max(len(self.workers) / 200, 0.5), 5.0)

    def worker_ttl_now(self) -> float:
        """Seconds of silence after which a worker is removed."""
        ttl = self.worker_ttl
        return ttl if ttl is not None else max(10.0, 10 * self.heartbeat_interval())

    def _client(self, client: str) -> ClientState:
        try:
            return self.clients[client]
        except KeyError:
            raise InvalidEvent(f"unknown client {client!r}") from None

    def _prefix_count(self, prefix: str, state: str, delta: int) -> None:
        counts = self.prefix_counts.get(prefix)
        if counts is None:
            counts = self.prefix_counts[prefix] = {}
        counts[state] = counts.get(state, 0) + delta

    def _update_duration(self, prefix: str, duration: float) -> None:
        old = self.prefix_durations.get(prefix)
        self.prefix_durations[prefix] = duration if old is None else 0.5 * old + 0.5 * duration

    def _add_replica(self, ts: TaskState, ws: WorkerState, nbytes: int) -> None:
        # A key has one size; when a new report changes it, every holder's
        # total moves with it, or removing a replica later would subtract
        # the wrong amount and drive ``ws.nbytes`` away from (even below) 0.
        delta = max(nbytes, 0) - max(ts.nbytes, 0)
        if delta:
            for other in ts.who_has:
                other.nbytes += delta
        ts.nbytes = nbytes
        if ws not in ts.who_has:
            ts.who_has.add(ws)
            ws.has_what[ts] = None
            ws.nbytes += max(nbytes, 0)

    def _remove_replica(self, ts: TaskState, ws: WorkerState) -> None:
        ts.who_has.discard(ws)
        if ws.has_what.pop(ts, 0) is None:
            ws.nbytes -= max(ts.nbytes, 0)

    def _set_exception(self, ts: TaskState, exc: BaseException, worker: str = "") -> None:
        ts.exception = dumps(exc)
        ts.exception_text = str(exc)
        ts.traceback_text = ""
        ts.type_name = type(exc).__name__
        ts.erred_by = worker

    def _maybe_release(self, ts: TaskState, recs: Recommendations) -> None:
        if ts.who_wants or ts.waiters:
            return
        if ts.state in ("released",):
            if not ts.dependents:
                recs[ts] = "forgotten"
        elif ts.state == "erred":
            # An erred task stays erred (it is the blame of its dependents)
            # until nothing depends on it any more.
            if not ts.dependents:
                recs[ts] = "forgotten"
        else:
            recs[ts] = "released"

    def _fire_and_forget_done(self, ts: TaskState) -> None:
        """``ts`` finished: a fire-and-forget want of it is over."""
        ff = self.fire_and_forget
        if ff in ts.who_wants:
            ts.who_wants.discard(ff)
            ff.wants_what.discard(ts)

    def _report_erred(self, ts: TaskState, clients: Iterable[ClientState]) -> None:
        blame = ts.exception_blame or ts
        for cs in clients:
            self._out.append(
                ToClient(
                    cs.client_id,
                    KeyErred(
                        key=ts.key,
                        exception=blame.exception,
                        exception_text=blame.exception_text,
                        traceback_text=blame.traceback_text,
                        type_name=blame.type_name,
                    ),
                )
            )

    def _count_move(self, ts: TaskState, start: str, end: str) -> None:
        if end != start:
            counts = self.task_counts
            counts[start] -= 1
            if end != "forgotten":
                counts[end] += 1
            pc = self.prefix_counts[ts.prefix]
            pc[start] -= 1
            if end != "forgotten":
                pc[end] = pc.get(end, 0) + 1
