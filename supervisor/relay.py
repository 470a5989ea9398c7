"""Keeping root's terminal away from the unprivileged processes.

Owns: the split done when root starts the supervisor from a terminal (a controlling terminal,
or a terminal on stdin, stdout or stderr): the process forks; the child goes on as the
supervisor in a session of its own (``setsid``: no controlling terminal), with ``/dev/null``
as stdin and a pipe as stdout and stderr wherever they were terminals; the parent, still root,
stays behind as the relay and does nothing else: it copies the pipe to the terminal with
control and format characters escaped, passes the signals an operator sends it (INT, TERM,
HUP, TTIN, TTOU, QUIT) on to the supervisor, and exits with the supervisor's status.
Must not know: what the supervisor does, what the lines mean.
SECURITY: with the terminal in reach, a process of the unprivileged user could push input
into root's shell (``TIOCSTI``) or send it escape sequences that make the terminal answer. After
the split no process of that user has the terminal as controlling terminal or holds a
descriptor of it. The relay (root, for as long as the server runs from that terminal) reads
bytes from a pipe, writes escaped text, sends signals to one pid and waits for it: it parses
nothing and opens nothing. Started without a terminal (systemd, a service manager, a pipe),
there is no relay and nothing of this runs.

Limits: MAX_LINE 16 KiB held for one line (longer ones are cut), READ_CHUNK 64 KiB a read.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
from typing import Final, NoReturn

MAX_LINE: Final = 16 * 1024
READ_CHUNK: Final = 64 * 1024
FORWARDED: Final = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGQUIT,
)
STANDARD: Final = (0, 1, 2)
# C0 but TAB and LF, DEL, C1, and the Unicode format characters that reorder or hide text
# (bidi embeddings and isolates, zero-width characters, the byte-order mark), separators.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(data: bytes) -> bytes:
    """``data`` as text a terminal only displays: invalid UTF-8 and every character that
    controls a terminal or reorders text written as ``\\xNN`` / ``\\uNNNN``."""
    return _UNSAFE.sub(_escape, data.decode("utf-8", "backslashreplace")).encode()


def _has_controlling_terminal() -> bool:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def terminals() -> list[int]:
    """The standard descriptors that are terminals."""
    return [fd for fd in STANDARD if os.isatty(fd)]


def needed() -> bool:
    """Root with a terminal within reach: the supervisor must not keep it."""
    return os.geteuid() == 0 and (bool(terminals()) or _has_controlling_terminal())


def split() -> None:
    """Fork; return in the child (the supervisor from now on); never return in the parent."""
    ttys = terminals()
    reader, writer = os.pipe2(os.O_CLOEXEC)
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)  # none is lost before the relay runs
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        _become_supervisor(writer, ttys)
        return
    os.close(writer)
    _relay(pid, reader, output=next((fd for fd in (2, 1) if fd in ttys), -1))


def _become_supervisor(writer: int, ttys: list[int]) -> None:
    os.setsid()
    for fd in ttys:
        if fd == 0:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        else:
            os.dup2(writer, fd)
    os.close(writer)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)


class _Relay:
    def __init__(self, child: int, reader: int, output: int) -> None:
        self.child = child
        self.reader = reader
        self.output = output
        self.partial = b""
        self.wake_reader, self.wake_writer = socket.socketpair()
        self.wake_reader.setblocking(False)
        self.wake_writer.setblocking(False)
        self.pending: list[int] = []

    def install(self) -> None:
        signal.set_wakeup_fd(self.wake_writer.fileno(), warn_on_full_buffer=False)
        for signum in (*FORWARDED, signal.SIGCHLD):
            signal.signal(signum, lambda number, frame: self.pending.append(number))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)

    def run(self) -> int:
        while True:
            watched = [self.wake_reader.fileno()] + ([self.reader] if self.reader >= 0 else [])
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select(watched, [], [], 1.0)
                if self.reader in ready:
                    self._copy()
            self._forward_signals()
            status = self._reaped()
            if status is not None:
                while self.reader >= 0:
                    self._copy()  # the supervisor's last lines
                return status

    def _copy(self) -> None:
        try:
            data = os.read(self.reader, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._write(self.partial + (b"\n" if self.partial else b""))
            os.close(self.reader)
            self.reader = -1
            return
        lines, newline, self.partial = (self.partial + data).rpartition(b"\n")
        self._write(lines + newline)
        if len(self.partial) > MAX_LINE:
            self._write(self.partial + b"\n")
            self.partial = b""

    def _write(self, data: bytes) -> None:
        if not data or self.output < 0:
            return
        data = terminal_safe(data)
        with contextlib.suppress(OSError):  # a hung-up terminal: the relay only drains
            while data:
                data = data[os.write(self.output, data) :]

    def _forward_signals(self) -> None:
        with contextlib.suppress(OSError):
            while self.wake_reader.recv(4096):
                pass
        pending, self.pending = self.pending, []
        for signum in pending:
            if signum != signal.SIGCHLD:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child, signal.SIGTERM if signum == signal.SIGQUIT else signum)

    def _reaped(self) -> int | None:
        pid, status = os.waitpid(self.child, os.WNOHANG)
        if not pid:
            return None
        code = os.waitstatus_to_exitcode(status)
        return code if code >= 0 else 128 - code


def _relay(child: int, reader: int, output: int) -> NoReturn:
    relay = _Relay(child, reader, output)
    relay.install()
    status = relay.run()
    os._exit(status)
