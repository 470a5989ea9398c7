"""Remote clients against a worker's memory and its log, performed for real: many sessions
holding nearly a whole message each, and a log nobody reads (docs/security.md)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import unprivileged
from ..supervisor.conftest import free_port
from .harness import ROOT, serving, spooled

#: The bound the issue asks for: one worker's peak resident memory under the attack.
WORKER_MEMORY_BOUND = 128 * 1024 * 1024
SOURCES = [f"127.0.0.{n}" for n in range(2, 22)]  # 20 client addresses
SESSIONS_PER_SOURCE = 10
CONTENT = 9 * 1024 * 1024  # of the 10 MB message size limit
LINE = b"x" * 998 + b"\r\n"


def peak_memory(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.M)
    assert match, status
    return int(match.group(1)) * 1024


def read_reply(conn: socket.socket) -> bytes:
    """One whole reply (the last line has a space after the code)."""
    data = b""
    while not re.search(rb"(?:^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = conn.recv(4096)
        assert chunk, data
        data += chunk
    return data


def open_unfinished_message(source: str, port: int) -> socket.socket:
    """A session from ``source`` that sends 9 MB of DATA content and never ends it."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0))
    assert read_reply(conn).startswith(b"220")
    for command in (b"EHLO attacker.example", b"MAIL FROM:<a@example.net>",
                    b"RCPT TO:<b@example.org>", b"DATA"):  # fmt: skip
        conn.sendall(command + b"\r\n")
        reply = read_reply(conn)
    assert reply.startswith(b"354"), reply
    block = LINE * 1024
    for _ in range(CONTENT // len(block)):
        conn.sendall(block)
    return conn


def test_200_sessions_holding_9_mb_each_keep_a_worker_under_128_mb(spool_dir: Path) -> None:
    """The audit's attack: sessions with 9 MB of unfinished DATA took one worker from 29 MB
    to 627 MB. Content beyond 64 KiB per session now waits on disk, so 200 of them from 20
    addresses (1.8 GB in all) leave the worker under 128 MB, and a normal client is served
    meanwhile."""
    with serving(spool_dir, workers=1) as server:
        [worker] = server.worker_pids()
        # The worker's own record (the supervisor's has a "component").
        ready = server.wait_for("worker_ready", count=2)
        [ready] = [r for r in ready if "component" not in r]
        assert ready["content_directory"] == str(spool_dir / "tmp")
        sessions: list[socket.socket] = []
        try:
            with ThreadPoolExecutor(max_workers=len(SOURCES)) as pool:
                jobs = [
                    pool.submit(open_unfinished_message, source, server.port)
                    for source in SOURCES
                    for _ in range(SESSIONS_PER_SOURCE)
                ]
                sessions = [job.result(timeout=300) for job in jobs]
            assert len(sessions) == 200
            body = b"Subject: served meanwhile\r\n\r\nhello\r\n"
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                refused = client.sendmail("c@example.net", ["d@example.org"], body)
            assert refused == {}
            peak = peak_memory(worker)
            assert peak <= WORKER_MEMORY_BOUND, f"worker peaked at {peak / 2**20:.0f} MiB"
        finally:
            for conn in sessions:
                conn.close()
    [record] = spooled(spool_dir)
    assert record.email.data.endswith(body)


def test_a_log_nobody_reads_stops_neither_the_service_nor_its_stop(tmp_path: Path) -> None:
    """With stderr on a FIFO that nobody read, the 127th connection got no greeting, the
    worker died and the supervisor hung in a pipe write. Now every connection is served,
    lines beyond what the log takes are dropped and counted, the count is reported once
    the reader is back, and TERM stops the server in time."""
    fifo = Path(tempfile.mkdtemp(prefix="wildboar-fifo-", dir="/tmp")) / "stderr"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR)  # held open, never read until the end
    port = free_port()
    with unprivileged.spool_directory() as spool:
        server = subprocess.Popen(
            [sys.executable, "-m", "wildboar.cli", "serve", "--workers", "1", "--listen",
             f"127.0.0.1:{port}", "--spool", str(spool), "--hostname", "mx.test.example"],
            stdout=subprocess.DEVNULL, stderr=writer, cwd=ROOT,
            env={**os.environ, **unprivileged.env()}, start_new_session=True,
        )  # fmt: skip
        try:
            wait_listening(port)
            with ThreadPoolExecutor(max_workers=8) as pool:
                greeted = sum(pool.map(lambda _: greet_and_quit(port), range(4000)))
            assert greeted == 4000
            assert stat.S_ISFIFO(os.fstat(writer).st_mode)
            lines = drain_fifo(writer)
            dropped = [r for r in lines if r.get("event") == "log_lines_dropped"]
            assert dropped and dropped[0]["lines"] > 0, lines[-5:]
            server.terminate()
            assert server.wait(timeout=30) == 0
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, 9)
            server.wait(timeout=10)
            os.close(writer)


def wait_listening(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as c:
            if c.recv(4).startswith(b"220"):
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def greet_and_quit(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        greeting = read_reply(conn)
        conn.sendall(b"QUIT\r\n")
        return greeting.startswith(b"220") and read_reply(conn).startswith(b"221")


def drain_fifo(fd: int, quiet: float = 2.0) -> list[dict[str, object]]:
    """Read what waits in the FIFO (and what comes once its writer can write again) until
    ``quiet`` seconds pass without a line."""
    os.set_blocking(fd, False)
    data = b""
    last = time.monotonic()
    while time.monotonic() - last < quiet:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        data += chunk
        last = time.monotonic()
    os.set_blocking(fd, True)
    records = []
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


def test_a_worker_is_no_island_for_its_own_user_to_reach_into(spool_dir: Path) -> None:
    """Workers were dumpable: any process of their user (another daemon running as nobody,
    a compromised worker) could read their environment (a broker password given with
    --amqp-url), ptrace them or take their descriptors. Now each worker is non-dumpable,
    and its soft limit on open files is its hard one."""
    with serving(spool_dir, workers=1) as server:
        [worker] = server.worker_pids()
        probe = subprocess.run(
            [sys.executable, "-c", f"open('/proc/{worker}/environ', 'rb').read()"],
            capture_output=True, text=True, timeout=30, check=False,
            **unprivileged.popen_user(),  # type: ignore[arg-type]
        )  # fmt: skip
        assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe
        limits = Path(f"/proc/{worker}/limits").read_text()
        [soft, hard] = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits).groups()  # type: ignore[union-attr]
        assert soft == hard, limits
