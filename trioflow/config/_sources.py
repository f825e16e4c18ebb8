"""Where settings come from, and the one place they are merged.

Sources, lowest first (a later one wins, key by key):

1. the defaults declared in :mod:`._tree`;
2. a YAML file: ``$TRIOFLOW_CONFIG``, else ``$XDG_CONFIG_HOME/trioflow/trioflow.yaml``
   (``~/.config/trioflow/trioflow.yaml``) when it exists.  Reading it needs
   PyYAML, which trioflow does not depend on (dask does);
3. ``TRIOFLOW_*`` environment variables: the dotted key in capitals with
   ``__`` between levels, ``worker.memory.target`` ->
   ``TRIOFLOW_WORKER__MEMORY__TARGET``, ``scheduler_address`` ->
   ``TRIOFLOW_SCHEDULER_ADDRESS``.  An unknown variable with ``__`` in its
   name is an error (a misspelt setting); one without is some other
   trioflow variable and left alone;
4. the ``distributed.*`` keys of ``dask.config`` that mean the same (when
   dask is installed), but only those set away from dask's own defaults;
5. explicit arguments (``load_config(overrides)``, and a server's keywords).

Every value is checked against its setting's kind as it is read; a bad one
is one :class:`ConfigError` naming the key *as the user wrote it* and its
source.  Nothing here is cached except the parsed YAML file (by path and
modification time), so a changed environment or ``dask.config.set`` is seen
by the next :func:`get_config`.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ._tree import TrioflowConfig, iter_settings

__all__ = ["ConfigError", "LoadedConfig", "config_path", "env_var", "get_config", "load_config"]

ENV_PREFIX = "TRIOFLOW_"
#: Environment variables with that prefix that are not settings (others
#: without a ``__`` are ignored too; an unknown one with ``__`` is an error).
_NOT_SETTINGS = {"TRIOFLOW_CONFIG"}

_SETTINGS = {key: setting for key, _, setting in iter_settings()}
_DEFAULTS = {key: default for key, default, _ in iter_settings()}
_SECTIONS = {key[: i + 1] for key in _SETTINGS for i, c in enumerate(key) if c == "."}


class ConfigError(ValueError):
    """A setting with a bad value, an unknown setting, or an unreadable file."""


def env_var(key: str) -> str:
    """``worker.memory.target`` -> ``TRIOFLOW_WORKER__MEMORY__TARGET``."""
    return ENV_PREFIX + key.upper().replace(".", "__")


_ENV_KEYS = {env_var(key): key for key in _SETTINGS}


@attrs.frozen
class LoadedConfig:
    """The effective tree and, per dotted key, where its value came from
    (``"default"``, the file's path, ``"environment"``, ``"dask.config"``
    or ``"argument"``)."""

    config: TrioflowConfig
    sources: dict[str, str]

    def explain(self) -> list[tuple[str, Any, str]]:
        """``(key, value, source)`` for every setting, in tree order."""
        return [(key, self.get(key), self.sources[key]) for key in _SETTINGS]

    def get(self, key: str) -> Any:
        obj: Any = self.config
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj


def _unknown(name: str, source: str, candidates: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, candidates, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"{name} ({source}): no such setting{hint}")


def _parse(key: str, value: Any, label: str, source: str, convert: Any = None) -> Any:
    setting = _SETTINGS[key]
    try:
        if convert is not None:
            value = convert(value)
        return setting.kind(value)
    except ValueError as exc:
        raise ConfigError(f"{label}={value!r} ({source}): {exc}") from None


# ---------------------------------------------------------------- YAML file


def config_path(env: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The configuration file and whether the user named it explicitly
    (``$TRIOFLOW_CONFIG``: then it must exist)."""
    env = os.environ if env is None else env
    if env.get("TRIOFLOW_CONFIG"):
        return Path(env["TRIOFLOW_CONFIG"]).expanduser(), True
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base) / "trioflow" / "trioflow.yaml", False


_yaml_cache: dict[str, tuple[tuple[int, int], Any]] = {}


def _read_yaml(path: Path) -> Any:
    st = path.stat()
    stamp = (st.st_mtime_ns, st.st_size)
    cached = _yaml_cache.get(str(path))
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"{path}: reading a YAML configuration file needs PyYAML, which is not installed "
            "(pip install pyyaml, or pip install 'trioflow[yaml]')"
        ) from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc}") from None
    _yaml_cache[str(path)] = (stamp, data)
    return data


def _flatten(tree: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """Nested mappings (keys with ``-`` or ``_``) -> {dotted key: (as written, value)}."""
    out: dict[str, tuple[str, Any]] = {}
    for name, value in tree.items():
        if not isinstance(name, str):
            raise ConfigError(f"{prefix}{name!r} ({source}): setting names are strings")
        written = f"{prefix}{name}"
        key = written.replace("-", "_")
        if key in _SETTINGS:
            out[key] = (written, value)
        elif isinstance(value, Mapping) and key + "." in _SECTIONS:
            out.update(_flatten(value, source, written + "."))
        else:
            raise _unknown(written, source, list(_SETTINGS))
    return out


def _from_file(env: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    path, explicit = config_path(env)
    if not path.is_file():
        if explicit:
            raise ConfigError(f"TRIOFLOW_CONFIG={str(path)!r} (environment): no such file")
        return str(path), {}
    data = _read_yaml(path)
    if data is None:
        return str(path), {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings at the top, got {type(data).__name__}")
    source = str(path)
    return source, {key: _parse(key, value, written, source) for key, (written, value) in _flatten(data, source).items()}


# ---------------------------------------------------------------- environment


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        key = _ENV_KEYS.get(name)
        if key is None:
            if "__" not in name:
                continue  # trioflow's other variables (TRIOFLOW_CONFIG, ...), not settings
            raise _unknown(name, "environment", list(_ENV_KEYS))
        out[key] = _parse(key, value, name, "environment")
    return out


# ---------------------------------------------------------------- dask.config


_MISSING = object()


def _dask_config() -> Any:
    """``dask.config`` if dask is installed, else None (imported on first use)."""
    if "dask.config" in sys.modules:
        return sys.modules["dask.config"]
    if importlib.util.find_spec("dask") is None:
        return None
    import dask.config

    return dask.config


def _from_dask(dask_config: Any) -> dict[str, Any]:
    """Settings whose dask.distributed key the user set away from dask's default."""
    if dask_config is None:
        return {}
    defaults = dask_config.merge(*dask_config.defaults) if dask_config.defaults else {}
    out: dict[str, Any] = {}
    for key, setting in _SETTINGS.items():
        for dask_key in setting.dask:
            value = dask_config.get(dask_key, default=_MISSING)
            if value is _MISSING or value == dask_config.get(dask_key, default=_MISSING, config=defaults):
                continue
            out[key] = _parse(key, value, dask_key, "dask.config", setting.from_dask)
            break
    return out


# ---------------------------------------------------------------- together


def _build(values: dict[str, Any]) -> TrioflowConfig:
    def make(cls: type, prefix: str) -> Any:
        kwargs = {}
        for a in attrs.fields(cls):
            key = prefix + a.name
            kwargs[a.name] = make(a.metadata["section"], key + ".") if "section" in a.metadata else values[key]
        return cls(**kwargs)

    return make(TrioflowConfig, "")


def load_config(
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    use_file: bool = True,
    use_dask: bool = True,
) -> LoadedConfig:
    """Merge every source into the effective tree.

    Args:
        overrides: explicit values, as dotted keys (``{"worker.memory.target": 0.5}``)
            or nested mappings; the highest source.
        env: the environment to read (default ``os.environ``).
        use_file: read the YAML file.
        use_dask: read ``dask.config`` (when dask is installed).

    Raises:
        ConfigError: one line naming the first bad key and its source.
    """
    env = os.environ if env is None else env
    values = dict(_DEFAULTS)
    sources = dict.fromkeys(_SETTINGS, "default")

    def layer(source: str, found: dict[str, Any]) -> None:
        values.update(found)
        sources.update(dict.fromkeys(found, source))

    if use_file:
        layer(*_from_file(env))
    layer("environment", _from_env(env))
    if use_dask:
        layer("dask.config", _from_dask(_dask_config()))
    if overrides:
        flat = _flatten(overrides, "argument")
        layer("argument", {key: _parse(key, value, written, "argument") for key, (written, value) in flat.items()})
    return LoadedConfig(_build(values), sources)


def get_config() -> TrioflowConfig:
    """The effective configuration of this process, from every source but
    explicit arguments (read afresh on each call; servers call it once, at
    construction).

    Raises:
        ConfigError: a bad value, naming its key and source.
    """
    return load_config().config
