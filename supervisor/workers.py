"""One worker process, as the supervisor sees it.

Owns: ``Worker`` (its slot index, process, control channel, phase and last report), starting one
(``spawn``: ``WORKER_COMMAND... --control-fd N`` with only that descriptor inherited, then the
``sockets`` message), and killing one.
Must not know: the policy (when to spawn, restart, drain or kill: the arbiter decides).
SECURITY: a worker inherits exactly one descriptor, its end of the control channel
(``close_fds`` with ``pass_fds``); the listening sockets reach it only over that channel. Its
environment is the supervisor's minus systemd's variables (given by the caller). Its pid is
the one ``Popen`` returned, never the one it claims.
"""

from __future__ import annotations

import contextlib
import enum
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import control
from .sockets import Listener


class Phase(enum.Enum):
    BOOTING = "booting"  # spawned, no "ready" yet
    READY = "ready"  # accepting connections, sends heartbeats
    DRAINING = "draining"  # told to drain (or said it is stopping); will exit


@dataclass(eq=False)
class Worker:
    index: int  # the slot, 1..N: "worker" in the sockets message
    seq: int  # spawn order, for "the newest worker"
    generation: int  # bumped by HUP: older generations are replaced
    process: subprocess.Popen[bytes]
    channel: socket.socket
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


def spawn(
    command: Sequence[str],
    listeners: Sequence[Listener],
    env: Mapping[str, str],
    *,
    index: int,
    seq: int,
    generation: int,
    now: float,
) -> Worker:
    """Start one worker and send it the sockets; ``OSError`` if the command cannot start."""
    ours, theirs = control.socketpair()
    try:
        fd = theirs.fileno()
        argv = [*command, "--control-fd", str(fd)]
        process = subprocess.Popen(argv, pass_fds=(fd,), env=dict(env), stdin=subprocess.DEVNULL)
    except OSError:
        ours.close()
        raise
    finally:
        theirs.close()
    worker = Worker(index, seq, generation, process, ours, now)
    try:
        names = [listener.name for listener in listeners]
        control.send_sockets(ours, names, [listener.sock.fileno() for listener in listeners], index)
    except OSError:
        pass  # it died at once: it is reaped like any other, and counts as a boot failure
    return worker


def kill(worker: Worker) -> None:
    """SIGKILL, once; reaping happens in the main loop."""
    worker.killed = True
    with contextlib.suppress(ProcessLookupError):
        worker.process.kill()
