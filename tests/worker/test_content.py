"""Content beyond a session's memory threshold, and how long a client may take: the rate
of its content and the lifetime of its session (docs/security.md)."""

from __future__ import annotations

import contextlib
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from wildboar import message as M

from .. import unprivileged
from .harness import WorkerProcess, running_worker, spool_files


def start_data(sock: socket.socket) -> None:
    file = sock.makefile("rb")
    assert file.readline().startswith(b"220")
    sock.sendall(b"EHLO slow.example\r\n")
    while not file.readline().startswith(b"250 "):
        pass
    sock.sendall(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    assert [file.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]


def test_a_message_larger_than_memory_is_spooled_byte_for_byte(spool_dir: Path) -> None:
    """3 MB of content (64 KiB are kept in memory, the rest goes to a temp file) arrive in
    the spool exactly, and no temp file is left behind."""
    body = b"Subject: large\r\n\r\n" + b"".join(
        b"%07d " % n + b"y" * 90 + b"\r\n" for n in range(30_000)
    )
    with running_worker(spool_dir) as worker:
        with smtplib.SMTP("127.0.0.1", worker.port, timeout=30) as client:
            assert client.sendmail("a@example.net", ["b@example.org"], body) == {}
        [path] = spool_files(spool_dir)
        record = msgspec.msgpack.decode(path.read_bytes(), type=M.Message)
        assert record.email.data.endswith(b"\r\n" + body)
        assert list((spool_dir / "tmp").iterdir()) == []


@contextlib.contextmanager
def tiny_spool(size: str) -> Iterator[Path]:
    """A spool on a tmpfs of ``size``, owned by the workers' user: a disk that fills up."""
    with unprivileged.spool_directory() as base:
        owner = "uid=65534,gid=65534," if unprivileged.AS_ROOT else ""
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,{owner}", "tmpfs", str(base)],
            check=True,
        )
        try:
            yield base
        finally:
            subprocess.run(["umount", "-l", str(base)], check=False)


def test_content_that_cannot_be_kept_gets_452_and_nothing_is_spooled() -> None:
    """The content's temp file fills the disk: the rest of the content is read and dropped,
    and the end of data gets 452 4.3.1 (the sender retries), never 250."""
    assert unprivileged.AS_ROOT, "mounting a tmpfs needs root, as the tests have in CI"
    with tiny_spool("1m") as spool, running_worker(spool) as worker:
        body = b"Subject: too big for the disk\r\n\r\n" + (b"z" * 998 + b"\r\n") * 2048
        with smtplib.SMTP("127.0.0.1", worker.port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@example.net", ["b@example.org"], body)
            assert refused.value.smtp_code == 452
            assert refused.value.smtp_error.startswith(b"4.3.1")
            # The session goes on: a small message fits.
            assert (
                client.sendmail("a@example.net", ["b@example.org"], b"Subject: s\r\n\r\nx\r\n")
                == {}
            )
        assert len(spool_files(spool)) == 1


def test_content_slower_than_the_data_rate_times_out(spool_dir: Path) -> None:
    """1100 octets every 1.5 s moved the old deadline on (a kilobyte was progress) for
    ever; against a data rate of 5000 octets a second the data-block timeout runs out."""
    env = {"WILDBOAR_TIMEOUTS_DATA_BLOCK": "2", "WILDBOAR_TIMEOUTS_DATA_RATE": "5000"}
    with (
        running_worker(spool_dir, env=env) as worker,
        socket.create_connection(("127.0.0.1", worker.port), timeout=20) as sock,
    ):
        start_data(sock)
        sock.settimeout(1.5)
        started = time.monotonic()
        reply = b""
        while not reply and time.monotonic() - started < 20:
            with contextlib.suppress(OSError):
                sock.sendall(b"d" * 1098 + b"\r\n")
            with contextlib.suppress(TimeoutError):
                reply = sock.recv(512)
        assert reply.startswith(b"421 4.4.2 "), reply
        assert time.monotonic() - started < 8


def test_content_at_the_data_rate_is_not_timed_out(spool_dir: Path) -> None:
    env = {"WILDBOAR_TIMEOUTS_DATA_BLOCK": "2", "WILDBOAR_TIMEOUTS_DATA_RATE": "1000"}
    with (
        running_worker(spool_dir, env=env) as worker,
        socket.create_connection(("127.0.0.1", worker.port), timeout=20) as sock,
    ):
        start_data(sock)
        for _ in range(12):  # 6 s at 2000 octets a second, three data-block timeouts
            sock.sendall(b"e" * 998 + b"\r\n")
            time.sleep(0.5)
        sock.sendall(b".\r\n")
        assert sock.recv(512).startswith(b"250 ")


def test_no_session_outlives_its_lifetime(spool_dir: Path) -> None:
    """A client that keeps sending commands (NOOP every half second) held its session for
    ever; now ``timeouts.session`` ends it with 421 4.4.2."""
    env = {"WILDBOAR_TIMEOUTS_SESSION": "3"}
    with (
        running_worker(spool_dir, env=env) as worker,
        socket.create_connection(("127.0.0.1", worker.port), timeout=20) as sock,
    ):
        file = sock.makefile("rb")
        assert file.readline().startswith(b"220")
        started = time.monotonic()
        reply = b""
        while time.monotonic() - started < 15:
            with contextlib.suppress(OSError):
                sock.sendall(b"NOOP\r\n")
            reply = file.readline()
            if not reply.startswith(b"250"):
                break
            time.sleep(0.5)
        assert reply.startswith(b"421 4.4.2 ") and b"too long" in reply, reply
        assert 3 <= time.monotonic() - started < 6
        assert worker.wait_log("session_timeout")[0]["lifetime"] is True


def test_a_worker_fits_its_sessions_to_the_open_files_it_may_have(spool_dir: Path) -> None:
    """Each session in DATA past its memory holds two descriptors (its socket, its temp
    file): a worker raises its soft limit to the hard one, and with a hard limit of 300 it
    serves (300 - 64) / 2 sessions at most instead of running out of descriptors at ~140
    and refusing everyone (as an audit saw with 1024 and 1000 sessions)."""
    worker = WorkerProcess(spool_dir, max_files=300)
    try:
        worker.receive("ready")
        [capped] = worker.wait_log("sessions_capped")
        assert capped["per_worker"] == 118 and capped["configured"] == 1000
    finally:
        worker.close()
