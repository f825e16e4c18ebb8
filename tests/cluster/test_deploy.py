"""LocalCluster as dask users know it, and ``Client()`` starting its own."""

from __future__ import annotations

import logging
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioflow import Client, LocalCluster, Security
from trioflow.deploy import nprocesses_nthreads
from trioflow.deploy.utils import cpu_count
from trioflow.process.nanny import Nanny
from trioflow.process.system import total_memory
from trioflow.worker import Worker


def inc(x: int) -> int:
    return x + 1


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(1, (1, 1)), (2, (2, 1)), (4, (4, 1)), (5, (5, 1)), (6, (3, 2)), (8, (4, 2)), (12, (4, 3)), (16, (4, 4)), (32, (8, 4)), (64, (8, 8)), (7, (7, 1))],
)
def test_cores_split_into_processes_and_threads_as_dask_splits_them(cores: int, expected: tuple[int, int]) -> None:
    assert nprocesses_nthreads(cores) == expected


def test_container_cpu_quota_caps_the_count(tmp_path: Path) -> None:
    from trioflow.deploy.utils import _cgroup_cpu_quota

    assert _cgroup_cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path)) is None
    v1 = tmp_path / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(str(tmp_path)) is None
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    assert _cgroup_cpu_quota(str(tmp_path)) == 1  # half a CPU rounds up
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert _cgroup_cpu_quota(str(tmp_path)) == 3  # v2 first
    assert cpu_count(str(tmp_path)) == min(3, cpu_count("/nonexistent"))


def test_a_cluster_class_is_not_an_address() -> None:
    with pytest.raises(TypeError, match="Cluster instance"):
        Client(LocalCluster)
    with pytest.raises(TypeError, match="Cluster instance"):
        Client(42)


def test_client_passes_every_cluster_keyword_through_and_closes_its_cluster() -> None:
    with Client(
        n_workers=2,
        threads_per_worker=3,
        processes=False,
        memory_limit="200MB",
        dashboard_address=None,
        silence_logs=logging.ERROR,
        host="127.0.0.1",
        protocol="tcp",
        resources={"GPU": 1},
    ) as client:
        cluster = client.cluster
        assert isinstance(cluster, LocalCluster)
        assert client.scheduler_address.startswith("tcp://127.0.0.1:")
        assert cluster.dashboard_link is None
        assert not cluster.processes
        assert all(isinstance(w, Worker) for w in cluster.workers.values())
        info = client.scheduler_info()["workers"]
        assert sorted(w["nthreads"] for w in info.values()) == [3, 3]
        assert {w["memory_limit"] for w in info.values()} == {200_000_000}
        assert {w["resources"]["GPU"] for w in info.values()} == {1}
        assert logging.getLogger("trioflow").level == logging.ERROR
        assert client.submit(inc, 1).result(timeout=10) == 2
        # The totals are real, in a size anyone reads.
        assert "memory=400.00 MB" in repr(client)
        html = client._repr_html_()
        assert "400.00 MB" in html and "Total threads" in html and ">6<" in html
    assert cluster.status == "closed"
    assert logging.getLogger("trioflow").level == logging.INFO  # restored (conftest sets INFO)


def test_client_scheduler_port_and_security_reach_the_cluster(busy_port: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    security = Security.temporary()
    with Client(n_workers=1, processes=False, dashboard_address=None, scheduler_port=port, security=security) as client:
        assert client.scheduler_address == f"tls://127.0.0.1:{port}"
        assert client.submit(inc, 2).result(timeout=10) == 3


def test_an_address_in_the_environment_means_no_cluster_of_our_own(monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv("TRIOFLOW_SCHEDULER_ADDRESS", cluster.scheduler_address)
        with Client(n_workers=5) as client:
            assert client.cluster is None
            assert client.scheduler_address == cluster.scheduler_address
            assert len(client.scheduler_info()["workers"]) == 1
        assert cluster.status == "running"


def test_dasks_configured_scheduler_address_means_no_cluster_of_our_own() -> None:
    import dask

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        with dask.config.set({"scheduler-address": cluster.scheduler_address}), Client(n_workers=5) as client:
            assert client.cluster is None
            assert client.scheduler_address == cluster.scheduler_address
        assert cluster.status == "running"


def test_taken_dashboard_port_moves_with_a_warning(busy_port: int) -> None:
    with pytest.warns(UserWarning, match=f"Port {busy_port} is already in use"):
        cluster = LocalCluster(n_workers=0, processes=False, dashboard_address=f":{busy_port}")
    with cluster:
        link = cluster.dashboard_link
        assert link is not None and link.startswith("http://127.0.0.1:")
        assert f":{busy_port}/" not in link
        assert "port" in cluster.get_logs()["Cluster"]


def test_thread_cluster_sizes_from_the_cpus_and_scales() -> None:
    with LocalCluster(processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        # dask: one worker with a thread per core when processes=False.
        assert client.nthreads() == {w.address: cpu_count() for w in cluster.workers.values()}
        assert len(cluster.workers) == 1
        n, threads, memory = cluster._summary()
        assert (n, threads) == (1, cpu_count())
        assert memory == total_memory()
        cluster.scale(3)
        client.wait_for_workers(3, timeout=10)
        assert len(cluster.workers) == 3 and len(client.scheduler_info()["workers"]) == 3
        cluster.scale(1)
        assert len(cluster.workers) == 1
        assert f"workers=1, threads={cpu_count()}" in repr(cluster)
        assert cluster.scheduler_address in repr(cluster)
        assert "LocalCluster" in cluster._repr_html_() and "threads in this process" in cluster._repr_html_()
        logs = cluster.get_logs()
        assert set(logs) == {"Cluster", "Scheduler", "Workers"}
        assert "scale to 3 workers" in logs["Cluster"] and "scale to 1 worker" in logs["Cluster"]
        with pytest.raises(ValueError, match="negative"):
            cluster.scale(-1)
    assert "status=closed" in repr(cluster)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bare_client_starts_worker_processes_sized_like_dask() -> None:
    n, threads = nprocesses_nthreads(cpu_count())
    with warnings.catch_warnings():
        # Another cluster on this machine may hold 8787; then another port.
        warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
        client = Client()
    with client:
        cluster = client.cluster
        assert isinstance(cluster, LocalCluster) and cluster.processes
        assert all(isinstance(w, Nanny) for w in cluster.workers.values())
        info = client.scheduler_info()
        assert len(info["workers"]) == n
        assert {w["nthreads"] for w in info["workers"].values()} == {threads}
        assert sum(w["memory_limit"] for w in info["workers"].values()) == pytest.approx(total_memory(), rel=1e-3)
        assert info["services"].get("dashboard")
        assert client.dashboard_link == cluster.dashboard_link
        assert client.submit(pow, 2, 5).result(timeout=30) == 32  # a worker process imports no test module
        assert "processes (with nannies)" in cluster._repr_html_()
    assert cluster.status == "closed"
    assert all(w.process is None or w.process.returncode is not None for w in cluster.workers.values())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_script_that_never_closes_its_client_exits_cleanly(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = "from trioflow import Client\nc = Client(n_workers=2, threads_per_worker=1, dashboard_address=None)\nprint(c.submit(pow, 2, 3).result())\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8"
    # The cluster went at exit, its worker processes told to stop, not orphaned.
    assert "nanny went away" not in out.stderr, out.stderr
