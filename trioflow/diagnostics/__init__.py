"""The live diagnostics page: HTTP, websocket snapshots, Prometheus metrics.

``serve_dashboard(server, address)`` serves one port for a
:class:`~trioflow.Scheduler` or a :class:`~trioflow.Worker`; start it with
``port = await nursery.start(serve_dashboard, server, ":8787")``.
See :mod:`trioflow.diagnostics.server` for how it works.
"""

from .server import DashboardConfig, DashboardServer, parse_dashboard_address, serve_dashboard
from .sources import SchedulerSource, WorkerSource, source_for

__all__ = [
    "DashboardConfig",
    "DashboardServer",
    "SchedulerSource",
    "WorkerSource",
    "parse_dashboard_address",
    "serve_dashboard",
    "source_for",
]
