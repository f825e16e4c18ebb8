"""The documentation: every Python example runs, and the site builds cleanly.

Every ``.. code-block:: python`` in ``docs/*.rst`` is extracted and run in a
fresh interpreter (``sys.executable -c``), in an empty temporary directory,
with a timeout.  Examples are written to use loopback addresses only and to
clean up after themselves (``with LocalCluster(...) as cluster, Client(cluster)
as client:``), and the leak check of ``conftest.py`` holds them to it.
Shell sessions are ``.. code-block:: console`` (or ``bash``, ``ini``, ...)
and are not run.

Two conventions, both invisible in the rendered pages:

* A block whose ``:caption:`` is a pytest file name (``test_*.py``) is written
  to that file and run with ``python -m pytest`` in a fresh interpreter.
* A block preceded by the comment ``.. docs-test: cluster`` runs next to a
  real cluster started from the command line: ``trioflow-scheduler
  --scheduler-file scheduler.json`` and one ``trioflow-worker
  --scheduler-file scheduler.json`` (with its nanny), both on 127.0.0.1, so
  the example can say ``Client(scheduler_file="scheduler.json")``.
  ``.. docs-test: tls-cluster`` does the same with ``--tls-ca-file ca.pem
  --tls-cert node.pem --tls-key node-key.pem``, files written from
  ``Security.temporary()`` into the example's directory.

The Sphinx build runs with ``-W`` (warnings are errors).  Two fast checks
keep the reference complete: every name in ``trioflow.__all__`` has an
autodoc entry, and every command-line flag appears on the command-line page.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import trioflow

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLE_TIMEOUT = 150.0

#: Examples that fail because of a known trioflow bug: test id -> (a line of
#: the example, so that an id that has shifted to another example is noticed;
#: the reason).  They are strict xfails: when the bug is fixed the run says
#: XPASS and the entry must go.
#: Examples that fail because of a known trioflow bug: id -> (snippet, reason).
#: Strict xfails, so a fix shows up as XPASS and the entry must go.
KNOWN_BUGS: dict[str, tuple[str, str]] = {}

_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\.[ \t]+code-block::[ \t]*(?P<lang>\S+)[ \t]*$")
_OPTION = re.compile(r"^[ \t]*:(?P<name>[\w-]+):[ \t]*(?P<value>.*)$")
_MARKER = re.compile(r"^[ \t]*\.\.[ \t]+docs-test:[ \t]*(?P<mode>[\w-]+)[ \t]*$")


class Example:
    def __init__(self, path: Path, index: int, line: int, code: str, caption: str, mode: str) -> None:
        self.path = path
        self.index = index
        self.line = line
        self.code = code
        self.caption = caption
        self.mode = mode

    @property
    def id(self) -> str:
        return f"{self.path.stem}-{self.index}"

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(DOCS.parent)}:{self.line}"


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def python_examples(path: Path) -> list[Example]:
    """The ``.. code-block:: python`` bodies of one reST file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Example] = []
    i = 0
    while i < len(lines):
        match = _DIRECTIVE.match(lines[i])
        if not match or match.group("lang") not in ("python", "python3", "py"):
            i += 1
            continue
        start = i
        base = len(match.group("indent"))
        # A "docs-test" marker comment on the closest non-blank line above.
        mode = ""
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (marker := _MARKER.match(lines[j])):
            mode = marker.group("mode")
        i += 1
        caption = ""
        while i < len(lines) and (opt := _OPTION.match(lines[i])) and _indent_of(lines[i]) > base:
            if opt.group("name") == "caption":
                caption = opt.group("value").strip()
            i += 1
        body: list[str] = []
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > base):
            body.append(lines[i])
            i += 1
        code = textwrap.dedent("\n".join(body)).strip("\n") + "\n"
        out.append(Example(path, len(out), start + 1, code, caption, mode))
    return out


def all_examples() -> list[Example]:
    return [ex for path in sorted(DOCS.glob("*.rst")) for ex in python_examples(path)]


def _params() -> list[Any]:
    params = []
    for ex in all_examples():
        marks = []
        if ex.id in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(reason=KNOWN_BUGS[ex.id][1], strict=True))
        params.append(pytest.param(ex, id=ex.id, marks=marks))
    return params


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The examples must run against this source tree, whatever is installed.
    root = str(DOCS.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TRIOFLOW_SCHEDULER_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, ex: Example) -> None:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"example at {ex.where} did not finish within {EXAMPLE_TIMEOUT}s\n"
            f"--- code ---\n{ex.code}--- stdout ---\n{exc.stdout}\n--- stderr ---\n{exc.stderr}"
        )
    if proc.returncode != 0:
        pytest.fail(
            f"example at {ex.where} exited with {proc.returncode}\n"
            f"--- code ---\n{ex.code}--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )


# ---------------------------------------------------------------- a real cluster for "cluster" examples


def _cli(program: str, *args: str, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    code = f"import sys; from trioflow.cli import {program}_main as m; sys.argv[0] = 'trioflow-{program}'; m()"
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=cwd, env=_env(), stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class _CommandLineCluster:
    """``trioflow-scheduler`` and one nannied ``trioflow-worker`` on loopback."""

    def __init__(self, cwd: Path, *, tls: bool = False) -> None:
        self.cwd = cwd
        self.tls = tls
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> _CommandLineCluster:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        sched_file = self.cwd / "scheduler.json"
        common: tuple[str, ...] = ("--no-dashboard", "--scheduler-file", str(sched_file))
        if self.tls:
            sec = trioflow.Security.temporary()
            files = {"ca.pem": sec.tls_ca_file, "node.pem": sec.tls_client_cert, "node-key.pem": sec.tls_client_key}
            for name, pem in files.items():
                assert pem is not None
                (self.cwd / name).write_text(pem)
            common += ("--tls-ca-file", "ca.pem", "--tls-cert", "node.pem", "--tls-key", "node-key.pem")
        self.procs.append(
            _cli("scheduler", "--host", "127.0.0.1", "--port", "0", *common, cwd=self.cwd, log=self.cwd / "scheduler.log")
        )
        self.procs.append(
            _cli("worker", "--host", "127.0.0.1", "--nthreads", "2", "--death-timeout", "60", *common, cwd=self.cwd, log=self.cwd / "worker.log")
        )
        deadline = time.monotonic() + 60
        while True:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"the command-line cluster died while starting:\n{self._logs()}")
            if sched_file.exists() and "Registered to" in (self.cwd / "worker.log").read_text(errors="replace"):
                json.loads(sched_file.read_text())
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the command-line cluster did not start within 60s:\n{self._logs()}")
            time.sleep(0.05)

    def _logs(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{(self.cwd / name).read_text(errors='replace')}"
            for name in ("scheduler.log", "worker.log")
            if (self.cwd / name).exists()
        )

    def __exit__(self, *exc: Any) -> None:
        for proc in reversed(self.procs):
            _stop(proc)


# ---------------------------------------------------------------- the tests


def test_examples_are_found() -> None:
    examples = all_examples()
    assert len(examples) >= 20, [ex.id for ex in examples]
    unknown = {ex.mode for ex in examples} - {"", "cluster", "tls-cluster"}
    assert not unknown, f"unknown docs-test modes: {unknown}"
    by_id = {ex.id: ex for ex in examples}
    for id_, (line, _) in KNOWN_BUGS.items():
        assert id_ in by_id, f"KNOWN_BUGS names an example that no longer exists: {id_}"
        assert line in by_id[id_].code, f"KNOWN_BUGS[{id_!r}] now points at another example ({by_id[id_].where})"


@pytest.mark.slow
@pytest.mark.timeout(EXAMPLE_TIMEOUT + 60)
@pytest.mark.parametrize("ex", _params())
def test_example_runs(ex: Example, tmp_path: Path) -> None:
    if re.fullmatch(r"test_\w*\.py", ex.caption):
        (tmp_path / ex.caption).write_text(ex.code)
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", ex.caption]
    else:
        cmd = [sys.executable, "-c", ex.code]
    if ex.mode in ("cluster", "tls-cluster"):
        with _CommandLineCluster(tmp_path, tls=ex.mode == "tls-cluster"):
            _run(cmd, tmp_path, ex)
    else:
        _run(cmd, tmp_path, ex)


def test_public_names_are_documented() -> None:
    text = (DOCS / "api.rst").read_text()
    documented = set(re.findall(r"^\.\.\s+auto(?:class|function|exception|data)::\s+(?:trioflow\.)?(\w+)\s*$", text, re.M))
    documented |= set(re.findall(r"^\.\.\s+(?:data|class|function|exception)::\s+(?:trioflow\.)?(\w+)\s*$", text, re.M))
    missing = sorted(set(trioflow.__all__) - documented)
    assert not missing, f"public names with no entry in docs/api.rst: {missing}"


def _flags(command: Any) -> set[str]:
    import click

    out = set()
    for param in command.params:
        if isinstance(param, click.Option):
            out.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--") and o != "--help")
    return out


def test_every_flag_is_documented() -> None:
    from trioflow.cli import group, scheduler_command, worker_command
    from trioflow.cli.config import config_command
    from trioflow.cli.local import local_command  # noqa: F401 - registers `trioflow local`

    text = (DOCS / "command-line.rst").read_text()
    documented = set(re.findall(r"--[a-z][a-z0-9-]*", text))
    missing = {
        name: sorted(_flags(cmd) - documented)
        for name, cmd in (
            ("trioflow-scheduler", scheduler_command),
            ("trioflow-worker", worker_command),
            ("trioflow local", group.commands["local"]),
            ("trioflow config", config_command),
        )
    }
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"flags missing from docs/command-line.rst: {missing}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sphinx_build_has_no_warnings(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
            "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=540,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "html" / "index.html").exists()
