"""Signals, with their sender, taken by a thread and acted on by the main loop.

Owns: the signals the supervisor handles (TERM, INT, HUP, TTIN, TTOU, CHLD): they are blocked
in every thread, and one thread takes them with ``sigwaitinfo`` (which says who sent each:
``si_pid``, ``si_uid``), queues ``Received`` values and wakes the main loop's ``select``
through a socketpair.
Must not know: what a signal means, or whom to believe (the arbiter decides).
SECURITY: nothing runs in a signal handler; the queue is bounded (``MAX_PENDING``, further
signals are counted as dropped, never block the thread). Blocking must happen before any
other thread starts (``block``), so that no thread takes a signal past the queue; the
workers are spawned with an empty signal mask (``workers.spawn``).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

HANDLED: Final = frozenset(
    {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGHUP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGCHLD,
    }
)
#: Signals waiting for the loop; a flood beyond this is dropped (and counted).
MAX_PENDING: Final = 1024


@dataclass(frozen=True)
class Received:
    signum: int
    pid: int  # the sender's (si_pid); 0 from the kernel (a terminal's Ctrl-C, a child's CHLD)
    uid: int
    #: What the inbox's ``classify`` said of the sender as the signal arrived (the
    #: arbiter's words: "descendant", "other", "gone"); "" for the kernel's signals.
    sender: str = ""


def block() -> None:
    """Block the handled signals in this thread and in every thread started after it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


class SignalInbox:
    """A queue of received signals and a descriptor that becomes readable with it."""

    def __init__(self, classify: Callable[[int], str] = lambda pid: "other") -> None:
        """``classify(pid)``: what the sender is to the supervisor, asked by the thread the
        moment a signal arrives (a sender that exits at once may be gone by the time the
        loop looks)."""
        self._classify = classify
        self._pending: deque[Received] = deque()
        self._lock = threading.Lock()
        self.dropped = 0
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def install(self) -> None:
        block()
        thread = threading.Thread(target=self._wait, name="signals", daemon=True)
        thread.start()

    def _wait(self) -> None:
        while True:
            info = signal.sigwaitinfo(HANDLED)
            pid = info.si_pid
            asked = info.si_signo != signal.SIGCHLD and pid > 0
            sender = self._classify(pid) if asked else ""
            self._record(Received(info.si_signo, pid, info.si_uid, sender))

    def _record(self, received: Received) -> None:
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self.dropped += 1
                return
            self._pending.append(received)
        with contextlib.suppress(BlockingIOError):  # a wake-up is waiting already
            self._writer.send(b"\0")

    def take(self) -> list[Received]:
        """Every signal received since the last call, oldest first."""
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            taken = list(self._pending)
            self._pending.clear()
        return taken
