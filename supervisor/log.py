"""The supervisor's log: one JSON object per line on stderr, written by a thread of its own.

Owns: the record format ``{"time", "level", "event", "component": "supervisor", ...fields}``
(``time`` is UTC, RFC 3339 with milliseconds), and the one writer of stderr: a bounded queue
of whole lines emptied by a daemon thread. The workers' output (each worker writes to a pipe
of its own, see ``workers.py``) reaches stderr through the same queue.
Must not know: any logging framework (none is used), or journald (systemd captures stderr).
SECURITY: a stderr that nobody reads (a full pipe, a stopped terminal) must never stop the
supervisor's loop: ``log`` and ``forward`` only append to the queue and never block; when
``QUEUE_BYTES`` are waiting, further lines are dropped and counted, and the writer reports
the count (``log_lines_dropped``) as soon as stderr takes data again. Fields come from the
supervisor's state and from validated worker messages; ``json.dumps`` escapes control
characters (and everything outside ASCII), so one record is always exactly one line.

Limits: QUEUE_BYTES 1 MiB of lines waiting for stderr; FLUSH_AT_EXIT 2 s spent writing what
is left when the supervisor exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Final, Literal

Level = Literal["info", "warning", "error"]
# Workers log to the same stderr, some with the same event names (worker_ready): say whose.
COMPONENT: Final = {"component": "supervisor"}
QUEUE_BYTES: Final = 1 << 20
FLUSH_AT_EXIT: Final = 2.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_record(level: Level, event: str, fields: dict[str, object]) -> bytes:
    record: dict[str, object] = {"time": _now(), "level": level, "event": event, **COMPONENT}
    record.update(fields)
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()


class Writer:
    """Lines for a descriptor, queued without blocking and written by a daemon thread.

    Before ``start`` (start-up, when a line is the one thing to say) a line is written at
    once, as the caller would have done."""

    def __init__(self, fd: int = 2, limit: int = QUEUE_BYTES) -> None:
        self._fd = fd
        self._limit = limit
        self._lines: deque[bytes] = deque()
        self._queued = 0
        self._dropped = 0
        self._busy = False  # the thread is writing lines it took from the queue
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="log writer", daemon=True)
            self._thread.start()

    def put(self, line: bytes) -> None:
        if self._thread is None:
            self._write(line)
            return
        with self._changed:
            if self._queued + len(line) > self._limit:
                self._dropped += 1
                return
            self._lines.append(line)
            self._queued += len(line)
            self._changed.notify()

    def dropped(self) -> int:
        with self._changed:
            return self._dropped

    def flush(self, timeout: float = FLUSH_AT_EXIT) -> bool:
        """Wait (bounded) until everything queued was written; whether it was."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._lines and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._lines))
                data = b"".join(self._lines)
                self._lines.clear()
                self._queued = 0
                dropped, self._dropped = self._dropped, 0
                self._busy = True
            if dropped:
                data = _dropped_record(dropped) + data
            self._write(data)
            with self._changed:
                self._busy = False
                self._changed.notify_all()

    def _write(self, data: bytes) -> None:
        """Blocking, in the thread: a closed or broken stderr never stops the supervisor."""
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(self._fd, data) :]


def _dropped_record(count: int) -> bytes:
    fields = {"lines": count, "reason": "stderr did not take them in time"}
    return format_record("warning", "log_lines_dropped", fields)


WRITER: Final = Writer()


def log(event: str, level: Level = "info", /, **fields: object) -> None:
    """Queue one record for stderr; never blocks."""
    WRITER.put(format_record(level, event, fields))


def forward(line: bytes) -> None:
    """Queue one line a worker wrote (it ends in a newline); never blocks."""
    WRITER.put(line)
