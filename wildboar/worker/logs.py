"""Structured logs of a worker: journald fields under systemd, JSON lines otherwise.

Owns: the ``wildboar`` logger's handler and the record format. Every record is an event
name plus fields; the UUID-URNs of the server (worker), connection, transaction and message
it concerns are fields like any other, so logs can be joined with the message records.
Must not know: sessions or the SMTP core.
Security: fields are serialised (JSON or journald key=value), never interpolated into a
format string, so client-controlled values (HELO names, addresses) cannot forge records.
Logging never blocks the event loop: stderr is the worker's own pipe to the supervisor
(made non-blocking), and journald gets datagrams from a non-blocking socket; when either
does not take a record at once, at most ``MAX_PENDING`` octets of JSON lines wait (for
journald: none), further records are dropped and counted, and a ``log_lines_dropped``
record says how many once a write succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import re
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any, Final

import msgspec

LOGGER = logging.getLogger("wildboar")
# A field of a type msgspec does not know (a path, an exception) is logged as its str().
_encoder = msgspec.json.Encoder(enc_hook=str)


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


# Fields journald or its tools give a meaning of their own: ours would clash with them.
# https://www.freedesktop.org/software/systemd/man/latest/systemd.journal-fields.html
JOURNAL_RESERVED = frozenset(
    {
        "MESSAGE",
        "MESSAGE_ID",
        "PRIORITY",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "ERRNO",
        "INVOCATION_ID",
        "USER_INVOCATION_ID",
        "SYSLOG_FACILITY",
        "SYSLOG_IDENTIFIER",
        "SYSLOG_PID",
        "SYSLOG_TIMESTAMP",
        "SYSLOG_RAW",
        "DOCUMENTATION",
        "TID",
        "UNIT",
        "USER_UNIT",
        "EVENT",
    }
)
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_NOT_FIELD_NAME = re.compile(r"[^A-Z0-9_]")
# A value printed bare in MESSAGE: no space, quote, equals sign, backslash or control.
_BARE = re.compile(r"[^\s\"=\\\x00-\x1f\x7f]+")


def journal_field(key: str) -> str:
    """The journald name of a log field: upper case, only A-Z, 0-9 and ``_``, not starting
    with ``_`` or a digit (journald drops such fields), prefixed ``WILDBOAR_`` where it
    would clash with a field journald reserves (``message`` becomes ``WILDBOAR_MESSAGE``)."""
    name = _NOT_FIELD_NAME.sub("_", key.upper())
    if not name or name[0] in "_0123456789" or name in JOURNAL_RESERVED:
        name = "WILDBOAR_" + name.lstrip("_")
    return name


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _encoder.encode(value).decode()


def journal_message(event: str, fields: dict[str, Any]) -> str:
    """``MESSAGE``: the event, then ``key=value`` for every field, so that ``journalctl``
    shows what happened without ``-o json``. A value that is not a bare token (a quoted
    local part, a reply with spaces) is a JSON string: a client cannot forge a field."""
    parts = [event]
    for key, value in fields.items():
        text = _text(value)
        if not _BARE.fullmatch(text):
            text = _encoder.encode(text).decode()
        parts.append(f"{key}={text}")
    return " ".join(parts)


class JournalFields(logging.Handler):
    """Each record to journald (python-systemd's native protocol): ``MESSAGE`` (see
    ``journal_message``), ``EVENT``, ``PRIORITY``, ``SYSLOG_IDENTIFIER=wildboar`` and one
    field per log field (see ``journal_field``), so ``journalctl EVENT=message_accepted``
    or ``journalctl CONNECTION=urn:uuid:...`` select records."""

    def __init__(self, send: Callable[..., None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event = record.getMessage()
            fields: dict[str, Any] = getattr(record, "fields", {})
            level = record.levelno
            priority = _SYSLOG_PRIORITY.get(level, 2 if level > logging.ERROR else 7)
            entries = [
                f"MESSAGE={journal_message(event, fields)}",
                f"EVENT={event}",
                f"PRIORITY={priority}",
                "SYSLOG_IDENTIFIER=wildboar",
            ]
            entries += [f"{journal_field(k)}={_text(v)}" for k, v in fields.items()]
            self._send(*entries)
        except OSError:
            # journald is gone or refuses: keep the record, as a JSON line on stderr
            # (which systemd also connects to the journal, through a stream).
            write_line(JsonLines().format(record).encode() + b"\n")
        except Exception:  # logging's contract: never raise into the caller
            self.handleError(record)


#: Where journald takes native-protocol entries (systemd's "Native Journal Protocol").
JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: JSON lines waiting for stderr beyond which further records are dropped (and counted).
MAX_PENDING: Final = 1 << 20
#: How soon a write that stderr did not take is tried again.
RETRY_AFTER: Final = 0.05


def journal_datagram(entries: tuple[str, ...]) -> bytes:
    """One native-protocol entry: ``KEY=value`` lines; a value holding a newline is sent
    as ``KEY``, newline, its length (64-bit little endian), the value, newline."""
    parts: list[bytes] = []
    for entry in entries:
        key, _, value = entry.partition("=")
        data = value.encode("utf-8", "surrogateescape")
        if b"\n" in data:
            parts.append(key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(entry.encode("utf-8", "surrogateescape") + b"\n")
    return b"".join(parts)


class JournalSocket:
    """Sends entries to journald without ever blocking: a datagram journald does not take
    at once (its queue is full) is dropped and counted, and the count is sent as an entry
    of its own with the next datagram it takes. Other errors (journald gone, an entry too
    large for one datagram) are raised, for the handler to fall back to stderr."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self._path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._socket.setblocking(False)
        self.dropped = 0

    def __call__(self, *entries: str) -> None:
        try:
            self._socket.sendto(journal_datagram(entries), self._path)
        except BlockingIOError:
            self.dropped += 1
            return
        if self.dropped:
            count, self.dropped = self.dropped, 0
            self(
                f"MESSAGE=log_lines_dropped lines={count}",
                "EVENT=log_lines_dropped",
                "PRIORITY=4",
                "SYSLOG_IDENTIFIER=wildboar",
                f"LINES={count}",
            )


def _journal_handler() -> tuple[logging.Handler | None, str]:
    """The journald handler, or None and why not."""
    if not os.path.exists(JOURNAL_SOCKET):
        return None, f"{JOURNAL_SOCKET} does not exist (journald is not running)"
    return JournalFields(JournalSocket()), ""


def stderr_is_journal() -> bool:
    """Whether stderr is the stream systemd connected to the journal. systemd puts its
    device and inode in ``JOURNAL_STREAM``; a redirection (``2>file``) in the unit or a
    wrapper gives stderr another inode, and JSON lines are right again."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(2)
        return (int(device), int(inode)) == (status.st_dev, status.st_ino)
    except (ValueError, OSError):
        return False


class _Lines:
    """JSON lines to a file descriptor, one ``write`` per event-loop iteration: a busy
    worker logs several records per message, and a write per record would cost more than
    the message itself. Outside a running loop every line is written at once.

    On a pipe (the supervisor's: ``nonblocking``) a write never waits: what the pipe does
    not take stays pending, at most ``MAX_PENDING`` octets (whole lines are dropped and
    counted beyond), and is tried again ``RETRY_AFTER`` seconds later."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = bytearray()
        self._scheduled = False
        self.dropped = 0

    def write(self, line: bytes) -> None:
        if len(self._pending) + len(line) > MAX_PENDING:
            self.dropped += 1
            return
        self._pending += line
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
        try:
            while self._pending:
                del self._pending[: os.write(self._fd, self._pending)]
        except BlockingIOError:
            self._retry_later()
            return
        except OSError:  # a closed stderr must not stop the mail
            self._pending.clear()
            return
        if self.dropped:
            count, self.dropped = self.dropped, 0
            self.write(_record("log_lines_dropped", logging.WARNING, {"lines": count}))

    def _retry_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to wait in: the lines wait for the next write
        self._scheduled = True
        loop.call_later(RETRY_AFTER, self.flush)


def _record(event: str, level: int, fields: dict[str, Any]) -> bytes:
    entry: dict[str, Any] = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(),
        "level": logging.getLevelName(level).lower(),
        "event": event,
        **fields,
    }
    return _encoder.encode(entry) + b"\n"


class _LinesHandler(logging.Handler):
    """Records of other loggers (``wildboar.handoff``) into the same lines."""

    def __init__(self, lines: _Lines) -> None:
        super().__init__()
        self._lines = lines
        self.setFormatter(JsonLines())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.write(self.format(record).encode() + b"\n")
        except Exception:  # logging's contract: never raise into the caller
            self.handleError(record)


def _make_nonblocking_if_pipe(fd: int) -> None:
    """The supervisor gives each worker a pipe of its own as stderr: never wait on it. Any
    other stderr (a terminal, a file, when run by hand) is shared: left as it is."""
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.set_blocking(fd, False)


def write_line(line: bytes) -> None:
    """One line to stderr, through the pending lines when they exist; never blocks."""
    if _stderr is not None:
        _stderr.write(line)
        return
    with contextlib.suppress(OSError):
        os.write(2, line)


#: stderr's lines, once ``setup`` ran.
_stderr: _Lines | None = None
#: The same, when records are JSON lines (not journald): ``log`` writes them directly.
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
    if _stderr is not None:
        _stderr.flush()


def setup(log_format: str, level: int = logging.INFO) -> None:
    """``journal`` (native protocol), ``json`` (stderr), or ``auto``: journal when stderr
    is connected to the journal (``stderr_is_journal``), JSON otherwise."""
    handler: logging.Handler | None = None
    why_not = ""
    if log_format == "journal" or (log_format == "auto" and stderr_is_journal()):
        handler, why_not = _journal_handler()
    global _lines, _stderr  # noqa: PLW0603 (one log destination per process)
    _make_nonblocking_if_pipe(2)
    _stderr = _Lines(2)
    _lines = None
    if handler is None:
        handler = _LinesHandler(_stderr)
        _lines = _stderr
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    if why_not:  # asked for the journal and cannot have it: say so, in the JSON lines
        log("journal_unavailable", logging.WARNING, why=why_not)


def log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with ``fields``; journald gets them as fields (``JournalFields``)."""
    if _sinks and event in FORWARDED:
        for sink in _sinks:
            sink(event, fields)
    if not LOGGER.isEnabledFor(level):
        return
    if _lines is not None:
        _lines.write(_record(event, level, fields))
        return
    LOGGER.log(level, event, extra={"fields": fields})
