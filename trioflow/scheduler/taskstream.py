"""The scheduler's record of recently finished tasks, kept without Python objects.

The live page draws the newest few thousand finished tasks.  Keeping them as
tuples would keep, for every entry, the task's key string, two floats and the
tuple itself alive long after the task is gone.  Those survivors sit scattered
among the memory of a whole graph's worth of freed task state, and an
allocator can only give memory back to the operating system where nothing in
it lives (a 1 MiB arena for CPython's own allocator, a 4 KiB page for glibc's):
a scheduler that once ran a large graph would keep most of that graph's peak
memory for ever.  So :class:`TaskStream` stores an entry in flat, preallocated
columns (the key's leading UTF-8 bytes, the times, the thread, an index into a
small table of worker addresses) and builds tuples only when someone reads.
The columns grow by doubling (from 256 entries) until they hold ``capacity``:
a scheduler that has run a hundred tasks keeps a few KiB for them, not the
1.2 MiB a full ring of 10,000 takes.
"""

from __future__ import annotations

from array import array

__all__ = ["TaskStream"]

#: A finished task as read back: (key, worker, start, stop, thread).
Entry = tuple[str, str, float, float, int]


class TaskStream:
    """The newest ``capacity`` finished tasks, oldest overwritten first.

    ``total`` counts every entry ever appended, so a reader that remembers the
    ``total`` it last saw knows how many are new.  Keys longer than
    ``key_bytes`` UTF-8 bytes come back cut, ending in "…" (the page shows the
    first 80 characters of a key at most).  Nothing is allocated until the
    first append; the columns then grow by doubling up to ``capacity``.
    """

    #: Entries the columns hold after the first append.
    FIRST_SIZE = 256

    #: Distinct worker addresses kept before the table is rebuilt from the
    #: entries still in the ring (workers come and go over a long life).
    MAX_WORKERS = 4096

    def __init__(self, capacity: int = 10_000, key_bytes: int = 96) -> None:
        if capacity < 1 or not 1 <= key_bytes < 2**15:
            raise ValueError(f"TaskStream needs capacity >= 1 and 1 <= key_bytes < 32768, not {capacity}, {key_bytes}")
        self.capacity = capacity
        self.key_bytes = key_bytes
        self.total = 0
        self._keys = bytearray()
        self._key_len = array("H")  # bytes of the encoded key (capped at 65535)
        self._start = array("d")
        self._stop = array("d")
        self._thread = array("q")
        self._worker = array("I")
        self._workers: list[str] = []
        self._worker_index: dict[str, int] = {}

    def __len__(self) -> int:
        return min(self.total, self.capacity)

    def _grow(self) -> None:
        """Extend every column (in place where the allocator can) to twice its
        entries, at least :attr:`FIRST_SIZE`, at most ``capacity``."""
        have = len(self._key_len)
        add = min(self.capacity, max(self.FIRST_SIZE, 2 * have)) - have
        self._keys.extend(bytes(add * self.key_bytes))
        for column in (self._key_len, self._start, self._stop, self._thread, self._worker):
            column.frombytes(bytes(add * column.itemsize))

    def _worker_id(self, worker: str) -> int:
        i = self._worker_index.get(worker)
        if i is None:
            if len(self._workers) >= self.MAX_WORKERS:
                self._compact_workers()
            i = self._worker_index[worker] = len(self._workers)
            self._workers.append(worker)
        return i

    def _compact_workers(self) -> None:
        live = sorted({self._worker[i] for i in range(len(self))})
        renumber = {old: new for new, old in enumerate(live)}
        self._workers = [self._workers[old] for old in live]
        self._worker_index = {w: i for i, w in enumerate(self._workers)}
        for i in range(len(self)):
            self._worker[i] = renumber[self._worker[i]]

    def append(self, key: str, worker: str, start: float, stop: float, thread: int) -> None:
        i = self.total % self.capacity
        if i >= len(self._key_len):
            self._grow()
        kb = self.key_bytes
        data = key.encode("utf-8", "surrogatepass")
        n = min(len(data), kb)
        self._keys[i * kb : i * kb + n] = memoryview(data)[:n]
        self._key_len[i] = min(len(data), 0xFFFF)
        self._start[i] = start
        self._stop[i] = stop
        self._thread[i] = thread if -(2**63) <= thread < 2**63 else 0
        self._worker[i] = self._worker_id(worker)
        self.total += 1

    def _entry(self, i: int) -> Entry:
        kb = self.key_bytes
        length = self._key_len[i]
        raw = bytes(self._keys[i * kb : i * kb + min(length, kb)])
        key = raw.decode("utf-8", "ignore") if length <= kb else raw.decode("utf-8", "ignore") + "…"
        return key, self._workers[self._worker[i]], self._start[i], self._stop[i], self._thread[i]

    def newest(self, n: int) -> list[Entry]:
        """The newest ``n`` entries (fewer if there are fewer), oldest first."""
        n = max(0, min(n, len(self)))
        first = self.total - n
        return [self._entry(j % self.capacity) for j in range(first, self.total)]
