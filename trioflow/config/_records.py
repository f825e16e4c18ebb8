"""Typed configuration: one frozen record per component, and value parsing.

Theory of operation
-------------------
Each server is configured by one record, built once where the settings come
in (the command line, :class:`~trioflow.LocalCluster` / ``open_cluster``, or a
server's own dask-style keyword arguments) and then passed whole:

* :class:`WorkerConfig`: what a worker needs (its scheduler, threads, memory,
  addresses, timeouts, preload modules).  A nanny hands it to its worker
  process inside a protocol message, so the strict codec checks it on the
  way in like any message from a peer.
* :class:`NannyConfig`: the nanny's own settings plus the ``WorkerConfig`` of
  the worker it supervises.
* :class:`SchedulerConfig`: the scheduler's.

(The dashboard's limits are :class:`trioflow.diagnostics.DashboardConfig`.)

Every record checks its values when it is made and raises ``ValueError``
with one line naming the field (``WorkerConfig.nthreads must be at least
1, got 0``).  Records hold plain data only (str, int, float, bool, tuples,
dicts of those) so that they travel through the codec; TLS settings are a
:class:`~trioflow.security.Security`, passed beside the record.

This module imports neither trio nor the servers.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import attrs

__all__ = [
    "NannyConfig",
    "SchedulerConfig",
    "WorkerConfig",
    "build_config",
    "format_bytes",
    "parse_bytes",
    "parse_memory_limit",
]

_C = TypeVar("_C")


# ---------------------------------------------------------------- validators


def _fail(inst: Any, attribute: Any, text: str, value: Any) -> None:
    raise ValueError(f"{type(inst).__name__}.{attribute.name} {text}, got {value!r}")


def _positive_int(inst: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or value < 1:
        _fail(inst, attribute, "must be at least 1", value)


def _non_negative_int(inst: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or value < 0:
        _fail(inst, attribute, "must be a number of bytes (0 for no limit)", value)


def _count(inst: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or value < 0:
        _fail(inst, attribute, "must be a non-negative whole number", value)


def _positive(inst: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        _fail(inst, attribute, "must be a positive number of seconds", value)


def _optional_positive(inst: Any, attribute: Any, value: Any) -> None:
    if value is not None:
        _positive(inst, attribute, value)


def _optional_fraction(inst: Any, attribute: Any, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        _fail(inst, attribute, "must be a fraction in (0, 1] or None", value)


def _fraction(inst: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        _fail(inst, attribute, "must be a fraction in (0, 1]", value)


def _non_negative(inst: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        _fail(inst, attribute, "must not be negative", value)


def _is(*types: type) -> Any:
    names = " or ".join("None" if t is type(None) else t.__name__ for t in types)

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if type(value) not in types:
            _fail(inst, attribute, f"must be {names}", value)

    return check


def _resources(inst: Any, attribute: Any, value: Any) -> None:
    if type(value) is not dict:
        _fail(inst, attribute, "must be a dict of name -> amount", value)
    for k, v in value.items():
        if type(k) is not str or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            _fail(inst, attribute, "must map names to non-negative amounts", value)


def _float(value: Any) -> Any:
    """ints become floats (what the codec does too); anything else is left for the validator."""
    return float(value) if type(value) is int else value


def _optional_float(value: Any) -> Any:
    return None if value is None else _float(value)


def _float_dict(value: Any) -> Any:
    if type(value) is dict:
        return {k: _float(v) for k, v in value.items()}
    return {} if value is None else value


def _str_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and all(type(v) is str for v in value):
        return tuple(value)
    return () if value is None else value


def _str_list(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and all(type(v) is str for v in value):
        return list(value)
    return [] if value is None else value


def _str_list_check(inst: Any, attribute: Any, value: Any) -> None:
    if type(value) is not list:
        _fail(inst, attribute, "must be a list of strings", value)


def _str_tuple_check(inst: Any, attribute: Any, value: Any) -> None:
    if type(value) is not tuple:
        _fail(inst, attribute, "must be a list of strings", value)


_OPT_STR = _is(str, type(None))


# ---------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class WorkerConfig:
    """Everything a worker is configured with (dask's ``Worker`` keywords)."""

    #: The scheduler to register with, like ``tcp://10.0.0.1:8786``.
    scheduler_address: str = attrs.field(validator=_is(str))
    #: A name unique in the cluster ("" : the worker's address).
    name: str = attrs.field(default="", validator=_is(str))
    #: Executor threads: tasks run at once.
    nthreads: int = attrs.field(default=1, validator=_positive_int)
    #: Bytes the worker process may use (0: no limit): spilling, pausing
    #: and the nanny's restart are fractions of it.
    memory_limit: int = attrs.field(default=0, validator=_non_negative_int)
    #: Abstract resources for task constraints, like ``{"GPU": 2.0}``.
    resources: dict[str, float] = attrs.field(factory=dict, converter=_float_dict, validator=_resources)
    #: The address the worker binds to (None: a random port on the
    #: scheduler's protocol, or an in-process name).
    listen_address: str | None = attrs.field(default=None, validator=_OPT_STR)
    #: The address the worker advertises, when not the one it is bound to.
    contact_address: str | None = attrs.field(default=None, validator=_OPT_STR)
    #: Parent of the worker's scratch directory (None: the temporary directory).
    local_directory: str | None = attrs.field(default=None, validator=_OPT_STR)
    #: Register again when the scheduler connection breaks (else close).
    reconnect: bool = attrs.field(default=True, validator=_is(bool))
    #: Close after this many seconds without a scheduler (None: never).
    death_timeout: float | None = attrs.field(default=None, converter=_optional_float, validator=_optional_positive)
    #: Seconds between heartbeats to the scheduler.
    heartbeat_interval: float = attrs.field(default=1.0, converter=_float, validator=_positive)
    #: Seconds to open one connection.
    connect_timeout: float = attrs.field(default=10.0, converter=_float, validator=_positive)
    #: Check the state machine's invariants after every event (tests).
    validate: bool = attrs.field(default=False, validator=_is(bool))
    #: Where to serve the diagnostics page (None: not at all).
    dashboard_address: str | None = attrs.field(default=None, validator=_OPT_STR)
    #: Path prefix of the diagnostics page (behind a proxy).
    dashboard_prefix: str = attrs.field(default="", validator=_is(str))
    #: Spill least recently used data past this fraction of the memory
    #: limit (None: never spill).
    memory_target_fraction: float | None = attrs.field(default=0.6, converter=_optional_float, validator=_optional_fraction)
    #: Start no tasks while the process uses more than this fraction of the
    #: memory limit (None: never pause).
    memory_pause_fraction: float | None = attrs.field(default=0.8, converter=_optional_float, validator=_optional_fraction)
    #: Modules (dotted names or ``.py`` paths) the worker's process imports
    #: and whose ``trioflow_setup(worker)`` it calls once registered.
    preload: list[str] = attrs.field(factory=list, converter=_str_list, validator=_str_list_check)
    #: Seconds between samples of the statistical profiler (None: off).
    profile_interval: float | None = attrs.field(default=0.01, converter=_optional_float, validator=_optional_positive)
    #: Seconds of profile gathered into one entry of its history (the
    #: resolution of ``client.profile(start=, stop=)``).
    profile_cycle_interval: float = attrs.field(default=1.0, converter=_float, validator=_positive)


@attrs.frozen(kw_only=True)
class NannyConfig:
    """A nanny's settings and those of the worker it supervises."""

    #: The worker process's configuration.
    worker: WorkerConfig = attrs.field(validator=attrs.validators.instance_of(WorkerConfig))
    #: The nanny's own listener (restart / kill requests); None: no listener.
    listen_address: str | None = attrs.field(default=None, validator=_OPT_STR)
    #: Seconds a worker process gets to exit after SIGTERM before SIGKILL.
    grace: float = attrs.field(default=5.0, converter=_float, validator=_non_negative)
    #: Restart the worker when its RSS passes this fraction of its memory limit.
    memory_terminate_fraction: float = attrs.field(default=0.95, converter=_float, validator=_fraction)
    #: Extra environment variables for the worker process.
    env: dict[str, str] = attrs.field(factory=dict, validator=attrs.validators.deep_mapping(_is(str), _is(str)))


@attrs.frozen(kw_only=True)
class SchedulerConfig:
    """Everything a scheduler is configured with (dask's ``Scheduler`` keywords)."""

    #: The address to listen on, like ``tcp://0.0.0.0:8786`` or ``inproc://``.
    address: str = attrs.field(default="tcp://127.0.0.1:0", validator=_is(str))
    #: The address to advertise, when not the one bound to.
    contact_address: str | None = attrs.field(default=None, validator=_OPT_STR)
    #: Drop a worker silent for this many seconds (None: 10 s, more on large clusters).
    worker_ttl: float | None = attrs.field(default=None, converter=_optional_float, validator=_optional_positive)
    #: Worker deaths a task may be part of before it is ``KilledWorker``.
    allowed_failures: int = attrs.field(default=3, validator=_count)
    #: Check the state machine's invariants after every event (tests).
    validate: bool = attrs.field(default=False, validator=_is(bool))
    #: Write the scheduler's address to this JSON file (removed on close).
    scheduler_file: str | None = attrs.field(default=None, validator=_OPT_STR)
    #: Where to serve the diagnostics page (None: not at all).
    dashboard_address: str | None = attrs.field(default=None, validator=_OPT_STR)
    #: Path prefix of the diagnostics page (behind a proxy).
    dashboard_prefix: str = attrs.field(default="", validator=_is(str))
    #: Origins / addresses allowed to open the page's websocket.
    dashboard_whitelist: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple, validator=_str_tuple_check)
    #: Trust ``X-Forwarded-*`` headers from a proxy.
    use_xheaders: bool = attrs.field(default=False, validator=_is(bool))
    #: The scheduler's name in handshakes and logs.
    name: str = attrs.field(default="scheduler", validator=_is(str))
    #: Tasks queued on the scheduler beyond this many per worker thread.
    worker_saturation: float = attrs.field(default=1.1, converter=_float, validator=_positive)


#: Record fields whose default comes from the configuration tree
#: (:func:`trioflow.config.get_config`) when not given explicitly.
_FROM_TREE: dict[str, dict[str, str]] = {
    "WorkerConfig": {
        "memory_target_fraction": "worker.memory.target",
        "memory_pause_fraction": "worker.memory.pause",
        "heartbeat_interval": "worker.heartbeat_interval",
        "death_timeout": "worker.death_timeout",
        "connect_timeout": "comm.connect_timeout",
    },
    "NannyConfig": {
        "grace": "nanny.grace",
        "memory_terminate_fraction": "worker.memory.terminate",
    },
    "SchedulerConfig": {
        "worker_saturation": "scheduler.worker_saturation",
        "allowed_failures": "scheduler.allowed_failures",
        "worker_ttl": "scheduler.worker_ttl",
    },
}


def configured_defaults(cls: type, given: Any = ()) -> dict[str, Any]:
    """The values of ``cls``'s fields that the configuration tree sets, for
    the fields not in ``given``.

    Raises:
        ConfigError: a bad value in a configuration source.
    """
    wanted = {f: k for f, k in _FROM_TREE.get(cls.__name__, {}).items() if f not in given}
    if not wanted:
        return {}
    from ._sources import load_config  # not at import: _kinds imports this module

    loaded = load_config()
    return {field: loaded.get(key) for field, key in wanted.items()}


def build_config(cls: type[_C], owner: str, settings: dict[str, Any]) -> _C:
    """``cls(**settings)``, with a one-line error naming ``owner``'s keyword
    for a keyword the record does not have.  Fields not in ``settings``
    that the configuration tree holds (memory fractions, timeouts, the
    scheduler's worker-saturation and allowed-failures, ...) take its values
    (:func:`trioflow.config.get_config`), so explicit arguments win over
    every configuration source.

    Raises:
        TypeError: an unknown keyword.
        ValueError: a bad value (the record's one-line message, or a
            :class:`~trioflow.config.ConfigError` naming the key and source).
    """
    names = {a.alias or a.name for a in attrs.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"{owner}() got an unexpected keyword argument {unknown[0]!r}")
    return cls(**{**configured_defaults(cls, settings), **settings})


# ---------------------------------------------------------------- sizes


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
    "p": 10**15, "pb": 10**15, "pib": 2**50,
}


def parse_bytes(text: str | int | float) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"5000M"``; ``"1.5 GiB"``; ``123``.

    Raises:
        ValueError: not a size; the message quotes it.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"size must not be negative: {text!r}")
        return int(text)
    s = text.strip().lower().replace("_", "")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", s)
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r} (expected a number of bytes, or like 5GB, 5000M, 1.5GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_memory_limit(limit: str | int | float | None, nthreads: int = 1, n_workers: int = 1, total: int | None = None) -> int:
    """Bytes a worker may use: an int of bytes, a float fraction of total
    memory (0 < x <= 1), a string like ``"5GB"``, ``"auto"`` (total memory
    shared out by threads), or 0/None for no limit.

    Raises:
        ValueError: anything else; the message says what is accepted.
    """
    if total is None:
        from ..process.system import total_memory  # not at import: it loads socket

        total = total_memory()
    if limit is None or limit == 0 or limit == "0":
        return 0
    if isinstance(limit, str):
        s = limit.strip().lower()
        if s == "auto":
            return int(total / max(n_workers, 1))
        try:
            value = float(s)
        except ValueError:
            return min(parse_bytes(limit), total)
        limit = value
    if isinstance(limit, bool):
        raise ValueError(f"memory limit must be a size, got {limit!r}")
    if isinstance(limit, float) and 0 < limit <= 1:
        return int(total * limit)
    if limit < 0:
        raise ValueError(f"memory limit must not be negative, got {limit!r}")
    return min(int(limit), total)


def format_bytes(n: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size * 0.9:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
