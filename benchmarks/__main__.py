"""``python -m benchmarks [--quick] [--json FILE] [--only NAME,...]``

trioflow against dask.distributed (default settings, and with
``worker-saturation: inf``) on a scheduler plus two single-threaded worker
processes on loopback.  See :mod:`benchmarks.runner` for how, and
:mod:`benchmarks.workloads` for what.
"""

from __future__ import annotations

import argparse
import sys

from .runner import TRIOFLOW_LAUNCHER, main
from .workloads import WORKLOADS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = ", ".join(["startup", *(w.name for w in WORKLOADS)])
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="trioflow vs dask.distributed (default, and worker-saturation: inf) on a scheduler and two 1-thread worker processes on loopback.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one run of each workload; skip the 100k map, the held tasks and the dask.array/dataframe rows (under two minutes)",
    )
    p.add_argument("--json", metavar="FILE", help="write all runs and medians as JSON")
    p.add_argument("--only", metavar="NAME,...", help=f"run only these (from: {names})")
    p.add_argument(
        "--systems",
        metavar="NAME,...",
        help="run only these systems (trioflow, dask, dask-noqueue)",
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="repetitions per workload in a full run (default 3)"
    )
    p.add_argument(
        "--trioflow-launcher",
        default=TRIOFLOW_LAUNCHER,
        choices=["auto", "cli", "module", "script"],
        help="how trioflow processes are started (default: %(default)s)",
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the process logs (path printed at the end)"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
