"""Structured logs of a worker: journald fields under systemd, JSON lines otherwise.

Owns: the ``wildboar`` logger's handler and the record format. Every record is an event
name plus fields; the UUID-URNs of the server (worker), connection, transaction and message
it concerns are fields like any other, so logs can be joined with the message records.
Must not know: sessions or the SMTP core.
Security: fields are serialised (JSON or journald key=value), never interpolated into a
format string, so client-controlled values (HELO names, addresses) cannot forge records.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import msgspec

LOGGER = logging.getLogger("wildboar")
_encoder = msgspec.json.Encoder()


class JsonLines(logging.Formatter):
    """One JSON object per line: time, level, event, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return _encoder.encode(entry).decode()


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler  # noqa: PLC0415 (optional at run time)
    except ImportError:
        return None
    return JournalHandler(SYSLOG_IDENTIFIER="wildboar")  # type: ignore[no-any-return]


class _Lines:
    """JSON lines to a file descriptor, one ``write`` per event-loop iteration: a busy
    worker logs several records per message, and a write per record would cost more than
    the message itself. Outside a running loop every line is written at once."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, line: bytes) -> None:
        self._pending.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        data = b"".join(self._pending)
        self._pending.clear()
        with contextlib.suppress(OSError):  # a closed stderr must not stop the mail
            while data:
                data = data[os.write(self._fd, data) :]


_lines: _Lines | None = None
#: Receivers of these events besides the log (the AMQP ``events`` exchange).
FORWARDED = frozenset(
    {
        "connection_open",
        "connection_close",
        "message_accepted",
        "message_deferred",
        "message_refused",
        "session_timeout",
    }
)
_sinks: list[Callable[[str, dict[str, Any]], None]] = []


def add_sink(sink: Callable[[str, dict[str, Any]], None]) -> None:
    """Also hand every ``FORWARDED`` event to ``sink(event, fields)``; it must not block."""
    _sinks.append(sink)


def flush() -> None:
    if _lines is not None:
        _lines.flush()


def setup(log_format: str, level: int = logging.INFO) -> None:
    """``journal`` (python-systemd), ``json`` (stderr), or ``auto``: journal when stderr
    is connected to the journal (systemd sets ``JOURNAL_STREAM``), JSON otherwise."""
    handler: logging.Handler | None = None
    if log_format == "journal" or (log_format == "auto" and os.environ.get("JOURNAL_STREAM")):
        handler = _journal_handler()
    global _lines  # noqa: PLW0603 (one log destination per process)
    _lines = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLines())
        _lines = _Lines(sys.stderr.fileno())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False


def log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields``; journald gets them as upper-case fields."""
    if _sinks and event in FORWARDED:
        for sink in _sinks:
            sink(event, fields)
    if not LOGGER.isEnabledFor(level):
        return
    if _lines is not None:
        entry: dict[str, Any] = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(),
            "level": logging.getLevelName(level).lower(),
            "event": event,
            **fields,
        }
        _lines.write(_encoder.encode(entry) + b"\n")
        return
    journal = {key.upper(): _text(value) for key, value in fields.items()}
    LOGGER.log(level, event, extra={"fields": fields, **journal})


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _encoder.encode(value).decode()
