"""``trioflow config``: the effective settings and where each came from.

Imports only click and :mod:`trioflow.config` (no trio, no servers), so it
answers quickly even where starting a cluster would not.
"""

from __future__ import annotations

import json
import math
from typing import Any

import click

from ..config import ConfigError, config_path, env_var, iter_settings, load_config

_DASK_KEYS = {key: setting.dask for key, _, setting in iter_settings()}
_PENDING = {key: setting.pending for key, _, setting in iter_settings() if setting.pending}


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return json.dumps(value)


def _where(key: str, source: str) -> str:
    if source == "environment":
        where = f"environment ({env_var(key)})"
    elif source == "dask.config":
        where = f"dask.config ({', '.join(_DASK_KEYS[key])})"
    else:
        where = source
    if key in _PENDING:
        where += f"; not read yet, {_PENDING[key]} rules"
    return where


@click.command(name="config", context_settings={"help_option_names": ["--help"], "max_content_width": 100})
@click.argument("keys", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {key, value, source}")
@click.option("--changed", is_flag=True, help="Only the settings not at their defaults")
def config_command(keys: tuple[str, ...], as_json: bool, changed: bool) -> None:
    """Print the effective configuration and where each value came from.

    Sources, lowest first: defaults, the YAML file ($TRIOFLOW_CONFIG or
    ~/.config/trioflow/trioflow.yaml), TRIOFLOW_* environment variables,
    dask.config's distributed.* keys, explicit arguments.  With KEYS, only
    those settings (like worker.memory.target).
    """
    try:
        loaded = load_config()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    rows = loaded.explain()
    if keys:
        known = {key for key, _, _ in rows}
        wanted = [k.replace("-", "_") for k in keys]
        for k, given in zip(wanted, keys, strict=True):
            if k not in known:
                raise click.ClickException(f"{given}: no such setting (see `trioflow config`)")
        rows = [r for r in rows if r[0] in wanted]
    if changed:
        rows = [r for r in rows if r[2] != "default"]
    if as_json:
        click.echo(json.dumps([{"key": k, "value": v, "source": s} for k, v, s in rows], indent=2))
        return
    path, explicit = config_path()
    state = "read" if path.is_file() else ("missing" if explicit else "not present")
    click.echo(f"# configuration file: {path} ({state})")
    width = max((len(k) for k, _, _ in rows), default=0)
    vwidth = max((len(_show(v)) for _, v, _ in rows), default=0)
    for key, value, source in rows:
        click.echo(f"{key:<{width}} = {_show(value):<{vwidth}}  # {_where(key, source)}")
