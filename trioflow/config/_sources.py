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
   dask is installed), but only those set away from dask's own defaults.
   In a process that has imported dask, that is ``dask.config`` itself
   (``dask.config.set`` included); in one that has not (a server started
   from the command line), dask's YAML files and ``DASK_*`` variables are
   read here, so that starting a server never imports dask;
5. explicit arguments (``load_config(overrides)``, and a server's keywords).

Every value is checked against its setting's kind as it is read; a bad one
is one :class:`ConfigError` naming the key *as the user wrote it* and its
source.  Nothing here is cached except the parsed YAML file (by path and
modification time), so a changed environment or ``dask.config.set`` is seen
by the next :func:`get_config`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import site
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


def _from_dask(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings from dask's configuration: live ``dask.config`` when this
    process has imported dask already (``dask.config.set`` included), else
    read from dask's own sources (its YAML files and ``DASK_*`` variables)
    without importing dask, so servers start without it."""
    dask_config = sys.modules.get("dask.config")
    if dask_config is not None:
        return _from_live_dask(dask_config)
    if importlib.util.find_spec("dask") is None:
        return {}
    return _from_dask_sources(env)


def _from_live_dask(dask_config: Any) -> dict[str, Any]:
    """Settings whose dask key the user set away from dask's default."""
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


def _dask_paths(env: Mapping[str, str]) -> list[str]:
    """Where dask looks for its YAML / JSON files, lowest first."""
    paths = [
        env.get("DASK_ROOT_CONFIG", "/etc/dask"),
        os.path.join(sys.prefix, "etc", "dask"),
        *(os.path.join(prefix, "etc", "dask") for prefix in site.PREFIXES),
        os.path.join(os.path.expanduser("~"), ".config", "dask"),
    ]
    if "DASK_CONFIG" in env:
        paths.append(env["DASK_CONFIG"])
    seen: dict[str, None] = {}
    for p in reversed(paths):  # a path listed twice counts where it is last
        seen.setdefault(p, None)
    return list(reversed(seen))


def _dask_files(env: Mapping[str, str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, _dask_paths(env)):
        if p.is_dir():
            try:
                files.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in (".yaml", ".yml", ".json")))
            except OSError:
                pass
        elif p.is_file():
            files.append(p)
    return files


def _lookup(tree: Any, dask_key: str) -> Any:
    """``tree[a][b]`` for ``a.b``, ``-`` and ``_`` alike in names."""
    for part in dask_key.split("."):
        if not isinstance(tree, Mapping):
            return _MISSING
        wanted = part.replace("_", "-")
        for name, value in tree.items():
            if isinstance(name, str) and name.replace("_", "-") == wanted:
                tree = value
                break
        else:
            return _MISSING
    return tree


def _env_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _from_dask_sources(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    files = _dask_files(env)
    if files:
        import yaml  # dask needs it, so it is there

        for path in files:
            try:
                tree = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue  # dask's business to complain about its own files
            for key, setting in _SETTINGS.items():
                for dask_key in setting.dask:
                    value = _lookup(tree, dask_key)
                    if value is not _MISSING:
                        out[key] = _parse(key, value, dask_key, f"dask.config, {path}", setting.from_dask)
                        break
    by_env_name = {
        "DASK_" + dask_key.upper().replace(".", "__").replace("-", "_"): key
        for key, setting in _SETTINGS.items()
        for dask_key in reversed(setting.dask)  # the first listed wins
    }
    for name, key in by_env_name.items():
        if name in env:
            out[key] = _parse(key, _env_value(env[name]), name, "dask.config, environment", _SETTINGS[key].from_dask)
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
        layer("dask.config", _from_dask(env))
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
