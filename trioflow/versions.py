"""What runs where: Python, platform and package versions of this process
(``Client.get_versions``)."""

from __future__ import annotations

import importlib.metadata
import locale
import os
import platform
import struct
import sys
from typing import Any

__all__ = ["REQUIRED", "OPTIONAL", "versions"]

#: Packages that must match across client, scheduler and workers.
REQUIRED = ("trioflow", "cloudpickle", "msgpack", "trio")
#: Packages reported (and compared) when installed.
OPTIONAL = ("numpy", "pandas", "dask", "lz4", "toolz", "tornado")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(packages: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"host": {...}, "packages": {name: version or None}}`` of this process."""
    host = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "python-bits": struct.calcsize("P") * 8,
        "OS": platform.system(),
        "OS-release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "byteorder": sys.byteorder,
        "LC_ALL": os.environ.get("LC_ALL", "None"),
        "LANG": os.environ.get("LANG", "None") or str(locale.getlocale()[0]),
    }
    pkgs: dict[str, str | None] = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in (*REQUIRED, *OPTIONAL, *packages):
        pkgs[name] = _version(name)
    return {"host": host, "packages": pkgs}
