"""The built wheel carries everything a user needs (types, page assets)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_with_types_and_page_assets(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    [wheel] = wheels.glob("trioflow-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        timeout=300,
    )
    code = (
        "import os, trioflow, trioflow.cli; d = os.path.dirname(trioflow.__file__); "
        "assert d.startswith(os.environ['PYTHONPATH']), d; "
        "assert os.path.exists(os.path.join(d, 'py.typed')); "
        "assert os.listdir(os.path.join(d, 'diagnostics', 'static')); "
        "print(trioflow.__version__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    from trioflow import __version__

    assert out.stdout.strip() == __version__


_PLAIN_USER_TEST = '''
import trioflow


def test_plain_install_runs_a_users_pytest():
    assert trioflow.__version__


def test_leak_fixture_works_without_the_test_extra(trioflow_no_leaks):
    assert 1 + 1 == 2
'''


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_plain_install_keeps_pytest_and_import_working(tmp_path: Path) -> None:
    """``pip install trioflow`` without extras: the pytest11 plugin and
    ``import trioflow`` load nothing from the test extra (hypothesis,
    trustme, numpy), so a user's pytest run starts and passes."""
    import tomllib

    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
        timeout=300,
        cwd=tmp_path,
    )
    [wheel] = wheels.glob("trioflow-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # The plain dependencies and pytest (the user's), nothing of the test extra.
    subprocess.run([python, "-m", "pip", "install", "--quiet", *deps, "pytest"], check=True, timeout=400)
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    missing = subprocess.run(
        [python, "-c", "import importlib.util as u; print([m for m in ('hypothesis', 'trustme', 'numpy', 'pytest_trio') if u.find_spec(m)])"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert missing.stdout.strip() == "[]", missing.stdout + missing.stderr
    code = (
        "import sys, trioflow, trioflow.testing, trioflow.testing.plugin; "
        "print(sorted(m for m in ('hypothesis', 'trustme', 'numpy', 'joblib') if m in sys.modules))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    project = tmp_path / "userproject"
    project.mkdir()
    (project / "test_user.py").write_text(_PLAIN_USER_TEST)
    run = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 passed" in run.stdout, run.stdout
