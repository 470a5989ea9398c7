"""The counts of the per-client limits, shared by every worker of one supervisor.

Owns: the layout of the shared table (a memory file the supervisor makes and passes to
every worker, ``supervisor/table.py``), writing this worker's segment and reading the sum
of all of them. A count-min sketch: a key (a client address, a network) is hashed, with a
key the supervisor draws at every start, to one cell in each of ``ROWS`` rows; a count is
added to all of them and read as the smallest. Each cell holds the sessions open now and,
per ``BUCKET`` seconds, the sessions, transactions and recipients begun then.
Must not know: SMTP, addresses, limits (``clients.py`` decides), the supervisor.
Security: the memory is fixed (one segment per worker, whatever clients do). A client
cannot aim collisions without the hash key, and a collision only ever adds: a count may
be too high, never too low, so a client may be limited early, never late. Each worker
writes only its own segment (no locks: one writer) and readers tolerate a torn read (a
count off by one for an instant). Every worker can write the whole table: a compromised
worker can distort the counts of the others (make limits bite early or late), nothing
more; the supervisor never reads it. A dead worker's segment is zeroed by the supervisor
when it reaps it, and by the next worker given it, so it stops counting.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import time
from typing import Final

#: Bytes of a segment's header; its first words say who fills the segment, in what layout.
HEADER: Final = 64
MAGIC: Final = 0x57424354  # "WBCT"
#: The layout below; a segment of another version (a worker of other code) is not read.
VERSION: Final = 1
#: Hash rows of the sketch: more rows, fewer over-counts, more reads per question.
ROWS: Final = 4
#: Rates are counted in buckets of this many seconds, the last ``BUCKETS`` of them: "the
#: last minute" is the current bucket and the four before it, 60 to 75 seconds.
BUCKET: Final = 15.0
BUCKETS: Final = 5
#: A cell: the sessions open, then per bucket its number (+1; 0: empty) and three counts.
OPEN: Final = 0
CONNECTIONS, MESSAGES, RECIPIENTS = 1, 2, 3
SLOT: Final = 4
CELL: Final = 1 + BUCKETS * SLOT
#: uint32 counts stop here rather than wrap.
TOP: Final = 0xFFFFFFFF
#: Seconds between two looks at which segments are in use (a new worker's counts count
#: from then on).
REFRESH: Final = 1.0
#: The segment of a private table (a worker started without a supervisor's table).
PRIVATE_SEGMENT_BYTES: Final = 2 * 1024 * 1024
#: The largest segment taken from a supervisor (a bound on what a bad message can map).
MAX_SEGMENT_BYTES: Final = 64 * 1024 * 1024


class TableError(Exception):
    """The table passed does not fit its description; the message is for the operator."""


def width_of(segment_bytes: int) -> int:
    """Cells per row in a segment of ``segment_bytes`` (the same for every worker)."""
    return (segment_bytes - HEADER) // (4 * ROWS * CELL)


class SharedTable:
    """One worker's view of the table: ``segments`` segments, its own is ``own``."""

    def __init__(self, memory: mmap.mmap, segments: int, own: int, key: bytes) -> None:
        segment_bytes = len(memory) // segments
        self.width = width_of(segment_bytes)
        if self.width < 1 or not 0 <= own < segments or len(key) < 16:
            raise TableError("a table without room for one cell per row, or a bad segment")
        self.memory = memory
        self.words = memoryview(memory).cast("I")
        self.stride = segment_bytes // 4
        self.segments = segments
        self.key = key
        self.base = own * self.stride
        self._active: list[int] = []
        self._active_at = -REFRESH
        self._claim(os.getpid())

    @classmethod
    def private(cls) -> SharedTable:
        """A table of this worker alone (started without a supervisor's table)."""
        memory = mmap.mmap(-1, PRIVATE_SEGMENT_BYTES)
        return cls(memory, 1, 0, os.urandom(16))

    @classmethod
    def from_fd(cls, fd: int, segments: int, own: int, key: bytes) -> SharedTable:
        """Map the supervisor's table ``fd`` (closed here) and take segment ``own``."""
        try:
            size = os.fstat(fd).st_size
            segment_bytes = size // max(1, segments)
            if (
                segments < 1
                or size % segments
                or segment_bytes % mmap.PAGESIZE
                or segment_bytes > MAX_SEGMENT_BYTES
            ):
                raise TableError(f"a table of {size} bytes is not {segments} segments")
            memory = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as error:
            raise TableError(f"cannot map the table: {error}") from None
        finally:
            os.close(fd)
        return cls(memory, segments, own, key)

    def _claim(self, pid: int) -> None:
        """Zero this worker's segment (a dead worker's counts must not count), then say
        in its header that it is filled, in this layout."""
        start, length = self.base * 4, self.stride * 4
        try:  # frees the pages: a segment costs memory only where counts are written
            self.memory.madvise(mmap.MADV_REMOVE, start, length)
        except OSError:
            self.memory[start : start + length] = bytes(length)
        words, base = self.words, self.base
        words[base + 1], words[base + 2], words[base + 3] = VERSION, self.width, pid
        words[base] = MAGIC

    # --- keys and cells ----------------------------------------------------------------

    def cells(self, key: bytes) -> tuple[int, ...]:
        """The word offsets (in a segment) of ``key``'s cell in each row."""
        digest = hashlib.blake2b(key, key=self.key, digest_size=4 * ROWS).digest()
        width, offsets = self.width, []
        for row in range(ROWS):
            column = int.from_bytes(digest[4 * row : 4 * row + 4], "little") % width
            offsets.append(HEADER // 4 + (row * width + column) * CELL)
        return tuple(offsets)

    # --- writing (this worker's segment only) --------------------------------------------

    def opened(self, cells: tuple[int, ...], delta: int) -> None:
        """Sessions open under ``cells``: one more (``delta`` 1) or one fewer (-1)."""
        words, base = self.words, self.base
        for offset in cells:
            index = base + offset + OPEN
            words[index] = min(TOP, max(0, words[index] + delta))

    def begun(self, cells: tuple[int, ...], what: int, now: float | None = None) -> None:
        """One more ``what`` (``CONNECTIONS``, ``MESSAGES``, ``RECIPIENTS``) begun now."""
        bucket = _bucket(now)
        words, base = self.words, self.base
        slot = 1 + (bucket % BUCKETS) * SLOT
        for offset in cells:
            index = base + offset + slot
            if words[index] != bucket + 1:  # the slot held an older bucket: start it anew
                words[index + 1 : index + SLOT] = _ZEROS
                words[index] = bucket + 1
            words[index + what] = min(TOP, words[index + what] + 1)

    # --- reading (every segment in use) ---------------------------------------------------

    def active(self, now: float) -> list[int]:
        """The first word of every segment filled in this layout (looked at once a second)."""
        if now - self._active_at >= REFRESH:
            words, stride = self.words, self.stride
            self._active = [
                s * stride
                for s in range(self.segments)
                if words[s * stride] == MAGIC
                and words[s * stride + 1] == VERSION
                and words[s * stride + 2] == self.width
            ]
            if self.base not in self._active:  # its own always counts
                self._active.append(self.base)
            self._active_at = now
        return self._active

    def counts(
        self, cells: tuple[int, ...], what: int, now: float | None = None
    ) -> tuple[int, int]:
        """(sessions open, ``what`` begun in the last minute) under ``cells``: the sums
        over all segments, the smallest over the rows."""
        clock = time.monotonic() if now is None else now
        newest = _bucket(clock) + 1
        oldest = newest - (BUCKETS - 1)
        words, active = self.words, self.active(clock)
        least_open = least_begun = TOP * self.segments
        for offset in cells:
            opened = begun = 0
            for base in active:
                cell = words[base + offset : base + offset + CELL].tolist()
                opened += cell[OPEN]
                for slot in _SLOTS:
                    if oldest <= cell[slot] <= newest:
                        begun += cell[slot + what]
            least_open = min(least_open, opened)
            least_begun = min(least_begun, begun)
        return least_open, least_begun


_SLOTS: Final = tuple(range(1, CELL, SLOT))
_ZEROS = memoryview(bytes(4 * (SLOT - 1))).cast("I")


def _bucket(now: float | None) -> int:
    """The current bucket's number: the system-wide monotonic clock, the same in every
    worker, in ``BUCKET`` steps."""
    return int((time.monotonic() if now is None else now) // BUCKET)
