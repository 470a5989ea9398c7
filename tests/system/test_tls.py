"""TLS end to end: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) with real clients
(swaks, openssl s_client, Python's ssl, a private Postfix relaying with mandatory TLS),
the plaintext injection of CVE-2011-0411, and handshakes that fail."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .. import unprivileged
from ..daemons import free_port
from ..postfix import Postfix, debian_service_running
from . import certificates
from .harness import Server, serving, spooled

HOST = "mx.test.example"


@pytest.fixture(scope="module")
def certificate() -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate for mx.test.example and its key."""
    with unprivileged.spool_directory() as directory:
        yield certificates.make(directory, HOST, stem="cert")


@pytest.fixture
def server(spool_dir: Path, certificate: tuple[Path, Path]) -> Iterator[Server]:
    cert, key = certificate
    config = spool_dir.parent / "wildboar.toml"
    config.write_text(
        '[recipients]\ndomains = ["example.org"]\n\n'
        f'[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 0\ntls = "starttls"\n'
        f'certificate = "{cert}"\nkey = "{key}"\n\n'
        f'[[listen]]\nname = "smtps"\nhost = "127.0.0.1"\nport = 0\ntls = "implicit"\n'
        f'certificate = "{cert}"\nkey = "{key}"\n\n'
        f'[[listen]]\nname = "submission"\nhost = "127.0.0.1"\nport = 0\ntls = "starttls"\n'
        f'require_tls = true\ncertificate = "{cert}"\nkey = "{key}"\n'
    )
    env = {"WILDBOAR_TIMEOUTS_HANDSHAKE": "2"}
    with serving(spool_dir, "--config", str(config), listen=(), workers=1, env=env) as up:
        yield up


def port(server: Server, name: str) -> int:
    found = [e for e in server.wait_for("listening", 3, component="supervisor")]
    return int(next(e["port"] for e in found if e["name"] == name))


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--from", "a@example.net", "--to", "b@example.org", "--server", "127.0.0.1",
         "--helo", "client.example", "--timeout", "20", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def read_reply(sock: socket.socket | ssl.SSLSocket) -> list[bytes]:
    lines: list[bytes] = []
    data = b""
    while True:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return [*lines, data] if data else lines
            data += chunk
        line, data = data.split(b"\r\n", 1)
        lines.append(line)
        if line[3:4] != b"-":
            assert data == b"", f"more than one reply: {data!r}"
            return lines


def test_swaks_starttls_delivers_and_the_record_says_tls(server: Server) -> None:
    result = swaks("--port", str(port(server, "smtp")), "--tls")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STARTTLS" in result.stdout and "TLS started" in result.stdout
    [record] = spooled(server.spool)
    assert record.connection.tls is True
    assert record.transaction.protocol == "ESMTPS"
    assert "with ESMTPS" in record.email.received
    assert record.connection.tls_version in ("TLSv1.2", "TLSv1.3")
    assert record.connection.tls_cipher
    comment = f"(using {record.connection.tls_version} with cipher {record.connection.tls_cipher})"
    assert comment in record.email.received
    assert record.email.data.startswith(record.email.received.encode() + b"\r\n")
    [started] = server.wait_for("tls_started")
    assert started["version"].startswith("TLSv1.") and started["cipher"]


def test_swaks_implicit_tls_delivers(server: Server) -> None:
    result = swaks("--port", str(port(server, "smtps")), "--tlsc")
    assert result.returncode == 0, result.stdout + result.stderr
    [record] = spooled(server.spool)
    assert record.connection.tls is True and "with ESMTPS" in record.email.received


def test_a_listener_that_requires_tls_takes_no_mail_in_plaintext(server: Server) -> None:
    plain = swaks("--port", str(port(server, "submission")))
    assert plain.returncode != 0
    assert "530 5.7.0 Must issue a STARTTLS command first" in plain.stdout
    assert spooled(server.spool) == []
    secure = swaks("--port", str(port(server, "submission")), "--tls")
    assert secure.returncode == 0, secure.stdout + secure.stderr
    assert len(spooled(server.spool)) == 1


def test_openssl_s_client_starttls_then_no_starttls_offered(server: Server) -> None:
    """One command at a time: EHLO must end a pipelined group (docs/protocol.md)."""
    proc = subprocess.Popen(
        ["openssl", "s_client", "-starttls", "smtp", "-connect",
         f"127.0.0.1:{port(server, 'smtp')}", "-servername", HOST, "-quiet", "-no_ign_eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("EHLO client.example\r\n")
        proc.stdin.flush()
        ehlo = [proc.stdout.readline()]
        while ehlo[-1][3:4] == "-":
            ehlo.append(proc.stdout.readline())
        assert ehlo[0].startswith("250-" + HOST), ehlo
        assert not any("STARTTLS" in line for line in ehlo)  # RFC 3207 §4.2: not again
        proc.stdin.write("NOOP\r\n")  # (s_client itself acts on a line starting with Q)
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("250 2.0.0")
    finally:
        proc.kill()
        proc.wait(10)
    [started] = server.wait_for("tls_started")
    assert started["version"] in ("TLSv1.2", "TLSv1.3")


def test_a_command_pipelined_behind_starttls_is_never_answered_inside_tls(
    server: Server,
) -> None:
    """CVE-2011-0411: ``STARTTLS\\r\\nRSET\\r\\n`` in one segment. Had RSET been kept,
    its 250 would come first inside TLS, before the reply to our EHLO."""
    with socket.create_connection(("127.0.0.1", port(server, "smtp")), timeout=20) as raw:
        assert read_reply(raw)[0].startswith(b"220 ")
        raw.sendall(b"EHLO client.example\r\n")
        assert b"250-STARTTLS" in read_reply(raw)
        raw.sendall(b"STARTTLS\r\nRSET\r\n")
        assert read_reply(raw) == [b"220 2.0.0 Ready to start TLS"]
        with client_context().wrap_socket(raw, server_hostname=HOST) as secure:
            secure.sendall(b"EHLO client.example\r\n")
            ehlo = read_reply(secure)
            assert ehlo[0] == b"250-" + HOST.encode(), ehlo
            secure.sendall(b"QUIT\r\n")
            assert read_reply(secure)[0].startswith(b"221 ")


def test_a_client_that_never_does_its_handshake_is_dropped(server: Server) -> None:
    """timeouts.handshake (2 s here) after STARTTLS's 220, and on the implicit port."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port(server, "smtp")), timeout=30) as raw:
        read_reply(raw)
        raw.sendall(b"EHLO client.example\r\n")
        read_reply(raw)
        raw.sendall(b"STARTTLS\r\n")
        read_reply(raw)
        assert raw.recv(4096) == b""  # then silence: dropped
    with socket.create_connection(("127.0.0.1", port(server, "smtps")), timeout=30) as raw:
        assert raw.recv(4096) == b""
    assert time.monotonic() - started < 15
    assert len(server.wait_for("tls_handshake_failed", 2)) == 2


def test_a_failed_handshake_closes_the_connection_and_is_logged(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", port(server, "smtp")), timeout=20) as raw:
        read_reply(raw)
        raw.sendall(b"EHLO client.example\r\n")
        read_reply(raw)
        raw.sendall(b"STARTTLS\r\n")
        read_reply(raw)
        raw.sendall(b"this is not a TLS ClientHello\r\n")
        assert raw.recv(4096) == b""  # closed, no SMTP reply in plaintext
    [failed] = server.wait_for("tls_handshake_failed")
    assert failed["reason"]
    with socket.create_connection(("127.0.0.1", port(server, "smtps")), timeout=20) as raw:
        raw.sendall(b"EHLO client.example\r\n")  # plaintext to the implicit TLS port
        assert raw.recv(4096) == b""
    assert len(server.wait_for("tls_handshake_failed", 2)) == 2
    assert spooled(server.spool) == []
    # Each dropped connection is over for the worker too: its session place is free.
    opened = {e["connection"] for e in server.events("connection_open")}
    closed = server.wait_for("connection_close", len(opened), timeout=10)
    assert {e["connection"] for e in closed} == opened


# --- a real MTA as the client ------------------------------------------------------------

#: How long Postfix may take to pass a message on (or to give up and defer it).
RELAY_TIMEOUT = 30.0
RELAY_NAME = "relay.test.example"
ESTABLISHED = re.compile(
    r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:(\d+): (\S+) with cipher (\S+)"
)


@contextlib.contextmanager
def relaying(
    spool_dir: Path, tls: str, certificate: tuple[Path, Path]
) -> Iterator[tuple[Server, Postfix]]:
    """wildboar with one listener (``tls``), and a private Postfix that relays everything
    to it and must encrypt (``smtp_tls_security_level = encrypt``, no verification)."""
    # Postfix's master runs as root and drops to its own users: make test runs as root.
    assert unprivileged.AS_ROOT, "a private Postfix needs root: run make test as root"
    cert, key = certificate
    config = spool_dir.parent / "wildboar.toml"
    config.write_text(
        '[recipients]\ndomains = ["example.org"]\n\n'
        f'[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 0\ntls = "{tls}"\n'
        + (f'certificate = "{cert}"\nkey = "{key}"\n' if tls != "none" else "")
    )
    with serving(spool_dir, "--config", str(config), listen=(), workers=1) as server:
        settings = {
            "myhostname": RELAY_NAME,
            "relayhost": f"[127.0.0.1]:{server.port}",
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_loglevel": "1",
        }
        with Postfix(free_port(), settings) as postfix:
            postfix.wait_serving()
            yield server, postfix
    assert not debian_service_running()


def submit(postfix: Postfix) -> None:
    """One message into Postfix's smtpd, for b@example.org: Postfix relays it."""
    content = (
        f"From: a@example.net\r\nTo: b@example.org\r\nSubject: relayed\r\n"
        f"Message-ID: <relay-{os.getpid()}@example.net>\r\n\r\nOver TLS, or not at all.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=20) as smtp:
        refused = smtp.sendmail("a@example.net", ["b@example.org"], content)
    assert refused == {}


def wait_logged(postfix: Postfix, text: str) -> str:
    """Postfix's log once it has ``text`` (bounded)."""
    deadline = time.monotonic() + RELAY_TIMEOUT
    while text not in (log := postfix.log_path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"no {text!r} logged\n{postfix.tail()}"
        time.sleep(0.1)
    return log


def wait_deferred(postfix: Postfix) -> list[dict[str, Any]]:
    """The queue once Postfix has tried and deferred every message (bounded)."""
    deadline = time.monotonic() + RELAY_TIMEOUT
    while True:
        queue = postfix.queue()
        tried = [r for m in queue for r in m["recipients"] if r.get("delay_reason")]
        if queue and len(tried) == sum(len(m["recipients"]) for m in queue):
            return queue
        assert time.monotonic() < deadline, f"not deferred: {queue}\n{postfix.tail()}"
        time.sleep(0.2)


def test_postfix_relaying_with_mandatory_tls_delivers_over_starttls(
    spool_dir: Path, certificate: tuple[Path, Path]
) -> None:
    with relaying(spool_dir, "starttls", certificate) as (server, postfix):
        submit(postfix)
        server.wait_for("message_accepted", timeout=RELAY_TIMEOUT)
        [record] = spooled(server.spool)
        log = wait_logged(postfix, ": removed")  # sent (wildboar's 250), then dequeued
        assert "status=sent" in log and postfix.queue() == []
        wildboar_port = server.port
    assert record.transaction.helo_name == RELAY_NAME
    assert record.connection.tls is True and record.transaction.protocol == "ESMTPS"
    version, cipher = record.connection.tls_version, record.connection.tls_cipher
    assert version in ("TLSv1.2", "TLSv1.3") and cipher
    received = record.email.received
    assert f"from {RELAY_NAME} " in received and "with ESMTPS" in received
    assert f"(using {version} with cipher {cipher})" in received
    # Postfix's side of the same session: the version and cipher it logged, and its own
    # Received field below wildboar's.
    [(logged_port, logged_version, logged_cipher)] = ESTABLISHED.findall(log)
    assert (int(logged_port), logged_version, logged_cipher) == (wildboar_port, version, cipher)
    body = record.email.data.decode()
    assert body.startswith(received + "\r\n")
    assert f"by {RELAY_NAME} (Postfix) with ESMTP id" in body


def test_postfix_with_mandatory_tls_does_not_deliver_to_a_plaintext_listener(
    spool_dir: Path, certificate: tuple[Path, Path]
) -> None:
    with relaying(spool_dir, "none", certificate) as (server, postfix):
        submit(postfix)
        [message] = wait_deferred(postfix)
        [recipient] = message["recipients"]
        opened = server.events("connection_open")
        assert spooled(server.spool) == []
    assert message["queue_name"] == "deferred"
    assert recipient["address"] == "b@example.org"
    assert "TLS is required, but was not offered" in recipient["delay_reason"]
    assert opened  # Postfix did connect, saw no STARTTLS, and went away


def test_a_stop_during_a_starttls_handshake_sends_no_plaintext(
    spool_dir: Path, certificate: tuple[Path, Path]
) -> None:
    """The drain deadline passes while a client is between STARTTLS's 220 and its
    ClientHello: the connection is dropped without the 421 that any other session gets,
    which would be plaintext where the client expects TLS."""
    cert, key = certificate
    config = spool_dir.parent / "wildboar.toml"
    config.write_text(
        '[recipients]\ndomains = ["example.org"]\n\n'
        f'[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 0\ntls = "starttls"\n'
        f'certificate = "{cert}"\nkey = "{key}"\n'
    )
    env = {"WILDBOAR_TIMEOUTS_HANDSHAKE": "30", "WILDBOAR_TIMEOUTS_DRAIN": "1"}
    with serving(spool_dir, "--config", str(config), listen=(), workers=1, env=env) as server:
        [listening] = server.wait_for("listening", component="supervisor")
        address = ("127.0.0.1", int(listening["port"]))
        with socket.create_connection(address, timeout=30) as raw:
            read_reply(raw)
            raw.sendall(b"EHLO client.example\r\n")
            read_reply(raw)
            raw.sendall(b"STARTTLS\r\n")
            assert read_reply(raw)[-1].startswith(b"220 ")
            server.signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                rest = raw.recv(4096)
            except ConnectionResetError:
                rest = b""
            assert rest == b"" and time.monotonic() - started < 20
        [failed] = server.wait_for("tls_handshake_failed")
        assert failed["reason"] == "shut down during the handshake"


def test_a_reset_during_the_starttls_handshake_frees_the_session(server: Server) -> None:
    """A client that resets the connection after STARTTLS's 220 (before or in its
    handshake) ends its session at once: its place and its counts are not held until
    the command timeout."""
    raw = socket.create_connection(("127.0.0.1", port(server, "smtp")), timeout=30)
    read_reply(raw)
    raw.sendall(b"EHLO client.example\r\n")
    read_reply(raw)
    raw.sendall(b"STARTTLS\r\n")
    read_reply(raw)
    time.sleep(0.3)  # the handshake has begun, waiting for a ClientHello; a reset instead
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    [failed] = server.wait_for("tls_handshake_failed", timeout=10)
    closed = server.wait_for("connection_close", timeout=10)
    assert failed["connection"] in {c["connection"] for c in closed}
