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
