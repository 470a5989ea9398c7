"""``wildboar serve`` end to end: real clients (smtplib, swaks, Postfix's smtp-source), real
processes, real signals, and the spool as the proof of what was accepted."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .. import unprivileged
from ..supervisor.test_privileges import assert_unprivileged, free_privileged_port
from .harness import Server, serving, spooled

ERRORS: list[str] = []
#: A configuration file must say whose mail the server takes; these tests take anyone's.
ANY_DOMAIN = '[recipients]\ndomains = ["*"]\n'


def send_one(port: int, subject: str, *, timeout: float = 15.0) -> bool:
    """One message with a unique subject; True only if the server answered 250."""
    body = f"Subject: {subject}\r\nMessage-ID: <{subject}@example.net>\r\n\r\nhello\r\n".encode()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as client:
            client.sendmail("a@example.net", ["b@example.org"], body)
        return True
    except (smtplib.SMTPException, OSError) as error:
        ERRORS.append(f"{time.monotonic():.3f} {type(error).__name__}: {error}")
        return False


def subjects(spool: Path) -> list[str]:
    found = []
    for record in spooled(spool):
        match = re.search(rb"\r\nSubject: ([^\r]*)\r\n", record.email.data)
        if match:
            found.append(match.group(1).decode())
    return found


def smtp_source(port: int, messages: int, sessions: int, tag: str, *extra: str) -> str:
    result = subprocess.run(
        ["smtp-source", "-N", "-c", "-s", str(sessions), "-m", str(messages), "-l", "1024",
         "-f", "sender@example.net", "-t", f"{tag}@example.org", *extra, f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


class Load:
    """Clients in threads sending uniquely-named messages until stopped; records which got
    250 and which connections were refused."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.port = port
        self.accepted: list[str] = []
        self.failed = 0
        self.refused = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            subject = uuid.uuid4().hex
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
            except ConnectionRefusedError:
                with self._lock:
                    self.refused += 1
                continue
            ok = send_one(self.port, subject)
            with self._lock:
                if ok:
                    self.accepted.append(subject)
                else:
                    self.failed += 1


def test_real_clients_spool_byte_for_byte(spool_dir: Path) -> None:
    spool = spool_dir
    with serving(spool, workers=2) as server:
        body = b"Subject: via smtplib\r\n\r\n..leading dot\r\n\xe2\x82\xac 8-bit\r\n"
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("smtplib.example")
            client.sendmail("a@example.net", ["b@example.org", "c@example.org"], body,
                            mail_options=["BODY=8BITMIME"])  # fmt: skip
        swaks = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{server.port}", "--from", "s@example.net",
             "--to", "t@example.org", "--header", "Subject: via swaks", "--body", "swaks body"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert swaks.returncode == 0, swaks.stdout
        output = smtp_source(server.port, 50, 5, "source")
        assert "fatal" not in output, output
    records = spooled(spool)
    assert len(records) == 52
    [mine] = [r for r in records if b"Subject: via smtplib" in r.email.data]
    assert mine.email.data == mine.email.received.encode() + b"\r\n" + body
    assert mine.email.to == ["b@example.org", "c@example.org"]
    [theirs] = [r for r in records if b"Subject: via swaks" in r.email.data]
    assert b"swaks body" in theirs.email.data
    sourced = [r for r in records if r.email.to[0].endswith("source@example.org")]
    assert len(sourced) == 50
    assert len({r.email.to[0] for r in sourced}) == 50  # -N numbers each message
    assert len({r.server.id for r in records}) <= 2  # two workers at most


def test_kill_9_a_worker_twice_loses_nothing(spool_dir: Path) -> None:
    spool = spool_dir
    with serving(spool, workers=2) as server:
        port = server.port
        runs: list[str] = []
        with Load(port, threads=3) as load:

            def source() -> None:
                sent = 0
                end = time.monotonic() + 120
                for run in range(20):  # smtp-source gives up on a lost connection: go on
                    if sent >= 2000 or time.monotonic() > end:
                        break
                    output = smtp_source(port, 2000 - sent, 10, f"run{run}")
                    runs.append(output)
                    counts = [int(n) for n in re.findall(r"\d+", output.split("smtp-source")[0])]
                    sent += max(counts, default=0) if "fatal" in output else 2000 - sent

            feeder = threading.Thread(target=source)
            feeder.start()
            for _ in range(2):
                time.sleep(1.5)
                victim = server.worker_pids()[0]
                os.kill(victim, signal.SIGKILL)
            feeder.join(timeout=150)
            time.sleep(1.0)
        assert len(server.wait_for("worker_spawned", count=4, component="supervisor")) >= 4
        assert not feeder.is_alive()
    spool_subjects = subjects(spool)
    # Every message that got 250 is in the spool exactly once.
    for subject in load.accepted:
        assert spool_subjects.count(subject) == 1, subject
    assert len(load.accepted) > 0
    # The kills did interrupt sessions (else this test would prove nothing).
    assert load.failed + sum("fatal" in output for output in runs) > 0
    # Nothing is spooled twice (smtp-source numbers its recipients per run).
    recipients = [r.email.to[0] for r in spooled(spool)]
    sourced = [r for r in recipients if re.fullmatch(r"\d+run\d+@example\.org", r)]
    assert len(sourced) == len(set(sourced))
    assert len(sourced) >= 1000, runs[-3:]
    assert len(spool_subjects) == len(set(spool_subjects))


def test_hup_reloads_workers_without_refusing_or_losing(spool_dir: Path) -> None:
    spool = spool_dir
    with serving(spool, workers=2) as server:
        before = set(server.worker_pids())
        with Load(server.port, threads=4) as load:
            time.sleep(1.0)
            server.signal(signal.SIGHUP)
            server.wait_for("reloaded", component="supervisor", timeout=60)
            time.sleep(1.0)
        deadline = time.monotonic() + 60  # the old workers drain their last sessions
        while not before.isdisjoint(server.worker_pids()) and time.monotonic() < deadline:
            time.sleep(0.2)
        after = set(server.worker_pids())
        assert before.isdisjoint(after) and len(after) == 2, (before, after)
        assert load.refused == 0
        opened = {r["connection"] for r in server.events("connection_open")}
        closed = {r["connection"] for r in server.events("connection_close")}
        assert load.failed == 0, (ERRORS, opened - closed, "".join(server.stderr[-80:]))
    spool_subjects = subjects(spool)
    assert sorted(load.accepted) == sorted(spool_subjects)


def test_term_lets_in_flight_sessions_finish(spool_dir: Path) -> None:
    spool = spool_dir
    server = Server(spool, workers=2)
    try:
        server.wait_ready()
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=20)
        client.ehlo("c.example")
        client.mail("a@example.net")
        client.rcpt("b@example.org")
        server.signal(signal.SIGTERM)
        server.wait_for("stopping", component="supervisor")
        time.sleep(0.5)
        with contextlib.suppress(OSError):  # the listener no longer accepts
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        assert client.data(b"Subject: in flight\r\n\r\nfinished\r\n")[0] == 250
        client.quit()
        assert server.proc.wait(timeout=60) == 0
    finally:
        if server.proc.poll() is None:
            server.kill()
    assert subjects(spool) == ["in flight"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def socket_activated(spool: Path, address: str, port: int, subject: str) -> Iterator[Server]:
    """``wildboar serve`` under ``systemd-socket-activate`` on ``address``, which binds at
    once and starts serve on the first connection: one message with ``subject`` sent."""
    # systemd-socket-activate hands the program only the variables named with -E.
    passed = [f"-E{name}={value}" for name, value in unprivileged.env().items()]
    command = [
        "systemd-socket-activate", "-l", address, "--fdname=smtp", *passed,
        sys.executable, "-m", "wildboar.cli", "serve", "--workers", "1",
        "--spool", str(spool), "--hostname", "mx.test.example",
    ]  # fmt: skip
    server = Server(spool, command=command)
    try:
        deadline = time.monotonic() + 30
        while not send_one(port, subject, timeout=30):
            assert time.monotonic() < deadline, "".join(server.stderr)
            time.sleep(0.2)
        yield server
    finally:
        server.stop()


def test_socket_activation(spool_dir: Path) -> None:
    port = free_port()
    with socket_activated(spool_dir, f"127.0.0.1:{port}", port, "activated") as server:
        [listening] = server.wait_for("listening", component="supervisor")
        assert listening.get("source") == "systemd"
        # No listener was configured: nothing is ignored, and nothing is said to be.
        assert not server.events("listen_ignored", component="supervisor")
    assert subjects(spool_dir) == ["activated"]


def test_ipv4_client_on_a_dual_stack_socket_is_recorded_as_ipv4(spool_dir: Path) -> None:
    """systemd's sockets are dual-stack by default (BindIPv6Only=default): an IPv4 client
    arrives as ::ffff:a.b.c.d on both ends; the record says IPv4, both ends alike."""
    port = free_port()
    with socket_activated(spool_dir, f"[::]:{port}", port, "dual stack"):
        pass
    [record] = spooled(spool_dir)
    assert record.connection.remote.family == "ipv4"
    assert record.connection.remote.address == "127.0.0.1"
    assert record.connection.local.address == "127.0.0.1"
    assert record.connection.local.port == port


def test_root_start_binds_port_below_1024_and_workers_hold_no_privilege(spool_dir: Path) -> None:
    assert unprivileged.AS_ROOT, "this test runs as root, as CI does"
    port = free_privileged_port()
    with serving(spool_dir, workers=2, listen=[f"127.0.0.1:{port}"]) as server:
        assert server.port == port
        assert send_one(port, "privileged port")
        pids = server.worker_pids()
        assert len(pids) == 2
        for pid in [server.proc.pid, *pids]:
            assert_unprivileged(pid)
    assert subjects(spool_dir) == ["privileged port"]


def ehlo_size(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("c.example")
        return int(client.esmtp_features["size"])


def greeting(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        return sock.recv(512).decode()


def test_hup_applies_hostname_and_drain_from_the_file(spool_dir: Path) -> None:
    """Values the file sets (not flags) are the reloaded ones: the greeting's hostname, and
    the drain deadline the supervisor gives the new workers when they stop."""
    config = spool_dir.parent / "wildboar.toml"
    config.write_text(f'hostname = "before.example.org"\n[timeouts]\ndrain = 30\n{ANY_DOMAIN}')
    argv = [sys.executable, "-m", "wildboar.cli", "serve", "--workers", "1", "--listen",
            "127.0.0.1:0", "--spool", str(spool_dir), "--config", str(config)]  # fmt: skip
    with serving(spool_dir, command=argv, workers=1) as server:
        assert greeting(server.port).startswith("220 before.example.org ")
        config.write_text(f'hostname = "after.example.org"\n[timeouts]\ndrain = 2\n{ANY_DOMAIN}')
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", component="supervisor", timeout=60)
        assert greeting(server.port).startswith("220 after.example.org ")
        assert server.stop() == 0
    # The old worker drained with its own 30 s at the reload, the new one with 2 s at stop.
    deadlines = [r["deadline"] for r in server.events("worker_draining", "supervisor")]
    assert deadlines == [30.0, 2.0]
    assert [r["deadline"] for r in server.events("stopping", "supervisor")] == [2.0]


def test_hup_applies_the_reloaded_configuration(spool_dir: Path) -> None:
    config = spool_dir.parent / "wildboar.toml"
    config.write_text(f"[limits]\nmessage_size = 1000000\n{ANY_DOMAIN}")
    with serving(spool_dir, "--config", str(config), workers=1) as server:
        assert ehlo_size(server.port) == 1_000_000
        config.write_text(f"[limits]\nmessage_size = 2000000\n{ANY_DOMAIN}")
        server.signal(signal.SIGHUP)
        server.wait_for("reloaded", component="supervisor", timeout=60)
        assert ehlo_size(server.port) == 2_000_000
        # A broken configuration does not take the server down: the reload is abandoned.
        config.write_text(f"[limits]\nmessage_size = -1\n{ANY_DOMAIN}")
        server.signal(signal.SIGHUP)
        server.wait_for("reload_failed", component="supervisor", timeout=60)
        assert ehlo_size(server.port) == 2_000_000
