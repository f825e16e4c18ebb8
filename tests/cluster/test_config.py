"""The configuration tree: each source, their order, errors naming the key
and its source, dask.config keys, ``trioflow config``, and the servers and
Client reading it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import attrs
import dask.config
import pytest
from click.testing import CliRunner

from trioflow.cli.config import config_command
from trioflow.config import (
    ConfigError,
    NannyConfig,
    SchedulerConfig,
    TrioflowConfig,
    WorkerConfig,
    build_config,
    config_path,
    env_var,
    get_config,
    iter_settings,
    load_config,
    parse_seconds,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No TRIOFLOW_* variables, no user file, no distributed.* keys in dask.config."""
    for name in list(os.environ):
        if name.startswith("TRIOFLOW_"):
            monkeypatch.delenv(name)
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delitem(dask.config.config, "distributed", raising=False)  # (dask.config.set/get hold this dict)
    monkeypatch.delitem(dask.config.config, "scheduler_address", raising=False)
    monkeypatch.delitem(dask.config.config, "scheduler-address", raising=False)
    return home


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- defaults


def test_defaults_are_the_tree_defaults() -> None:
    loaded = load_config()
    assert loaded.config == TrioflowConfig()
    assert set(loaded.sources.values()) == {"default"}
    assert get_config() == TrioflowConfig()


def test_tree_defaults_agree_with_the_server_records() -> None:
    """A setting the records take from the tree has the same default there."""
    tree = TrioflowConfig()
    w = WorkerConfig(scheduler_address="x")
    s = SchedulerConfig()
    n = NannyConfig(worker=w)
    assert (w.memory_target_fraction, w.memory_pause_fraction, n.memory_terminate_fraction) == (
        tree.worker.memory.target, tree.worker.memory.pause, tree.worker.memory.terminate,
    )
    assert (w.heartbeat_interval, w.death_timeout, w.connect_timeout, n.grace) == (
        tree.worker.heartbeat_interval, tree.worker.death_timeout, tree.comm.connect_timeout, tree.nanny.grace,
    )
    assert (s.worker_saturation, s.allowed_failures, s.worker_ttl) == (
        tree.scheduler.worker_saturation, tree.scheduler.allowed_failures, tree.scheduler.worker_ttl,
    )


def test_records_check_their_values_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"^MemorySettings.target='lots': expected a fraction 0-1"):
        attrs.evolve(TrioflowConfig().worker.memory, target="lots")


# ---------------------------------------------------------------- sources


def test_yaml_file_in_the_user_config_dir(clean_env: Path) -> None:
    path = write(clean_env / "trioflow" / "trioflow.yaml", "worker:\n  memory:\n    target: 0.5\n    pause: false\ncomm:\n  connect-timeout: 3s\n")
    assert config_path() == (path, False)
    loaded = load_config()
    assert loaded.config.worker.memory.target == 0.5
    assert loaded.config.worker.memory.pause is None
    assert loaded.config.comm.connect_timeout == 3.0
    assert loaded.sources["worker.memory.target"] == str(path)
    assert loaded.sources["worker.memory.terminate"] == "default"


def test_yaml_file_named_by_trioflow_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere.yaml", "scheduler_address: tcp://10.1.2.3:8786\nscheduler:\n  allowed_failures: 7\n")
    monkeypatch.setenv("TRIOFLOW_CONFIG", str(path))
    loaded = load_config()
    assert loaded.config.scheduler_address == "tcp://10.1.2.3:8786"
    assert loaded.config.scheduler.allowed_failures == 7
    assert loaded.sources["scheduler.allowed_failures"] == str(path)


def test_trioflow_config_naming_a_missing_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRIOFLOW_CONFIG", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"^TRIOFLOW_CONFIG='.*nope.yaml' \(environment\): no such file$"):
        load_config()


def test_yaml_file_needs_pyyaml(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(clean_env / "trioflow" / "trioflow.yaml", "worker:\n  heartbeat_interval: 2\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    with pytest.raises(ConfigError, match=r"trioflow.yaml: reading a YAML configuration file needs PyYAML"):
        load_config()
    # Without the file, PyYAML is not needed.
    assert load_config(use_file=False).config == TrioflowConfig()


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_var("worker.memory.target") == "TRIOFLOW_WORKER__MEMORY__TARGET"
    assert env_var("scheduler_address") == "TRIOFLOW_SCHEDULER_ADDRESS"
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__TARGET", "0.25")
    monkeypatch.setenv("TRIOFLOW_SCHEDULER__WORKER_SATURATION", "inf")
    monkeypatch.setenv("TRIOFLOW_SCHEDULER_ADDRESS", "tcp://h:1")
    monkeypatch.setenv("TRIOFLOW_CLIENT__GRAPH_PIECE_BYTES", "1MiB")
    monkeypatch.setenv("TRIOFLOW_SCHEDULER__WORKER_TTL", "5 minutes")
    loaded = load_config()
    c = loaded.config
    assert (c.worker.memory.target, c.scheduler.worker_saturation, c.scheduler_address) == (0.25, float("inf"), "tcp://h:1")
    assert (c.client.graph_piece_bytes, c.scheduler.worker_ttl) == (2**20, 300.0)
    assert loaded.sources["worker.memory.target"] == "environment"


def test_every_setting_has_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, default, _ in iter_settings():
        if default is not None and not isinstance(default, str):
            monkeypatch.setenv(env_var(key), str(default))
    loaded = load_config()
    assert loaded.config == TrioflowConfig()
    assert {s for k, s in loaded.sources.items() if k != "scheduler_address"} <= {"environment", "default"}


def test_dask_config_keys_are_honoured() -> None:
    with dask.config.set(
        {
            "distributed.worker.memory.target": 0.4,
            "distributed.worker.memory.pause": False,
            "distributed.worker.memory.terminate": 0.99,
            "distributed.scheduler.worker-saturation": 2.0,
            "distributed.scheduler.allowed-failures": 0,
            "distributed.comm.timeouts.connect": "45s",
            "distributed.comm.timeouts.tcp": "2 minutes",
            "distributed.dashboard.link": "/proxy/{port}/status",
            "distributed.scheduler-address": "tcp://dask-set:8786",
        }
    ):
        loaded = load_config()
    c = loaded.config
    assert (c.worker.memory.target, c.worker.memory.pause, c.worker.memory.terminate) == (0.4, None, 0.99)
    assert (c.scheduler.worker_saturation, c.scheduler.allowed_failures) == (2.0, 0)
    assert (c.comm.connect_timeout, c.comm.tcp_timeout) == (45.0, 120.0)
    assert c.dashboard.link == "/proxy/{port}/status"
    assert c.scheduler_address == "tcp://dask-set:8786"
    assert loaded.sources["comm.connect_timeout"] == "dask.config"


def test_dask_scheduler_address_either_spelling() -> None:
    """dask's Client reads the top-level scheduler-address; distributed.scheduler-address too."""
    with dask.config.set({"distributed": {"scheduler_address": "tcp://u:1"}}):
        assert load_config().config.scheduler_address == "tcp://u:1"
        with dask.config.set({"scheduler_address": "tcp://top:1"}):
            assert load_config().config.scheduler_address == "tcp://top:1"


def test_dask_files_and_variables_without_importing_dask(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A server started from the command line has not imported dask: dask's
    YAML files and DASK_* variables are read without importing it."""
    import subprocess

    write(tmp_path / "dask" / "a.yaml", "distributed:\n  worker:\n    memory:\n      target: 0.35\n      pause: 0.75\n")
    write(tmp_path / "dask" / "b.yml", "scheduler-address: tcp://dask-file:1\n")
    code = (
        "import sys; from trioflow.config import load_config; l = load_config(); "
        "m = l.config.worker.memory; print(m.target, m.pause, l.config.scheduler_address, l.config.scheduler.allowed_failures, "
        "l.sources['worker.memory.target'], 'dask' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "TRIOFLOW_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        DASK_CONFIG=str(tmp_path / "dask"),
        DASK_ROOT_CONFIG=str(tmp_path / "none"),
        DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE="0.7",
        DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="6",
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.35", "0.7", "tcp://dask-file:1", "6", "dask.config", "False"]
    env["DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"] = "'soon'"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stderr.strip().splitlines()[-1] == (
        "trioflow.config.ConfigError: DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT='soon' "
        "(dask.config, environment): expected a duration like 10s, 500ms or 2.5"
    )


def test_dask_keys_at_their_dask_defaults_are_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """With dask.distributed installed its defaults sit in dask.config; they
    must not replace ours (connect is 30s there, 10 s here)."""
    monkeypatch.setattr(dask.config, "defaults", [*dask.config.defaults, {"distributed": {"comm": {"timeouts": {"connect": "30s"}}}}])
    with dask.config.set({"distributed.comm.timeouts.connect": "30s"}):
        loaded = load_config()
    assert loaded.config.comm.connect_timeout == 10.0
    assert loaded.sources["comm.connect_timeout"] == "default"
    with dask.config.set({"distributed.comm.timeouts.connect": "31s"}):
        assert load_config().config.comm.connect_timeout == 31.0


def test_arguments_nested_or_dotted() -> None:
    loaded = load_config({"worker": {"memory": {"pause": 0.7}}, "comm.connect-timeout": "1s"})
    assert (loaded.config.worker.memory.pause, loaded.config.comm.connect_timeout) == (0.7, 1.0)
    assert loaded.sources["worker.memory.pause"] == loaded.sources["comm.connect_timeout"] == "argument"


def test_precedence(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """defaults < file < environment < dask.config < arguments, key by key."""
    path = write(clean_env / "trioflow" / "trioflow.yaml", "worker:\n  memory:\n    target: 0.1\n    pause: 0.1\n    resume: 0.1\n    terminate: 0.1\n")
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__PAUSE", "0.2")
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__RESUME", "0.2")
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__TERMINATE", "0.2")
    with dask.config.set({"distributed.worker.memory.resume": 0.3, "distributed.worker.memory.terminate": 0.3}):
        # (resume has no dask key: dask.config cannot set it)
        loaded = load_config({"worker.memory.terminate": 0.4})
    m = loaded.config.worker.memory
    assert (m.target, m.pause, m.resume, m.terminate) == (0.1, 0.2, 0.2, 0.4)
    assert [loaded.sources[f"worker.memory.{k}"] for k in ("target", "pause", "resume", "terminate")] == [
        str(path), "environment", "environment", "argument",
    ]
    with dask.config.set({"distributed.worker.memory.terminate": 0.3}):
        assert load_config().config.worker.memory.terminate == 0.3


# ---------------------------------------------------------------- errors


def test_bad_environment_value_names_variable_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__TARGET", "lots")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == "TRIOFLOW_WORKER__MEMORY__TARGET='lots' (environment): expected a fraction 0-1 (or false: never)"


def test_unknown_environment_variable_suggests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIOFLOW_SOME_OTHER_VARIABLE", "x")  # not a setting's form: left alone
    assert load_config().config == TrioflowConfig()
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__TARGT", "0.5")
    with pytest.raises(ConfigError, match=r"^TRIOFLOW_WORKER__MEMORY__TARGT \(environment\): no such setting; did you mean TRIOFLOW_WORKER__MEMORY__TARGET\?$"):
        load_config()


def test_bad_file_value_names_key_and_file(clean_env: Path) -> None:
    path = write(clean_env / "trioflow" / "trioflow.yaml", "scheduler:\n  allowed-failures: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == f"scheduler.allowed-failures=-1 ({path}): expected a whole number of at least 0"


def test_unknown_file_key_and_bad_yaml(clean_env: Path) -> None:
    path = write(clean_env / "trioflow" / "trioflow.yaml", "worker:\n  memroy:\n    target: 0.5\n")
    with pytest.raises(ConfigError, match=r"^worker.memroy \(.*trioflow.yaml\): no such setting"):
        load_config()
    write(path, "worker: [1, 2\n")
    with pytest.raises(ConfigError, match=r"trioflow.yaml: cannot read the configuration file"):
        load_config()
    write(path, "- 1\n")
    with pytest.raises(ConfigError, match=r"trioflow.yaml: expected a mapping of settings at the top, got list"):
        load_config()


def test_bad_dask_value_names_dask_key() -> None:
    with dask.config.set({"distributed.comm.timeouts.connect": "soon"}):
        with pytest.raises(ConfigError) as info:
            load_config()
    assert str(info.value) == "distributed.comm.timeouts.connect='soon' (dask.config): expected a duration like 10s, 500ms or 2.5"


def test_bad_argument_names_key() -> None:
    with pytest.raises(ConfigError, match=r"^scheduler.worker_saturation=0 \(argument\): expected a positive number"):
        load_config({"scheduler": {"worker_saturation": 0}})
    with pytest.raises(ConfigError, match=r"^scheduler.saturation \(argument\): no such setting; did you mean scheduler.worker_saturation\?"):
        load_config({"scheduler.saturation": 1})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("100 ms", 0.1), ("5 minutes", 300.0), ("2", 2.0), (1, 1.0), ("1.5h", 5400.0)],
)
def test_parse_seconds(text: object, seconds: float) -> None:
    assert parse_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 parsecs", True])
def test_parse_seconds_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_seconds(text)


# ---------------------------------------------------------------- wiring


def test_server_records_take_unset_fields_from_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__TARGET", "0.3")
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__TERMINATE", "0.85")
    monkeypatch.setenv("TRIOFLOW_COMM__CONNECT_TIMEOUT", "4s")
    with dask.config.set({"distributed.scheduler.worker-saturation": 3.0, "distributed.scheduler.allowed-failures": 9}):
        w = build_config(WorkerConfig, "Worker", {"scheduler_address": "x", "memory_pause_fraction": 0.5})
        s = build_config(SchedulerConfig, "Scheduler", {"allowed_failures": 1})
        n = build_config(NannyConfig, "Nanny", {"worker": w})
    assert (w.memory_target_fraction, w.memory_pause_fraction, w.connect_timeout) == (0.3, 0.5, 4.0)
    assert (s.worker_saturation, s.allowed_failures) == (3.0, 1)  # the argument wins
    assert n.memory_terminate_fraction == 0.85


def test_nanny_keywords_default_to_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioflow.process.nanny import Nanny

    monkeypatch.setenv("TRIOFLOW_NANNY__GRACE", "2s")
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__TERMINATE", "0.9")
    nanny = Nanny("tcp://127.0.0.1:1")
    assert (nanny.config.grace, nanny.config.memory_terminate_fraction) == (2.0, 0.9)
    assert Nanny("tcp://127.0.0.1:1", grace=1.0).config.grace == 1.0


def test_bad_configuration_fails_server_construction_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioflow.scheduler.server import Scheduler

    monkeypatch.setenv("TRIOFLOW_SCHEDULER__WORKER_SATURATION", "many")
    with pytest.raises(ConfigError, match=r"^TRIOFLOW_SCHEDULER__WORKER_SATURATION='many' \(environment\)"):
        Scheduler()


def test_scheduler_reads_its_tuning_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioflow.scheduler.server import Scheduler

    monkeypatch.setenv("TRIOFLOW_SCHEDULER__TASK_STREAM_LENGTH", "123")
    monkeypatch.setenv("TRIOFLOW_SCHEDULER__BANDWIDTH", "1GB")
    monkeypatch.setenv("TRIOFLOW_SCHEDULER__ALLOWED_FAILURES", "5")
    s = Scheduler()
    assert (s.task_stream.capacity, s.state.bandwidth, s.config.allowed_failures) == (123, 1e9, 5)


async def test_client_address_from_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioflow.client.core import _resolve_address

    with pytest.raises(ValueError, match="no scheduler address given"):
        await _resolve_address(None, None, 1.0)
    with dask.config.set({"distributed.scheduler-address": "tcp://from-dask:8786"}):
        assert await _resolve_address(None, None, 1.0) == "tcp://from-dask:8786"
    monkeypatch.setenv("TRIOFLOW_SCHEDULER_ADDRESS", "tcp://from-env:8786")
    assert await _resolve_address(None, None, 1.0) == "tcp://from-env:8786"
    assert await _resolve_address("tcp://given:1", None, 1.0) == "tcp://given:1"


# ---------------------------------------------------------------- trioflow config


def test_cli_prints_values_and_sources(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(clean_env / "trioflow" / "trioflow.yaml", "nanny:\n  grace: 7\n")
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__PAUSE", "0.7")
    with dask.config.set({"distributed.scheduler.allowed-failures": 4}):
        result = CliRunner().invoke(config_command, [])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"# configuration file: {path} (read)"
    table = {line.split("=")[0].strip(): line.split("=", 1)[1] for line in lines[1:]}
    assert set(table) == {key for key, _, _ in iter_settings()}
    assert table["nanny.grace"].split() == ["7.0", "#", str(path)]
    assert table["worker.memory.pause"].split() == ["0.7", "#", "environment", "(TRIOFLOW_WORKER__MEMORY__PAUSE)"]
    assert table["scheduler.allowed_failures"].split() == ["4", "#", "dask.config", "(distributed.scheduler.allowed-failures)"]
    assert table["worker.memory.target"].split() == ["0.6", "#", "default"]
    assert table["scheduler_address"].split() == ["null", "#", "default"]


def test_cli_selected_keys_json_and_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIOFLOW_SCHEDULER__WORKER_SATURATION", "inf")
    result = CliRunner().invoke(config_command, ["--json", "worker.memory.target", "scheduler.worker-saturation"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [
        {"key": "scheduler.worker_saturation", "value": float("inf"), "source": "environment"},
        {"key": "worker.memory.target", "value": 0.6, "source": "default"},
    ]
    result = CliRunner().invoke(config_command, ["--changed"])
    assert result.output.splitlines()[1:] == ["scheduler.worker_saturation = inf  # environment (TRIOFLOW_SCHEDULER__WORKER_SATURATION)"]


def test_cli_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIOFLOW_NANNY__GRACE", "-1")
    result = CliRunner().invoke(config_command, [])
    assert result.exit_code == 1
    assert result.output == "Error: TRIOFLOW_NANNY__GRACE='-1' (environment): expected a duration like 10s, 500ms or 2.5\n"
    monkeypatch.delenv("TRIOFLOW_NANNY__GRACE")
    result = CliRunner().invoke(config_command, ["worker.nope"])
    assert (result.exit_code, result.output) == (1, "Error: worker.nope: no such setting (see `trioflow config`)\n")


def test_cli_is_registered_on_trioflow(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from trioflow.cli import main

    with pytest.raises(SystemExit) as info:
        main(["config", "comm.connect_timeout"])
    assert info.value.code == 0
    assert capsys.readouterr().out.splitlines()[1] == "comm.connect_timeout = 10.0  # default"


def test_worker_state_takes_its_tuning() -> None:
    """The state machine's prefetch and resume settings are constructor
    arguments (read once, kept as attributes), the module constants their defaults."""
    from trioflow.worker.state import MemorySampleEvent, ReportPause, WorkerState

    assert WorkerState(address="tcp://w:1", nthreads=2, prefetch_max=3).slots == 2 + 6
    w = WorkerState(address="tcp://w:1", nthreads=1, memory_resume_fraction=0.99)
    assert w.handle(MemorySampleEvent(rss=101, pause_at=100.0)) == [ReportPause(True, 101)]
    assert w.handle(MemorySampleEvent(rss=95, pause_at=100.0)) == [ReportPause(False, 95)]  # 95 < 99: resumes


def test_worker_and_nanny_read_their_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioflow.process.nanny import Nanny
    from trioflow.worker.server import Worker

    monkeypatch.setenv("TRIOFLOW_WORKER__PREFETCH_MAX", "3")
    monkeypatch.setenv("TRIOFLOW_WORKER__MEMORY__RESUME", "0.5")
    monkeypatch.setenv("TRIOFLOW_NANNY__READY_TIMEOUT", "2 minutes")
    worker = Worker("inproc://nowhere")
    assert (worker._tuning.prefetch_max, worker._tuning.memory.resume) == (3, 0.5)
    assert Nanny("tcp://127.0.0.1:1").ready_timeout == 120.0


def test_pending_settings_have_their_constants_defaults() -> None:
    """A setting not read yet names the constant that still rules, with the
    same default, so wiring it changes nothing by default; the CLI says so."""
    import importlib

    pending = [(key, default, s.pending) for key, default, s in iter_settings() if s.pending.startswith("trioflow.")]
    assert pending
    for key, default, where in pending:
        module, name = where.rsplit(".", 1)
        assert getattr(importlib.import_module(module), name) == default, key
    result = CliRunner().invoke(config_command, ["scheduler.queue_horizon"])
    assert result.output.splitlines()[1].endswith("# default; not read yet, trioflow.scheduler.state.QUEUE_HORIZON rules")


def test_dashboard_sources_read_their_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    from trioflow.diagnostics.sources import SchedulerSource
    from trioflow.scheduler.server import Scheduler

    monkeypatch.setenv("TRIOFLOW_DASHBOARD__MAX_KEY_CHARS", "5")
    source = SchedulerSource(Scheduler())
    assert source._stream_entry(("abcdefgh", "tcp://w:1", 1.0, 2.0, 7))[0] == "abcd…"


def test_without_dask_its_keys_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import trioflow.config._sources as sources

    monkeypatch.delitem(sys.modules, "dask.config")
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with dask.config.set({"distributed.scheduler.allowed-failures": 8}):
        assert load_config().config.scheduler.allowed_failures == 3
    assert "dask.config" not in sys.modules


def test_config_package_imports_light() -> None:
    """Reading settings needs neither trio, nor the servers, nor dask or
    PyYAML until a source asks for them."""
    import subprocess

    code = (
        "import sys, trioflow.config as c; c.load_config(use_file=False, use_dask=False); "
        "print(sorted(m for m in ('trio', 'dask', 'yaml', 'trioflow.worker', 'trioflow.scheduler') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_every_setting_is_in_the_docs_table() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.rst").read_text()
    missing = [key for key, _, _ in iter_settings() if f"   * - ``{key}``" not in text]
    assert not missing, f"settings missing from docs/configuration.rst: {missing}"
