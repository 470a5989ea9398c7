"""Signals, recorded by the handlers and acted on by the main loop.

Owns: the handlers for TERM, INT, HUP, TTIN, TTOU and CHLD, which only append the signal
number to a queue, and the wake-up socket (``signal.set_wakeup_fd``) that makes the main loop's
``select`` return when a signal arrives.
Must not know: what a signal means (the arbiter decides).
SECURITY: handlers do no I/O and take no lock: nothing can re-enter the main loop's state.
"""

from __future__ import annotations

import signal
import socket
from collections import deque
from types import FrameType
from typing import Final

HANDLED: Final = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


class SignalInbox:
    """A queue of received signal numbers and a descriptor that becomes readable with it."""

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def install(self) -> None:
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in HANDLED:
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signum)

    def take(self) -> list[int]:
        """Every signal received since the last call, oldest first."""
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        taken: list[int] = []
        while self._pending:
            taken.append(self._pending.popleft())
        return taken
