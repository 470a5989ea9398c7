"""A real worker process over real TCP: sessions, the spool handoff, limits, timeouts,
drain, and its control channel."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from wildboar import message as M

from .harness import WorkerProcess, running_worker, spool_files

CONTENT = (
    b"From: Alice <alice@example.net>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: test\r\n"
    b"\r\n"
    b"..a line starting with a dot\r\n"
    b"caf\xc3\xa9 8-bit\r\n"
)


def load(path: Path) -> M.Message:
    return msgspec.msgpack.decode(path.read_bytes(), type=M.Message)


def converse(port: int, data: bytes, *, expect: int, timeout: float = 10.0) -> bytes:
    """Send ``data``, then read until ``expect`` complete replies arrived (greeting included)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while len(re.findall(rb"^\d{3} [^\r\n]*\r\n", received, re.M)) < expect:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_message_is_spooled_byte_for_byte(spool_dir: Path) -> None:
    with running_worker(spool_dir) as worker:
        with smtplib.SMTP("127.0.0.1", worker.port, timeout=10) as client:
            code, banner = client.ehlo("client.example")
            assert code == 250 and b"PIPELINING" in banner and b"SMTPUTF8" in banner
            client.mail("alice@example.net", ["BODY=8BITMIME", f"SIZE={len(CONTENT)}"])
            client.rcpt("bob@example.org")
            code, text = client.data(CONTENT)
            assert code == 250
        [path] = spool_files(spool_dir)
        record = load(path)
        assert text.decode().endswith(record.email.id)
        assert path.name == record.email.id.removeprefix("urn:uuid:") + ".msgpack"
        received = record.email.received.encode() + b"\r\n"
        assert record.email.data == received + CONTENT  # smtplib dot-stuffs, we unstuff
        assert received.startswith(b"Received: from client.example ([127.0.0.1])\r\n")
        assert record.email.sender == "alice@example.net"
        assert record.email.to == ["bob@example.org"]
        assert record.email.body == "8BITMIME"
        assert record.connection.remote.address == "127.0.0.1"
        assert record.connection.local.port == worker.port
        assert record.server.id == worker.log_events("worker_ready")[0]["server"]
        for urn in (record.server.id, record.connection.id, record.transaction.id, record.email.id):
            assert urn.startswith("urn:uuid:")
        accepted = worker.wait_log("message_accepted")
        assert [a["message"] for a in accepted] == [record.email.id]
        assert accepted[0]["connection"] == record.connection.id


def test_many_messages_on_one_connection_and_pipelining(spool_dir: Path) -> None:
    with running_worker(spool_dir) as worker:
        reply = converse(worker.port, b"EHLO c.example\r\n", expect=2)  # greeting + EHLO
        assert reply.startswith(b"220 mx.test.example ESMTP\r\n")
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as sock:
            file = sock.makefile("rb")
            assert file.readline().startswith(b"220 ")
            sock.sendall(b"EHLO c.example\r\n")
            while not file.readline().startswith(b"250 "):
                pass
            for index in range(20):
                sock.sendall(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
                assert [file.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
                sock.sendall(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % index)
                assert file.readline().startswith(b"250 2.0.0 Ok: queued as urn:uuid:")
            sock.sendall(b"QUIT\r\n")
            assert file.readline().startswith(b"221 ")
        records = [load(path) for path in spool_files(spool_dir)]
        subjects = sorted(r.email.data.split(b"Subject: ")[1].split(b"\r\n")[0] for r in records)
        assert subjects == sorted(b"%d" % i for i in range(20))
        assert len({r.connection.id for r in records}) == 1
        assert len({r.transaction.id for r in records}) == 20


def test_swaks_delivers(spool_dir: Path) -> None:
    with running_worker(spool_dir) as worker:
        result = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(worker.port), "--from",
             "sender@example.net", "--to", "rcpt@example.org", "--helo", "swaks.example",
             "--header", "Subject: swaks test", "--body", "hello from swaks"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        [path] = spool_files(spool_dir)
        record = load(path)
        assert b"Subject: swaks test\r\n" in record.email.data
        assert b"hello from swaks" in record.email.data
        assert record.transaction.helo_name == "swaks.example"


def test_smuggling_over_tcp_is_refused_and_nothing_spooled(spool_dir: Path) -> None:
    with running_worker(spool_dir) as worker:
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as sock:
            file = sock.makefile("rb")
            file.readline()
            sock.sendall(b"EHLO c.example\r\n")
            while not file.readline().startswith(b"250 "):
                pass
            sock.sendall(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
            assert [file.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
            sock.sendall(
                b"Subject: x\r\n\r\nbody\n.\nMAIL FROM:<ceo@victim.example>\r\n"
                b"RCPT TO:<x@victim.example>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
            )
            assert file.readline().startswith(b"550 5.5.2 ")
            sock.sendall(b"NOOP\r\n")
            assert file.readline().startswith(b"250 2.0.0")
            sock.sendall(b"QUIT\r\n")
            assert file.readline().startswith(b"221 ")
        assert spool_files(spool_dir) == []
        # The refusal is logged with what an operator searches by (docs/operations.md).
        [refused] = worker.wait_log("message_refused")
        assert refused["sender"] == "a@example.net" and refused["recipients"] == 1
        assert refused["message"].startswith("urn:uuid:") and refused["size"] > 0
        assert refused["server"].startswith("urn:uuid:")
        assert refused["reply"].startswith("550 5.5.2 ")
        [closed] = worker.wait_log("connection_close")
        assert closed["remote"] == "127.0.0.1"


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


# A worker's resident memory may grow by at most this much whatever a client sends.
MEMORY_BOUND_KIB = 64 * 1024


def test_hostile_input_keeps_memory_bounded_and_others_unaffected(spool_dir: Path) -> None:
    with running_worker(spool_dir) as worker:
        before = rss_kib(worker.proc.pid)
        other = smtplib.SMTP("127.0.0.1", worker.port, timeout=30)
        other.ehlo("other.example")
        with socket.create_connection(("127.0.0.1", worker.port), timeout=30) as sock:
            file = sock.makefile("rb")
            file.readline()
            # A 100 MB line: one 500 reply, the line is dropped as it arrives.
            piece = b"X" * (1 << 20)
            for _ in range(100):
                sock.sendall(piece)
            sock.sendall(b"\r\n")
            assert file.readline().startswith(b"500 5.5.2 ")
            # 10,000 pipelined RCPTs: 1000 accepted, the rest 452, nothing lost.
            sock.sendall(b"EHLO c.example\r\n")
            while not file.readline().startswith(b"250 "):
                pass
            sock.sendall(b"MAIL FROM:<a@example.net>\r\n")
            assert file.readline().startswith(b"250 ")
            rcpts = b"".join(b"RCPT TO:<r%05d@example.org>\r\n" % i for i in range(10_000))
            sock.sendall(rcpts)
            codes = [file.readline()[:9] for _ in range(10_000)]
            assert codes.count(b"250 2.1.5") == 1000
            assert codes.count(b"452 4.5.3") == 9000
            assert rss_kib(worker.proc.pid) - before < MEMORY_BOUND_KIB
            # meanwhile, another session works normally
            assert other.noop()[0] == 250
            other.sendmail("a@example.net", ["b@example.org"], b"Subject: ok\r\n\r\nfine\r\n")
        other.quit()
        assert len(spool_files(spool_dir)) == 1


def test_slow_client_times_out(spool_dir: Path) -> None:
    env = {"WILDBOAR_TIMEOUTS_COMMAND": "2"}
    with running_worker(spool_dir, env=env) as worker:
        with socket.create_connection(("127.0.0.1", worker.port), timeout=20) as sock:
            file = sock.makefile("rb")
            file.readline()
            start = time.monotonic()
            sock.settimeout(0.5)
            reply = b""
            for byte in b"EHLO slow.example.with.a.long.name\r\n":
                sock.send(bytes([byte]))  # one byte every 0.5 s: slower than a line per 2 s
                try:
                    reply += sock.recv(1024)
                except TimeoutError:
                    continue
                if reply:
                    break
            elapsed = time.monotonic() - start
            assert reply.startswith(b"421 4.4.2 "), (reply, elapsed)
            assert elapsed < 8, elapsed  # 2 s timeout, 1 s sweeper period, a loaded machine
        assert worker.wait_log("session_timeout")


def test_connection_limit_per_client_ip(spool_dir: Path) -> None:
    env = {"WILDBOAR_SESSIONS_PER_CLIENT_IP": "2"}
    with running_worker(spool_dir, env=env) as worker:
        first = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
        second = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
        assert first.recv(100).startswith(b"220 ")
        assert second.recv(100).startswith(b"220 ")
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as third:
            assert third.recv(100).startswith(b"421 4.7.0 ")
            assert third.recv(100) == b""  # closed
        first.close()
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as fourth:
            assert fourth.recv(100).startswith(b"220 ")
        second.close()


def test_heartbeats_count_sessions_and_messages(spool_dir: Path) -> None:
    with (
        running_worker(spool_dir) as worker,
        smtplib.SMTP("127.0.0.1", worker.port, timeout=10) as client,
    ):
        client.sendmail("a@example.net", ["b@example.org"], b"Subject: 1\r\n\r\nx\r\n")
        beat = worker.receive("heartbeat")
        deadline = time.monotonic() + 5
        while beat["messages"] < 1 and time.monotonic() < deadline:
            beat = worker.receive("heartbeat")
        assert beat["messages"] == 1
        assert beat["sessions"] == 1


def test_drain_lets_a_transaction_finish_then_exits(spool_dir: Path) -> None:
    with running_worker(spool_dir) as worker:
        client = smtplib.SMTP("127.0.0.1", worker.port, timeout=10)
        client.ehlo("c.example")
        client.mail("a@example.net")
        client.rcpt("b@example.org")
        worker.control.send(b'{"type": "drain", "deadline": 10}')
        worker.receive("stopping")
        # new connections are no longer accepted by this worker
        assert client.data(b"Subject: in flight\r\n\r\nx\r\n")[0] == 250
        client.quit()
        assert worker.proc.wait(timeout=20) == 0
        assert len(spool_files(spool_dir)) == 1


def test_drain_deadline_sends_421_to_idle_sessions(spool_dir: Path) -> None:
    with running_worker(spool_dir) as worker:
        with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as sock:
            file = sock.makefile("rb")
            file.readline()
            worker.control.send(b'{"type": "drain", "deadline": 1}')
            assert file.readline().startswith(b"421 4.3.2 ")
        assert worker.proc.wait(timeout=20) == 0


def test_worker_exits_when_its_supervisor_is_gone(spool_dir: Path) -> None:
    with running_worker(spool_dir) as worker:
        worker.control.close()
        assert worker.proc.wait(timeout=20) == 0
        assert worker.wait_log("supervisor_lost")


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        ((), {"WILDBOAR_LIMITS_RECIPIENTS": "5"}, "limits"),
        (("--handoff", "spool"), {}, "spool"),
    ],
)
def test_boot_errors_exit_3_with_one_line(
    spool_dir: Path, extra: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    blocker = spool_dir / "not-a-directory"
    blocker.write_text("")
    blocker.chmod(0o666)
    spool = blocker / "spool" if message == "spool" else spool_dir
    worker = WorkerProcess(spool, *extra, env=env)
    try:
        assert worker.proc.wait(timeout=20) == 3
        worker._reader.join(timeout=5)
        lines = [line for line in worker.stderr if line.strip()]
        assert len(lines) == 1 and message in lines[0], lines
        assert "Traceback" not in "".join(worker.stderr)
    finally:
        worker.close()


def test_a_worker_with_few_descriptors_refuses_sessions_instead_of_running_out(
    spool_dir: Path,
) -> None:
    """With a hard limit of 100 open files a worker serves (100 - 64) / 2 = 18 sessions
    (two descriptors each at most), so 80 clients that connect and wait get 421 4.7.0
    beyond that instead of an accept loop out of descriptors, and the worker serves on."""
    worker = WorkerProcess(spool_dir, max_files=100)  # the kernel's limit, for real
    try:
        worker.receive("ready")
        assert worker.wait_log("sessions_capped")[0]["per_worker"] == 18
        clients = [
            socket.create_connection(("127.0.0.1", worker.port), timeout=10) for _ in range(80)
        ]
        greetings = [client.recv(512) for client in clients]
        assert sum(g.startswith(b"220 ") for g in greetings) == 18
        assert sum(g.startswith(b"421 4.7.0 ") for g in greetings) == 62
        for client in clients:
            client.close()
        time.sleep(1.5)
        with smtplib.SMTP("127.0.0.1", worker.port, timeout=10) as client:
            assert client.noop()[0] == 250
        assert worker.proc.poll() is None
    finally:
        worker.close()


def test_a_client_that_speaks_before_the_greeting_gets_554(spool_dir: Path) -> None:
    """Input already waiting when the connection is taken (the worker is stopped while the
    client connects and sends EHLO) is a sender that does not wait for the 220: it gets
    the greeting, then 554 5.5.0, and the session closes (docs/protocol.md)."""
    with running_worker(spool_dir) as worker:
        worker.wait_log("worker_ready")
        os.kill(worker.proc.pid, signal.SIGSTOP)
        try:
            early = socket.create_connection(("127.0.0.1", worker.port), timeout=20)
            early.sendall(b"EHLO early.example\r\n")
        finally:
            os.kill(worker.proc.pid, signal.SIGCONT)
        with early:
            reply = b""
            while chunk := early.recv(4096):
                reply += chunk
        lines = reply.decode().splitlines()
        assert lines[0].startswith("220 ")
        assert lines[1:] == ["554 5.5.0 Error: SMTP protocol synchronization"]
        # A client that waits for the greeting is served as always.
        with smtplib.SMTP("127.0.0.1", worker.port, timeout=20) as client:
            assert client.ehlo("patient.example")[0] == 250


def flooder(port: int, commands: int, source: str = "127.0.0.1") -> socket.socket:
    """A client that pipelines ``commands`` HELPs (17x their size in replies) and never
    reads a reply; a small receive buffer, so the worker's replies back up at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"EHLO flood.example\r\n")
    time.sleep(0.5)  # the greeting and the EHLO reply fill what little it may receive
    sock.setblocking(False)
    data = b"HELP\r\n" * commands
    end = time.monotonic() + 5
    while data and time.monotonic() < end:  # as much as the kernel takes in 5 s
        try:
            data = data[sock.send(data) :]
        except BlockingIOError:
            time.sleep(0.01)
    return sock


def test_a_client_that_never_reads_is_timed_out_and_its_place_freed(spool_dir: Path) -> None:
    """Its 421 cannot go out (it reads nothing): the session is dropped a second later,
    and the per-IP place it held is free again."""
    env = {"WILDBOAR_TIMEOUTS_COMMAND": "2", "WILDBOAR_SESSIONS_PER_CLIENT_IP": "1"}
    with running_worker(spool_dir, env=env) as worker:
        flood = flooder(worker.port, 45_000)
        try:
            deadline = time.monotonic() + 15
            while True:
                with socket.create_connection(("127.0.0.1", worker.port), timeout=10) as sock:
                    greeting = sock.recv(512)
                if greeting.startswith(b"220 "):
                    break
                assert greeting.startswith(b"421 4.7.0"), greeting
                assert time.monotonic() < deadline, "the stuck session keeps its place"
                time.sleep(0.5)
        finally:
            flood.close()


def test_pipelined_floods_do_not_starve_the_worker_or_other_sessions(spool_dir: Path) -> None:
    """Sessions pushing hundreds of KB of pipelined commands without reading: the worker
    handles a bounded number per turn, so its heartbeat and a polite client go on."""
    with running_worker(spool_dir) as worker:
        before = rss_kib(worker.proc.pid)
        floods = [flooder(worker.port, 45_000, f"127.0.0.{2 + i % 4}") for i in range(20)]
        try:
            with smtplib.SMTP("127.0.0.1", worker.port, timeout=30) as polite:
                polite.ehlo("polite.example")
                for _ in range(5):
                    started = time.monotonic()
                    assert polite.noop()[0] == 250
                    assert time.monotonic() - started < 3.0
                    worker.receive("heartbeat", timeout=3)
            assert rss_kib(worker.proc.pid) - before < MEMORY_BOUND_KIB
        finally:
            for sock in floods:
                sock.close()


def test_a_bdat_drip_is_timed_out_like_a_data_drip(spool_dir: Path) -> None:
    """A byte every half second into a BDAT chunk is not progress enough: the data-block
    timeout (2 s here) ends the session."""
    env = {"WILDBOAR_TIMEOUTS_DATA_BLOCK": "2"}
    with (
        running_worker(spool_dir, env=env) as worker,
        socket.create_connection(("127.0.0.1", worker.port), timeout=20) as sock,
    ):
        file = sock.makefile("rb")
        file.readline()
        sock.sendall(b"EHLO drip.example\r\n")
        while not file.readline().startswith(b"250 "):
            pass
        sock.sendall(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
        assert [file.readline()[:3] for _ in range(2)] == [b"250", b"250"]
        sock.sendall(b"BDAT 5000 LAST\r\n")
        sock.settimeout(0.5)
        started = time.monotonic()
        reply = b""
        while not reply and time.monotonic() - started < 15:
            with contextlib.suppress(OSError):
                sock.send(b"x")
            with contextlib.suppress(TimeoutError):
                reply = sock.recv(512)
        assert reply.startswith(b"421 4.4.2 "), reply
        assert time.monotonic() - started < 6
