"""The servers ``bench.server`` puts under load, each in its own process on 127.0.0.1.

Owns: starting, watching and stopping them: ``wildboar serve`` (supervisor + workers; its
JSON log lines go from stderr to a file, read from there), the aiosmtpd peer
(``bench.aiosmtpd_peer``) and Postfix's ``smtp-sink``; the CPU time their processes used;
for wildboar, how many messages its log says were accepted and how many files its spool holds.
Must not know: SMTP, the scenarios, the figures.
Security: when run as root, wildboar's workers and smtp-sink drop to ``nobody`` (as the test
suite does, ``tests/unprivileged.py``); the spool is a fresh directory under ``$TMPDIR``
(/tmp when unset; the spool is measured on that filesystem), removed by ``stop()``. Every
process is started in its own session and killed with its group if it does not stop in
time, so nothing is left running.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
SMTP_SINK = "/usr/sbin/smtp-sink"
HOSTNAME = "bench.example"
AS_ROOT = os.geteuid() == 0
USER = "nobody"
#: Seconds to wait for a server to listen, and for one to stop before it is killed
#: (wildboar drains for up to ``timeouts.drain``, 30 s by default).
START_TIMEOUT = 30.0
STOP_TIMEOUT = 40.0
#: A benchmark's clients all come from 127.0.0.1: wildboar's per-address session limit
#: (``sessions.per_client_ip``, 50) is raised to its per-worker limit for 200 sessions.
PER_CLIENT_IP = 1000
#: wildboar's log events written once per connection or message: counted, not kept.
_COUNTED = ("connection_open", "connection_close", "message_accepted")
_COUNTED_LINE = re.compile(rb'"event": ?"(?:%s)"' % "|".join(_COUNTED).encode())
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class TargetError(Exception):
    """A server did not start, or died: its cells are failed measurements."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def greets(port: int, timeout: float = 2.0) -> bool:
    """True once a server on ``port`` answers a connection with a 220 greeting."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            greeting = sock.recv(512)
            sock.sendall(b"QUIT\r\n")
            return greeting.startswith(b"220")
    except OSError:
        return False


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU time of each of these processes so far (gone ones are left out)."""
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime
    return times


def tree_cpu(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and every descendant, the exited
    ones included: a child's time is added to its parent's (``cutime``, ``cstime``) when
    the parent reaps it, as the masters of Postfix and Dovecot and wildboar's supervisor do.
    The difference of two readings is what the tree used in between, however many of its
    processes came and went (an orphan reaped by init is lost)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue  # gone: its time is in its parent's by now, or soon
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        for task in tasks:
            with contextlib.suppress(OSError):
                stack += [int(p) for p in (task / "children").read_text().split()]
    return total / _CLOCK_TICKS


def busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``: all but idle and
    iowait), less this process's own: the difference of two readings, less what the
    servers and clients under test used, is what other work on the machine took."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    own = resource.getrusage(resource.RUSAGE_SELF)
    busy = (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS
    return busy - own.ru_utime - own.ru_stime


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Target:
    """One server process (and its children); subclasses say how to start it."""

    name = ""
    workers: int | None = None

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        #: Messages smtp-source counted as delivered to this server since it was started.
        self.delivered = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def label(self) -> str:
        return self.name if self.workers is None else f"{self.name} x{self.workers}"

    def start(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        return [] if self.proc is None else [self.proc.pid, *children(self.proc.pid)]

    def _spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[str]:
        self.delivered = 0
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, text=True, start_new_session=True, **kwargs
        )
        return self.proc

    def _wait_greeting(self) -> None:
        end = time.monotonic() + START_TIMEOUT
        while not greets(self.port):
            if not self.alive() or time.monotonic() > end:
                raise TargetError(f"{self.label} does not answer on port {self.port}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, wait; SIGKILL to the whole process group if it takes too long."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"{self.label} did not stop in {STOP_TIMEOUT:.0f} s: killed", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of its group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


class SmtpSink(Target):
    """Postfix's ``smtp-sink``: the reference, a C server that throws messages away."""

    name = "smtp-sink"

    def start(self) -> None:
        self.port = free_port()
        user = ["-u", USER] if AS_ROOT else []
        # -m: up to 1024 concurrent sessions (default 256); 1024: the listen backlog.
        argv = [SMTP_SINK, *user, "-h", "sink.example", "-m", "1024"]
        self._spawn([*argv, f"127.0.0.1:{self.port}", "1024"], stderr=subprocess.DEVNULL)
        self._wait_greeting()


class Aiosmtpd(Target):
    """The aiosmtpd peer (``bench/aiosmtpd_peer.py``), its own Python process."""

    name = "aiosmtpd"

    def start(self) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "bench.aiosmtpd_peer", "--port", str(self.port)]
        self._spawn(argv, cwd=ROOT, stderr=subprocess.DEVNULL)
        self._wait_greeting()


class Floor(Target):
    """The floor (``bench/floor_peer.py``): canned replies on uvloop, ``processes`` forked
    processes on one listening socket, like wildboar's workers."""

    name = "python floor"

    def __init__(self, processes: int) -> None:
        super().__init__()
        self.workers = processes

    def start(self) -> None:
        self.port = free_port()
        self._spawn(self._argv(), cwd=ROOT, stderr=subprocess.DEVNULL)
        self._wait_greeting()

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "bench.floor_peer", "--port", str(self.port)]
        return [*argv, "--processes", str(self.workers)]


class LogFile:
    """wildboar's JSON log, written to a file (so reading it costs no CPU while the server is
    under load): keeps the rare events, counts the per-message ones, remembers the tail."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.tail: list[bytes] = []
        self._offset = 0

    def poll(self) -> None:
        """Take in the complete lines written since the last poll."""
        with open(self.path, "rb") as log:
            log.seek(self._offset)
            data = log.read()
        data = data[: data.rfind(b"\n") + 1]
        self._offset += len(data)
        for event in _COUNTED:
            self.counts[event] += len(re.findall(rb'"event": ?"%s"' % event.encode(), data))
        lines = data.splitlines()
        self.tail = [*self.tail, *lines[-20:]][-20:]
        for line in lines:
            if not _COUNTED_LINE.search(line):
                self._keep(line)

    def _keep(self, line: bytes) -> None:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                self.records.append(record)

    def wait_for(self, event: str, timeout: float, alive: Callable[[], bool]) -> dict[str, Any]:
        """The first supervisor record of ``event``, waiting up to ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while True:
            self.poll()
            found = (r for r in self.records if r.get("event") == event)
            record = next((r for r in found if r.get("component") == "supervisor"), None)
            if record is not None:
                return record
            if time.monotonic() > end or not alive():
                tail = b"\n".join(self.tail).decode(errors="replace")
                raise TargetError(f"no {event!r} from wildboar serve; its log ends:\n{tail}")
            time.sleep(0.05)

    def wait_count(self, event: str, count: int, timeout: float) -> int:
        end = time.monotonic() + timeout
        self.poll()
        while self.counts[event] < count and time.monotonic() < end:
            time.sleep(0.05)
            self.poll()
        return self.counts[event]


class Wildboar(Target):
    """``wildboar serve --handoff HANDOFF --workers N`` with a fresh spool under /tmp."""

    def __init__(
        self, handoff: str, workers: int, settings: Mapping[str, str] | None = None
    ) -> None:
        """``settings``: ``WILDBOAR_*`` variables for this server, over the benchmark's."""
        super().__init__()
        self.name = f"wildboar {handoff}"
        self.handoff = handoff
        self.workers = workers
        self.settings = dict(settings or {})
        self.base: Path | None = None
        self.log: LogFile | None = None

    @property
    def spool(self) -> Path:
        assert self.base is not None
        return self.base / "spool"

    def start(self) -> None:
        self._make_spool()
        assert self.base is not None
        path = self.base / "wildboar.log"
        with open(path, "wb") as log:
            self._spawn(self._argv(), cwd=self.base, env=self._env(), stderr=log)
        self.log = LogFile(path)
        listening = self.log.wait_for("listening", START_TIMEOUT, self.alive)
        self.log.wait_for("ready", START_TIMEOUT, self.alive)
        self.port = int(listening["port"])

    def _make_spool(self) -> None:
        # Under $TMPDIR (/tmp by default): the spool is measured on that filesystem.
        self.base = Path(tempfile.mkdtemp(prefix="wildboar-bench-"))
        self.base.chmod(0o755)
        self.spool.mkdir()
        if AS_ROOT:
            entry = pwd.getpwnam(USER)
            os.chown(self.spool, entry.pw_uid, entry.pw_gid)

    def _argv(self) -> list[str]:
        script = Path(sys.executable).with_name("wildboar")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "wildboar.cli"]
        return [
            *command,
            "serve",
            *("--workers", str(self.workers), "--listen", "127.0.0.1:0"),
            *("--hostname", HOSTNAME, *self._handoff_args(), "--spool", str(self.spool)),
        ]

    def _handoff_args(self) -> list[str]:
        return ["--handoff", self.handoff]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WILDBOAR_")}
        env["WILDBOAR_SESSIONS_PER_CLIENT_IP"] = str(PER_CLIENT_IP)
        if AS_ROOT:
            group = grp.getgrgid(pwd.getpwnam(USER).pw_gid).gr_name
            env.update(WILDBOAR_USER=USER, WILDBOAR_GROUP=group)
        env.update(self.settings)
        return env

    def worker_pids(self) -> list[int]:
        return [] if self.proc is None else children(self.proc.pid)

    def accepted(self) -> int:
        """Messages the workers logged as accepted so far."""
        if self.log is None:
            return 0
        self.log.poll()
        return self.log.counts["message_accepted"]

    def wait_accepted(self, count: int, timeout: float = 5.0) -> int:
        return 0 if self.log is None else self.log.wait_count("message_accepted", count, timeout)

    def dropped_log_lines(self) -> int:
        """Log lines the workers dropped so far (``log_lines_dropped``): a worker never
        waits for its log, and drops lines when the supervisor falls behind."""
        if self.log is None:
            return 0
        self.log.poll()
        found = (r for r in self.log.records if r.get("event") == "log_lines_dropped")
        return sum(int(r.get("lines", 0)) for r in found)

    def spooled(self) -> int:
        """Files in the spool's ``msg/`` directory (durable messages)."""
        try:
            return sum(1 for name in os.listdir(self.spool / "msg") if name.endswith(".msgpack"))
        except FileNotFoundError:
            return 0

    def empty_spool(self) -> None:
        """Remove the durable messages (a consumer's job), so runs do not fill the disk."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.spool / "msg"):
                if entry.name.endswith(".msgpack"):
                    os.unlink(entry.path)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self.base is not None:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None
