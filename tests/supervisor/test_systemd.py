"""systemd: socket activation (LISTEN_FDS) and sd_notify (READY, STATUS, RELOADING, STOPPING,
WATCHDOG), with systemd's own ``systemd-socket-activate`` and a real notification socket."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import RUN_AS, Supervisor, banner, banner_pid, free_port

SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"  # Debian package: systemd


def test_socket_activation_takes_the_named_sockets(supervisors: Callable[..., Supervisor]) -> None:
    assert shutil.which(SOCKET_ACTIVATE), "install Debian's systemd package"
    smtp, submission = free_port(), free_port()
    argv0 = [
        SOCKET_ACTIVATE,
        "-l",
        f"127.0.0.1:{smtp}",
        "-l",
        f"127.0.0.1:{submission}",
        "--fdname=smtp:submission",
        sys.executable,
        "-m",
        "supervisor",
    ]
    # --listen is ignored (and said so): the sockets come from systemd.
    sup = supervisors("--listen", "127.0.0.1:0", "--workers", "2", *RUN_AS, argv0=argv0)
    # systemd-socket-activate binds, then starts the service on the first connection, which
    # waits in the backlog of the socket it bound until a worker accepts it.
    sup.wait_until(lambda: sup.output().count("Listening on") == 2, 10, "the sockets bound")
    first = banner_pid(banner(smtp, timeout=10))
    sup.wait_event("listening", name="submission")
    listening = {e["name"]: e for e in sup.find("listening")}
    assert listening["smtp"]["port"] == smtp and listening["smtp"]["source"] == "systemd"
    assert listening["submission"]["port"] == submission
    assert listening["submission"]["source"] == "systemd"
    assert sup.find("listen_ignored")
    pids = sup.wait_serving(2)
    assert first in pids
    assert banner_pid(banner(submission)) in pids
    for pid in pids:  # systemd's variables are not handed down
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith((b"LISTEN_", b"NOTIFY_", b"WATCHDOG_"))]
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(10) == 0


def test_socket_names_that_do_not_match_the_sockets_are_one_line(
    supervisors: Callable[..., Supervisor],
) -> None:
    ports = [free_port() for _ in range(3)]
    listen = [arg for port in ports for arg in ("-l", f"127.0.0.1:{port}")]
    argv0 = [SOCKET_ACTIVATE, *listen, "--fdname=smtp:submission", sys.executable, "-m",
             "supervisor"]  # fmt: skip
    sup = supervisors("--workers", "1", *RUN_AS, argv0=argv0)
    sup.wait_until(lambda: sup.output().count("Listening on") == 3, 10, "the sockets bound")
    with contextlib.suppress(OSError):  # starts the service; it refuses to run
        socket.create_connection(("127.0.0.1", ports[0]), timeout=5).close()
    assert sup.wait_exit(10) == 1
    output = sup.output()
    assert "Traceback" not in output, output
    assert "LISTEN_FDNAMES names 2 sockets ('smtp:submission') but LISTEN_FDS passes 3" in output, (
        output
    )


class NotifySocket:
    """A datagram socket standing where systemd's notification socket would be."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.received.append((time.monotonic(), data.decode()))

    def states(self) -> list[str]:
        with self._lock:
            return [state for _, state in self.received]

    def times(self, state: str) -> list[float]:
        with self._lock:
            return [at for at, got in self.received if got == state]

    def wait_for(self, state: str, timeout: float = 10.0, after: int = 0) -> int:
        """Index of the first datagram from ``after`` on that contains ``state``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, got in enumerate(self.states()[after:], start=after):
                if state in got.split("\n"):
                    return index
            time.sleep(0.02)
        raise AssertionError(f"no {state!r} in {self.states()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify_socket(shared_tmp: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(shared_tmp / "notify")
    try:
        yield receiver
    finally:
        receiver.close()


def test_sd_notify_ready_status_reloading_stopping(
    supervisors: Callable[..., Supervisor], notify_socket: NotifySocket
) -> None:
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "ECHO_WORKER_HEARTBEAT": "0.2"}
    sup = supervisors("--listen", "127.0.0.1:0", "--workers", "2", *RUN_AS, env=env)
    port = sup.port()
    ready = notify_socket.wait_for("READY=1")
    assert len(sup.ready_workers()) == 2  # READY=1 only once every worker is ready
    notify_socket.wait_for("STATUS=2 workers, 0 sessions, 0 messages")
    banner(port)
    notify_socket.wait_for("STATUS=2 workers, 0 sessions, 1 messages")
    sup.signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING=1")
    assert "MONOTONIC_USEC=" in notify_socket.states()[reloading]
    assert notify_socket.wait_for("READY=1", after=reloading) > ready
    sup.wait_event("reloaded")
    sup.signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1")
    assert sup.wait_exit(10) == 0
    assert "WATCHDOG=1" not in notify_socket.states()  # no WATCHDOG_USEC, no watchdog


def test_watchdog_pauses_while_a_heartbeat_is_late(
    supervisors: Callable[..., Supervisor], notify_socket: NotifySocket, shared_tmp: Path
) -> None:
    env = {
        "NOTIFY_SOCKET": str(notify_socket.path),
        "WATCHDOG_USEC": "100000",  # WATCHDOG=1 every 50 ms while heartbeats are fresh
        "ECHO_WORKER_HEARTBEAT": "0.2",
        "ECHO_WORKER_SILENT_ONCE": str(shared_tmp / "silent"),
    }
    flags = ("--workers", "1", "--heartbeat-timeout", "3")  # fresh for 1.5 s, killed after 3 s
    sup = supervisors("--listen", "127.0.0.1:0", *RUN_AS, *flags, env=env)
    silent = sup.wait_event("echo_ready", silent=True)["pid"]
    notify_socket.wait_for("WATCHDOG=1")
    sup.wait_event("watchdog_paused", timeout=5)
    sup.wait_event("worker_killed", pid=silent, reason="heartbeat_timeout", timeout=5)
    sup.wait_event("watchdog_resumed", timeout=5)
    time.sleep(0.3)
    pings = notify_socket.times("WATCHDOG=1")
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert max(gaps) > 1.2, gaps  # paused from 1.5 s after the last heartbeat until replaced
    assert sorted(gaps)[len(gaps) // 2] < 0.2  # otherwise every interval/2
    assert pings[-1] > notify_socket.times("READY=1")[0]


def test_watchdog_pid_of_another_process_means_no_watchdog(
    supervisors: Callable[..., Supervisor], notify_socket: NotifySocket
) -> None:
    env = {
        "NOTIFY_SOCKET": str(notify_socket.path),
        "WATCHDOG_USEC": "100000",
        "WATCHDOG_PID": str(os.getpid()),  # meant for the test process, not the supervisor
    }
    sup = supervisors("--listen", "127.0.0.1:0", "--workers", "1", *RUN_AS, env=env)
    notify_socket.wait_for("READY=1")
    time.sleep(0.5)
    assert "WATCHDOG=1" not in notify_socket.states()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(10) == 0
