"""Command-line programs: ``trioflow-scheduler``, ``trioflow-worker`` and ``trioflow``.

The options follow the dask-scheduler / dask-worker deployment page flag for
flag (``--bokeh-port``, ``--nprocs``, ``--reconnect/--no-reconnect``, ...),
with today's dask names as aliases (``--dashboard-address``, ``--nworkers``,
...).  The Bokeh server of that page is our websocket diagnostics page.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import attrs
import click
import trio

from .._version import __version__
from ..comm.addressing import Address, parse_address
from ..errors import NannyStartError, find_leaf, leaves
from .common import (
    PidFile,
    UserError,
    check_preload,
    default_nthreads,
    describe_exception,
    interface_address,
    load_preload,
    make_security,
    memory_limit_option,
    parse_port_range,
    parse_resources,
    run_cli,
    run_servers,
    setup_logging,
)

logger = logging.getLogger("trioflow.cli")

__all__ = ["main", "scheduler_main", "worker_main", "scheduler_command", "worker_command"]


def _dashboard_address(address: str | None, port: int | None, host: str, default_port: int) -> str:
    if address:
        return address if ":" in address else f"{host}:{address}"
    return f"{host}:{port if port is not None else default_port}"


def _tls_options(f: Any) -> Any:
    f = click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Private key file for TLS (PEM)")(f)
    f = click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Certificate file for TLS (PEM)")(f)
    f = click.option("--tls-ca-file", type=click.Path(exists=True, dir_okay=False), help="CA certificate(s) file for TLS (PEM)")(f)
    return f


# ---------------------------------------------------------------- scheduler


@click.command(name="scheduler", context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.option("--host", type=str, default=None, help="URI, IP or hostname of this server")
@click.option("--port", type=click.IntRange(0, 65535), default=8786, show_default=True, help="Serving port")
@click.option("--interface", type=str, default=None, help="Preferred network interface like 'eth0' or 'ib0'")
@click.option("--protocol", type=click.Choice(["tcp", "tls"]), default=None, help="Protocol (default tcp, or tls when TLS files are given)")
@_tls_options
@click.option("--bokeh-port", "--dashboard-port", "dashboard_port", type=int, default=None, help="Port of the diagnostics page [default: 8787]")
@click.option("--dashboard-address", type=str, default=None, help="Address of the diagnostics page, like :8787 or 0.0.0.0:8787")
@click.option("--bokeh/--no-bokeh", "--dashboard/--no-dashboard", "dashboard", default=True, show_default=True, help="Serve the diagnostics page")
@click.option("--show/--no-show", default=False, help="Open the diagnostics page in a browser")
@click.option("--bokeh-whitelist", "--dashboard-whitelist", "whitelist", multiple=True, help="Origins / addresses allowed to open the page's websocket")
@click.option("--bokeh-prefix", "--dashboard-prefix", "prefix", type=str, default="", help="Path prefix for the page (behind a proxy)")
@click.option("--use-xheaders", type=bool, default=False, show_default=True, help="Trust X-Forwarded-* headers from a proxy")
@click.option("--pid-file", type=str, default=None, help="File to write the process PID")
@click.option("--scheduler-file", type=str, default=None, help="File to write connection information (JSON)")
@click.option("--local-directory", type=str, default=None, help="Directory to place scheduler files")
@click.option("--preload", type=str, multiple=True, help="Module to import in this process, like 'foo.bar' or '/path/to/foo.py'")
@click.option("--idle-timeout", type=float, default=None, help="Close after this many seconds with no clients")
@click.option(
    "--worker-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Drop a worker silent for this many seconds [default: 10, more on large clusters]",
)
@click.version_option(__version__, "--version", prog_name="trioflow-scheduler")
def scheduler_command(
    host: str | None,
    port: int,
    interface: str | None,
    protocol: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    dashboard_port: int | None,
    dashboard_address: str | None,
    dashboard: bool,
    show: bool,
    whitelist: tuple[str, ...],
    prefix: str,
    use_xheaders: bool,
    pid_file: str | None,
    scheduler_file: str | None,
    local_directory: str | None,
    preload: tuple[str, ...],
    idle_timeout: float | None,
    worker_ttl: float | None,
) -> None:
    """Start a trioflow scheduler."""
    setup_logging()
    if host and interface:
        raise click.BadParameter("use either --host or --interface, not both", param_hint="--interface")
    if interface:
        host = interface_address(interface)
    security = make_security("scheduler", tls_ca_file, tls_cert, tls_key)
    if protocol is None:
        protocol = "tls" if security is not None else "tcp"
    if protocol == "tls" and security is None:
        raise click.BadParameter("tls needs --tls-ca-file, --tls-cert and --tls-key", param_hint="--protocol")
    if host and "://" in host:
        addr = parse_address(host, default_port=port)
        listen = str(addr)
    else:
        listen = str(Address(protocol, host or "0.0.0.0", port))
    if local_directory:
        os.makedirs(local_directory, exist_ok=True)
    modules = [load_preload(p) for p in preload]
    from ..config import SchedulerConfig, build_config
    from ..scheduler.server import Scheduler

    dash = _dashboard_address(dashboard_address, dashboard_port, host or "", 8787) if dashboard else None
    try:
        # Settings not given on the command line come from the configuration.
        config = build_config(
            SchedulerConfig,
            "trioflow-scheduler",
            dict(
                address=listen,
                scheduler_file=scheduler_file,
                dashboard_address=dash,
                dashboard_prefix=prefix,
                dashboard_whitelist=whitelist,
                use_xheaders=use_xheaders,
                **({"worker_ttl": worker_ttl} if worker_ttl is not None else {}),
            ),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    scheduler = Scheduler(config=config, security=security)

    url = ""
    up = False

    def started(scheduler: Any) -> None:
        nonlocal url, up
        up = True
        logger.info("  Scheduler at: %s", scheduler.address)
        if "dashboard" in scheduler.services:
            url = f"http://{_host_of(scheduler.address)}:{scheduler.services['dashboard']}{prefix.rstrip('/')}/status"
            logger.info("  dashboard at: %s", url)

    def ready(nursery: trio.Nursery) -> None:
        if url and show:
            nursery.start_soon(_open_browser, url)
        if idle_timeout:
            nursery.start_soon(_idle_watch, scheduler, idle_timeout)

    async def main() -> None:
        try:
            await run_servers([scheduler], modules, on_started=started, on_ready=ready)
        except BaseExceptionGroup as group:
            found = leaves(group)
            if not up and not any(isinstance(e, UserError) for e in found):
                for leaf in found:
                    if isinstance(leaf, OSError):
                        raise UserError(f"cannot listen on {listen}: {describe_exception(leaf)}") from None
            raise
        logger.info("End scheduler at %r", scheduler.address)

    with PidFile(pid_file):
        _run(main)


async def _idle_watch(scheduler: Any, timeout: float) -> None:
    idle_since = trio.current_time()
    while True:
        await trio.sleep(min(timeout / 4, 1.0))
        if scheduler.state.clients or scheduler.state.fire_and_forget.wants_what:  # fire-and-forget work keeps it busy
            idle_since = trio.current_time()
        elif trio.current_time() - idle_since > timeout:
            logger.info("no clients for %ss (--idle-timeout); closing", timeout)
            scheduler.close()
            return


async def _open_browser(url: str) -> None:
    import webbrowser  # only for --show: it loads shlex, subprocess helpers, ...

    await trio.to_thread.run_sync(webbrowser.open, url)


def _host_of(address: str) -> str:
    a = parse_address(address)
    return f"[{a.host}]" if ":" in a.host else a.host


def _run(main: Any) -> None:
    """``trio.run(main)``, turning user-caused failures into one-line errors."""
    try:
        trio.run(main)
    except BaseException as exc:  # noqa: BLE001 - sorted out below
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves(exc)):
            return
        leaf = find_leaf(exc, UserError, (OSError, ValueError))  # CommError, SecurityError, AddressError, ...
        if isinstance(leaf, UserError):
            raise UserError(str(leaf)) from None
        if leaf is not None:
            raise UserError(describe_exception(leaf)) from None
        raise


# ---------------------------------------------------------------- worker


@click.command(name="worker", context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.argument("scheduler", type=str, required=False)
@_tls_options
@click.option("--worker-port", type=str, default=None, help="Serving computation port (or FIRST:LAST range), defaults to random")
@click.option("--nanny-port", type=str, default=None, help="Serving nanny port (or FIRST:LAST range), defaults to random")
@click.option("--bokeh-port", "--dashboard-port", "dashboard_port", type=int, default=None, help="Diagnostics page port, defaults to 8789")
@click.option("--dashboard-address", type=str, default=None, help="Address of the worker's diagnostics page")
@click.option("--bokeh/--no-bokeh", "--dashboard/--no-dashboard", "dashboard", default=True, show_default=True, help="Serve the diagnostics page")
@click.option("--listen-address", type=str, default=None, help="The address the worker binds to, like tcp://0.0.0.0:9000")
@click.option("--contact-address", type=str, default=None, help="The address the worker advertises, like tcp://127.0.0.1:9000")
@click.option("--host", type=str, default=None, help="Serving host: an address visible to the scheduler and other workers")
@click.option("--interface", type=str, default=None, help="Network interface like 'eth0' or 'ib0'")
@click.option("--protocol", type=click.Choice(["tcp", "tls"]), default=None, help="Protocol for the worker's own listener")
@click.option("--nthreads", type=click.IntRange(min=1), default=None, help="Number of threads per process")
@click.option("--nprocs", "--nworkers", "nprocs", type=click.IntRange(min=1), default=1, show_default=True, help="Number of worker processes")
@click.option("--name", type=str, default=None, help="A unique name for this worker like 'worker-1'")
@click.option("--memory-limit", type=str, default="auto", show_default=True, help="Bytes of memory the worker can use: bytes, fraction of total, '5GB'/'5000M', 'auto', or 0 for no limit")
@click.option("--reconnect/--no-reconnect", default=True, show_default=True, help="Reconnect to the scheduler if disconnected")
@click.option("--nanny/--no-nanny", default=True, show_default=True, help="Start workers in a nanny process for management")
@click.option("--pid-file", type=str, default=None, help="File to write the process PID")
@click.option("--local-directory", type=str, default=None, help="Directory to place worker files")
@click.option("--resources", type=str, default=None, help='Resources for task constraints like "GPU=2 MEM=10e9"')
@click.option("--scheduler-file", type=str, default=None, help="JSON file with the scheduler's address (see trioflow-scheduler --scheduler-file)")
@click.option("--death-timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Seconds to wait for a scheduler before closing")
@click.option("--bokeh-prefix", "--dashboard-prefix", "prefix", type=str, default="", help="Path prefix for the diagnostics page")
@click.option("--preload", type=str, multiple=True, help="Module to import in each worker process, like 'foo.bar' or '/path/to/foo.py'")
@click.option("--preload-nanny", type=str, multiple=True, help="Module to import in each nanny process")
@click.version_option(__version__, "--version", prog_name="trioflow-worker")
def worker_command(
    scheduler: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    worker_port: str | None,
    nanny_port: str | None,
    dashboard_port: int | None,
    dashboard_address: str | None,
    dashboard: bool,
    listen_address: str | None,
    contact_address: str | None,
    host: str | None,
    interface: str | None,
    protocol: str | None,
    nthreads: int | None,
    nprocs: int,
    name: str | None,
    memory_limit: str,
    reconnect: bool,
    nanny: bool,
    pid_file: str | None,
    local_directory: str | None,
    resources: str | None,
    scheduler_file: str | None,
    death_timeout: float | None,
    prefix: str,
    preload: tuple[str, ...],
    preload_nanny: tuple[str, ...],
) -> None:
    """Start trioflow worker(s) connected to SCHEDULER (tcp://HOST:8786)."""
    setup_logging()
    if scheduler and scheduler_file:
        raise click.BadParameter("give either SCHEDULER or --scheduler-file, not both", param_hint="--scheduler-file")
    if not scheduler and not scheduler_file:
        raise click.UsageError("a SCHEDULER address or --scheduler-file is required")
    if host and interface:
        raise click.BadParameter("use either --host or --interface, not both", param_hint="--interface")
    if listen_address and (host or interface or worker_port):
        raise click.BadParameter("--listen-address replaces --host/--interface/--worker-port", param_hint="--listen-address")
    if interface:
        host = interface_address(interface)
    nthreads = nthreads or default_nthreads(nprocs)
    limit = memory_limit_option(memory_limit, nthreads, nprocs)
    if not nanny:
        from ..process.malloc import limit_malloc_arenas

        limit_malloc_arenas(nthreads * nprocs)  # the workers' threads are ours (see there)
    res = parse_resources(resources)
    worker_ports = parse_port_range(worker_port, "--worker-port")
    nanny_ports = parse_port_range(nanny_port, "--nanny-port")
    if scheduler:
        try:
            scheduler = str(parse_address(scheduler, default_port=8786))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="SCHEDULER") from None
    security = make_security("worker", tls_ca_file, tls_cert, tls_key)
    if protocol is None:
        protocol = "tls" if security is not None else "tcp"
    if listen_address:
        try:
            parse_address(listen_address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--listen-address") from None
    if contact_address:
        try:
            parse_address(contact_address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--contact-address") from None
    if nprocs > 1 and (len(worker_ports) == 1 and worker_ports[0] != 0) and not listen_address:
        raise click.BadParameter(f"--nprocs {nprocs} needs a port range (or random ports), not one port", param_hint="--worker-port")
    if preload_nanny and not nanny:
        raise click.BadParameter("there is no nanny with --no-nanny", param_hint="--preload-nanny")
    if nanny:
        for p in preload:
            check_preload(p)  # fail early, here, with one line; it runs in the worker process
        worker_modules = []
    else:
        worker_modules = [load_preload(p) for p in preload]
    nanny_modules = [load_preload(p, "--preload-nanny") for p in preload_nanny]
    if local_directory:
        os.makedirs(local_directory, exist_ok=True)
    bind_host = host or "0.0.0.0"
    dash = _dashboard_address(dashboard_address, dashboard_port, host or "", 8789) if dashboard else None
    modules = nanny_modules if nanny else worker_modules
    from ..config import WorkerConfig, build_config

    # The workers' configuration, built once; each process gets its name and
    # listener (and the scheduler's address, once known) by ``evolve``.
    # Settings not given on the command line come from the configuration.
    try:
        template = build_config(
            WorkerConfig,
            "trioflow-worker",
            dict(
                scheduler_address=scheduler or "",
                nthreads=nthreads,
                memory_limit=limit,
                resources=res,
                contact_address=contact_address,
                local_directory=local_directory,
                reconnect=reconnect,
                dashboard_address=dash,
                dashboard_prefix=prefix,
                preload=list(preload) if nanny else [],
                **({"death_timeout": death_timeout} if death_timeout is not None else {}),
            ),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None

    async def main() -> None:
        sched = scheduler
        if sched is None:
            from ..scheduler_file import wait_for_scheduler_file

            assert scheduler_file is not None  # checked above: one of the two is given
            try:
                sched = await wait_for_scheduler_file(scheduler_file, timeout=death_timeout or 60)
            except (OSError, ValueError) as exc:
                raise UserError(f"--scheduler-file: {describe_exception(exc)}") from None
        nodes: list[Any] = []
        for i in range(nprocs):
            node_name = (f"{name}-{i}" if nprocs > 1 else name) if name else ""
            wconfig = attrs.evolve(
                template,
                scheduler_address=sched,
                name=node_name,
                listen_address=listen_address or _pick_listen(protocol, bind_host, worker_ports, i, nprocs),
            )
            if nanny:
                from ..config import NannyConfig, build_config
                from ..process.nanny import Nanny

                nconfig = build_config(
                    NannyConfig, "trioflow-worker", {"worker": wconfig, "listen_address": _pick_listen(protocol, bind_host, nanny_ports, i, nprocs)}
                )
                node: Any = Nanny(config=nconfig, security=security)
            else:
                from ..worker.server import Worker

                node = Worker(config=wconfig, security=security)
            nodes.append(node)
        try:
            await run_servers(nodes, modules, on_started=_log_started)
        except BaseExceptionGroup as group:
            # Two tiers (the daemon's start-up report has one): a UserError or a
            # nanny's one-line reason is printed as it is, so it wins over an
            # OS-level error, which gets the "worker failed to start" prefix.
            leaf = find_leaf(group, (UserError, NannyStartError), (OSError, ValueError, trio.TooSlowError))
            if leaf is None:
                raise
            if not isinstance(leaf, (OSError, ValueError, trio.TooSlowError)):
                raise UserError(str(leaf)) from None
            raise UserError(f"worker failed to start: {describe_exception(leaf)}") from None
        failures = [n.failure for n in nodes if getattr(n, "failure", None)]
        if failures:
            raise UserError(failures[0])

    with PidFile(pid_file):
        _run(main)


def _log_started(node: Any) -> None:
    if hasattr(node, "worker_address"):
        logger.info("  Start worker at: %s (nanny %s)", node.worker_address, node.address)
    else:
        logger.info("  Start worker at: %s", node.address)


_taken: set[int] = set()


def _pick_listen(protocol: str, host: str, ports: list[int], index: int, nprocs: int) -> str:
    """The listen address for process ``index``: the first free port of the
    range (not given to an earlier process), or a random one for ``[0]``."""
    if ports == [0]:
        return str(Address(protocol, host, 0))
    import socket

    for port in ports:
        if port in _taken:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
        _taken.add(port)
        return str(Address(protocol, host, port))
    raise UserError(f"no free port in {ports[0]}:{ports[-1]} on {host}")


# ---------------------------------------------------------------- group


@click.group(context_settings={"help_option_names": ["--help"]})
@click.version_option(__version__, "--version", prog_name="trioflow")
def group() -> None:
    """trioflow: a distributed task scheduler on Trio."""


group.add_command(scheduler_command, "scheduler")
group.add_command(worker_command, "worker")


def scheduler_main(args: list[str] | None = None) -> None:
    run_cli(scheduler_command, "trioflow-scheduler", args)


def worker_main(args: list[str] | None = None) -> None:
    run_cli(worker_command, "trioflow-worker", args)


def main(args: list[str] | None = None) -> None:
    from . import local  # noqa: F401 - registers `trioflow local`
    from .config import config_command

    group.add_command(config_command, "config")

    run_cli(group, "trioflow", args)

