"""Plugins against real clusters: worker, nanny and scheduler plugins, the
built-ins, workers that join after registration, and plugins that raise.

In-process workers share this process, so the tests look at the plugin
objects the workers and the scheduler unpickled (``worker.plugins``,
``scheduler.plugins``).  The process-worker tests are marked slow; what
they run travels by value (the worker processes cannot import this file).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import trio
from support import wait_until

from trioflow import (
    Client,
    CommError,
    Environ,
    LocalCluster,
    NannyPlugin,
    PipInstall,
    PluginError,
    SchedulerPlugin,
    UploadDirectory,
    UploadFile,
    WorkerPlugin,
    open_client,
    open_cluster,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inc(x: int) -> int:
    return x + 1


class Recorder(WorkerPlugin):
    """Writes down what happens to it on its worker."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def setup(self, worker: Any) -> None:
        self.events.append(("setup", worker.address))

    def teardown(self, worker: Any) -> None:
        self.events.append(("teardown", worker.address))
        worker.torn_down_plugins = [*getattr(worker, "torn_down_plugins", []), self.name]

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        self.events.append(("transition", key, start, finish))


class AsyncSetup(WorkerPlugin):
    """dask allows coroutine hooks: awaited in the worker's loop."""

    name = "async-setup"

    async def setup(self, worker: Any) -> None:
        await trio.sleep(0)
        self.ready = worker.address

    async def teardown(self, worker: Any) -> None:
        await trio.sleep(0)
        worker.async_teardown = True


class Failing(WorkerPlugin):
    def setup(self, worker: Any) -> None:
        raise ValueError(f"no setup for {worker.name}")


class SchedRecorder(SchedulerPlugin):
    name = "sched-recorder"

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    async def start(self, scheduler: Any) -> None:
        self.events.append(("start", scheduler.address))

    async def before_close(self) -> None:
        self.events.append(("before_close",))

    async def close(self) -> None:
        self.events.append(("close",))

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.events.append(("add_worker", worker))

    def remove_worker(self, scheduler: Any, worker: str, *, stimulus_id: str, **kwargs: Any) -> None:
        self.events.append(("remove_worker", worker))

    def add_client(self, scheduler: Any, client: str) -> None:
        self.events.append(("add_client", client))

    def remove_client(self, scheduler: Any, client: str) -> None:
        self.events.append(("remove_client", client))

    def update_graph(self, scheduler: Any, *, client: str, keys: set[str], tasks: list[str], **kwargs: Any) -> None:
        self.events.append(("update_graph", client, frozenset(keys)))

    def transition(self, key: str, start: str, finish: str, *args: Any, stimulus_id: str, **kwargs: Any) -> None:
        self.events.append(("transition", key, start, finish))


class SchedFailing(SchedulerPlugin):
    async def start(self, scheduler: Any) -> None:
        raise RuntimeError("cannot start here")


async def test_worker_plugin_on_every_worker_and_later_ones() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=2) as cluster, open_client(cluster) as client:
            assert await client.register_plugin(Recorder()) == {w.address: {"status": "OK"} for w in cluster.workers}
            for w in cluster.workers:
                assert w.plugins["recorder"].events == [("setup", w.address)]
            # A worker that joins later gets it before it takes work.
            late = await cluster.start_worker()
            assert late.plugins["recorder"].events == [("setup", late.address)]
            # Transitions seen by the plugins of the worker that ran the task.
            fut = await client.submit(inc, 1, workers=[late.address])
            assert await fut == 2
            await wait_until(lambda: ("transition", fut.key, "executing", "memory") in late.plugins["recorder"].events)
            assert ("transition", fut.key, "ready", "executing") in late.plugins["recorder"].events

            assert await client.unregister_worker_plugin("recorder") == {w.address: {"status": "OK"} for w in cluster.workers}
            assert all(w.plugins == {} and w.torn_down_plugins == ["recorder"] for w in cluster.workers)
            later = await cluster.start_worker()
            assert later.plugins == {}
            with pytest.raises(ValueError, match="recorder"):
                await client.unregister_worker_plugin("recorder")


async def test_register_again_replaces_unless_idempotent() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=1) as cluster, open_client(cluster) as client:
            await client.register_plugin(Recorder(), name="r")
            (w,) = cluster.workers
            first = w.plugins["r"]
            await client.register_plugin(Recorder(), name="r", idempotent=True)
            assert w.plugins["r"] is first
            await client.register_plugin(Recorder(), name="r")
            assert w.plugins["r"] is not first
            assert first.events[-1] == ("teardown", w.address)


async def test_coroutine_hooks_are_awaited() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=1) as cluster, open_client(cluster) as client:
            await client.register_plugin(AsyncSetup())
            (w,) = cluster.workers
            assert w.plugins["async-setup"].ready == w.address
            await client.unregister_worker_plugin("async-setup")
            assert w.async_teardown is True


async def test_raising_worker_plugin_names_plugin_and_worker() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=2) as cluster, open_client(cluster) as client:
            with pytest.raises(PluginError) as info:
                await client.register_plugin(Failing(), name="bad")
            text = str(info.value)
            assert text.startswith("plugin 'bad' failed in setup on worker tcp://127.0.0.1:")
            assert "ValueError: no setup for" in text and "(and 1 more" in text
            assert isinstance(info.value.__cause__, ValueError)
            assert info.value.plugin == "bad"
            assert {where for where, _, _ in info.value.failures} == {f"worker {w.address}" for w in cluster.workers}
            # The cluster still works.
            assert await (await client.submit(inc, 41)) == 42


async def test_register_plugin_refuses_non_plugins() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=0) as cluster, open_client(cluster) as client:
            with pytest.raises(TypeError, match="not a WorkerPlugin, NannyPlugin or SchedulerPlugin"):
                await client.register_plugin(object())


async def test_scheduler_plugin_hooks_and_unregister() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=1) as cluster, open_client(cluster) as client:
            assert await client.register_plugin(SchedRecorder()) == {}
            (plugin,) = cluster.scheduler.plugins
            assert plugin.events == [("start", cluster.scheduler.address)]
            fut = await client.submit(inc, 1)
            assert await fut == 2
            await wait_until(lambda: ("transition", fut.key, "processing", "memory") in plugin.events)
            # Intermediate tasks too (no client hears of them), and failures.
            inner = await client.submit(inc, 10)
            outer = await client.submit(inc, inner)
            del inner
            assert await outer == 12
            bad = await client.submit(inc, "x")
            with pytest.raises(TypeError):
                await bad
            steps = {(k, a, b) for (_, k, a, b) in (e for e in plugin.events if e[0] == "transition")}
            assert len({k for k, a, b in steps if (a, b) == ("processing", "memory")}) == 3
            assert (bad.key, "processing", "erred") in steps
            assert ("update_graph", client.id, frozenset([fut.key])) in plugin.events
            assert [e[2:] for e in plugin.events if e[:2] == ("transition", fut.key)] == [
                ("released", "waiting"), ("waiting", "processing"), ("processing", "memory")
            ]  # fmt: skip
            await client.cancel(fut)
            await wait_until(lambda: ("transition", fut.key, "released", "forgotten") in plugin.events)
            late = await cluster.start_worker()
            assert ("add_worker", late.address) in plugin.events
            await cluster.remove_worker(late)
            await wait_until(lambda: ("remove_worker", late.address) in plugin.events)
            async with open_client(cluster) as other:
                assert ("add_client", other.id) in plugin.events
            await wait_until(lambda: ("remove_client", other.id) in plugin.events)

            await client.unregister_scheduler_plugin("sched-recorder")
            assert plugin.events[-1] == ("close",)
            assert cluster.scheduler.plugins == []
            with pytest.raises(ValueError, match="sched-recorder"):
                await client.unregister_scheduler_plugin("sched-recorder")


async def test_scheduler_plugins_close_with_the_scheduler() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=0) as cluster:
            async with open_client(cluster) as client:
                await client.register_plugin(SchedRecorder())
            (plugin,) = cluster.scheduler.plugins
        assert plugin.events[-2:] == [("before_close",), ("close",)]


async def test_raising_scheduler_plugin() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=0) as cluster, open_client(cluster) as client:
            with pytest.raises(PluginError, match="plugin 'sf' failed in start on scheduler: RuntimeError: cannot start here"):
                await client.register_plugin(SchedFailing(), name="sf")
            assert cluster.scheduler.plugins == []


async def test_register_worker_plugin_is_deprecated() -> None:
    with trio.fail_after(30):
        async with open_cluster(n_workers=1) as cluster, open_client(cluster) as client:
            with pytest.deprecated_call():
                await client.register_worker_plugin(Recorder())
            assert "recorder" in cluster.workers[0].plugins


def _plugin_names() -> list[str]:
    from trioflow import get_worker

    return sorted(get_worker().plugins)


def test_blocking_client_registers_and_unregisters() -> None:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert client.register_plugin(Recorder()) == {a: {"status": "OK"} for a in workers}
        assert list(client.run(_plugin_names).values()) == [["recorder"], ["recorder"]]
        with pytest.raises(PluginError, match="plugin 'bad' failed in setup on worker"):
            client.register_plugin(Failing(), name="bad")
        client.unregister_worker_plugin("recorder")
        assert list(client.run(_plugin_names).values()) == [[], []]
        client.register_plugin(SchedRecorder())
        client.unregister_scheduler_plugin("sched-recorder")
        with pytest.deprecated_call():
            client.register_worker_plugin(Recorder(), name="again")
        assert list(client.run(_plugin_names).values()) == [["again"], ["again"]]


def _import_and_read(module: str, attr: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), attr)


async def test_upload_file(tmp_path: Path) -> None:
    src = tmp_path / "tf_uploaded_mod.py"
    src.write_text("ANSWER = 42\n")
    saved = list(sys.path)
    try:
        with trio.fail_after(30):
            async with open_cluster(n_workers=1) as cluster, open_client(cluster) as client:
                await client.register_plugin(UploadFile(str(src)))
                (w,) = cluster.workers
                assert (Path(w.local_directory) / "uploads" / "tf_uploaded_mod.py").read_text() == "ANSWER = 42\n"
                assert await (await client.submit(_import_and_read, "tf_uploaded_mod", "ANSWER")) == 42
    finally:
        sys.path[:] = saved
        sys.modules.pop("tf_uploaded_mod", None)


def test_upload_file_works_standalone(tmp_path: Path) -> None:
    """The plugin needs nothing of a worker but its ``local_directory``."""

    class Host:
        local_directory = str(tmp_path / "host")

    src = tmp_path / "tf_standalone_data.txt"
    src.write_bytes(b"payload")
    UploadFile(str(src)).setup(Host())
    assert (tmp_path / "host" / "uploads" / "tf_standalone_data.txt").read_bytes() == b"payload"


async def test_upload_directory(tmp_path: Path) -> None:
    pkg = tmp_path / "tf_updir"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "tf_updir_mod.py").write_text("VALUE = 'here'\n")
    (pkg / "tests" / "skipped.py").write_text("")
    saved = list(sys.path)
    try:
        with trio.fail_after(30):
            async with open_cluster(n_workers=1) as cluster, open_client(cluster) as client:
                await client.register_plugin(UploadDirectory(str(pkg), update_path=True))
                (w,) = cluster.workers
                base = Path(w.local_directory) / "tf_updir"
                assert (base / "tf_updir_mod.py").exists()
                assert not (base / "tests").exists()
                assert await (await client.submit(_import_and_read, "tf_updir_mod", "VALUE")) == "here"
    finally:
        sys.path[:] = saved
        sys.modules.pop("tf_updir_mod", None)


def _make_wheel(directory: Path, name: str, version: str, source: str) -> Path:
    """A pure-Python wheel, written by hand (no build tools, no network)."""

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: trioflow-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},{digest(data)},{len(data)}\n" for path, data in files.items()) + f"{info}/RECORD,,\n"
    out = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr(f"{info}/RECORD", record)
    return out


def _version_from(target: str, module: str) -> str:
    import importlib

    sys.path.insert(0, target)
    try:
        importlib.invalidate_caches()
        return importlib.import_module(module).__version__  # type: ignore[no-any-return]
    finally:
        sys.path.remove(target)
        sys.modules.pop(module, None)


@pytest.mark.slow
async def test_pip_install_from_a_local_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _make_wheel(wheels, "tfplugprobe", "0.1", "__version__ = '0.1'\n")
    target = tmp_path / "site"
    # --target keeps the shared environment clean; --no-index: never the network.
    plugin = PipInstall(["tfplugprobe"], pip_options=["--no-index", "--find-links", str(wheels), "--target", str(target)])
    with trio.fail_after(120):
        async with open_cluster(n_workers=1) as cluster, open_client(cluster) as client:
            await client.register_plugin(plugin)
            assert (target / "tfplugprobe" / "__init__.py").exists()
            assert await (await client.submit(_version_from, str(target), "tfplugprobe")) == "0.1"
            # A package that is not there: the error says pip failed, and where.
            with pytest.raises(PluginError, match=r"failed in setup on worker .*RuntimeError: pip install failed"):
                await client.register_plugin(PipInstall(["tfplugabsent"], pip_options=["--no-index", "--find-links", str(wheels), "--target", str(target)]))


VAR = "TRIOFLOW_TEST_PLUGIN_ENV"


def _getenv() -> str | None:
    return os.environ.get(VAR)


class MarkNanny(NannyPlugin):
    name = "mark-nanny"

    def setup(self, nanny: Any) -> None:
        nanny.marked = True


@pytest.mark.slow
async def test_environ_reaches_process_workers_started_later() -> None:
    try:
        with trio.fail_after(90):
            async with open_cluster(n_workers=1, processes=True) as cluster, open_client(cluster) as client:
                await client.wait_for_workers(1, timeout=20)
                (nanny,) = cluster.workers
                old_pid = nanny.pid
                await client.register_plugin(Environ({VAR: "from-plugin"}))
                # Registered while the worker restarts (the scheduler knows no
                # nanny then): it reaches the nanny when its worker is back.
                await client.register_plugin(MarkNanny())
                await wait_until(lambda: getattr(nanny, "marked", False), timeout=30, what="the nanny plugin")
                # restart = True: the nanny starts a fresh worker, which sees the variable.
                await wait_until(lambda: nanny.pid != old_pid and nanny.status == "running", timeout=30, what="the worker's restart")
                await wait_until(lambda: len(cluster.scheduler.state.workers) == 1, timeout=30)
                assert await (await client.submit(_getenv, pure=False)) == "from-plugin"

                # A nanny started after registration gets the plugins too.
                os.environ.pop(VAR, None)  # in-process nannies share our environment
                late = await cluster.start_worker()
                await wait_until(lambda: getattr(late, "marked", False), timeout=30, what="the late nanny's plugins")
                while True:  # its first worker process started before the plugin reached it
                    with trio.move_on_after(5):
                        address = late.worker_address
                        with contextlib.suppress(ValueError, CommError):  # not registered (yet, or any more), or restarting
                            if await (await client.submit(_getenv, workers=[address], pure=False)) == "from-plugin":
                                break
                    await trio.sleep(0.05)
    finally:
        os.environ.pop(VAR, None)
