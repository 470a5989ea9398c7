"""The memory the workers share their per-client counts in (``wildboar/worker/table.py``
owns what is in it).

Owns: making it (a sealed memory file of ``segments`` x ``SEGMENT_BYTES``, zero-filled, its
size fixed for good), the hash key drawn at every start, which segment each worker gets
(one each, none shared by two live workers), and zeroing a segment whose worker is gone.
Must not know: the layout of a segment, what the counts mean.
SECURITY: the supervisor only ever writes zeros to it and never reads it: nothing a worker
writes there reaches a decision of the supervisor. The file is sealed against shrinking
and growing (``F_SEAL_SHRINK``/``F_SEAL_GROW``), so no worker can make another fault on
its mapping. The key goes to workers only, in the ``sockets`` message.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from dataclasses import dataclass
from typing import Final

#: One worker's segment: room for about 6,000 cells per hash row (wildboar/worker/table.py);
#: pages of it are only allocated once a count is written there.
SEGMENT_BYTES: Final = 2 * 1024 * 1024
#: At most this many segments, whatever ``--workers-max`` says (a worker beyond them
#: counts alone, and the supervisor says so).
MAX_SEGMENTS: Final = 256
KEY_BYTES: Final = 16
#: fallocate(2): free a range of the file (it reads as zeros again), keeping its size.
_FALLOC_FL_KEEP_SIZE: Final = 0x01
_FALLOC_FL_PUNCH_HOLE: Final = 0x02


@dataclass(frozen=True)
class Share:
    """What one worker is told: the file, its segment, how many there are, the key."""

    fd: int
    segment: int
    segments: int
    key: bytes


class Table:
    def __init__(self, segments: int) -> None:
        self.segments = max(1, min(segments, MAX_SEGMENTS))
        self.key = os.urandom(KEY_BYTES)
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        self.fd = os.memfd_create("wildboar-clients", flags)
        try:
            os.ftruncate(self.fd, self.segments * SEGMENT_BYTES)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, seals)
        except OSError:
            os.close(self.fd)
            raise
        self._free = list(range(self.segments))

    def take(self) -> Share | None:
        """A free segment for a new worker (the lowest), or None when all are taken."""
        if not self._free:
            return None
        self._free.sort()
        return Share(self.fd, self._free.pop(0), self.segments, self.key)

    def give_back(self, segment: int) -> None:
        """The worker of ``segment`` is gone: zero it (its sessions ended with it) and let
        the next worker have it."""
        if segment in self._free or not 0 <= segment < self.segments:
            return
        try:
            _zero(self.fd, segment * SEGMENT_BYTES, SEGMENT_BYTES)
        except OSError:
            return  # never handed out again: a stale segment must not count for another
        self._free.append(segment)

    def close(self) -> None:
        os.close(self.fd)


def _zero(fd: int, offset: int, length: int) -> None:
    """Zero a range by freeing its pages (a hole reads as zeros), else by writing zeros."""
    libc = ctypes.CDLL(None, use_errno=True)
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    done = libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length))
    if done != 0:
        os.pwrite(fd, bytes(length), offset)
