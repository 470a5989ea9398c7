"""Message content while it arrives, and the memory that deliveries may hold.

Owns: ``Content``, one message's content as it comes in: in memory up to a threshold
(``sessions.content_memory``), the rest in an unnamed temp file (``O_TMPFILE``: it has no
name, no other process can open it, and it is gone when closed or when the worker dies);
and ``Budget``, the octets of content all deliveries of a worker may hold at once
(``sessions.delivery_memory``), waited for in arrival order.
Must not know: SMTP, sessions, handoffs.
SECURITY: a client decides how much content arrives and how fast. Whatever it sends, a
session holds at most ``content_memory`` octets (plus one read) in memory until the end of
data; a message only comes back into memory whole for its handoff, under the budget. A
write that fails (a full disk) is kept as the content's ``error``: the rest of the content
is read and dropped, and the end of data gets a 4xx, never a 250.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import tempfile
from typing import IO, Final

#: Read back a spilled file in pieces of this size.
READ_CHUNK: Final = 1 << 20


def content_directory(preferred: str) -> str:
    """Where spilled content goes: ``preferred`` (the spool's ``tmp/``, on the disk that
    holds the mail) if it is a directory this process can write to, else the system's
    temporary directory (``TMPDIR``; private to the service under systemd)."""
    if os.path.isdir(preferred) and os.access(preferred, os.W_OK | os.X_OK):
        return preferred
    return tempfile.gettempdir()


class Content:
    """One message's content, in memory up to ``memory`` octets, the rest on disk."""

    __slots__ = ("_directory", "_file", "buffer", "error", "memory", "size")

    def __init__(self, directory: str, memory: int) -> None:
        self._directory = directory
        self.memory = memory
        self._file: IO[bytes] | None = None
        self.buffer = bytearray()
        self.size = 0
        self.error: OSError | None = None

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def append(self, data: bytes) -> None:
        self.size += len(data)
        if self.error is not None:
            return
        self.buffer += data
        if len(self.buffer) > self.memory:
            self._spill()

    def _spill(self) -> None:
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(dir=self._directory, buffering=0)  # noqa: SIM115 (open for the whole message)
            self._file.write(self.buffer)
        except OSError as error:
            self.error = error
            self._close_file()
        self.buffer.clear()

    def read(self) -> bytes:
        """The whole content (blocking: in a thread when ``spilled``); ``OSError``."""
        if self.error is not None:
            raise self.error
        if self._file is None:
            return bytes(self.buffer)
        self._file.seek(0)
        pieces = []
        while piece := self._file.read(READ_CHUNK):
            pieces.append(piece)
        pieces.append(bytes(self.buffer))
        return b"".join(pieces)

    def clear(self) -> None:
        self._close_file()
        self.buffer.clear()
        self.size = 0
        self.error = None

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class Budget:
    """Octets that deliveries may hold, taken in arrival order (no overtaking, so a large
    message is not starved by small ones); one larger than the whole budget takes all of
    it, alone."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.available = total
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, octets: int) -> int:
        """Wait until ``octets`` (at most the total) are free; the amount taken."""
        octets = min(octets, self.total)
        if not self._waiting and self.available >= octets:
            self.available -= octets
            return octets
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((octets, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(octets)  # granted just as it was cancelled
            else:
                self._waiting = collections.deque(w for w in self._waiting if w[1] is not future)
                self._grant()
            raise
        return octets

    def release(self, octets: int) -> None:
        self.available += octets
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.available >= self._waiting[0][0]:
            octets, future = self._waiting.popleft()
            if future.done():
                continue
            self.available -= octets
            future.set_result(None)
