"""What the worker's state machine asks its shell to do (its only output)."""

from __future__ import annotations

from ...protocol.messages import Message
from ...protocol.serialize import Serialized
from ...records import Record, record

__all__ = ["DisconnectScheduler", "DropData", "Execute", "GatherDep", "GrantRejoin", "Instruction", "ReportPause", "SendMsg"]


@record
class Execute(Record):
    """Run a task in the executor, with the values of ``dependencies``."""

    key: str
    function: bytes
    args: Serialized
    dependencies: tuple[str, ...]


@record
class GatherDep(Record):
    """Fetch ``keys`` (about ``nbytes`` in all) from the peer ``worker``;
    report with GatherDepDoneEvent or GatherDepFailedEvent."""

    worker: str
    keys: tuple[str, ...]
    nbytes: int


@record
class SendMsg(Record):
    """Send ``msg`` to the scheduler (batched)."""

    msg: Message


@record
class DropData(Record):
    """Remove the value of ``key`` from the local store."""

    key: str


@record
class ReportPause(Record):
    """Memory made the worker pause (``paused``) or resume, at ``rss``
    bytes: log it and tell the scheduler now (a heartbeat)."""

    paused: bool
    rss: int


@record
class DisconnectScheduler(Record):
    """Give the scheduler connection up as lost (then reconnect or close,
    as configured): it has been silent too long."""

    reason: str


@record
class GrantRejoin(Record):
    """A slot is free for the seceded run of ``key`` that asked to rejoin:
    let its thread go on."""

    key: str


Instruction = Execute | GatherDep | SendMsg | DropData | ReportPause | DisconnectScheduler | GrantRejoin
