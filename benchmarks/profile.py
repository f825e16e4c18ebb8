"""Where does the time go?  py-spy every process of a cluster during a workload.

``python -m benchmarks.profile [--system trioflow] [--workload map_20k] [--reps 3] [--top 20] [--out DIR]``

Starts the cluster exactly as :mod:`benchmarks.runner` does, warms it up,
attaches ``py-spy record --nonblocking --format raw`` to the client (this
process), the scheduler and both workers, runs the workload ``--reps`` times,
stops py-spy, and prints for each process: its CPU use (active samples over
wall time) and the hottest functions by self time and by inclusive time
(``file:function``, line numbers folded).  The raw collapsed stacks are left
in ``--out`` for flame graphs (``inferno-flamegraph`` / speedscope).

Needs ``py-spy`` in the venv (``pip install py-spy``) and ptrace rights.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import psutil

from .runner import TRIOFLOW_LAUNCHER, Cluster, make_systems
from .workloads import WORKLOADS, warm_up

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return (
                path.split(marker, 1)[1].split("/", 1)[-1]
                if marker == "/lib/python3"
                else path.split(marker, 1)[1]
            )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/"
    return path[len(root) :] if path.startswith(root) else path


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{_short(m.group('file'))}:{m.group('func')}"


def summarize(raw_path: str, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    with open(raw_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count_text = line.rpartition(" ")
            try:
                count = int(count_text)
            except ValueError:
                continue
            frames = [_frame_name(fr) for fr in stack.split(";") if fr]
            # py-spy may prefix a thread / process pseudo-frame; real frames have "file:func".
            frames = [fr for fr in frames if ":" in fr] or frames
            if not frames:
                continue
            total += count
            self_counts[frames[-1]] += count
            for fr in set(frames):
                # Inclusive time is only telling for our own code below the entry points.
                if fr.startswith("trioflow/") and not fr.startswith("trioflow/cli/"):
                    incl_counts[fr] += count
    return total, self_counts.most_common(top), incl_counts.most_common(top)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--system", default="trioflow", choices=["trioflow", "dask", "dask-noqueue"])
    p.add_argument("--workload", default="map_20k", choices=[w.name for w in WORKLOADS])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--out", help="directory for the raw stacks (default: a new temp dir)")
    p.add_argument(
        "--all-threads",
        action="store_true",
        help="sample every thread py-spy thinks is running (default: only the GIL holder, --gil; on an "
        "oversubscribed 2-core box 'running' also counts threads waiting for a CPU)",
    )
    p.add_argument("--trioflow-launcher", default=TRIOFLOW_LAUNCHER)
    args = p.parse_args(argv)

    pyspy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")
    if not pyspy:
        raise SystemExit("py-spy not found: pip install py-spy")
    system = next(s for s in make_systems(args.trioflow_launcher) if s.name == args.system)
    workload = next(w for w in WORKLOADS if w.name == args.workload)
    out = args.out or tempfile.mkdtemp(prefix=f"profile-{args.system}-{args.workload}-")
    os.makedirs(out, exist_ok=True)
    logdir = tempfile.mkdtemp(prefix="trioflow-bench-")

    def handle_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle_term)
    cluster = Cluster(system, logdir)
    spies: list[tuple[str, subprocess.Popen[bytes], str]] = []
    try:
        cluster.start()
        ctx = cluster.ctx(quick=False)
        warm_up(ctx)
        cluster.wait_idle()
        pids = [("client", os.getpid())] + [(role, proc.pid) for role, proc in cluster.procs]
        for role, pid in pids:
            path = os.path.join(out, f"{role}.txt")
            sp = subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(args.rate),
                    "--nonblocking",
                    "--format",
                    "raw",
                    "--output",
                    path,
                    *([] if args.all_threads else ["--gil"]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            spies.append((role, sp, path))
        time.sleep(1.0)  # let py-spy attach
        procs = {role: psutil.Process(pid) for role, pid in pids}
        cpu0 = {role: pr.cpu_times() for role, pr in procs.items()}
        t0 = time.perf_counter()
        values = []
        for rep in range(args.reps):
            values.append(workload.fn(ctx, rep))
            cluster.wait_idle()
        wall = time.perf_counter() - t0
        cpu = {}
        for role, pr in procs.items():
            c1 = pr.cpu_times()
            cpu[role] = (c1.user - cpu0[role].user, c1.system - cpu0[role].system)
    finally:
        for _, sp, _ in spies:
            if sp.poll() is None:
                sp.send_signal(signal.SIGINT)
        for _role, sp, _ in spies:
            try:
                sp.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(sp.pid, signal.SIGKILL)
                sp.wait()
        cluster.stop()
        shutil.rmtree(logdir, ignore_errors=True)

    print(
        f"\n{system.label}, {workload.label}: {', '.join(f'{v:,.1f}' for v in values)} {workload.unit}; "
        f"{wall:.1f}s wall for {args.reps} reps; raw stacks in {out}"
    )
    print(
        "CPU seconds during the reps (user + sys, all threads; py-spy's own overhead on the target included):"
    )
    for role, (u, sy) in cpu.items():
        print(
            f"  {role:<10} {u:6.2f} + {sy:5.2f} = {u + sy:6.2f} s  ({(u + sy) / wall:.0%} of one core)"
        )
    print(
        f"  {'total':<10} {sum(u + sy for u, sy in cpu.values()):22.2f} s  ({sum(u + sy for u, sy in cpu.values()) / wall:.0%} of one core; "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f})"
    )
    for role, _, path in spies:
        if not os.path.exists(path):
            print(f"\n[{role}] no profile written")
            continue
        total, top_self, top_incl = summarize(path, args.top)
        print(
            f"\n[{role}] {total} samples ({'all running threads' if args.all_threads else 'GIL holder'}, {args.rate} Hz); "
            "self time by function | inclusive time, trioflow code only"
        )
        print(f"  {'self %':>6}  function" + " " * 52 + f"{'incl %':>6}  function")
        for i in range(max(len(top_self), len(top_incl))):
            left = (
                f"  {100 * top_self[i][1] / total:5.1f}%  {top_self[i][0][:58]:<58}"
                if i < len(top_self)
                else " " * 68
            )
            right = (
                f"{100 * top_incl[i][1] / total:5.1f}%  {top_incl[i][0][:70]}"
                if i < len(top_incl)
                else ""
            )
            print(f"{left}  {right}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
