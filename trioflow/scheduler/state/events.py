"""What goes into the state machine (events) and what comes out (instructions).

Every event class ends in ``Event``; the server builds them from the
messages of its peers (and from its clock: :class:`TickEvent`).  The
instructions name who to tell what; the server only carries them out.
"""

from __future__ import annotations

from typing import Any

import attrs

from ...protocol.messages import Message, TaskSpec
from ...protocol.serialize import Serialized
from ...records import Record, record

# ---------------------------------------------------------------- instructions


@record
class ToWorker(Record):
    """Send ``msg`` to the worker at ``address`` (on its stream)."""

    address: str
    msg: Message


@record
class ToClient(Record):
    """Send ``msg`` to the client ``client`` (on its stream)."""

    client: str
    msg: Message


Instruction = ToWorker | ToClient

# ---------------------------------------------------------------- events


@record(kw_only=True)
class AddWorkerEvent(Record):
    address: str
    name: str
    nthreads: int
    memory_limit: int
    resources: dict[str, float] = attrs.field(factory=dict)
    nanny: str = ""
    pid: int = 0
    local_directory: str = ""
    services: dict[str, int] = attrs.field(factory=dict)
    nbytes: dict[str, int] = attrs.field(factory=dict)


@record(kw_only=True)
class RemoveWorkerEvent(Record):
    address: str
    reason: str = ""
    safe: bool = False  # a clean shutdown: running tasks are not suspicious


@record(kw_only=True)
class AddClientEvent(Record):
    client: str


@record(kw_only=True)
class RemoveClientEvent(Record):
    client: str


@record(kw_only=True)
class UpdateGraphEvent(Record):
    client: str
    tasks: list[TaskSpec]
    keys: list[str]


@record(kw_only=True)
class TaskFinishedEvent(Record):
    worker: str
    key: str
    nbytes: int
    type_name: str = ""
    start: float = 0.0
    stop: float = 0.0


@record(kw_only=True)
class TaskErredEvent(Record):
    worker: str
    key: str
    exception: Serialized | None
    exception_text: str
    traceback_text: str
    type_name: str


@record(kw_only=True)
class ReleaseKeysEvent(Record):
    client: str
    keys: list[str]


@record(kw_only=True)
class CancelKeysEvent(Record):
    client: str
    keys: list[str]


@record(kw_only=True)
class UpdateDataEvent(Record):
    client: str
    who_has: dict[str, list[str]]
    nbytes: dict[str, int]


@record(kw_only=True)
class AddKeysEvent(Record):
    worker: str
    nbytes: dict[str, int]


@record(kw_only=True)
class MissingDataEvent(Record):
    worker: str  # who reports
    key: str
    errant_worker: str  # who was said to hold it


@record(kw_only=True)
class RescheduleEvent(Record):
    worker: str
    key: str


@record(kw_only=True)
class ReleaseWorkerDataEvent(Record):
    worker: str
    keys: list[str]


@record(kw_only=True)
class HeartbeatEvent(Record):
    worker: str
    metrics: dict[str, Any]


@record(kw_only=True)
class StealResponseEvent(Record):
    worker: str
    key: str
    stolen: bool


Event = (
    AddWorkerEvent
    | RemoveWorkerEvent
    | AddClientEvent
    | RemoveClientEvent
    | UpdateGraphEvent
    | TaskFinishedEvent
    | TaskErredEvent
    | ReleaseKeysEvent
    | CancelKeysEvent
    | UpdateDataEvent
    | AddKeysEvent
    | MissingDataEvent
    | ReleaseWorkerDataEvent
    | RescheduleEvent
    | HeartbeatEvent
    | StealResponseEvent
)
