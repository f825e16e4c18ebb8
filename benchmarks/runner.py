"""Start real clusters from their command lines and run the workloads on them.

Theory of operation
-------------------
For each system (trioflow; dask with its default scheduler settings; dask with
``worker-saturation: inf``, i.e. no root-task queueing) the runner starts a
scheduler and two single-threaded, nanny-less worker processes on loopback,
dashboards off, each process in its own session (process group), logs to a
temporary directory, and connects that system's blocking ``Client`` with
``scheduler_file=``.  All three clusters then stay up side by side and each
workload of :mod:`benchmarks.workloads` runs on them in turn, repetition by
repetition, rotating which system goes first (the machine is shared, and load
drifts over minutes: interleaving puts the systems under the same
conditions).  Medians of the repetitions are reported.

Cold start is the time from launching the scheduler process to a client that
sees the scheduler and two workers; idle RSS is read with psutil half a
second later, before any work.  In a full run each cluster is started
``repeat`` times for those two figures; the last one runs the workloads.
Before that, the same cluster with each worker under its nanny (the worker
command without ``--no-nanny``) is started as often, for its cold start and
the idle RSS of a nanny with everything it spawned, then torn down.

Teardown is a ladder in ``finally``: ``client.shutdown()`` (scheduler and
workers close), wait; SIGTERM every process group, wait; SIGKILL what is
left, reap; then SIGKILL anything still in those groups (a nanny's worker
whose nanny is gone).  A watchdog kills the cluster if a
workload exceeds its time limit, so a hang becomes an error in the table
(the cluster is then restarted for the remaining workloads), never a stuck
run or an orphan process.

How trioflow processes are launched is one setting, :data:`TRIOFLOW_LAUNCHER`
(or ``--trioflow-launcher`` / ``$BENCH_TRIOFLOW_LAUNCHER``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil

from .rss import rss_mib
from .workloads import (
    WORKLOADS,
    Ctx,
    Row,
    Workload,
    trioflow_has_collections,
    wait_no_keys,
    warm_up,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
HOST = "127.0.0.1"

# "cli":    trioflow-scheduler / trioflow-worker console scripts (the target)
# "module": python -m trioflow.scheduler / python -m trioflow.worker
# "script": python -m benchmarks._trioflow_node scheduler|worker (our stopgap)
# "auto":   "cli" once trioflow.cli provides the entry points, else "script"
TRIOFLOW_LAUNCHER = os.environ.get("BENCH_TRIOFLOW_LAUNCHER", "auto")


def _resolve_launcher(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import trioflow.cli as cli

        if hasattr(cli, "scheduler_main") and hasattr(cli, "worker_main"):
            return "cli"
    except ImportError:
        pass
    return "script"


def _trioflow_argv(launcher: str, role: str) -> list[str]:
    if launcher == "cli":
        return [os.path.join(BIN, f"trioflow-{role}")]
    if launcher == "module":
        return [sys.executable, "-m", f"trioflow.{role}"]
    if launcher == "script":
        return [sys.executable, "-m", "benchmarks._trioflow_node", role]
    raise ValueError(f"unknown trioflow launcher {launcher!r}")


# ====================================================================== systems


@dataclass
class System:
    name: str  # result key
    label: str  # column title
    scheduler_argv: Callable[[str], list[str]]
    worker_argv: Callable[[str, str, bool], list[str]]  # (scheduler file, name, nanny)
    env: dict[str, str]
    client_module: str  # "trioflow" or "distributed"

    def lib(self) -> Any:
        import importlib

        return importlib.import_module(self.client_module)

    def connect(self, scheduler_file: str) -> Any:
        return self.lib().Client(scheduler_file=scheduler_file)


def make_systems(launcher: str) -> list[System]:
    tf = _resolve_launcher(launcher)
    dask = os.path.join(BIN, "dask")

    def tf_sched(f: str) -> list[str]:
        return [
            *_trioflow_argv(tf, "scheduler"),
            "--host",
            HOST,
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            f,
        ]

    def tf_worker(f: str, name: str, nanny: bool) -> list[str]:
        return [
            *_trioflow_argv(tf, "worker"),
            "--scheduler-file",
            f,
            "--nthreads",
            "1",
            "--no-dashboard",
            "--nanny" if nanny else "--no-nanny",
            "--name",
            name,
        ]

    def dask_sched(f: str) -> list[str]:
        return [
            dask,
            "scheduler",
            "--host",
            HOST,
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            f,
        ]

    def dask_worker(f: str, name: str, nanny: bool) -> list[str]:
        return [
            dask,
            "worker",
            "--scheduler-file",
            f,
            "--nthreads",
            "1",
            "--no-dashboard",
            "--nanny" if nanny else "--no-nanny",
            "--host",
            HOST,
            "--name",
            name,
        ]

    return [
        System("trioflow", f"trioflow ({tf})", tf_sched, tf_worker, {}, "trioflow"),
        System("dask", "dask default", dask_sched, dask_worker, {}, "distributed"),
        System(
            "dask-noqueue",
            "dask no-queue",
            dask_sched,
            dask_worker,
            {"DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "inf"},
            "distributed",
        ),
    ]


# ====================================================================== processes


class Cluster:
    """A scheduler and two workers as process groups, plus a connected client.

    With ``nanny``, each worker process is started by its nanny (the process
    we launch, roles ``nanny0``/``nanny1``); otherwise we launch the workers
    (``worker0``/``worker1``).
    """

    def __init__(self, system: System, logdir: str, *, nanny: bool = False) -> None:
        self.system = system
        self.logdir = logdir
        self.nanny = nanny
        self.tag = f"{system.name}-nanny" if nanny else system.name  # log and file names
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.client: Any = None
        self.workers: list[str] = []
        self.cold_start = float("nan")
        self.rss: dict[str, float] = {}
        self._lock = threading.Lock()
        self.killed_by_watchdog = False
        self.stop_seconds = float("nan")

    def _spawn(self, role: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.system.env)
        log = open(os.path.join(self.logdir, f"{self.tag}-{role}.log"), "ab")
        try:
            p = subprocess.Popen(
                argv,
                cwd=self.logdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        with self._lock:
            self.procs.append((role, p))
        return p

    def start(self, timeout: float = 60) -> None:
        sched_file = os.path.join(self.logdir, f"{self.tag}-scheduler.json")
        if os.path.exists(sched_file):
            os.remove(sched_file)
        self.system.lib()  # import the client library before the clock starts
        t0 = time.perf_counter()
        self._spawn("scheduler", self.system.scheduler_argv(sched_file))
        role = "nanny" if self.nanny else "worker"
        for i in range(2):
            self._spawn(
                f"{role}{i}", self.system.worker_argv(sched_file, f"bench-worker-{i}", self.nanny)
            )
        deadline = time.monotonic() + timeout
        while not os.path.exists(sched_file):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.tag}: no scheduler file after {timeout}s (logs: {self.logdir})"
                )
            time.sleep(0.005)
        self.client = self.system.connect(sched_file)
        self.client.wait_for_workers(2, timeout=timeout)
        self.cold_start = time.perf_counter() - t0
        self.workers = sorted(self.client.scheduler_info()["workers"])
        if len(self.workers) != 2:
            raise RuntimeError(f"{self.tag}: expected 2 workers, scheduler reports {self.workers}")
        time.sleep(0.5)  # let the processes settle before reading RSS
        self.rss = self._read_rss()

    def _check_alive(self) -> None:
        for role, p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"{self.tag} {role} exited with {p.returncode} during startup "
                    f"(log: {self.logdir}/{self.tag}-{role}.log)"
                )

    def _read_rss(self) -> dict[str, float]:
        # With descendants: a nanny's figure includes its worker process (and
        # anything else it started); the others have no children.
        return {role: rss_mib(p.pid, descendants=True) for role, p in self.procs}

    def pid(self, role: str) -> int:
        return next(p.pid for r, p in self.procs if r == role)

    def ctx(self, quick: bool) -> Ctx:
        """What a workload gets to run on this cluster."""
        return Ctx(
            self.client,
            self.workers,
            self.system.lib(),
            self.system.name,
            quick,
            scheduler_pid=self.pid("scheduler"),
            worker_pids=[p.pid for r, p in self.procs if r.startswith("worker")],
        )

    def wait_idle(self, timeout: float = 15) -> bool:
        """Wait until the scheduler holds no keys (our futures were released)."""
        return wait_no_keys(self.client, timeout)

    def kill(self) -> None:
        """Watchdog path: SIGKILL every process group now."""
        self.killed_by_watchdog = True
        with self._lock:
            procs = list(self.procs)
        for _, p in procs:
            _killpg(p, signal.SIGKILL)

    def stop(self) -> None:
        """Ladder: ask the scheduler to shut the cluster down, wait; SIGTERM each
        process group, wait; SIGKILL what is left (and any grandchildren); reap;
        SIGKILL whatever is still in those groups after its leader is gone."""
        t0 = time.perf_counter()
        with self._lock:
            procs = list(self.procs)
        try:
            if self.client is not None and not self.killed_by_watchdog:
                _bounded(self.client.shutdown, 10)
            self._wait_exit(procs, 5)
        finally:
            self.client = None
            for _, p in procs:
                if p.poll() is None:
                    _killpg(p, signal.SIGTERM)
            self._wait_exit(procs, 5)
            for _, p in procs:
                if p.poll() is None:
                    _killpg(p, signal.SIGKILL)  # the whole group, grandchildren too
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    print(f"warning: pid {p.pid} did not die after SIGKILL", file=sys.stderr)
            orphans = _kill_group_leftovers({p.pid for _, p in procs})
            self.stop_seconds = time.perf_counter() - t0
            forced = [
                f"{role} ({'SIGKILL' if p.returncode == -signal.SIGKILL else 'SIGTERM'})"
                for role, p in procs
                if p.returncode in (-signal.SIGKILL, -signal.SIGTERM)
            ]
            if forced and not self.killed_by_watchdog:
                print(
                    f"  [{self.tag}] did not exit after shutdown: {', '.join(forced)}",
                    file=sys.stderr,
                )
            if orphans:
                print(
                    f"  [{self.tag}] killed processes left in its groups: {', '.join(orphans)}",
                    file=sys.stderr,
                )

    @staticmethod
    def _wait_exit(procs: list[tuple[str, subprocess.Popen[bytes]]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for _, p in procs:
            try:
                p.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def _killpg(p: subprocess.Popen[bytes], sig: int) -> None:
    # start_new_session: pgid == pid.  Only while the leader is unreaped: after
    # that its pid (and so the group id) may belong to someone else's process.
    if p.returncode is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgids: set[int]) -> list[psutil.Process]:
    """Live processes in the process groups ``pgids`` (zombies have exited: skipped)."""
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) in pgids:
                found.append(proc)
        except (OSError, psutil.Error):  # gone, or not ours to ask about
            pass
    return found


def _wait_groups_empty(pgids: set[int], timeout: float) -> list[psutil.Process]:
    """Poll until nothing is left in the groups ``pgids``; return what still is."""
    deadline = time.monotonic() + timeout
    while (left := _group_members(pgids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _kill_group_leftovers(pgids: set[int]) -> list[str]:
    """SIGKILL what is still in one of the groups ``pgids`` a second after their leaders exited.

    Called once the group leaders are reaped, so :func:`_killpg` no longer
    signals those groups; but a group id is not reused while any member is
    alive, so a process found in one is ours (a worker whose nanny died
    first, say).  The second is for helpers on their way out: dask's nanny's
    multiprocessing resource tracker exits by itself when its nanny has.
    psutil checks the process identity before signalling.
    """
    left = _wait_groups_empty(pgids, 1.0)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    if left and _wait_groups_empty(pgids, 5.0):
        print(f"warning: processes in groups {sorted(pgids)} survived SIGKILL", file=sys.stderr)
    return [f"{proc.info['name']} (pid {proc.pid})" for proc in left]


def _bounded(fn: Callable[[], Any], timeout: float) -> None:
    """Run ``fn`` in a daemon thread; give up waiting after ``timeout``."""
    err: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            err.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        print(
            f"warning: {getattr(fn, '__qualname__', fn)} did not return within {timeout}s",
            file=sys.stderr,
        )
    elif err:
        print(
            f"warning: {getattr(fn, '__qualname__', fn)}: {type(err[0]).__name__}: {err[0]}",
            file=sys.stderr,
        )


@contextmanager
def watchdog(cluster: Cluster, timeout: float) -> Iterator[None]:
    timer = threading.Timer(timeout, cluster.kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# ====================================================================== running


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _record(
    results: dict[str, Any], name: str, system: str, runs: list[float], **extra: Any
) -> None:
    results.setdefault(name, {})[system] = {
        "runs": runs,
        "median": _median(runs) if runs else None,
        **extra,
    }


def _record_error(results: dict[str, Any], name: str, system: str, error: str) -> None:
    results.setdefault(name, {})[system] = {"error": error}


@dataclass
class _Starts:
    """Cold starts and idle RSS (by role) of successive starts of one system."""

    cold: list[float] = field(default_factory=list)
    rss: dict[str, list[float]] = field(default_factory=dict)

    def start(
        self, system: System, logdir: str, log: Callable[[str], None], note: str, *, nanny: bool
    ) -> Cluster:
        """Start one cluster and add its figures; a cluster that fails to start is stopped."""
        cluster = Cluster(system, logdir, nanny=nanny)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        self.cold.append(cluster.cold_start)
        for role, v in cluster.rss.items():
            self.rss.setdefault(role, []).append(v)
        log(
            f"  [{cluster.tag}] start {note}: cold start {cluster.cold_start:.2f}s, "
            + ", ".join(f"{r} {v:.0f} MiB" for r, v in cluster.rss.items())
        )
        return cluster


def _start_measured(
    system: System,
    logdir: str,
    n_starts: int,
    results: dict[str, Any],
    want_startup: bool,
    log: Callable[[str], None],
) -> Cluster:
    """Start ``system`` ``n_starts`` times for cold start and idle RSS; keep the last cluster."""
    starts = _Starts()
    cluster: Cluster | None = None
    try:
        for i in range(n_starts):
            if cluster is not None:
                cluster.stop()
                cluster = None
            cluster = starts.start(system, logdir, log, f"{i + 1}/{n_starts}", nanny=False)
        assert cluster is not None
        warm_up(cluster.ctx(quick=False))
        cluster.wait_idle()
    except BaseException:
        if cluster is not None:
            cluster.stop()
        raise
    if want_startup:
        _record(results, "cold_start", system.name, starts.cold)
        for role in ("scheduler", "worker0", "worker1"):
            _record(results, f"rss_{role}", system.name, starts.rss.get(role, []))
    return cluster


def _measure_nanny_starts(
    system: System,
    logdir: str,
    n_starts: int,
    results: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    """Start ``system`` with nannies ``n_starts`` times, stopping each cluster at once,
    for its cold start and the idle RSS of a nanny + worker pair (both pairs of
    every start count as runs)."""
    starts = _Starts()
    for i in range(n_starts):
        starts.start(system, logdir, log, f"{i + 1}/{n_starts} with nannies", nanny=True).stop()
    _record(results, "cold_start_nanny", system.name, starts.cold)
    _record(results, "rss_nanny_pair", system.name, starts.rss["nanny0"] + starts.rss["nanny1"])


def _start_error(exc: BaseException) -> str:
    return f"start failed: {type(exc).__name__}: {exc}"[:200]


def run_all(
    systems: list[System],
    workloads: list[Workload],
    *,
    repeat: int,
    quick: bool,
    results: dict[str, Any],
    logdir: str,
    want_startup: bool,
    log: Callable[[str], None],
) -> None:
    """Start every system's cluster, then run each workload on all of them in turn.

    The clusters stay up side by side (idle ones cost next to nothing), and
    for every workload the repetitions go round the systems, rotating who
    goes first: load from other users of the machine drifts over minutes, so
    this puts the systems being compared under the same conditions.  The
    clusters with nannies are only started (and stopped) for their startup
    rows, one system after the other, before that system's cluster starts.
    """
    clusters: dict[str, Cluster] = {}
    by_name = {s.name: s for s in systems}
    n_starts = n_reps = 1 if quick else repeat
    try:
        for system in systems:
            log(f"== starting {system.label}")
            if want_startup:
                try:
                    _measure_nanny_starts(system, logdir, n_starts, results, log)
                except Exception as exc:  # noqa: BLE001 - an error row, as below
                    log(
                        f"  [{system.name}] FAILED to start with nannies: {type(exc).__name__}: {exc}"
                    )
                    log(traceback.format_exc())
                    for row in NANNY_ROWS:
                        _record_error(results, row.key, system.name, _start_error(exc))
            try:
                clusters[system.name] = _start_measured(
                    system, logdir, n_starts, results, want_startup, log
                )
            except Exception as exc:  # noqa: BLE001 - a system that cannot start is an error row
                log(f"  [{system.name}] FAILED to start: {type(exc).__name__}: {exc}")
                log(traceback.format_exc())
                for name in [
                    *(("cold_start",) if want_startup else ()),
                    *(row.key for w in workloads for row in w.rows()),
                ]:
                    _record_error(results, name, system.name, _start_error(exc))
        for w in workloads:
            log(f"== {w.name}")
            rows = w.rows()
            runs: dict[str, dict[str, list[float]]] = {
                row.key: {n: [] for n in clusters} for row in rows
            }
            errors: dict[str, str] = {}
            for rep in range(min(n_reps, w.max_reps or n_reps)):
                names = [n for n in clusters if n not in errors]
                k = rep % len(names) if names else 0
                for name in names[k:] + names[:k]:
                    if name in errors:
                        continue
                    cluster = clusters[name]
                    ctx = cluster.ctx(quick)
                    t0 = time.perf_counter()
                    try:
                        with watchdog(cluster, w.timeout):
                            value = w.fn(ctx, rep)
                        extra = (
                            {row.key: ctx.extra[row.key] for row in w.extra_rows}
                            if value is not None
                            else {}
                        )
                    except Exception as exc:  # noqa: BLE001 - one workload failing must not end the run
                        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                        if cluster.killed_by_watchdog:
                            error = f"timeout after {w.timeout:.0f}s ({error})"
                        errors[name] = error
                        log(f"  [{name}] {w.name} rep {rep + 1}: ERROR {error}")
                        log(traceback.format_exc())
                        cluster.stop()  # and start afresh for whatever comes next
                        del clusters[name]
                        try:
                            clusters[name] = _start_measured(
                                by_name[name], logdir, 1, {}, False, log
                            )
                        except Exception as exc2:  # noqa: BLE001
                            log(f"  [{name}] could not restart: {type(exc2).__name__}: {exc2}")
                        continue
                    if value is None:
                        errors[name] = "n/a"
                        continue
                    runs[w.name][name].append(value)
                    for key, v in extra.items():
                        runs[key][name].append(v)
                    idle = cluster.wait_idle()
                    log(
                        f"  [{name}] {w.name} rep {rep + 1}: {value:,.1f} {w.unit} "
                        + "".join(f"({key} {v:,.1f}) " for key, v in extra.items())
                        + f"({time.perf_counter() - t0:.1f}s)"
                        + ("" if idle else "  [warning: keys still held after 15s]")
                    )
            for key, per_system in runs.items():
                for name, values in per_system.items():
                    if name in errors:
                        _record_error(results, key, name, errors[name])
                    elif values:
                        _record(results, key, name, values)
    finally:
        for name, cluster in clusters.items():
            cluster.stop()
            log(f"  [{name}] stopped in {cluster.stop_seconds:.1f}s")


NANNY_ROWS = [
    Row("cold_start_nanny", "cold start with nannies: launch -> client sees 2 workers (s)", False),
    Row("rss_nanny_pair", "idle RSS nanny + its worker process (MiB)", False),
]
STARTUP_ROWS = [
    Row("cold_start", "cold start: launch -> client sees 2 workers (s)", False),
    Row("rss_scheduler", "idle RSS scheduler (MiB)", False),
    Row("rss_worker0", "idle RSS worker 0 (MiB)", False),
    Row("rss_worker1", "idle RSS worker 1 (MiB)", False),
    *NANNY_ROWS,
]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def format_table(results: dict[str, Any], systems: list[System]) -> str:
    rows = [*STARTUP_ROWS, *(row for w in WORKLOADS for row in w.rows())]
    names = [s.name for s in systems]
    titles = {"trioflow": "trioflow", "dask": "dask default", "dask-noqueue": "dask no-queue"}
    header = ["workload", *(titles.get(n, n) for n in names), "ratio vs better dask"]
    lines = []
    body = []
    for key, label, higher in rows:
        if key not in results:
            continue
        cells = []
        vals: dict[str, float | None] = {}
        for n in names:
            r = results[key].get(n)
            if r is None:
                cells.append("-")
                vals[n] = None
            elif "error" in r:
                cells.append("n/a" if r["error"] == "n/a" else "ERROR")
                vals[n] = None
            else:
                cells.append(_fmt(r["median"]))
                vals[n] = r["median"]
        tf = vals.get("trioflow")
        daskv = [v for n, v in vals.items() if n != "trioflow" and v is not None]
        if tf is not None and daskv and tf > 0:
            ratio = tf / max(daskv) if higher else min(daskv) / tf
            rcell = f"{ratio:.2f}"
        else:
            rcell = "-"
        body.append([label, *cells, rcell])
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i])
                for i, c in enumerate(r)
            )
            + " |"
        )

    lines.append(line(header))
    lines.append(
        "|"
        + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths))
        + "|"
    )
    lines.extend(line(r) for r in body)
    errors = [
        (key, n, r["error"])
        for key, per in results.items()
        for n, r in per.items()
        if isinstance(r, dict) and r.get("error") not in (None, "n/a")
    ]
    if errors:
        lines.append("")
        lines.extend(f"ERROR {key} [{n}]: {e}" for key, n, e in errors)
    return "\n".join(lines)


def _meta(args: Any, systems: list[System]) -> dict[str, Any]:
    import dask
    import distributed

    import trioflow

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "trioflow": trioflow.__version__,
        "trioflow_git": rev,
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "quick": args.quick,
        "repeat": 1 if args.quick else args.repeat,
        "systems": {s.name: s.label for s in systems},
        "trioflow_launcher": _resolve_launcher(args.trioflow_launcher),
    }


def _byte_compile_trioflow(log: Callable[[str], None]) -> None:
    """Compile trioflow's modules into ``__pycache__``, as installing a wheel does.

    dask and distributed sit in site-packages with their bytecode compiled at
    install time.  An editable checkout of trioflow has none until a process
    writes it, and with ``PYTHONDONTWRITEBYTECODE`` set (as on some machines,
    this one included) none ever does: every trioflow process would compile
    its own sources at each start, which no installed copy does.
    """
    import compileall

    import trioflow

    root = os.path.dirname(trioflow.__file__)
    ok = compileall.compile_dir(root, quiet=2)
    log(f"byte-compiled {root} (as an installed package is){'' if ok else ' - some files failed'}")


def main(args: Any) -> int:
    def _sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwind through every finally: no orphans

    signal.signal(signal.SIGTERM, _sigterm)

    systems = make_systems(args.trioflow_launcher)
    if args.systems:
        wanted = set(args.systems.split(","))
        unknown = wanted - {s.name for s in systems}
        if unknown:
            raise SystemExit(
                f"unknown system(s): {', '.join(sorted(unknown))}; choose from trioflow, dask, dask-noqueue"
            )
        systems = [s for s in systems if s.name in wanted]
    only = set(args.only.split(",")) if args.only else None
    known = {w.name for w in WORKLOADS} | {"startup"}
    if only and only - known:
        raise SystemExit(
            f"unknown workload(s): {', '.join(sorted(only - known))}; choose from {', '.join(sorted(known))}"
        )
    workloads = [
        w for w in WORKLOADS if (only is None or w.name in only) and (w.in_quick or not args.quick)
    ]
    skipped_collections = args.quick and only is None
    if skipped_collections:
        # The optional dask.array / dask.dataframe rows: keeps --quick under two minutes.
        workloads = [w for w in workloads if not w.collections]
    want_startup = only is None or "startup" in only

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if any(s.name == "trioflow" for s in systems):
        _byte_compile_trioflow(log)
    meta = _meta(args, systems)
    results: dict[str, Any] = {}
    logdir = tempfile.mkdtemp(prefix="trioflow-bench-")
    t_all = time.perf_counter()
    try:
        run_all(
            systems,
            workloads,
            repeat=args.repeat,
            quick=args.quick,
            results=results,
            logdir=logdir,
            want_startup=want_startup,
            log=log,
        )
    finally:
        if args.keep_logs:
            log(f"logs kept in {logdir}")
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    meta["seconds"] = time.perf_counter() - t_all
    meta["loadavg_end"] = os.getloadavg()
    mode = "quick, 1 run each" if args.quick else f"median of {args.repeat}"
    print(
        f"\ntrioflow vs dask.distributed — scheduler + 2 workers x 1 thread, loopback ({mode}; "
        f"{meta['cpus']} CPUs, load {meta['loadavg_start'][0]:.2f}->{meta['loadavg_end'][0]:.2f}, {meta['seconds']:.0f}s)"
    )
    print(format_table(results, systems))
    print(
        "ratio > 1: trioflow better (throughput: trioflow / best dask; time, latency, RSS: best dask / trioflow)"
    )
    if skipped_collections:
        print(
            "--quick skips the 100k map, the held tasks, and the dask.array / dask.dataframe rows (--only array_sum,array_rechunk,dataframe_groupby runs them)"
        )
    if args.quick:
        print(
            "--quick: the 256 MiB row is the first move into a fresh cluster (full runs: steady state after an untimed move)"
        )
    if "held_100k" in results and not args.quick:
        print(
            "held tasks: one run per system, first on a fresh scheduler (freed memory stays in the process for reuse)"
        )
    if not trioflow_has_collections():
        print("trioflow.Client has no compute() yet: its dask.array / dask.dataframe cells are n/a")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
        log(f"wrote {args.json}")
    return 0
