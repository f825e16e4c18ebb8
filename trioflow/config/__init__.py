"""Configuration: the typed records servers are built from, the tree of
tuning settings, and where settings come from.

* :class:`WorkerConfig`, :class:`NannyConfig`, :class:`SchedulerConfig`:
  one record per server, built once and passed whole (see ``_records``).
* :class:`TrioflowConfig`: every tuning setting, grouped per component
  (``scheduler``, ``worker``, ``nanny``, ``client``, ``comm``,
  ``dashboard``); :func:`get_config` merges defaults, the YAML file,
  ``TRIOFLOW_*`` variables and dask.distributed's ``dask.config`` keys into
  it (see ``_sources`` for the order).  ``trioflow config`` prints it.

This package imports neither trio nor the servers.
"""

from __future__ import annotations

from ._kinds import parse_seconds
from ._records import (
    NannyConfig,
    SchedulerConfig,
    WorkerConfig,
    build_config,
    format_bytes,
    parse_bytes,
    parse_memory_limit,
)
from ._sources import ConfigError, LoadedConfig, config_path, env_var, get_config, load_config
from ._tree import (
    ClientSettings,
    CommSettings,
    DashboardSettings,
    MemorySettings,
    NannySettings,
    SchedulerSettings,
    TrioflowConfig,
    WorkerSettings,
    iter_settings,
)

__all__ = [
    "ClientSettings",
    "CommSettings",
    "ConfigError",
    "DashboardSettings",
    "LoadedConfig",
    "MemorySettings",
    "NannyConfig",
    "NannySettings",
    "SchedulerConfig",
    "SchedulerSettings",
    "TrioflowConfig",
    "WorkerConfig",
    "WorkerSettings",
    "build_config",
    "config_path",
    "env_var",
    "format_bytes",
    "get_config",
    "iter_settings",
    "load_config",
    "parse_bytes",
    "parse_memory_limit",
    "parse_seconds",
]

# The public home of these classes is this package, whatever file holds
# them (pickles, reprs, the docs and trioflow.testing's strategies name them so).
for _cls in (
    ClientSettings, CommSettings, ConfigError, DashboardSettings, LoadedConfig, MemorySettings, NannyConfig,
    NannySettings, SchedulerConfig, SchedulerSettings, TrioflowConfig, WorkerConfig, WorkerSettings,
):
    _cls.__module__ = __name__
del _cls
