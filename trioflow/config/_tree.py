"""The configuration tree: every tuning setting, grouped per component.

:class:`TrioflowConfig` is the root; each component has a frozen record
(:class:`SchedulerSettings`, :class:`WorkerSettings`, ...).  A setting is
declared once, with :func:`_setting`, together with

* its *kind* (:mod:`._kinds`): what values it takes and how text from a
  YAML file or an environment variable becomes one;
* a one-line description (the ``trioflow config`` output and the docs table);
* the ``dask.config`` keys of dask.distributed that mean the same thing,
  with a function turning dask's value into ours when it is not the same.

The loader (:mod:`._sources`) walks these declarations; nothing here reads
a file or the environment.  Records are values: servers read the setting
they need once, at construction, and keep it in an attribute (no lookups
per task).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs

from ._kinds import Bytes, Count, Fraction, Kind, PositiveFloat, PositiveInt, Seconds, Text

__all__ = [
    "ClientSettings",
    "CommSettings",
    "DashboardSettings",
    "MemorySettings",
    "NannySettings",
    "SchedulerSettings",
    "Setting",
    "TrioflowConfig",
    "WorkerSettings",
    "iter_settings",
]


@attrs.frozen
class Setting:
    """The declaration of one leaf of the tree (the metadata of its field)."""

    kind: Kind
    doc: str
    #: ``dask.config`` keys meaning the same, first found wins.
    dask: tuple[str, ...] = ()
    #: dask's value -> ours (when the units differ); default: the kind.
    from_dask: Callable[[Any], Any] | None = None
    #: Not read by trioflow yet: the module constant that still rules.
    pending: str = ""


def _setting(
    default: Any,
    kind: Kind,
    doc: str,
    dask: tuple[str, ...] = (),
    from_dask: Callable[[Any], Any] | None = None,
    pending: str = "",
) -> Any:
    def convert(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            return value  # the validator names the field

    def check(inst: Any, attribute: Any, value: Any) -> None:
        try:
            kind(value)
        except ValueError as exc:
            raise ValueError(f"{type(inst).__name__}.{attribute.name}={value!r}: {exc}") from None

    return attrs.field(default=default, converter=convert, validator=check, metadata={"setting": Setting(kind, doc, dask, from_dask, pending)})


def _section(cls: type) -> Any:
    return attrs.field(factory=cls, validator=attrs.validators.instance_of(cls), metadata={"section": cls})


@attrs.frozen(kw_only=True)
class SchedulerSettings:
    """``scheduler.*``"""

    worker_saturation: float = _setting(
        1.1, PositiveFloat(), "root tasks sent to a worker per thread before the rest wait on the scheduler (inf: no queueing)",
        ("distributed.scheduler.worker-saturation",),
    )
    allowed_failures: int = _setting(
        3, Count(), "worker deaths a task may be part of before it fails with KilledWorker",
        ("distributed.scheduler.allowed-failures",),
    )
    worker_ttl: float | None = _setting(
        None, Seconds(optional=True), "drop a worker silent this long (unset: 10 s, or 10 heartbeats on big clusters)",
        ("distributed.scheduler.worker-ttl",),
    )
    task_stream_length: int = _setting(10_000, PositiveInt(), "finished tasks the scheduler remembers for the task stream")
    bandwidth: int = _setting(
        100_000_000, Bytes(), "bytes per second assumed between workers before any transfer is measured",
        ("distributed.scheduler.bandwidth",),
    )
    unknown_task_duration: float = _setting(
        0.5, Seconds(), "run time assumed for a task of a kind not seen finishing yet",
        ("distributed.scheduler.unknown-task-duration",), pending="trioflow.scheduler.state.DEFAULT_DURATION",
    )
    queue_horizon: float = _setting(0.01, Seconds(), "seconds of measured-short work queued on a worker per thread", pending="trioflow.scheduler.state.QUEUE_HORIZON")
    queue_short_max: int = _setting(100, PositiveInt(), "measured-short tasks queued on a worker per thread at most", pending="trioflow.scheduler.state.QUEUE_SHORT_MAX")
    sample_workers: int = _setting(32, PositiveInt(), "workers considered per placement decision on large clusters", pending="trioflow.scheduler.state.SAMPLE")
    known_keys_wait: float = _setting(
        2.0, Seconds(), "a request naming futures the scheduler does not know yet waits this long for their graph",
        pending="trioflow.scheduler.extensions.serve.KNOWN_KEYS_WAIT",
    )
    transit_wait: float = _setting(
        10.0, Seconds(), "keys handed to a client are held this long at most until its stream confirms them",
        pending="trioflow.scheduler.extensions.serve.TRANSIT_WAIT",
    )


@attrs.frozen(kw_only=True)
class MemorySettings:
    """``worker.memory.*``: fractions of a worker's memory limit."""

    target: float | None = _setting(
        0.6, Fraction(optional=True), "spill the least recently used data to disk past this fraction of the limit",
        ("distributed.worker.memory.target",),
    )
    pause: float | None = _setting(
        0.8, Fraction(optional=True), "start no new tasks while the process uses more than this fraction",
        ("distributed.worker.memory.pause",),
    )
    resume: float = _setting(0.9, Fraction(), "resume once below this fraction of the pause threshold")
    terminate: float = _setting(
        0.95, Fraction(), "the nanny restarts its worker past this fraction", ("distributed.worker.memory.terminate",),
    )


@attrs.frozen(kw_only=True)
class WorkerSettings:
    """``worker.*``"""

    memory: MemorySettings = _section(MemorySettings)
    heartbeat_interval: float = _setting(1.0, Seconds(), "seconds between a worker's heartbeats to the scheduler")
    death_timeout: float | None = _setting(
        None, Seconds(optional=True), "a worker closes after this long without a scheduler (unset: never)",
    )
    prefetch_horizon: float = _setting(0.002, Seconds(), "seconds of measured-short work a worker starts ahead per thread")
    prefetch_max: int = _setting(16, PositiveInt(), "tasks a worker starts ahead per thread at most")
    prefetch_below: float = _setting(0.005, Seconds(), "tasks measured shorter than this may be started ahead")


@attrs.frozen(kw_only=True)
class NannySettings:
    """``nanny.*``"""

    grace: float = _setting(5.0, Seconds(), "seconds a worker process gets to exit after SIGTERM before SIGKILL")
    ready_timeout: float = _setting(60.0, Seconds(), "seconds a new worker process gets to report ready")


@attrs.frozen(kw_only=True)
class ClientSettings:
    """``client.*``"""

    graph_piece_tasks: int = _setting(10_000, PositiveInt(), "a large graph is sent in pieces of at most this many tasks", pending="trioflow.client.submit.GRAPH_PIECE_TASKS")
    graph_piece_bytes: int = _setting(4 * 2**20, Bytes(), "... or of about this many bytes", pending="trioflow.client.submit.GRAPH_PIECE_BYTES")
    map_chunk_tasks: int = _setting(1_000, PositiveInt(), "Client.map submits in batches of this many tasks", pending="trioflow.client.submit.MAP_CHUNK_TASKS")
    gather_batch_bytes: int = _setting(64 * 2**20, Bytes(), "gather asks a worker for about this many bytes at a time", pending="trioflow.client.data.GATHER_BATCH_BYTES")
    lease_refresh_interval: float = _setting(
        5.0, Seconds(), "seconds between renewals of a semaphore's leases",
        pending="trioflow.client.primitives.LEASE_REFRESH_INTERVAL",
    )


@attrs.frozen(kw_only=True)
class CommSettings:
    """``comm.*``"""

    connect_timeout: float = _setting(
        10.0, Seconds(), "seconds to open one connection", ("distributed.comm.timeouts.connect",),
    )
    tcp_timeout: float = _setting(
        30.0, Seconds(), "a TCP peer silent this long is dead (kernel keepalive / user timeout)",
        ("distributed.comm.timeouts.tcp",), pending="trioflow.comm.core.TCP_TIMEOUT",
    )


@attrs.frozen(kw_only=True)
class DashboardSettings:
    """``dashboard.*``"""

    link: str = _setting(
        "{scheme}://{host}:{port}/status", Text(), "template of the dashboard link shown to users ({scheme}, {host}, {port}, env vars)",
        ("distributed.dashboard.link",), pending="LocalCluster.dashboard_link",
    )
    max_stream_per_snapshot: int = _setting(800, PositiveInt(), "task-stream entries per snapshot sent to a viewer")
    max_worker_rows: int = _setting(1000, PositiveInt(), "worker rows per snapshot")
    max_prefixes: int = _setting(60, PositiveInt(), "task kinds per snapshot")
    max_worker_tasks_scanned: int = _setting(50_000, PositiveInt(), "tasks a worker's page looks at per snapshot")
    max_key_chars: int = _setting(80, PositiveInt(), "longer task keys are shortened on the page")


@attrs.frozen(kw_only=True)
class TrioflowConfig:
    """The root of the tree; :func:`trioflow.config.get_config` builds it."""

    scheduler_address: str | None = _setting(
        None, Text(optional=True), "the scheduler a Client() with no address connects to",
        ("scheduler-address", "distributed.scheduler-address"),
    )
    scheduler: SchedulerSettings = _section(SchedulerSettings)
    worker: WorkerSettings = _section(WorkerSettings)
    nanny: NannySettings = _section(NannySettings)
    client: ClientSettings = _section(ClientSettings)
    comm: CommSettings = _section(CommSettings)
    dashboard: DashboardSettings = _section(DashboardSettings)


def iter_settings(cls: type = TrioflowConfig, prefix: str = "") -> Iterator[tuple[str, Any, Setting]]:
    """``(dotted key, default, declaration)`` for every leaf, in declaration order."""
    for a in attrs.fields(cls):
        key = prefix + a.name
        if "section" in a.metadata:
            yield from iter_settings(a.metadata["section"], key + ".")
        else:
            yield key, a.default, a.metadata["setting"]
