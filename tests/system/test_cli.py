"""Real-subprocess tests of ``trioflow-scheduler``, ``trioflow-worker`` and ``trioflow local``.

Every daemon here listens on 127.0.0.1 only (``--host 127.0.0.1``), on a
random port (``--port 0``) found through ``--scheduler-file``; every process
started is stopped in ``finally`` with a SIGTERM -> SIGKILL ladder, and its
descendants too (an orphan is re-parented away from us, so the autouse leak
checker could not see it).

Sync tests on purpose: they drive the blocking ``Client`` and plain
``subprocess``; each wait has its own deadline and the file-wide pytest
timeout backs them up.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import psutil
import pytest
from support import (  # noqa: E402
    BIN,
    LOCAL,
    SCHEDULER,
    WORKER,
    _alive,
    daemons,
    read_scheduler_file,
    start_scheduler,
    start_worker,
    wait_until,
)

import trioflow
from trioflow import Client, KilledWorker, Security

pytestmark = pytest.mark.slow

# Task functions below travel by value: the worker processes cannot import this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TRIOFLOW = str(BIN / "trioflow")
SEED = Path("/work/shared/seed/command-line.rst")


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _inc(x: int) -> int:
    return x + 1


def _whoami() -> str:
    return trioflow.get_worker().address


def _pid() -> int:
    return os.getpid()


# ---------------------------------------------------------------- no daemon needed


def test_version() -> None:
    procs = [subprocess.Popen([cmd, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in (SCHEDULER, WORKER, TRIOFLOW)]
    for p in procs:
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert out.split()[-1] == trioflow.__version__


def _seed_options(command: str) -> list[str]:
    """The options of ``dask-<command> --help`` on the seed page."""
    text = SEED.read_text()
    block = text.split(f"$ dask-{command} --help", 1)[1].split("\n\n\n", 1)[0]
    opts: list[str] = []
    for line in block.splitlines():
        m = re.match(r"\s+(--[\w-]+)(?:\s*/\s*(--[\w-]+))?", line)
        if m:
            opts.extend(o for o in m.groups() if o)
    return opts


@pytest.mark.parametrize(
    ("command", "exe", "aliases"),
    [
        ("scheduler", SCHEDULER, ["--dashboard-address", "--dashboard", "--no-dashboard", "--dashboard-prefix", "--protocol", "--version"]),
        ("worker", WORKER, ["--dashboard-address", "--dashboard", "--no-dashboard", "--dashboard-prefix", "--nworkers", "--protocol", "--version", "--preload-nanny"]),
    ],
)
def test_help_lists_every_seed_option(command: str, exe: str, aliases: list[str]) -> None:
    seed = _seed_options(command)
    assert len(seed) > 15 and "--help" in seed and "--bokeh-port" in seed  # the parser found the list
    out = run([exe, "--help"])
    assert out.returncode == 0, out.stderr
    listed = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", out.stdout))
    missing = [o for o in seed + aliases if o not in listed]
    assert not missing, f"{exe} --help lacks {missing}:\n{out.stdout}"


BAD_VALUES = [
    (["--memory-limit", "lots"], "--memory-limit"),
    (["--interface", "nosuch0"], "--interface"),
    (["--tls-ca-file", "/nonexistent/ca.pem", "--tls-cert", "/nonexistent/cert.pem"], "--tls-ca-file"),
    (["--preload", "/nonexistent/preload_me.py"], "--preload"),
    (["--preload", "no_such_module_for_trioflow"], "--preload"),
    (["--resources", "GPU=x"], "--resources"),
    (["--worker-port", "lots"], "--worker-port"),
]


def test_bad_values_exit_with_one_line(tmp_path: Path) -> None:
    # Nothing listens on port 1: none of these gets as far as connecting.
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [([WORKER, "tcp://127.0.0.1:1", *LOCAL, "--no-dashboard", *args], option) for args, option in BAD_VALUES]
    cases += [
        ([WORKER, "tcp://127.0.0.1:1", "--no-nanny", *LOCAL, "--no-dashboard", "--preload-nanny", "x.py"], "--preload-nanny"),
        ([SCHEDULER, "--interface", "nosuch0", "--no-dashboard"], "--interface"),
        ([SCHEDULER, *LOCAL, "--port", "0", "--no-dashboard", "--tls-ca-file", str(tmp_path / "missing.pem")], "--tls-ca-file"),
        ([SCHEDULER, *LOCAL, "--port", "0", "--no-dashboard", "--tls-ca-file", str(junk), "--tls-cert", str(junk)], "--tls-ca-file"),
        ([SCHEDULER, *LOCAL, "--port", "0", "--no-dashboard", "--preload", str(tmp_path / "missing.py")], "--preload"),
        ([SCHEDULER, *LOCAL, "--port", "0", "--no-dashboard", "--pid-file", str(tmp_path / "no" / "such" / "dir.pid")], "--pid-file"),
    ]
    procs = [(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL), cmd, opt) for cmd, opt in cases]
    failures = []
    for p, cmd, option in procs:
        try:
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        lines = err.strip().splitlines()
        ok = p.returncode not in (0, None) and len(lines) == 1 and option in lines[0] and "Traceback" not in err and not out.strip()
        if not ok:
            failures.append(f"{' '.join(cmd[1:])}: exit {p.returncode}, stderr:\n{err}")
    assert not failures, "\n\n".join(failures)


def test_death_timeout_without_scheduler(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [WORKER, f"tcp://127.0.0.1:{port}", *LOCAL, "--no-dashboard", "--death-timeout", "2", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for extra in ([], ["--no-nanny"])
    ]
    for p in procs:
        try:
            _out, err = p.communicate(timeout=15)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        elapsed = time.monotonic() - start
        assert p.returncode == 1, err
        assert elapsed < 6, elapsed
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("trioflow-worker: error:")]
        assert len(errors) == 1 and "death-timeout" in errors[0], err
        assert err.strip().splitlines()[-1] == errors[0]


# ---------------------------------------------------------------- scheduler


PRELOAD = textwrap.dedent(
    """
    import os
    import trio

    OUT = {out!r}

    def trioflow_setup(server):
        with open(os.path.join(OUT, f"setup-{{type(server).__name__}}-{{os.getpid()}}"), "w") as f:
            f.write(getattr(server, "address", "") or "")

    async def trioflow_teardown(server):
        await trio.sleep(0)
        with open(os.path.join(OUT, f"teardown-{{type(server).__name__}}-{{os.getpid()}}"), "w") as f:
            f.write("bye")
    """
)


def test_scheduler_files_preload_and_sigterm(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    preload = tmp_path / "sched_preload.py"
    preload.write_text(PRELOAD.format(out=str(marks)))
    pid_file = tmp_path / "scheduler.pid"
    with daemons() as start:
        sched, address, sfile = start_scheduler(start, tmp_path, "--pid-file", str(pid_file), "--preload", str(preload))
        assert address.startswith("tcp://127.0.0.1:")
        assert re.search(r"Scheduler at:\s+" + re.escape(address), sched.text())
        info = json.loads(sfile.read_text())
        assert info["address"] == address and "services" in info
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() == str(sched.pid), 5, "pid file")
        wait_until(lambda: (marks / f"setup-Scheduler-{sched.pid}").exists(), 5, "the scheduler preload's setup")
        assert (marks / f"setup-Scheduler-{sched.pid}").read_text() == address
        # Client(scheduler_file=...) reads the same file.
        with Client(scheduler_file=str(sfile), timeout=10) as client:
            assert client.scheduler_address == address
        sched.proc.send_signal(signal.SIGTERM)
        assert sched.wait(10) == 0, sched.text()
        assert (marks / f"teardown-Scheduler-{sched.pid}").exists()
        assert not sfile.exists()
        assert not pid_file.exists()
        assert "Traceback" not in sched.text()


PROBE = textwrap.dedent(
    """
    import json, os

    def trioflow_setup(server):
        seen = {{"malloc": os.environ.get("PYTHONMALLOC"), "ttl": server.worker_ttl, "pid": os.getpid()}}
        with open({out!r}, "w") as f:
            json.dump(seen, f)
    """
)


def test_scheduler_reexecs_on_system_malloc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # trioflow-scheduler replaces itself (same PID) with a process on glibc's
    # malloc, and the options reach it.
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    out = tmp_path / "seen.json"
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(out=str(out)))
    with daemons() as start:
        sched, address, _ = start_scheduler(start, tmp_path, "--preload", str(probe), "--worker-ttl", "7.5")
        wait_until(out.exists, 10, "the probe's report")
        seen = json.loads(out.read_text())
        with Client(address, timeout=10) as client:
            assert client.scheduler_info()["address"] == address
        sched.proc.send_signal(signal.SIGTERM)
        assert sched.wait(10) == 0, sched.text()
    assert seen == {"malloc": "malloc", "ttl": 7.5, "pid": sched.pid}
    assert "Traceback" not in sched.text()


def test_scheduler_dashboard_flags(tmp_path: Path) -> None:
    """--dashboard-address serves the page; the startup line gives its URL."""
    sfile = tmp_path / "scheduler.json"
    with daemons() as start:
        d = start(
            [SCHEDULER, *LOCAL, "--port", "0", "--dashboard-address", "127.0.0.1:0", "--dashboard-prefix", "/pre", "--scheduler-file", str(sfile)],
            tmp_path / "scheduler.log",
        )
        d.wait_for_text(r"Scheduler at:")
        m = d.wait_for_text(r"dashboard at:\s+(http://127\.0\.0\.1:(\d+)/pre/status)")
        info = read_scheduler_file(sfile)
        assert info["services"]["dashboard"] == int(m.group(2))
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(10) == 0


# ---------------------------------------------------------------- worker lifecycle


def test_worker_nprocs_names_files_and_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    scratch = tmp_path / "scratch"
    marks = tmp_path / "marks"
    marks.mkdir()
    wpre = tmp_path / "wpreload.py"
    wpre.write_text(PRELOAD.format(out=str(marks)))
    npre = tmp_path / "npreload.py"
    npre.write_text(PRELOAD.format(out=str(marks)))
    with daemons() as start:
        _sched, address, sfile = start_scheduler(start, tmp_path)
        w = start(
            [
                WORKER, *LOCAL, "--no-dashboard", "--scheduler-file", str(sfile), "--nprocs", "2", "--name", "w",
                "--nthreads", "1", "--pid-file", str(pid_file), "--local-directory", str(scratch),
                "--preload", str(wpre), "--preload-nanny", str(npre),
            ],
            tmp_path / "worker.log",
        )  # fmt: skip
        w.wait_for_text(r"Start worker at:\s+tcp://127\.0\.0\.1:\d+", count=2)
        text = w.text()
        assert len(re.findall(r"Start Nanny at:\s+tcp://127\.0\.0\.1:\d+", text)) == 2, text
        assert len(re.findall(r"Registered to:\s+" + re.escape(address), text)) == 2, text
        assert pid_file.read_text().strip() == str(w.pid)
        kids = w.children()
        assert len(kids) == 2
        with Client(address, timeout=10) as client:
            client.wait_for_workers(2, timeout=10)
            info = client.scheduler_info()["workers"]
            assert sorted(wi["name"] for wi in info.values()) == ["w-0", "w-1"]
            assert {wi["pid"] for wi in info.values()} == {k.pid for k in kids}
            for wi in info.values():
                assert Path(wi["local_directory"]).parent == scratch
                assert Path(wi["local_directory"]).name.startswith("trioflow-worker-")
            assert client.submit(_inc, 1).result(timeout=10) == 2
        # --preload ran in each worker process, --preload-nanny in the nanny process.
        for k in kids:
            assert (marks / f"setup-Worker-{k.pid}").exists()
        assert len(list(marks.glob(f"setup-Nanny-{w.pid}"))) == 1
        assert len(list(scratch.glob("trioflow-worker-*"))) == 2
        w.proc.send_signal(signal.SIGTERM)
        assert w.wait(15) == 0, w.text()
        assert "Traceback" not in w.text()
        psutil.wait_procs(kids, timeout=3)
        assert not any(_alive(k.pid) for k in kids)
        assert not pid_file.exists()
        assert list(scratch.glob("trioflow-worker-*")) == []
        for k in kids:
            assert (marks / f"teardown-Worker-{k.pid}").exists()
        assert (marks / f"teardown-Nanny-{w.pid}").exists()


def _arena_limit() -> int | None:
    import trioflow.process.malloc

    return trioflow.process.malloc.arena_limit


def test_resources_steer_tasks_and_no_nanny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    with daemons() as start:
        _sched, address, _ = start_scheduler(start, tmp_path)
        gpu = start_worker(start, tmp_path, address, "--no-nanny", "--resources", "GPU=2 MEM=10e9", "--name", "gpu", name="gpu")
        plain = start_worker(start, tmp_path, address, "--name", "plain", name="plain")
        assert gpu.children() == []  # --no-nanny: the worker itself, no child process
        with Client(address, timeout=10) as client:
            client.wait_for_workers(2, timeout=10)
            info = client.scheduler_info()["workers"]
            by_name = {wi["name"]: (addr, wi) for addr, wi in info.items()}
            gpu_addr, gpu_info = by_name["gpu"]
            assert gpu_info["resources"] == {"GPU": 2.0, "MEM": 1e10}
            assert gpu_info["pid"] == gpu.pid
            futures = [client.submit(_whoami, resources={"GPU": 1}, pure=False) for _ in range(6)]
            assert {f.result(timeout=20) for f in futures} == {gpu_addr}
            who = client.who_has(futures)
            assert all(v == [gpu_addr] for v in who.values())
            # Both worker processes (with and without a nanny) share glibc
            # arenas among their executor threads and event loop.
            nthreads = client.nthreads()
            limits = client.run(_arena_limit)
            assert limits == nthreads and all(n >= 1 for n in limits.values()), (limits, nthreads)
        for d in (gpu, plain):
            d.proc.send_signal(signal.SIGTERM)
            assert d.wait(15) == 0, d.text()


def test_kill_worker_process_is_restarted(tmp_path: Path) -> None:
    with daemons() as start:
        sched, address, _ = start_scheduler(start, tmp_path)
        w = start_worker(start, tmp_path, address)
        (child,) = w.children()
        with Client(address, timeout=10) as client:
            client.wait_for_workers(1, timeout=10)
            assert client.submit(_pid, pure=False).result(timeout=10) == child.pid
            child.kill()
            w.wait_for_text(r"died \(killed by SIGKILL\); restarting")
            w.wait_for_text(r"Registered to:", count=2)
            wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, 10, "the restarted worker")
            (new,) = w.children()
            assert new.pid != child.pid
            assert client.submit(_pid, pure=False).result(timeout=10) == new.pid
        assert "Remove worker" in sched.text()


def test_kill_nanny_takes_its_worker_down(tmp_path: Path) -> None:
    """Even with a task stuck in a thread, the orphan is gone within a second."""
    with daemons() as start:
        _sched, address, _ = start_scheduler(start, tmp_path)
        w = start_worker(start, tmp_path, address)
        (child,) = w.children()
        with Client(address, timeout=10) as client:
            client.wait_for_workers(1, timeout=10)
            marker = tmp_path / "running"
            client.submit(_sleep_after_touch, str(marker), 30, pure=False)
            wait_until(marker.exists, 10, "the task to start")
            w.proc.kill()
            w.proc.wait(5)
            gone = time.monotonic()
            wait_until(lambda: not _alive(child.pid), 3, "the orphaned worker process to exit")
            assert time.monotonic() - gone < 1.0


def _sleep_after_touch(path: str, seconds: float) -> None:
    Path(path).touch()
    time.sleep(seconds)


def test_memory_limit_restarts_worker_and_counts_towards_killed_worker(tmp_path: Path) -> None:
    with daemons() as start:
        sched, address, _ = start_scheduler(start, tmp_path)
        w = start_worker(start, tmp_path, address, "--memory-limit", "300MB", "--nthreads", "1")
        with Client(address, timeout=10) as client:
            client.wait_for_workers(1, timeout=10)
            assert client.scheduler_info()["workers"].popitem()[1]["memory_limit"] == 300_000_000
            future = client.submit(_hog, 2**30, pure=False)
            with pytest.raises(KilledWorker):
                future.result(timeout=40)
            text = w.text()
            assert len(re.findall(r"over 95% of its \d+ MB memory limit; restarting", text)) == 4, text
            # The nanny is still there, with a fresh worker.
            wait_until(lambda: len(client.scheduler_info()["workers"]) == 1, 10, "a fresh worker")
            assert client.submit(_inc, 1).result(timeout=10) == 2
        assert "Traceback" not in sched.text()


def _hog(n: int) -> int:
    """Grow towards ``n`` bytes, then hold them: only the nanny ends this."""
    chunks = []
    while sum(map(len, chunks)) < n:
        chunks.append(bytearray(50 * 2**20))
        time.sleep(0.03)
    time.sleep(30)
    return len(chunks)


def test_reconnect_and_no_reconnect(tmp_path: Path) -> None:
    port = free_port()
    with daemons() as start:
        sched, address, _ = start_scheduler(start, tmp_path, port=port, name="first")
        stay = start_worker(start, tmp_path, address, "--name", "stay", name="stay")
        leave = start_worker(start, tmp_path, address, "--name", "leave", "--no-reconnect", name="leave")
        (stay_child,) = stay.children()
        sched.proc.kill()  # no goodbye: SIGTERM would tell workers to close
        sched.proc.wait(5)
        assert leave.wait(10) == 0, leave.text()
        sched2, address2, _ = start_scheduler(start, tmp_path, port=port, name="second")
        assert address2 == address
        sched2.wait_for_text(r"Register worker \S+ \(stay,")
        stay.wait_for_text(r"Registered to:", count=2)
        assert stay.children() == [stay_child]  # the same worker process, registered again
        with Client(address, timeout=10) as client:
            client.wait_for_workers(1, timeout=10)
            assert [wi["name"] for wi in client.scheduler_info()["workers"].values()] == ["stay"]
            assert client.submit(_pid, pure=False).result(timeout=10) == stay_child.pid
        stay.proc.send_signal(signal.SIGTERM)
        assert stay.wait(15) == 0


def test_tls_through_the_flags(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    tls = ["--tls-ca-file", str(ca_file), "--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    with daemons() as start:
        _sched, address, sfile = start_scheduler(start, tmp_path, *tls)
        assert address.startswith("tls://127.0.0.1:")
        w = start(
            [WORKER, *LOCAL, "--no-dashboard", "--scheduler-file", str(sfile), *tls],
            tmp_path / "worker.log",
        )
        w.wait_for_text(r"Start worker at:\s+tls://127\.0\.0\.1:\d+")
        assert re.search(r"Start Nanny at:\s+tls://", w.text())
        sec = Security(tls_ca_file=str(ca_file), tls_client_cert=str(cert_file), tls_client_key=str(key_file))
        with Client(address, security=sec, timeout=10) as client:
            client.wait_for_workers(1, timeout=10)
            assert client.submit(_inc, 41).result(timeout=10) == 42
        # A worker without the certificates cannot join: one line, non-zero.
        bad = run([WORKER, address, *LOCAL, "--no-dashboard", "--no-nanny", "--death-timeout", "2"], timeout=20)
        assert bad.returncode != 0
        assert bad.stderr.strip().splitlines()[-1].startswith("trioflow-worker: error:"), bad.stderr
        assert "Traceback" not in bad.stderr


def test_trioflow_local(tmp_path: Path) -> None:
    with daemons() as start:
        d = start([TRIOFLOW, "local", "--no-demo", "--port", "0", "--nworkers", "2", "--dashboard-address", "127.0.0.1:0"], tmp_path / "local.log")
        m = d.wait_for_text(r"trioflow is running: scheduler (tcp://127\.0\.0\.1:\d+)", timeout=30)
        d.wait_for_text(r"live page: http://127\.0\.0\.1:\d+/status")
        kids = d.children()
        assert len(kids) == 2
        with Client(m.group(1), timeout=10) as client:
            client.wait_for_workers(2, timeout=10)
            assert client.submit(_inc, 1).result(timeout=10) == 2
        d.proc.send_signal(signal.SIGINT)
        assert d.wait(15) == 0, d.text()
        psutil.wait_procs(kids, timeout=3)
        assert not any(_alive(k.pid) for k in kids)
        assert "stopped; everything cleaned up" in d.text()


# ---------------------------------------------------------------- lean daemons

#: Modules a daemon has no use for until a task or a page asks (each costs
#: start-up time and resident memory in every scheduler and worker process).
NOT_AT_START = ("cattrs", "cloudpickle", "dask", "h11", "numpy", "psutil", "trio_websocket")

_START_DAEMONS = textwrap.dedent(
    """
    import sys

    import trio

    from trioflow.cli import scheduler_main, worker_main  # what the console scripts load
    from trioflow.process.nanny import Nanny  # noqa: F401
    from trioflow.scheduler.server import Scheduler
    from trioflow.worker.server import Worker

    async def main():
        async with trio.open_nursery() as nursery:
            scheduler = Scheduler("tcp://127.0.0.1:0")
            await nursery.start(scheduler.serve)
            # A memory limit runs the memory monitor; heartbeats read RSS and CPU.
            worker = Worker(scheduler.address, nthreads=1, memory_limit=2**30, heartbeat_interval=0.02)
            await nursery.start(worker.serve)
            await trio.sleep(0.3)
            await worker.aclose()
            scheduler.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
    print(" ".join(sorted(m for m in NOT_AT_START if m in sys.modules)))
    """
)


def test_daemons_start_without_heavy_modules() -> None:
    code = f"NOT_AT_START = {NOT_AT_START!r}\n{_START_DAEMONS}"
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True)
    assert out.stdout.split() == []


def test_nanny_worker_process_does_without_click() -> None:
    # `python -m trioflow.process.nanny` runs without option parsing.
    code = "import sys, trioflow.process.nanny, trioflow.process.daemon; assert 'click' not in sys.modules, 'click imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
