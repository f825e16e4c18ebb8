"""``--pid-file``: this process's PID in a file for as long as it runs."""

from __future__ import annotations

import os
from typing import Any

from .daemon import UserError

__all__ = ["PidFile"]


class PidFile:
    """Context manager: write ``os.getpid()`` to ``path`` (if given) on entry,
    remove the file on exit.

    Raises:
        UserError: the file cannot be written (one line naming ``--pid-file``).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path

    def __enter__(self) -> PidFile:
        if self.path:
            try:
                with open(self.path, "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError as exc:
                raise UserError(f"--pid-file: cannot write {self.path!r}: {exc.strerror}") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.path:
            try:
                os.remove(self.path)
            except OSError:
                pass
