"""Every message trioflow peers exchange, one frozen attrs class per operation.

Theory of operation
-------------------
A message is a frozen, slotted, keyword-only attrs class whose class-level
``op`` names the operation.  On the wire a message is a msgpack map with an
``"op"`` entry plus one entry per field (see :mod:`trioflow.protocol.codec`).
The set of classes is closed: :data:`MESSAGES` maps every ``op`` to its class,
and the decoder refuses anything else.

User data never appears here as Python objects: it is a
:class:`~trioflow.protocol.serialize.Serialized` (opaque bytes plus buffers)
that the codec moves as out-of-band frames.  The scheduler routes those
without unpickling them.

Who sends what:

* every connection opens with :class:`Hello` from both sides;
* workers register with :class:`RegisterWorker` and then keep a batched
  stream: worker→scheduler ``TaskFinished``, ``TaskErred``, ``AddKeys``,
  ``MissingData``, ``Heartbeat``; scheduler→worker ``ComputeTask``,
  ``FreeKeys``, ``CloseWorker``, ``HeartbeatAck``;
* clients register with :class:`RegisterClient` and keep a batched stream:
  client→scheduler ``UpdateGraph``, ``ReleaseKeys``, ``CancelKeys``,
  ``UpdateData``; scheduler→client ``KeyInMemory``, ``KeyErred``,
  ``KeyCancelled``;
* request/response calls (``WhoHas``, ``GetData``, ``PutData``, ...) go over
  pooled connections, one request at a time per connection, and are answered
  by their ``...Reply`` class or :class:`ErrorReply`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import attrs

from ..config import WorkerConfig
from ..records import Record, record
from .serialize import Serialized

PROTOCOL_VERSION = 1

#: op -> message class, the closed set the decoder accepts.
MESSAGES: dict[str, type[Message]] = {}

_T = TypeVar("_T")


class Message(Record):
    """Base of every message class (``repr``, ``==`` and ``hash`` come from
    :class:`~trioflow.records.Record`)."""

    __slots__ = ()
    op: ClassVar[str]


@typing.dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(attrs.field,))
def message(op: str) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: make a frozen keyword-only attrs message tagged ``op``."""

    def wrap(cls: type[_T]) -> type[_T]:
        if op in MESSAGES:
            raise ValueError(f"duplicate message op {op!r}")
        cls.op = op  # type: ignore[attr-defined]
        new = record(kw_only=True)(cls)
        MESSAGES[op] = new  # type: ignore[assignment]
        return new

    return wrap


def _empty_list() -> list[Any]:
    return []


def _empty_dict() -> dict[Any, Any]:
    return {}


# ---------------------------------------------------------------- handshake


@message("hello")
class Hello(Message):
    """First message on every connection, from both sides."""

    role: str  # "scheduler", "worker", "client", "nanny", "rpc"
    name: str
    version: int
    address: str = ""


@message("handshake-rejected")
class HandshakeRejected(Message):
    reason: str


# ---------------------------------------------------------------- generic replies


@message("ok")
class Ok(Message):
    pass


@message("error")
class ErrorReply(Message):
    """A request failed; ``message`` says why in words for a person."""

    message: str


# ---------------------------------------------------------------- registration


@message("register-worker")
class RegisterWorker(Message):
    address: str
    name: str
    nthreads: int
    memory_limit: int
    resources: dict[str, float] = attrs.field(factory=_empty_dict)
    nanny: str = ""
    pid: int = 0
    local_directory: str = ""
    nbytes: dict[str, int] = attrs.field(factory=_empty_dict)  # keys already held
    services: dict[str, int] = attrs.field(factory=_empty_dict)


@message("worker-registered")
class WorkerRegistered(Message):
    scheduler_id: str
    heartbeat_interval: float
    #: Seconds of silence after which the scheduler drops the worker; the
    #: worker gives up on a silent scheduler after about as long.
    worker_ttl: float = 0.0
    forget: list[str] = attrs.field(factory=_empty_list)  # held keys the scheduler doesn't want
    #: Worker plugins registered by clients (name -> pickled plugin), set up
    #: by the worker before it takes work.
    plugins: dict[str, bytes] = attrs.field(factory=_empty_dict)


@message("register-client")
class RegisterClient(Message):
    client_id: str


@message("client-registered")
class ClientRegistered(Message):
    scheduler_id: str
    address: str


# ---------------------------------------------------------------- worker -> scheduler


@message("heartbeat")
class Heartbeat(Message):
    memory: int  # process RSS
    managed: int  # bytes of task results held in memory
    spilled: int  # bytes spilled to disk
    cpu: float  # percent
    executing: int
    ready: int
    in_memory: int  # number of keys held
    bandwidth: float  # bytes/s, recent average of peer transfers
    paused: bool = False
    #: Transfers from peers since the last heartbeat: (peer, bytes, start, stop, keys).
    transfers: list[tuple[str, int, float, float, int]] = attrs.field(factory=_empty_list)


@message("heartbeat-ack")
class HeartbeatAck(Message):
    """The scheduler's answer to every heartbeat: proof of life for the worker,
    and the current pace (both grow with the cluster)."""

    heartbeat_interval: float
    worker_ttl: float


@message("task-finished")
class TaskFinished(Message):
    key: str
    nbytes: int
    type_name: str
    start: float
    stop: float
    thread: int = 0


@message("task-erred")
class TaskErred(Message):
    key: str
    exception: Serialized | None
    exception_text: str
    traceback_text: str
    type_name: str
    start: float = 0.0
    stop: float = 0.0
    thread: int = 0


@message("add-keys")
class AddKeys(Message):
    """The worker now holds these keys (fetched or received by scatter)."""

    nbytes: dict[str, int]


@message("missing-data")
class MissingData(Message):
    """A dependency could not be fetched from the worker said to hold it."""

    key: str
    worker: str


@message("reschedule")
class Reschedule(Message):
    """The worker cannot run this task as things stand (a dependency could
    not be fetched from anywhere); the scheduler should place it again."""

    key: str


@message("long-running")
class LongRunning(Message):
    """The task left its worker's thread pool (``secede()``) to wait: the
    scheduler counts it out of the worker's load, so that the tasks it
    waits for may be sent there."""

    key: str


@message("release-worker-data")
class ReleaseWorkerData(Message):
    """The worker no longer holds these keys (it dropped or lost them)."""

    keys: list[str]


@message("worker-unregister")
class WorkerUnregister(Message):
    """The worker is closing cleanly."""

    reason: str


# ---------------------------------------------------------------- scheduler -> worker


@message("compute-task")
class ComputeTask(Message):
    key: str
    function: bytes
    args: Serialized
    who_has: dict[str, list[str]]  # dependency key -> worker addresses
    nbytes: dict[str, int]  # dependency key -> size
    priority: tuple[int, int, int]
    resources: dict[str, float] = attrs.field(factory=_empty_dict)
    duration: float = 0.5  # expected seconds, for the worker's own estimates


@message("free-keys")
class FreeKeys(Message):
    keys: list[str]


@message("steal-request")
class StealRequest(Message):
    """Give this task back if it has not started: an idle worker will run it."""

    key: str


@message("steal-response")
class StealResponse(Message):
    """Answer to :class:`StealRequest`: ``stolen`` if the task was dropped here."""

    key: str
    stolen: bool


@message("acquire-replicas")
class AcquireReplicas(Message):
    """Fetch copies of these keys from the workers named and keep them (the
    holder is about to retire)."""

    who_has: dict[str, list[str]]
    nbytes: dict[str, int]


@message("close-worker")
class CloseWorker(Message):
    reason: str


# ---------------------------------------------------------------- client -> scheduler


@attrs.frozen(kw_only=True, slots=True)
class TaskSpec:
    """One task of a graph as the client submits it."""

    key: str
    function: bytes
    args: Serialized
    dependencies: list[str] = attrs.field(factory=_empty_list)
    priority: int = 0
    workers: list[str] = attrs.field(factory=_empty_list)
    allow_other_workers: bool = False
    resources: dict[str, float] = attrs.field(factory=_empty_dict)
    retries: int = 0


@message("update-graph")
class UpdateGraph(Message):
    tasks: list[TaskSpec]
    keys: list[str]  # the keys this client wants (holds futures for)


@message("release-keys")
class ReleaseKeys(Message):
    keys: list[str]


@message("cancel-keys")
class CancelKeys(Message):
    keys: list[str]


@message("fire-and-forget")
class FireAndForget(Message):
    """Keep computing these keys even after this client releases them; the
    scheduler forgets each once it has finished (or failed)."""

    keys: list[str]


@message("update-data")
class UpdateData(Message):
    """The client scattered these keys straight to these workers."""

    who_has: dict[str, list[str]]
    nbytes: dict[str, int]


@message("close-client")
class CloseClient(Message):
    pass


@message("log-event")
class LogEvent(Message):
    """Log ``msg`` (pickled by the sender; the scheduler never opens it)
    under each of ``topics`` at ``time``; from a worker or a client."""

    topics: list[str]
    time: float
    msg: Serialized


@message("subscribe-topic")
class SubscribeTopic(Message):
    """Send this client every event logged under ``topic`` from now on."""

    topic: str


@message("unsubscribe-topic")
class UnsubscribeTopic(Message):
    topic: str


# ---------------------------------------------------------------- scheduler -> client


@message("key-in-memory")
class KeyInMemory(Message):
    key: str
    type_name: str = ""
    #: Where the value is, when it is announced (a hint: it may move).
    who_has: list[str] = attrs.field(factory=_empty_list)
    nbytes: int = -1


@message("key-erred")
class KeyErred(Message):
    key: str
    exception: Serialized | None
    exception_text: str
    traceback_text: str
    type_name: str


@message("key-cancelled")
class KeyCancelled(Message):
    key: str
    reason: str = ""


@message("topic-event")
class TopicEvent(Message):
    """An event logged under a topic this client subscribes to."""

    topic: str
    time: float
    msg: Serialized


@message("scheduler-closing")
class SchedulerClosing(Message):
    reason: str


# ---------------------------------------------------------------- requests to the scheduler


@attrs.frozen(kw_only=True, slots=True)
class LoggedEvent:
    """One event of a topic's log."""

    time: float
    msg: Serialized


@message("get-events")
class GetEvents(Message):
    """The events logged under ``topic`` (None: every topic)."""

    topic: str | None = None


@message("events-reply")
class EventsReply(Message):
    events: dict[str, list[LoggedEvent]]


@message("who-has")
class WhoHas(Message):
    keys: list[str] | None = None


@message("who-has-reply")
class WhoHasReply(Message):
    who_has: dict[str, list[str]]
    #: Size of each key held somewhere, as the workers reported it (-1: unknown).
    nbytes: dict[str, int] = attrs.field(factory=_empty_dict)


@message("has-what")
class HasWhat(Message):
    workers: list[str] | None = None


@message("has-what-reply")
class HasWhatReply(Message):
    has_what: dict[str, list[str]]


@message("identity")
class IdentityRequest(Message):
    pass


@attrs.frozen(kw_only=True, slots=True)
class WorkerInfo:
    name: str
    nthreads: int
    memory_limit: int
    resources: dict[str, float]
    nanny: str = ""
    pid: int = 0
    local_directory: str = ""
    memory: int = 0
    managed: int = 0
    spilled: int = 0
    cpu: float = 0.0
    executing: int = 0
    in_memory: int = 0
    paused: bool = False
    last_seen: float = 0.0
    services: dict[str, int] = attrs.field(factory=_empty_dict)


@message("identity-reply")
class IdentityReply(Message):
    scheduler_id: str
    address: str
    workers: dict[str, WorkerInfo]
    services: dict[str, int] = attrs.field(factory=_empty_dict)
    started: float = 0.0
    n_tasks: int = 0
    n_clients: int = 0


@message("profile")
class ProfileRequest(Message):
    """A worker's profile tree (the live page's profile view)."""

    prefix: str | None = None
    start: float | None = None
    stop: float | None = None


@message("profile-reply")
class ProfileReply(Message):
    #: The tree in dask's dict shape, as JSON text.
    tree: str
    #: The task prefixes the worker has samples of.
    prefixes: list[str] = attrs.field(factory=_empty_list)


@message("call-stacks")
class CallStackRequest(Message):
    """What a worker's running tasks are doing now (the live page)."""

    keys: list[str] | None = None


@message("call-stacks-reply")
class CallStackReply(Message):
    #: key -> the task's stack as text lines, outermost frame first.
    stacks: dict[str, list[str]]


@message("story")
class StoryRequest(Message):
    """The scheduler's transitions of these keys (``client.story``)."""

    keys: list[str]


@message("story-reply")
class StoryReply(Message):
    #: (key, from state, to state, worker it was processing on or "", time).
    events: list[tuple[str, str, str, str, float]]


@message("shutdown")
class Shutdown(Message):
    pass


@message("retire-workers")
class RetireWorkers(Message):
    workers: list[str]
    #: How long to wait for the copies of the data only they hold.
    timeout: float = 60.0


@message("retire-workers-reply")
class RetireWorkersReply(Message):
    retired: list[str]


@message("restart")
class Restart(Message):
    timeout: float = 30.0


# ---------------------------------------------------------------- requests to workers


@message("get-data")
class GetData(Message):
    keys: list[str]


@message("data-reply")
class DataReply(Message):
    data: dict[str, Serialized]
    missing: list[str] = attrs.field(factory=_empty_list)


@message("put-data")
class PutData(Message):
    data: dict[str, Serialized]


@message("run-function")
class RunFunction(Message):
    function: bytes
    args: Serialized


@message("actor-call")
class ActorCall(Message):
    """Call method ``name`` (``kind="call"``; ``args`` pickles ``(args,
    kwargs)``) or read attribute ``name`` (``kind="getattr"``) of the actor
    held under ``key``; the worker answers with a RunReply."""

    key: str
    name: str
    kind: str
    args: Serialized


@message("run-reply")
class RunReply(Message):
    result: Serialized | None
    exception: Serialized | None = None
    exception_text: str = ""
    traceback_text: str = ""
    type_name: str = ""


# ---------------------------------------------------------------- requests to nannies


@message("nanny-restart")
class NannyRestart(Message):
    reason: str = ""


@message("nanny-kill")
class NannyKill(Message):
    reason: str = ""


# ---------------------------------------------------------------- nanny -> its worker process


@record(kw_only=True)
class TLSSettings(Record):
    """:class:`~trioflow.Security` as plain data (``Security.to_dict()``):
    each ``tls_*`` a path or PEM text."""

    tls_ca_file: str | None = None
    tls_client_cert: str | None = None
    tls_client_key: str | None = None
    tls_scheduler_cert: str | None = None
    tls_scheduler_key: str | None = None
    tls_worker_cert: str | None = None
    tls_worker_key: str | None = None
    tls_min_version: str = "1.2"
    require_encryption: bool = False


@message("start-worker-process")
class StartWorkerProcess(Message):
    """The first (and only) message a nanny writes to its worker process's
    stdin: what to run.  ``workspace`` is the scratch directory the nanny
    made (and removes); ``nanny`` the nanny's address."""

    config: WorkerConfig
    security: TLSSettings | None = None
    workspace: str = ""
    nanny: str = ""


# ---------------------------------------------------------------- coordination primitives
#
# Requests to the scheduler on pooled connections (see
# trioflow.scheduler.extensions).  ``client`` is the asking client's id: what
# it holds or waits for goes when it leaves.  ``timeout`` None waits forever.
# A wait that reaches its timeout is answered with PrimitiveTimedOut.  User
# values travel as ``data`` (opaque to the scheduler) plus ``keys``, the
# futures they reference, which the scheduler keeps alive meanwhile.


@attrs.frozen(kw_only=True, slots=True)
class PrimitiveItem:
    """One user value kept by a primitive: bytes and the future keys inside."""

    data: Serialized
    keys: list[str] = attrs.field(factory=_empty_list)


@message("primitive-timed-out")
class PrimitiveTimedOut(Message):
    pass


@message("bool-reply")
class BoolReply(Message):
    value: bool


@message("int-reply")
class IntReply(Message):
    value: int


@message("names-reply")
class NamesReply(Message):
    names: list[str]


@message("item-reply")
class ItemReply(Message):
    """A user value; ``data`` None: there is none (no such dataset)."""

    data: Serialized | None
    keys: list[str] = attrs.field(factory=_empty_list)


@message("items-reply")
class ItemsReply(Message):
    items: list[PrimitiveItem]


@message("variable-set")
class VariableSet(Message):
    client: str
    name: str
    data: Serialized
    keys: list[str] = attrs.field(factory=_empty_list)


@message("variable-get")
class VariableGet(Message):
    """Answered with ItemReply once the variable has a value."""

    client: str
    name: str
    timeout: float | None = None


@message("variable-delete")
class VariableDelete(Message):
    client: str
    name: str


@message("queue-create")
class QueueCreate(Message):
    """Use (and create, if new) a queue; answered with its maxsize."""

    client: str
    name: str
    maxsize: int = 0


@message("queue-release")
class QueueRelease(Message):
    client: str
    name: str


@message("queue-put")
class QueuePut(Message):
    client: str
    name: str
    data: Serialized
    keys: list[str] = attrs.field(factory=_empty_list)
    timeout: float | None = None


@message("queue-get")
class QueueGet(Message):
    """``batch`` 0: one item (ItemReply); -1: all there are, without waiting;
    n > 0: n items at once (ItemsReply)."""

    client: str
    name: str
    timeout: float | None = None
    batch: int = 0


@message("queue-size")
class QueueSize(Message):
    client: str
    name: str


@message("lock-acquire")
class LockAcquire(Message):
    client: str
    name: str
    id: str
    timeout: float | None = None


@message("lock-release")
class LockRelease(Message):
    client: str
    name: str
    id: str


@message("lock-locked")
class LockLocked(Message):
    client: str
    name: str


@message("multi-lock-acquire")
class MultiLockAcquire(Message):
    client: str
    id: str
    names: list[str]
    num_locks: int | None = None
    timeout: float | None = None


@message("multi-lock-release")
class MultiLockRelease(Message):
    client: str
    id: str


@message("event-set")
class EventSet(Message):
    client: str
    name: str


@message("event-clear")
class EventClear(Message):
    client: str
    name: str


@message("event-is-set")
class EventIsSet(Message):
    client: str
    name: str


@message("event-wait")
class EventWait(Message):
    """Answered with BoolReply(True) once set, or PrimitiveTimedOut."""

    client: str
    name: str
    timeout: float | None = None


@message("semaphore-create")
class SemaphoreCreate(Message):
    """Use (and create, if new) a semaphore; answered with its max_leases."""

    client: str
    name: str
    max_leases: int


@message("semaphore-acquire")
class SemaphoreAcquire(Message):
    client: str
    name: str
    lease_id: str
    timeout: float | None = None
    #: The worker the acquiring task runs on ("" outside tasks).
    worker: str = ""


@message("semaphore-release")
class SemaphoreRelease(Message):
    """Answered with BoolReply: False when the lease was not held (expired)."""

    client: str
    name: str
    lease_id: str


@message("semaphore-refresh")
class SemaphoreRefresh(Message):
    client: str
    name: str
    lease_ids: list[str]


@message("semaphore-value")
class SemaphoreValue(Message):
    client: str
    name: str


@message("semaphore-close")
class SemaphoreClose(Message):
    client: str
    name: str


@message("publish")
class Publish(Message):
    """Answered with IntReply: the number of subscribers reached."""

    client: str
    name: str
    data: Serialized


@message("subscribe-add")
class SubscribeAdd(Message):
    client: str
    name: str
    id: str


@message("subscribe-remove")
class SubscribeRemove(Message):
    client: str
    id: str


@message("subscribe-get")
class SubscribeGet(Message):
    client: str
    id: str
    timeout: float | None = None


@message("keys-received")
class KeysReceived(Message):
    """The client now has futures for keys a primitive handed it, and has
    said so on its stream: the scheduler may drop its own hold on them."""

    client: str
    keys: list[str]


@message("dataset-publish")
class DatasetPublish(Message):
    client: str
    name: str
    data: Serialized
    keys: list[str] = attrs.field(factory=_empty_list)
    override: bool = False


@message("dataset-get")
class DatasetGet(Message):
    client: str
    name: str


@message("dataset-unpublish")
class DatasetUnpublish(Message):
    client: str
    name: str


@message("dataset-list")
class DatasetList(Message):
    client: str


# ---------------------------------------------------------------- plugins


@record(kw_only=True)
class PluginFailure(Record):
    """A plugin hook that raised: which plugin, which hook, where (a worker's
    or nanny's address, or ``"scheduler"``), and the exception as data."""

    plugin: str
    phase: str
    where: str
    type_name: str
    message: str
    traceback_text: str = ""
    exception: bytes | None = None


@message("register-plugin")
class RegisterPlugin(Message):
    """Client -> scheduler: set up ``plugin`` (cloudpickled) of ``kind``
    (``"worker"``, ``"nanny"`` or ``"scheduler"``) everywhere, now and on
    whatever joins later."""

    kind: str
    name: str
    plugin: bytes
    idempotent: bool = False


@message("unregister-plugin")
class UnregisterPlugin(Message):
    kind: str
    name: str


@message("plugin-setup")
class PluginSetup(Message):
    """Scheduler -> worker or nanny: set this plugin up (replacing one of
    the same name)."""

    name: str
    plugin: bytes


@message("plugin-teardown")
class PluginTeardown(Message):
    name: str


@message("plugin-reply")
class PluginReply(Message):
    """The answer to the plugin requests: what failed (empty: all went well)."""

    failures: list[PluginFailure] = attrs.field(factory=_empty_list)
    #: The workers (or nannies) where it went well.
    done: list[str] = attrs.field(factory=_empty_list)

#: Sub-structures that travel inside messages (not messages themselves).
STRUCTURES: tuple[type, ...] = (TaskSpec, WorkerInfo, TLSSettings, WorkerConfig, PrimitiveItem, PluginFailure)


# ---------------------------------------------------------------- client administration (scheduler/admin.py)


@message("run-on-scheduler")
class RunOnScheduler(Message):
    """Call a function in the scheduler's process (answered by :class:`RunReply`).
    ``wait=False``: answer at once, the function runs on."""

    function: bytes
    args: Serialized
    wait: bool = True


@message("scheduler-query")
class SchedulerQuery(Message):
    """A read-only question about the cluster; ``what`` is one of
    :data:`QUERIES`.  Answered by :class:`QueryReply`."""

    what: str
    keys: list[str] | None = None
    workers: list[str] | None = None
    n: int = -1


#: What :class:`SchedulerQuery` may ask.
QUERIES = ("processing", "nbytes", "state", "logs", "versions", "task")


@message("query-reply")
class QueryReply(Message):
    """The answer to a :class:`SchedulerQuery`, as plain data (msgpack-able
    values serialized by the scheduler)."""

    result: Serialized


@message("retry-keys")
class RetryKeys(Message):
    keys: list[str]
    client: str = ""


@message("replicate")
class Replicate(Message):
    keys: list[str]
    n: int | None = None
    workers: list[str] | None = None


@message("rebalance")
class Rebalance(Message):
    keys: list[str] | None = None
    workers: list[str] | None = None


@message("restart-workers")
class RestartWorkers(Message):
    workers: list[str]
    timeout: float = 60.0


@message("restart-workers-reply")
class RestartWorkersReply(Message):
    #: worker -> "OK" or why it could not be restarted.
    results: dict[str, str]


@message("upload-file")
class UploadFile(Message):
    """A file to put on every worker, present and future (``upload_file``)."""

    filename: str
    data: bytes
    load: bool = True

