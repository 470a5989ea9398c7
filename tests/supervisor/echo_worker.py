"""A minimal but genuine worker of the supervisor's control channel, for the supervisor's tests.

It stands in for ``wildboar.worker`` only until the supervisor is integrated with it; then the
supervisor's tests should also run against ``python -m wildboar.worker``. It speaks the
contract of docs/architecture.md ("Supervisor and workers: the control channel"): it takes
``--control-fd N``, receives the ``sockets`` message with the listening sockets (SCM_RIGHTS),
accepts TCP connections on them and writes ``220 echo <pid>\\r\\n`` to each, then closes it;
it sends ``ready`` and a ``heartbeat`` every second; on ``drain`` (or end of file on the
channel, or SIGTERM) it sends ``stopping``, stops accepting, lets open connections finish for
up to the deadline, writes ``421 4.3.2`` to what is left and exits 0. SIGINT is ignored (the
supervisor decides). Standard library only, no ``wildboar`` import.

Behaviour the tests ask for, through the environment:
    ECHO_WORKER_BOOT_EXIT=N        exit with status N after receiving the sockets, before ready
    ECHO_WORKER_BOOT_EXIT_IF=PATH  exit with status 3 before ready, if PATH exists
    ECHO_WORKER_NO_READY=1         never send ready (but keep running)
    ECHO_WORKER_SILENT_ONCE=PATH   the first worker to create PATH sends no heartbeat, ever
    ECHO_WORKER_CRASH_AFTER=N      exit with status 70 after serving N connections
    ECHO_WORKER_HOLD=S             keep each connection open S seconds after the banner, then
                                   write ``221 2.0.0 done <pid>`` and close
    ECHO_WORKER_IGNORE_DRAIN=1     answer drain with stopping, then carry on serving
    ECHO_WORKER_SLOW_DRAIN=S       on drain, keep accepting S seconds before closing the
                                   listeners and saying stopping
    ECHO_WORKER_HEARTBEAT=S        seconds between heartbeats (default 1)
    ECHO_WORKER_GARBAGE=1          after ready, send messages that break the contract
    ECHO_WORKER_READY_HANDOFF=S    say in "ready" that handoffs may take S s after a drain
    ECHO_WORKER_SIGNAL_PARENT=N    after ready, send the supervisor N x TTIN and one HUP, then
                                   the same from a double-forked grandchild, from children
                                   that exit and are reaped at once, and TTOU from the end of
                                   a chain of 70 nested children (a compromised worker's
                                   attacks)
    ECHO_WORKER_PROBE=1            at start, report what this process can reach: terminals
                                   among its descriptors, a controlling terminal, TIOCSTI,
                                   capabilities, environment, open files; and write a line
                                   with terminal escape sequences to stderr
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import sys
import termios
import time

MAX_MESSAGE = 65536
GARBAGE = (
    b"not json",
    b"[1, 2]",
    b'{"type": "nonsense"}',
    b'{"type": "heartbeat", "sessions": -1, "messages": 0}',
    b'{"type": "heartbeat", "sessions": true, "messages": 0}',
    b'{"type": "ready"}',
    b'{"type": "ready", "pid": 1, "drain": 86401}',
    b'{"type": "ready", "pid": 1, "drain": true}',
    b'{"type": "heartbeat", "sessions": 0, "messages": 0, "padding": "' + b"x" * 70000 + b'"}',
    b"[" * 60000,  # the parser recurses: it once crashed the supervisor (RecursionError)
    b'{"type": "heartbeat", "sessions": 0, "messages": 0, "x": ' + b"[" * 30 + b"]" * 30 + b"}",
)
EOF_DRAIN_DEADLINE = 10.0


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def say(event: str, **fields: object) -> None:
    record = {"event": f"echo_{event}", "pid": os.getpid(), **fields}
    os.write(2, (json.dumps(record) + "\n").encode())


class EchoWorker:
    def __init__(self, control: socket.socket, listeners: list[socket.socket]) -> None:
        self.control = control
        self.listeners = listeners
        self.selector = selectors.DefaultSelector()
        self.sessions: dict[socket.socket, float] = {}
        self.served = 0
        self.hold = env_float("ECHO_WORKER_HOLD", 0.0)
        self.crash_after = int(os.environ.get("ECHO_WORKER_CRASH_AFTER", "0"))
        self.interval = env_float("ECHO_WORKER_HEARTBEAT", 1.0)
        self.silent = self._silent_once()
        self.drain_until: float | None = None
        self.slow_drain = env_float("ECHO_WORKER_SLOW_DRAIN", 0.0)
        self.drain_due: tuple[float, float] | None = None  # (when, deadline) of a slow drain
        self.stopping = False
        self.next_heartbeat = 0.0
        self.terminated = False

    @staticmethod
    def _silent_once() -> bool:
        path = os.environ.get("ECHO_WORKER_SILENT_ONCE")
        if not path:
            return False
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        return True

    def send(self, message: dict[str, object]) -> None:
        with contextlib.suppress(OSError):
            self.control.send(json.dumps(message).encode())

    def start(self) -> None:
        for sock in self.listeners:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, "listener")
        self.control.setblocking(False)
        self.selector.register(self.control, selectors.EVENT_READ, "control")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_term)
        if os.environ.get("ECHO_WORKER_NO_READY") != "1":
            ready: dict[str, object] = {"type": "ready", "pid": os.getpid()}
            if os.environ.get("ECHO_WORKER_READY_HANDOFF"):
                ready["handoff"] = float(os.environ["ECHO_WORKER_READY_HANDOFF"])
            self.send(ready)
            say("ready", silent=self.silent)
        if os.environ.get("ECHO_WORKER_GARBAGE") == "1":
            self.send_garbage()
        if os.environ.get("ECHO_WORKER_SIGNAL_PARENT"):
            signal_parent(int(os.environ["ECHO_WORKER_SIGNAL_PARENT"]))

    def send_garbage(self) -> None:
        for junk in GARBAGE:
            with contextlib.suppress(OSError):
                self.control.send(junk)

    def _on_term(self, signum: int, frame: object) -> None:
        self.terminated = True

    # --- serving --------------------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return  # another worker won the race for this connection
        conn.sendall(f"220 echo {os.getpid()}\r\n".encode())
        self.sessions[conn] = time.monotonic() + self.hold
        if self.hold <= 0:
            self.finish(conn, None)

    def finish(self, conn: socket.socket, reply: str | None) -> None:
        del self.sessions[conn]
        try:
            if reply:
                conn.sendall(reply.encode())
            conn.close()
        except OSError:
            pass
        self.served += 1
        if self.crash_after and self.served >= self.crash_after:
            say("crash", served=self.served)
            os._exit(70)

    def finish_due(self, now: float) -> None:
        for conn, due in list(self.sessions.items()):
            if now >= due:
                self.finish(conn, f"221 2.0.0 done {os.getpid()}\r\n")

    # --- control --------------------------------------------------------------------------

    def on_control(self) -> None:
        try:
            data = self.control.recv(MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(self.control)
            self.begin_drain(EOF_DRAIN_DEADLINE)
            return
        message = json.loads(data)
        if message.get("type") == "drain":
            if self.slow_drain and self.drain_due is None:
                self.drain_due = (time.monotonic() + self.slow_drain, float(message["deadline"]))
            else:
                self.begin_drain(float(message["deadline"]))

    def begin_drain(self, deadline: float) -> None:
        if self.stopping:
            return
        self.stopping = True
        if os.environ.get("ECHO_WORKER_IGNORE_DRAIN") == "1":
            self.send({"type": "stopping"})
            say("draining", deadline=deadline, sessions=len(self.sessions))
            return
        for sock in self.listeners:
            self.selector.unregister(sock)
            sock.close()
        self.listeners = []
        self.send({"type": "stopping"})  # as the real worker: listeners closed, then stopping
        say("draining", deadline=deadline, sessions=len(self.sessions))
        self.drain_until = time.monotonic() + deadline

    def drained(self, now: float) -> bool:
        if self.drain_until is None:
            return False
        if now >= self.drain_until:
            for conn in list(self.sessions):
                self.finish(conn, "421 4.3.2 Service shutting down\r\n")
        return not self.sessions

    def heartbeat(self, now: float) -> None:
        if self.silent or now < self.next_heartbeat:
            return
        self.next_heartbeat = now + self.interval
        self.send({"type": "heartbeat", "sessions": len(self.sessions), "messages": self.served})

    def run(self) -> int:
        self.start()
        while True:
            for key, _ in self.selector.select(0.05):
                if key.data == "listener":
                    listener = key.fileobj
                    # (a drain earlier in this batch may have closed it)
                    if isinstance(listener, socket.socket) and listener in self.listeners:
                        self.accept(listener)
                else:
                    self.on_control()
            now = time.monotonic()
            if self.drain_due is not None and now >= self.drain_due[0]:
                self.begin_drain(self.drain_due[1])
            if self.terminated:
                self.begin_drain(EOF_DRAIN_DEADLINE)
            self.finish_due(now)
            if self.drained(now):
                say("exit", served=self.served)
                return 0
            self.heartbeat(now)


def signal_parent(count: int) -> None:
    supervisor = os.getppid()
    for _ in range(count):
        os.kill(supervisor, signal.SIGTTIN)
    os.kill(supervisor, signal.SIGHUP)
    say("signalled", supervisor=supervisor, count=count)
    if os.fork() == 0:  # a grandchild, orphaned at once: not a child of the supervisor
        if os.fork() == 0:
            time.sleep(0.3)
            for _ in range(count):
                os.kill(supervisor, signal.SIGTTIN)
            os.kill(supervisor, signal.SIGHUP)
            say("grandchild_signalled", supervisor=supervisor, parent=os.getppid())
        os._exit(0)
    for _ in range(count):  # a child that signals and is gone before anyone looks
        child = os.fork()
        if child == 0:
            os.kill(supervisor, signal.SIGTTIN)
            os._exit(0)
        os.waitpid(child, 0)
    nested_signal(supervisor, 70)
    say("signalled_all", supervisor=supervisor)


def nested_signal(supervisor: int, depth: int) -> None:
    """TTOU from the deepest of ``depth`` nested children (each waits for its own)."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    if depth > 1:
        nested_signal(supervisor, depth - 1)
    else:
        os.kill(supervisor, signal.SIGTTOU)
    os._exit(0)


def tiocsti(fd: int) -> str:
    """Try to push one character into the terminal's input; the outcome."""
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"#")
    except OSError as error:
        return errno.errorcode.get(error.errno or 0, str(error.errno))
    return "pushed"


def probe() -> dict[str, object]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError as error:
        controlling = errno.errorcode.get(error.errno or 0, "?")
    else:
        controlling = "open: " + tiocsti(tty)
        os.close(tty)
    with open("/proc/self/status") as file:
        status = dict(line.rstrip("\n").partition(":\t")[::2] for line in file if ":\t" in line)
    with open("/proc/self/stat") as file:
        stat = file.read()
    tty_nr = int(stat[stat.rfind(")") + 2 :].split()[4])
    return {
        "fds": fds,
        "ttys": [fd for fd in range(3) if os.isatty(fd)],
        "tiocsti": {fd: tiocsti(fd) for fd in range(3)},
        "controlling_terminal": controlling,
        "tty_nr": tty_nr,
        "sid": os.getsid(0),
        "cwd": os.getcwd(),
        "environ": sorted(os.environ),
        "caps": {k: status.get(k) for k in ("CapInh", "CapPrm", "CapEff", "CapAmb", "NoNewPrivs")},
        "uid": os.getuid(),
    }


def receive_sockets(control: socket.socket) -> list[socket.socket]:
    control.settimeout(10)
    data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 64)
    message = json.loads(data)
    names, described = message["names"], message.get("descriptors", [])
    if message.get("type") != "sockets" or len(names) + len(described) != len(fds) or not names:
        raise SystemExit(f"echo_worker: bad first message {message!r} with {len(fds)} fds")
    for fd in fds[len(names) :]:  # the descriptors after the listeners: not used here
        os.close(fd)
    return [socket.socket(fileno=fd) for fd in fds[: len(names)]]


def main() -> int:
    parser = argparse.ArgumentParser(prog="echo_worker")
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args()
    control = socket.socket(fileno=args.control_fd)
    listeners = receive_sockets(control)
    if os.environ.get("ECHO_WORKER_PROBE") == "1":
        say("probe", **probe())
        os.write(2, b"escapes: \x1b]0;owned\x07 \x1b[2J \xe2\x80\xae end\n")
    boot_exit = os.environ.get("ECHO_WORKER_BOOT_EXIT")
    if boot_exit:
        say("boot_exit", status=int(boot_exit))
        return int(boot_exit)
    flag = os.environ.get("ECHO_WORKER_BOOT_EXIT_IF")
    if flag and os.path.exists(flag):
        say("boot_exit", status=3)
        return 3
    return EchoWorker(control, listeners).run()


if __name__ == "__main__":
    sys.exit(main())
