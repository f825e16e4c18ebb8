"""Developer tasks: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``bench``.

``nox`` alone runs tests, lint, typecheck and docs; the benchmarks take
minutes and need dask.distributed, so run them on purpose with ``nox -s bench``.
Arguments after ``--`` go to the tool, e.g. ``nox -s tests -- -m "not slow"``.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, including the documentation's examples and build."""
    session.install("-e", ".[test,dask]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the package, the tests and the benchmarks."""
    session.install("ruff")
    session.run("ruff", "check", "trioflow", "tests", "benchmarks", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package (the public API ships type hints)."""
    session.install("-e", ".", "mypy")
    session.run("mypy", "trioflow", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML documentation; any warning is an error."""
    session.install("-e", ".[docs]")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", *session.posargs
    )


@nox.session
def bench(session: nox.Session) -> None:
    """trioflow beside dask.distributed on the benchmark workloads."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
