"""The worker's data store: values in memory, least recently used ones on disk.

Theory of operation
-------------------
:class:`SpillBuffer` is a mutable mapping from key to value.  It counts the
bytes of every value it holds (the sizes the caller passes in, or
:func:`~trioflow.sizeof.sizeof`).  When the values in memory add up to more
than ``target`` bytes, the least recently used ones are serialized (pickle
protocol 5 with out-of-band buffers, as on the wire) and written to one file
each under ``directory``; reading a spilled key loads it back into memory
(making it the most recently used, possibly spilling others).  A value too
large to ever fit under ``target`` goes straight to disk.

Values that cannot be pickled stay in memory whatever their size: losing
them would be worse than using the memory.

The directory belongs to the buffer: :meth:`close` deletes everything it
wrote, and the worker removes the whole local directory at exit, so nothing
spilled is left on disk.

Thread safety: the buffer is used from the worker's event loop only.
"""

from __future__ import annotations

import collections
import os
import shutil
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any

from ..protocol.serialize import SerializationError, Serialized, dumps, loads
from ..sizeof import sizeof

__all__ = ["SpillBuffer"]

_HEAD = struct.Struct("<BI")  # kind, number of buffers
_LEN = struct.Struct("<Q")


class SpillBuffer(MutableMapping[str, Any]):
    def __init__(self, directory: str, target: int) -> None:
        self.directory = directory
        self.target = target
        os.makedirs(directory, exist_ok=True)
        self.fast: OrderedDict[str, Any] = OrderedDict()
        self.sizes: dict[str, int] = {}
        self.slow: dict[str, int] = {}  # key -> bytes on disk
        self.fast_bytes = 0
        self.slow_bytes = 0
        self.spilled_count = 0
        self.unspilled_count = 0
        self._counter = 0
        self._paths: dict[str, str] = {}
        #: Recent disk traffic for the task stream: (key, "disk-write" or
        #: "disk-read", start, stop, bytes), newest last.
        self.disk_log: collections.deque[tuple[str, str, float, float, int]] = collections.deque(maxlen=1000)

    # ------------------------------------------------------------ mapping

    def __getitem__(self, key: str) -> Any:
        try:
            value = self.fast[key]
        except KeyError:
            pass
        else:
            self.fast.move_to_end(key)
            return value
        if key not in self.slow:
            raise KeyError(key)
        value = self._read(key)
        self.unspilled_count += 1
        self._forget_slow(key)
        self._put_fast(key, value, self.sizes[key])
        self._evict()
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.set(key, value, sizeof(value))

    def set(self, key: str, value: Any, nbytes: int) -> None:
        """Store ``value`` counting ``nbytes`` for it."""
        if key in self:
            del self[key]
        self.sizes[key] = nbytes
        if nbytes > self.target and self.target > 0:
            try:
                self._write(key, value)
                return
            except SerializationError:
                pass
        self._put_fast(key, value, nbytes)
        self._evict(keep=key)

    def __delitem__(self, key: str) -> None:
        if key in self.fast:
            del self.fast[key]
            self.fast_bytes -= self.sizes.pop(key)
        elif key in self.slow:
            self._forget_slow(key)
            self.sizes.pop(key, None)
        else:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self.fast or key in self.slow

    def __iter__(self) -> Iterator[str]:
        yield from list(self.fast)
        yield from list(self.slow)

    def __len__(self) -> int:
        return len(self.fast) + len(self.slow)

    # ------------------------------------------------------------ spilling

    def _put_fast(self, key: str, value: Any, nbytes: int) -> None:
        self.fast[key] = value
        self.fast_bytes += nbytes

    def _evict(self, keep: str | None = None) -> None:
        # Checked first: this runs on every store, and copying the key list
        # each time made storing n keys cost O(n^2).
        if self.target <= 0 or self.fast_bytes <= self.target:
            return
        for key in list(self.fast):
            if self.fast_bytes <= self.target:
                return
            if key == keep:
                continue
            self.spill(key)

    def spill(self, key: str) -> bool:
        """Move one value to disk; False if it cannot be pickled."""
        value = self.fast[key]
        try:
            self._write(key, value)
        except SerializationError:
            self.fast.move_to_end(key)  # keep it; try others first next time
            return False
        del self.fast[key]
        self.fast_bytes -= self.sizes[key]
        self.spilled_count += 1
        return True

    def spill_lru(self, nbytes: int) -> int:
        """Spill least recently used values until ``nbytes`` are freed (or
        nothing is left); returns the bytes moved."""
        freed = 0
        for key in list(self.fast):
            if freed >= nbytes:
                break
            size = self.sizes[key]
            if self.spill(key):
                freed += size
        return freed

    def _path(self, key: str) -> str:
        path = self._paths.get(key)
        if path is None:
            self._counter += 1
            path = self._paths[key] = os.path.join(self.directory, f"{self._counter:08d}.pkl")
        return path

    def _write(self, key: str, value: Any) -> None:
        start = time.time()
        ser = dumps(value)
        path = self._path(key)
        frames = [ser.data, *ser.buffers]
        with open(path, "wb") as f:
            f.write(_HEAD.pack(ser.kind, len(ser.buffers)))
            for fr in frames:
                mv = memoryview(fr).cast("B")
                f.write(_LEN.pack(mv.nbytes))
                f.write(mv)
        size = os.path.getsize(path)
        self.slow[key] = size
        self.slow_bytes += size
        self.disk_log.append((key, "disk-write", start, time.time(), size))

    def serialized(self, key: str) -> Serialized | None:
        """A spilled value as it lies on disk, which is its wire form: sent
        to a peer without unpickling it or pulling it back into memory.
        None for a key held in memory (or not at all)."""
        if key not in self.slow:
            return None
        return self._read_serialized(key)

    def _read_serialized(self, key: str) -> Serialized:
        path = self._paths[key]
        with open(path, "rb") as f:
            kind, nbuf = _HEAD.unpack(f.read(_HEAD.size))
            frames = []
            for _ in range(nbuf + 1):
                (n,) = _LEN.unpack(f.read(_LEN.size))
                buf = bytearray(n)
                f.readinto(buf)
                frames.append(buf)
        return Serialized(kind=kind, data=frames[0], buffers=tuple(frames[1:]))

    def _read(self, key: str) -> Any:
        start = time.time()
        value = loads(self._read_serialized(key))
        self.disk_log.append((key, "disk-read", start, time.time(), self.slow.get(key, 0)))
        return value

    def _forget_slow(self, key: str) -> None:
        self.slow_bytes -= self.slow.pop(key)
        path = self._paths.pop(key)
        try:
            os.remove(path)
        except OSError:
            pass

    def close(self) -> None:
        """Drop everything and delete the spill directory."""
        self.fast.clear()
        self.slow.clear()
        self.sizes.clear()
        self._paths.clear()
        self.fast_bytes = self.slow_bytes = 0
        shutil.rmtree(self.directory, ignore_errors=True)

    def clear(self) -> None:
        for key in list(self):
            del self[key]

    def __repr__(self) -> str:
        return f"<SpillBuffer memory={len(self.fast)} ({self.fast_bytes} B) disk={len(self.slow)} ({self.slow_bytes} B) target={self.target}>"
