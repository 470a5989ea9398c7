"""One worker process, as the supervisor sees it.

Owns: ``Worker`` (its slot index, process, control channel, output pipe, phase and last
report), starting one (``spawn``: ``WORKER_COMMAND... --control-fd N``, then the ``sockets``
message), reading what it writes, and killing one.
Must not know: the policy (when to spawn, restart, drain or kill: the arbiter decides).
SECURITY: a worker starts with ``posix_spawn`` in a session of its own (``setsid``: no
controlling terminal), every signal unblocked and at its default, and exactly these
descriptors: ``/dev/null`` as stdin, a pipe of its own as stdout and stderr (read by the
supervisor, so no worker ever holds the supervisor's terminal, journal stream or log file),
and its end of the control channel; the listening sockets (the shared table of
per-client counts, ``table.py``, and the sealed copies of the ``--pass-file`` files)
reach it only over that channel
(every other descriptor of the supervisor is close-on-exec). Its environment is the
allow-list given by the caller. Its pid is the one ``posix_spawn`` returned, never the one
it claims. What it writes is cut into lines of at most ``MAX_LINE`` octets, read at most
``READ_CHUNK`` octets a wake-up, and queued for stderr without blocking (``log.forward``).
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from . import control
from .log import forward
from .signals import HANDLED
from .sockets import Listener
from .table import Share

#: A line of worker output longer than this is cut (and ends with a newline added).
MAX_LINE: Final = 16 * 1024
#: Read at most this much of one worker's output per wake-up of the loop.
READ_CHUNK: Final = 64 * 1024
#: Reset to their default action in a new worker; none of them blocked.
#: (The supervisor's own, and what Python ignores at start.)
DEFAULT_SIGNALS: Final = (*sorted(HANDLED), signal.SIGPIPE, signal.SIGXFSZ)


class Process:
    """A child started by ``posix_spawn``: ``poll`` reaps it (``returncode`` as ``Popen``
    has it: negative for a signal), ``kill`` sends SIGKILL unless it was reaped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone all the same
                self.returncode = -signal.SIGKILL
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)


class Phase(enum.Enum):
    BOOTING = "booting"  # spawned, no "ready" yet
    READY = "ready"  # accepting connections, sends heartbeats
    DRAINING = "draining"  # told to drain (or said it is stopping); will exit


@dataclass(eq=False)
class Worker:
    index: int  # the slot, 1..N: "worker" in the sockets message
    seq: int  # spawn order, for "the newest worker"
    generation: int  # bumped by HUP: older generations are replaced
    process: Process
    channel: socket.socket
    output: int  # the read end of its stdout/stderr pipe; -1 once closed
    spawned_at: float
    phase: Phase = Phase.BOOTING
    ready_at: float | None = None
    last_heartbeat: float = 0.0
    sessions: int = 0
    messages: int = 0
    kill_at: float | None = None  # when draining: SIGKILL after this moment
    drain_timeout: float | None = None  # its own, from its "ready"; else --drain-timeout
    handoff_timeout: float | None = None  # how long it lets handoffs finish after draining
    killed: bool = False
    stopped_accepting: bool = False  # it said "stopping": its listeners are closed
    channel_open: bool = field(default=True)
    partial: bytearray = field(default_factory=bytearray)  # output after its last newline
    segment: int | None = None  # its segment of the shared table of per-client counts

    @property
    def pid(self) -> int:
        return self.process.pid

    def fields(self) -> dict[str, object]:
        return {"worker": self.index, "pid": self.pid}


def describe_status(returncode: int) -> str:
    """``exit 3`` or ``signal SIGKILL``, from a Popen return code."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        return f"signal {signal.Signals(-returncode).name}"
    except ValueError:
        return f"signal {-returncode}"


def _spawn_process(
    command: Sequence[str], control_fd: int, output: int, env: Mapping[str, str]
) -> int:
    argv = [*command, "--control-fd", str(control_fd)]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, output, 1),
        (os.POSIX_SPAWN_DUP2, output, 2),
    ]
    os.set_inheritable(control_fd, True)
    return os.posix_spawnp(
        command[0],
        argv,
        dict(env),
        file_actions=actions,
        setsid=True,
        setsigmask=(),
        setsigdef=DEFAULT_SIGNALS,
    )


def spawn(
    command: Sequence[str],
    listeners: Sequence[Listener],
    env: Mapping[str, str],
    *,
    index: int,
    seq: int,
    generation: int,
    now: float,
    journal: bool = False,
    table: Share | None = None,
    files: Sequence[tuple[str, int]] = (),
) -> Worker:
    """Start one worker and send it the sockets; ``OSError`` if the command cannot start.

    ``journal``: the supervisor's stderr is the journal stream, and the worker's pipe leads
    there: its ``JOURNAL_STREAM`` names the pipe (systemd.exec(5)), so that it logs to the
    journal natively as it would under systemd directly."""
    ours, theirs = control.socketpair()
    reader, writer = os.pipe2(os.O_CLOEXEC)
    try:
        if journal:
            status = os.fstat(writer)
            env = {**env, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        pid = _spawn_process(command, theirs.fileno(), writer, env)
    except OSError:
        ours.close()
        os.close(reader)
        raise
    finally:
        theirs.close()
        os.close(writer)
    os.set_blocking(reader, False)
    worker = Worker(index, seq, generation, Process(pid), ours, reader, now)
    worker.segment = table.segment if table is not None else None
    try:
        names = [listener.name for listener in listeners]
        fds = [listener.sock.fileno() for listener in listeners]
        control.send_sockets(ours, names, fds, index, _descriptors(table, files))
    except OSError:
        pass  # it died at once: it is reaped like any other, and counts as a boot failure
    return worker


def _descriptors(table: Share | None, files: Sequence[tuple[str, int]]) -> list[control.Descriptor]:
    """The descriptors a worker gets after its sockets: the shared table, if there is one,
    then each passed file (``file.N``, its path in the message)."""
    made = [
        control.Descriptor(f"file.{n}", fd, {"path": path}) for n, (path, fd) in enumerate(files)
    ]
    if table is None:
        return made
    about = {"segment": table.segment, "segments": table.segments, "key": table.key.hex()}
    return [control.Descriptor("clients", table.fd, about), *made]


def read_output(worker: Worker) -> bool:
    """Forward what the worker wrote, line by line; False at end of file (it closed it)."""
    try:
        data = os.read(worker.output, READ_CHUNK)
    except BlockingIOError:
        return True
    except OSError:
        data = b""
    if not data:
        if worker.partial:
            forward(bytes(worker.partial) + b"\n")
            worker.partial.clear()
        return False
    _forward_lines(worker.partial, data)
    return True


def _forward_lines(partial: bytearray, data: bytes) -> None:
    partial += data
    end = partial.rfind(b"\n") + 1
    if end:
        for line in bytes(partial[: end - 1]).split(b"\n"):
            forward(line + b"\n")
        del partial[:end]
    while len(partial) > MAX_LINE:
        forward(bytes(partial[:MAX_LINE]) + b"\n")
        del partial[:MAX_LINE]


def close_output(worker: Worker) -> None:
    if worker.output >= 0:
        os.close(worker.output)
        worker.output = -1


def kill(worker: Worker) -> None:
    """SIGKILL, once; reaping happens in the main loop."""
    worker.killed = True
    with contextlib.suppress(ProcessLookupError):
        worker.process.kill()
