"""A task's traceback, rebuilt here from the text the worker sent.

A worker sends a failed task's traceback as text (``traceback_text``); the
exception itself arrives pickled, without its frames.  :func:`remote_traceback`
turns the text back into a real :class:`types.TracebackType` whose frames
carry the remote file names, line numbers and function names (each frame
is made by running a tiny code object compiled under that file name, so
``traceback.print_tb``, debuggers and IPython show the user's lines), with
trioflow's own frames (the worker's task runner) left out.

The client raises a task's exception with this traceback at the edge of
the public call (``result()``, ``gather()``, ...), so what a user sees is
their call, at most a couple of trioflow frames, then their task's frames.
"""

from __future__ import annotations

import os
import re
import types
from typing import Any

__all__ = ["remote_traceback", "with_remote_traceback"]

_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<name>.+)$')
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _frames(text: str) -> list[tuple[str, int, str]]:
    """(file, line, function) of the last traceback block in ``text``."""
    block = text.rsplit("Traceback (most recent call last):", 1)[-1]
    out = []
    for line in block.splitlines():
        mo = _FRAME.match(line)
        if mo is not None:
            out.append((mo["file"], int(mo["line"]), mo["name"]))
    return out


def _one_frame_tb(filename: str, lineno: int, name: str) -> types.TracebackType | None:
    code = compile("\n" * (max(lineno, 1) - 1) + "raise __trioflow_marker__", filename, "exec")
    if name.isidentifier():
        code = code.replace(co_name=name)
    try:
        exec(code, {"__trioflow_marker__": _Marker, "__name__": "__remote__", "__file__": filename})
    except _Marker as exc:
        tb = exc.__traceback__
        return tb.tb_next if tb is not None else None
    return None


class _Marker(Exception):
    pass


def remote_traceback(text: str, keep_ours: bool = False) -> types.TracebackType | None:
    """A traceback object for the frames in ``text`` (None if it has none)."""
    frames = _frames(text)
    if not keep_ours:
        frames = [f for f in frames if not os.path.abspath(f[0]).startswith(_OURS)]
    tb: types.TracebackType | None = None
    for filename, lineno, name in reversed(frames):
        one = _one_frame_tb(filename, lineno, name)
        if one is None:
            continue
        tb = types.TracebackType(tb, one.tb_frame, one.tb_lasti, one.tb_lineno)
    return tb


def with_remote_traceback(exc: BaseException) -> BaseException:
    """``exc`` with its task's traceback (if it came from a task)."""
    text = getattr(exc, "_trioflow_tb_text", "")
    if text:
        tb = remote_traceback(text)
        if tb is not None:
            exc.__traceback__ = None
            return exc.with_traceback(tb)
    return exc


def is_remote(exc: Any) -> bool:
    return bool(getattr(exc, "_trioflow_tb_text", ""))
