"""Server lifecycle (``status``, ``wait_closed()``), the typed config records,
the nanny's start message, and the one start-up/shutdown path."""

from __future__ import annotations

import io
import types

import attrs
import pytest
import trio

import trioflow
from trioflow.comm.inproc import new_inproc_name
from trioflow.config import NannyConfig, SchedulerConfig, WorkerConfig, build_config
from trioflow.process.daemon import UserError, run_servers
from trioflow.process.lifecycle import Status
from trioflow.process.nanny import Nanny, read_start_message
from trioflow.protocol import ProtocolError
from trioflow.protocol import messages as m
from trioflow.protocol.codec import encode, pack_prefix
from trioflow.scheduler.server import Scheduler
from trioflow.worker.server import Worker


def _inproc() -> str:
    return f"inproc://{new_inproc_name('scheduler')}"


# ---------------------------------------------------------------- status and wait_closed


async def test_scheduler_and_worker_go_through_their_statuses() -> None:
    scheduler = Scheduler(_inproc())
    assert scheduler.status is Status.created
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.serve)
            assert scheduler.status is Status.running
            worker = Worker(scheduler.address, nthreads=1)
            assert worker.status is Status.created
            await nursery.start(worker.serve)
            assert worker.status is Status.running

            worker.close("test")
            assert worker.status is Status.closing
            await worker.wait_closed()
            assert worker.status is Status.closed

            scheduler.close()
            assert scheduler.status is Status.closing
            await scheduler.wait_closed()
            assert scheduler.status is Status.closed
    # Closing again leaves them closed; waiting again returns at once.
    worker.close()
    scheduler.close()
    await worker.wait_closed()
    await scheduler.wait_closed()
    assert (worker.status, scheduler.status) == (Status.closed, Status.closed)
    assert worker.status == "closed"  # still compares as the string


async def test_a_worker_that_cannot_start_is_failed(autojump_clock: trio.abc.Clock) -> None:
    worker = Worker("inproc://no-such-scheduler", death_timeout=1)
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
    assert info.group_contains(trioflow.CommError)
    assert worker.status is Status.failed
    with trio.fail_after(1):
        await worker.wait_closed()


async def test_cancelling_a_server_closes_it() -> None:
    scheduler = Scheduler(_inproc())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(scheduler.serve)
            nursery.cancel_scope.cancel()
        await scheduler.wait_closed()
    assert scheduler.status is Status.closed


def test_status_is_public_and_matches_dask_names() -> None:
    assert trioflow.Status is Status
    assert trioflow.Nanny is Nanny
    assert [s.name for s in Status] == ["created", "starting", "running", "closing", "closed", "failed"]


# ---------------------------------------------------------------- config records


def test_records_say_which_field_is_wrong_in_one_line() -> None:
    cases = [
        (lambda: WorkerConfig(scheduler_address="tcp://a:1", nthreads=0), "WorkerConfig.nthreads must be at least 1, got 0"),
        (lambda: WorkerConfig(scheduler_address="tcp://a:1", memory_limit=-1), "WorkerConfig.memory_limit"),
        (lambda: WorkerConfig(scheduler_address="tcp://a:1", death_timeout=0), "WorkerConfig.death_timeout"),
        (lambda: WorkerConfig(scheduler_address="tcp://a:1", memory_target_fraction=1.5), "WorkerConfig.memory_target_fraction"),
        (lambda: WorkerConfig(scheduler_address="tcp://a:1", resources={"GPU": -1}), "WorkerConfig.resources"),
        (lambda: WorkerConfig(scheduler_address="tcp://a:1", preload="mod"), "WorkerConfig.preload"),
        (lambda: SchedulerConfig(worker_ttl=-1), "SchedulerConfig.worker_ttl"),
        (lambda: SchedulerConfig(allowed_failures=-1), "SchedulerConfig.allowed_failures"),
        (lambda: NannyConfig(worker=WorkerConfig(scheduler_address="a"), memory_terminate_fraction=2), "NannyConfig.memory_terminate_fraction"),
    ]
    for make, text in cases:
        with pytest.raises(ValueError, match="^" + text.replace(".", r"\.")) as info:
            make()
        assert "\n" not in str(info.value)


def test_records_convert_what_the_codec_would() -> None:
    config = WorkerConfig(scheduler_address="tcp://a:1", death_timeout=3, resources={"GPU": 2}, preload=("a", "b"))
    assert config.death_timeout == 3.0 and type(config.death_timeout) is float
    assert config.resources == {"GPU": 2.0} and type(config.resources["GPU"]) is float
    assert config.preload == ["a", "b"]


def test_servers_build_their_record_from_dask_keywords() -> None:
    worker = Worker("tcp://a:1", nthreads=3, name=None, memory_limit=100, death_timeout=2)
    assert worker.config == WorkerConfig(scheduler_address="tcp://a:1", nthreads=3, memory_limit=100, death_timeout=2.0)
    assert (worker.nthreads, worker.name, worker.memory_limit, worker.death_timeout) == (3, "", 100, 2.0)
    assert Worker(config=worker.config).config is worker.config

    scheduler = Scheduler("tcp://127.0.0.1:0", worker_ttl=5, dashboard_whitelist=["x"])
    assert scheduler.config == SchedulerConfig(address="tcp://127.0.0.1:0", worker_ttl=5.0, dashboard_whitelist=("x",))
    assert scheduler.worker_ttl == 5.0 and scheduler.dashboard_whitelist == ["x"]

    nanny = Nanny("tcp://a:1", listen_address="tcp://127.0.0.1:0", worker_listen_address="tcp://127.0.0.1:0", nthreads=2, grace=1)
    assert nanny.config.worker == WorkerConfig(scheduler_address="tcp://a:1", nthreads=2, listen_address="tcp://127.0.0.1:0")
    assert (nanny.config.listen_address, nanny.config.grace) == ("tcp://127.0.0.1:0", 1.0)


def test_unknown_keywords_and_mixed_forms_are_refused() -> None:
    with pytest.raises(TypeError, match="^Worker\\(\\) got an unexpected keyword argument 'nthread'$"):
        Worker("tcp://a:1", nthread=2)
    with pytest.raises(TypeError, match="^Scheduler\\(\\) got an unexpected keyword argument 'bogus'$"):
        Scheduler(bogus=1)
    with pytest.raises(TypeError, match="^Nanny\\(\\) got an unexpected keyword argument 'bogus'$"):
        Nanny("tcp://a:1", bogus=1)
    config = WorkerConfig(scheduler_address="tcp://a:1")
    with pytest.raises(TypeError, match="not both"):
        Worker("tcp://a:1", config=config)
    with pytest.raises(TypeError, match="not both"):
        Worker(config=config, nthreads=2)
    with pytest.raises(TypeError, match="scheduler's address"):
        Worker()
    with pytest.raises(TypeError, match="^open_cluster\\(\\) got an unexpected keyword argument 'x'$"):
        build_config(WorkerConfig, "open_cluster", {"scheduler_address": "a", "x": 1})


async def test_open_cluster_builds_one_worker_config() -> None:
    with trio.fail_after(20):
        async with trioflow.open_cluster(n_workers=2, threads_per_worker=2, protocol="inproc") as cluster:
            a, b = cluster.workers
            assert attrs.evolve(a.config, name="") == attrs.evolve(b.config, name="") == attrs.evolve(cluster.worker_config, name="")
            assert a.config.scheduler_address == cluster.scheduler_address and a.config.nthreads == 2
            assert cluster.scheduler.config.address.startswith("inproc://")
            c = await cluster.start_worker(nthreads=3)
            assert c.config.nthreads == 3 and cluster.worker_config.nthreads == 2
            with pytest.raises(TypeError, match="start_worker\\(\\) got an unexpected keyword argument 'nthread'"):
                await cluster.start_worker(nthread=3)


# ---------------------------------------------------------------- the nanny's start message


def _framed(msg: m.Message) -> bytes:
    frames = encode(msg)
    return b"".join([pack_prefix(frames), *frames])


def test_start_message_round_trips_through_the_codec() -> None:
    config = WorkerConfig(scheduler_address="tls://a:1", nthreads=2, resources={"GPU": 1.0}, preload=["mod"], death_timeout=3)
    tls = m.TLSSettings(tls_ca_file="ca.pem", tls_worker_cert="-----BEGIN CERT", require_encryption=True)
    start = m.StartWorkerProcess(config=config, security=tls, workspace="/tmp/w", nanny="tcp://n:2")
    stream = io.BytesIO(_framed(start) + b"rest")
    assert read_start_message(stream) == start
    assert stream.read() == b"rest"  # read exactly one message
    assert read_start_message(io.BytesIO(b"")) is None  # the nanny is gone


def test_bad_start_messages_are_protocol_errors() -> None:
    good = _framed(m.StartWorkerProcess(config=WorkerConfig(scheduler_address="a")))
    with pytest.raises(ProtocolError, match="ended"):
        read_start_message(io.BytesIO(good[:-3]))
    with pytest.raises(ProtocolError, match="expected a 'start-worker-process' message"):
        read_start_message(io.BytesIO(_framed(m.NannyKill())))
    # The record's own checks run on the way in: nthreads=0 never reaches a Worker.
    bad = good.replace(b"\xa8nthreads\x01", b"\xa8nthreads\x00")
    assert bad != good
    with pytest.raises(ProtocolError, match="start-worker-process"):
        read_start_message(io.BytesIO(bad))


def test_security_crosses_the_link_whole() -> None:
    from trioflow.process.nanny import _security, _tls_settings

    sec = trioflow.Security(tls_ca_file="ca.pem", tls_worker_cert="w.pem", tls_worker_key="k.pem", require_encryption=True)
    back = _security(_tls_settings(sec))
    assert back.to_dict() == sec.to_dict()
    assert _security(_tls_settings(None)) is None


# ---------------------------------------------------------------- the one start-up path


async def test_run_servers_runs_preload_hooks_and_returns_when_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    hooks = types.ModuleType("hooks")
    hooks.trioflow_setup = lambda server: calls.append(f"setup {server.status}")  # type: ignore[attr-defined]
    hooks.trioflow_teardown = lambda server: calls.append(f"teardown {server.status}")  # type: ignore[attr-defined]
    scheduler = Scheduler(_inproc())
    started: list[object] = []

    def ready(nursery: trio.Nursery) -> None:
        calls.append("ready")
        scheduler.close()

    with trio.fail_after(10):
        served = await run_servers([scheduler], [hooks], on_started=started.append, on_ready=ready)
    assert served is True
    assert started == [scheduler]
    assert calls == ["setup running", "ready", "teardown closed"]


async def test_run_servers_closes_what_started_when_preload_fails() -> None:
    hooks = types.ModuleType("hooks")

    def setup(server: object) -> None:
        raise RuntimeError("boom")

    hooks.trioflow_setup = setup  # type: ignore[attr-defined]
    scheduler = Scheduler(_inproc())
    with trio.fail_after(10):
        with pytest.raises(BaseExceptionGroup) as info:
            await run_servers([scheduler], [hooks])
    assert info.group_contains(UserError, match="trioflow_setup failed: RuntimeError: boom")
    assert scheduler.status is Status.closed  # no orphan


async def test_run_servers_reports_a_server_that_cannot_start(autojump_clock: trio.abc.Clock) -> None:
    stub = _Stub()
    worker = Worker("inproc://no-such-scheduler", death_timeout=1)
    with pytest.raises(BaseExceptionGroup) as info:
        await run_servers([stub, worker])
    assert info.group_contains(trioflow.CommError)
    assert stub.closed  # the one that did start was closed: no orphan
    assert worker.status is Status.failed


class _Stub:
    """A server that starts at once and closes when asked."""

    def __init__(self) -> None:
        self.closed = False
        self._event = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._event.wait()

    async def aclose(self) -> None:
        self.closed = True
        self._event.set()

    async def wait_closed(self) -> None:
        await self._event.wait()

