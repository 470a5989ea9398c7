"""Per-client limits in one real worker: behind a PROXY protocol listener the client its
header names is counted, not the proxy; the ``sockets`` message may carry the shared table
after the sockets, and a worker without one counts alone; and 10,000 idle sessions from
100 addresses keep the worker's memory within a bound (docs/performance.md)."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import re
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import WorkerProcess, running_worker

PROXIED = """\
[recipients]
domains = ["example.org"]

[[listen]]
name = "smtp"
host = "127.0.0.1"
port = 0
proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]

[clients]
connections = 2
exempt = []
"""


def proxied(port: int, client: str) -> tuple[socket.socket, bytes]:
    """A session through a "proxy" at 127.0.0.1 for ``client`` (a PROXY v1 header)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(f"PROXY TCP4 {client} 192.0.2.25 40000 25\r\n".encode())
    return conn, conn.recv(200)


def test_behind_a_proxy_the_client_it_names_is_limited(spool_dir: Path) -> None:
    config = spool_dir.parent / "proxied.toml"
    config.write_text(PROXIED)
    with running_worker(spool_dir, "--config", str(config)) as worker:
        held = []
        try:
            # Five sessions from the proxy's address, for five clients: none is limited.
            for n in range(1, 6):
                conn, greeting = proxied(worker.port, f"198.51.100.{n}")
                held.append(conn)
                assert greeting.startswith(b"220 "), greeting
            conn, greeting = proxied(worker.port, "198.51.100.1")
            held.append(conn)
            assert greeting.startswith(b"220 "), greeting
            # The third of one client is.
            conn, greeting = proxied(worker.port, "198.51.100.1")
            held.append(conn)
            assert greeting == (
                b"421 4.7.0 Too many connections from 198.51.100.1, try again later\r\n"
            )
        finally:
            for conn in held:
                conn.close()
        [record] = worker.wait_log("client_limited")
        assert record["remote"] == record["client"] == "198.51.100.1"


def test_without_a_table_from_the_supervisor_a_worker_counts_alone(spool_dir: Path) -> None:
    with running_worker(spool_dir) as worker:  # the harness sends the sockets only
        [ready] = worker.wait_log("worker_ready")
        assert ready["clients_table"] == "private"


def start_with(spool: Path, message: dict[str, object], fds: list[int]) -> WorkerProcess:
    """A worker whose first message is ``message`` with the listener, then ``fds``."""
    worker = WorkerProcess(spool, send=False)
    socket.send_fds(
        worker.control, [json.dumps(message).encode()], [worker.listener.fileno(), *fds]
    )
    return worker


@contextlib.contextmanager
def memory_file(size: int, name: str = "test-clients") -> Iterator[int]:
    fd = os.memfd_create(name)
    os.ftruncate(fd, size)
    try:
        yield fd
    finally:
        os.close(fd)


SEGMENT = 2 * 1024 * 1024


def test_a_table_passed_after_the_sockets_is_shared(spool_dir: Path) -> None:
    """The supervisor's table as a second descriptor, named by ``descriptors``: the worker
    writes its counts into its own segment of it (here 1 of 2), which the test can read."""
    message = {
        "type": "sockets",
        "names": ["smtp"],
        "worker": 1,
        "descriptors": ["clients", "later"],
        "clients": {"segment": 1, "segments": 2, "key": "00" * 16},
        "later": {"what": "a descriptor of a later version: closed"},
    }
    with memory_file(2 * SEGMENT) as fd, memory_file(4096, "test-later") as later:
        worker = start_with(spool_dir, message, [fd, later])
        try:
            worker.receive("ready")
            [ready] = worker.wait_log("worker_ready")
            assert ready["clients_table"] == "shared"
            view = mmap.mmap(fd, 2 * SEGMENT)
            words = memoryview(view).cast("I")
            assert words[0] == 0 and words[SEGMENT // 4] == 0x57424354  # its own: 1
            # The unknown descriptor is closed; the table's is held by its mapping alone
            # (Python's mmap keeps a duplicate of the descriptor it maps).
            fds = Path(f"/proc/{worker.proc.pid}/fd")
            targets = [os.readlink(fds / name) for name in os.listdir(fds)]
            assert [t for t in targets if "memfd:" in t] == ["/memfd:test-clients (deleted)"]
            words.release()
            view.close()
        finally:
            worker.close()


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"descriptors": ["clients"]}, "without a valid description"),
        (
            {
                "descriptors": ["clients"],
                "clients": {"segment": 2, "segments": 2, "key": "00" * 16},
            },
            "a bad segment",
        ),
        (
            {
                "descriptors": ["clients"],
                "clients": {"segment": 0, "segments": 3, "key": "00" * 16},
            },
            "is not 3 segments",
        ),
        ({"descriptors": ["clients", "other"]}, "no listening sockets"),
    ],
)
def test_a_table_that_does_not_fit_its_description_stops_the_boot(
    spool_dir: Path, message: dict[str, object], reason: str
) -> None:
    full = {"type": "sockets", "names": ["smtp"], "worker": 1, **message}
    with memory_file(2 * SEGMENT) as fd:
        worker = start_with(spool_dir, full, [fd])
        try:
            assert worker.proc.wait(timeout=30) == 3
            end = time.monotonic() + 5
            while reason not in "".join(worker.stderr) and time.monotonic() < end:
                time.sleep(0.05)
            assert reason in "".join(worker.stderr), worker.stderr
        finally:
            worker.close()


# --- 10,000 idle sessions --------------------------------------------------------------

SESSIONS = 10_000
SOURCES = [f"127.0.1.{n}" for n in range(1, 101)]  # 100 addresses, 100 sessions each
#: The bound asserted: what each idle session may add to a worker's resident memory
#: (6.2 KiB measured: docs/performance.md).
PER_SESSION_BOUND = 16 * 1024
#: A worker keeps 64 descriptors for itself and two for each session (its socket and a
#: spilled content file): wildboar/worker/__main__.py fit_descriptors.
RESERVED = 64


def idle_env(sessions: int) -> dict[str, str]:
    return {
        "WILDBOAR_SESSIONS_PER_WORKER": str(sessions),
        "WILDBOAR_SESSIONS_PER_CLIENT_IP": str(sessions),
        "WILDBOAR_CLIENTS_EXEMPT": "",  # every session counted in the table
        "WILDBOAR_CLIENTS_CONNECTIONS": "0",
        "WILDBOAR_CLIENTS_CONNECTIONS_PER_MINUTE": "0",
        "WILDBOAR_CLIENTS_NETWORK_CONNECTIONS": "0",
        "WILDBOAR_CLIENTS_NETWORK_CONNECTIONS_PER_MINUTE": "0",
    }


def resident(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert match, status
    return int(match.group(1)) * 1024


@contextlib.contextmanager
def open_files() -> Iterator[int]:
    """As many idle sessions as the hard limit on open files lets one worker serve, at
    most ``SESSIONS``; the soft limit of this process raised to the hard one meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    with contextlib.suppress(ValueError, OSError):  # raised when allowed (CAP_SYS_RESOURCE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (2 * SESSIONS + 1024,) * 2)
        top = 2 * SESSIONS + 1024
    resource.setrlimit(resource.RLIMIT_NOFILE, (top, max(top, hard)))
    sessions = min(SESSIONS, (top - RESERVED) // 2 - RESERVED)
    assert sessions >= 5000, f"a hard limit of {hard} open files allows {sessions} sessions only"
    try:
        yield sessions
    finally:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def greet(port: int, source: str) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    greeting = conn.recv(200)
    assert greeting.startswith(b"220 "), greeting
    return conn


def test_ten_thousand_idle_sessions_keep_a_worker_within_a_bound(spool_dir: Path) -> None:
    """10,000 sessions (or as many as the hard limit on open files allows one worker: 9,904
    under a hard limit of 20,000), from 100 addresses, all counted in the table: the
    worker's resident memory grows by at most ``PER_SESSION_BOUND`` a session."""
    with open_files() as sessions, running_worker(spool_dir, env=idle_env(sessions)) as worker:
        held = [greet(worker.port, source) for source in SOURCES[:10]]  # warm-up
        for conn in held:
            conn.close()
        time.sleep(0.5)
        before = resident(worker.proc.pid)
        start = time.monotonic()
        held = []
        try:
            for n in range(sessions):
                held.append(greet(worker.port, SOURCES[n % len(SOURCES)]))
            elapsed = time.monotonic() - start
            beat = worker.receive("heartbeat")
            while beat["sessions"] < sessions:
                beat = worker.receive("heartbeat")
            after = resident(worker.proc.pid)
        finally:
            for conn in held:
                conn.close()
        per_session = (after - before) / sessions
        print(
            f"\n{sessions} idle sessions: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB,"
            f" {per_session / 1024:.1f} KiB a session, opened in {elapsed:.1f} s"
        )
        assert per_session <= PER_SESSION_BOUND, f"{per_session / 1024:.1f} KiB a session"
        assert elapsed < 120, elapsed


def test_a_session_closed_for_its_errors_is_logged_as_a_limit(spool_dir: Path) -> None:
    env = {"WILDBOAR_LIMITS_ERRORS": "2"}
    with running_worker(spool_dir, env=env) as worker:
        conn = greet(worker.port, "127.0.0.1")
        with conn:
            conn.sendall(b"FOO\r\nBAR\r\n")
            replies = b""
            while b"421" not in replies:
                chunk = conn.recv(1000)
                assert chunk, replies
                replies += chunk
        assert replies.endswith(b"421 4.7.0 Error: too many errors\r\n"), replies
        [record] = worker.wait_log("client_limited")
        assert record["limit"] == "errors" and record["count"] == record["value"] == 2
