"""A network cut between real hosts, built from Linux network namespaces.

The scheduler and each worker run in their own network namespace; every
namespace (and this test process, which plays the client's host) has one veth
leg plugged into a bridge in a "switch" namespace, all in one /24 from the
benchmarking range 198.18.0.0/15.  Cutting a worker's cable unplugs its leg
from the bridge: packets vanish silently in both directions, as on a real
network, and nobody sees a closed connection.

Needs Linux, root and iproute2; skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
from support import BIN, Daemon, daemons, read_scheduler_file, wait_until  # noqa: E402

import trioflow
from trioflow import Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

cloudpickle.register_pickle_by_value(sys.modules[__name__])




def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def _netns_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"tfprobe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class VirtualLAN:
    """Hosts on one switch.  Host 0 is this process's own namespace."""

    def __init__(self, n_hosts: int) -> None:
        tag = f"{os.getpid() % 100000}"
        self.prefix = f"198.18.{os.getpid() % 250 + 1}"
        self.switch = f"tf{tag}sw"
        self.namespaces = [""] + [f"tf{tag}n{i}" for i in range(1, n_hosts)]
        self.ports = [f"tf{tag}p{i}" for i in range(n_hosts)]
        self.legs = [f"tf{tag}h{i}" for i in range(n_hosts)]
        self._made: list[str] = []

    def ip(self, host: int) -> str:
        return f"{self.prefix}.{host + 1}"

    def exec_prefix(self, host: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[host]] if host else []

    def __enter__(self) -> VirtualLAN:
        try:
            self._add_ns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for host, ns in enumerate(self.namespaces):
                if ns:
                    self._add_ns(ns)
                    _ip("-n", ns, "link", "set", "lo", "up")
                leg, port = self.legs[host], self.ports[host]
                _ip("link", "add", leg, "type", "veth", "peer", "name", port)
                _ip("link", "set", port, "netns", self.switch)
                _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
                on = ["-n", ns] if ns else []
                if ns:
                    _ip("link", "set", leg, "netns", ns)
                else:
                    self._made.append(f"link:{leg}")
                _ip(*on, "addr", "add", f"{self.ip(host)}/24", "dev", leg)
                _ip(*on, "link", "set", leg, "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(f"ns:{ns}")

    def __exit__(self, *exc: object) -> None:
        # Deleting a namespace destroys its veth ends and so their peers.
        for item in reversed(self._made):
            kind, name = item.split(":", 1)
            if kind == "ns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)

    def cut(self, host: int) -> None:
        """Unplug ``host``'s cable: its packets go nowhere, silently."""
        _ip("-n", self.switch, "link", "set", self.ports[host], "nomaster")

    def mend(self, host: int) -> None:
        _ip("-n", self.switch, "link", "set", self.ports[host], "master", "br0")


@pytest.fixture
def lan() -> Iterator[VirtualLAN]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    with VirtualLAN(5) as net:  # this process, the scheduler, three workers
        yield net


def _slow_inc(x: int) -> int:
    time.sleep(0.03)
    return x + 1


def _add(a: int, b: int) -> int:
    return a + b


def _whoami() -> str:
    return trioflow.get_worker().name


def _tree_sum(client: Client, futures: list[trioflow.Future]) -> trioflow.Future:
    while len(futures) > 1:
        pairs = zip(futures[::2], futures[1::2], strict=False)
        nxt = [client.submit(_add, a, b) for a, b in pairs]
        if len(futures) % 2:
            nxt.append(futures[-1])
        futures = nxt
    return futures[0]


def test_worker_cut_off_mid_graph_is_dropped_and_rejoins(lan: VirtualLAN, tmp_path: Path) -> None:
    ttl = 3.0
    sfile = tmp_path / "scheduler.json"
    with daemons() as start:
        scheduler = start(
            [
                *lan.exec_prefix(1),
                str(BIN / "trioflow-scheduler"),
                "--host",
                lan.ip(1),
                "--port",
                "8786",
                "--no-dashboard",
                "--worker-ttl",
                str(ttl),
                "--scheduler-file",
                str(sfile),
            ],
            tmp_path / "scheduler.log",
        )
        address = read_scheduler_file(sfile)["address"]
        assert address == f"tcp://{lan.ip(1)}:8786"
        workers: dict[str, tuple[int, Daemon]] = {}
        for host in (2, 3, 4):
            name = f"w{host}"
            workers[name] = (
                host,
                start(
                    [
                        *lan.exec_prefix(host),
                        str(BIN / "trioflow-worker"),
                        address,
                        "--host",
                        lan.ip(host),
                        "--nthreads",
                        "1",
                        "--name",
                        name,
                        "--no-dashboard",
                        "--memory-limit",
                        "0",
                    ],
                    tmp_path / f"{name}.log",
                ),
            )
        with Client(address, timeout=20) as client:
            client.wait_for_workers(3, timeout=30)
            info = client.scheduler_info()["workers"]
            by_name = {w["name"]: addr for addr, w in info.items()}
            assert sorted(by_name) == ["w2", "w3", "w4"]
            victim = "w4"
            victim_host, victim_daemon = workers[victim]

            # About 4 s of work on three workers, then a tree over it.
            leaves = client.map(_slow_inc, range(300))
            total = _tree_sum(client, leaves)
            wait_until(lambda: sum(f.done() for f in leaves) >= 40, 20, "the graph to get going")
            assert not total.done()
            lan.cut(victim_host)
            cut_at = time.monotonic()

            # The scheduler hears nothing from the victim and drops it after
            # the TTL (checked once a second); the graph finishes without it.
            scheduler.wait_for_text(rf"worker {by_name[victim]} silent for [\d.]+s \(ttl {ttl}s\); removing it", timeout=ttl + 10)
            # (Silence counts from the last heartbeat, up to an interval before the cut.)
            dropped_after = time.monotonic() - cut_at
            assert ttl - 1 <= dropped_after <= ttl + 3, dropped_after
            assert total.result(timeout=60) == sum(range(1, 301))
            survivors = client.scheduler_info()["workers"]
            assert {w["name"] for w in survivors.values()} == {"w2", "w3"}

            # The victim, hearing nothing either, gives up on its stream and
            # keeps trying to register; when the cable is back it rejoins.
            victim_daemon.wait_for_text(r"silent for [\d.]+s", timeout=20)
            lan.mend(victim_host)
            client.wait_for_workers(3, timeout=40)
            victim_daemon.wait_for_text(r"Registered to: ", count=2, timeout=10)
            back = client.scheduler_info()["workers"]
            assert {w["name"] for w in back.values()} == {"w2", "w3", "w4"}
            rejoined = next(a for a, w in back.items() if w["name"] == victim)
            assert client.submit(_whoami, workers=[rejoined], pure=False).result(timeout=20) == victim
            # And the cluster as a whole computes correctly again.
            again = client.map(_slow_inc, range(60), pure=False)
            assert sum(client.gather(again)) == sum(range(1, 61))
            with contextlib.suppress(Exception):
                client.shutdown()
