"""The load generator of ``bench.tls``: SMTP sessions with or without STARTTLS, and with
or without TLS session resumption, from threads of one process (Postfix's ``smtp-source``
has no STARTTLS).

Each of ``--sessions`` threads sends its share of ``--messages`` to 127.0.0.1:``--port``,
one message per connection or all of its share over one connection (``--many``, as
``smtp-source -d``). A connection is: the greeting; ``EHLO``; with TLS ``STARTTLS``, the
handshake and ``EHLO`` again; per message ``MAIL``, ``RCPT``, ``DATA`` and the content, each
waiting for its reply (no pipelining); ``QUIT``. ``--mode``:

- ``plain``: no STARTTLS;
- ``starttls``: a full handshake on every connection;
- ``resume``: each thread offers the session (TLS 1.3: the ticket) of its previous
  connection (``SSLContext.wrap_socket(..., session=)``), as a sending MTA with a session
  cache does; the server decides whether it resumes (``SSLSocket.session_reused``).

The certificate is not verified (the benchmark's is self-signed): the client's cost is the
handshake's, not a chain check. Blocking sockets: OpenSSL and the socket calls release the
GIL, and the figure that matters is the server's CPU, measured by the caller.

Prints one JSON object: messages and connections done, TLS connections, resumed ones, the
versions and ciphers seen, the first errors, the wall time. Bounded: every socket operation
by ``--io-timeout``, the whole run by ``--timeout`` (threads stop starting connections).
Security: a client of the benchmark's own servers on loopback; nothing else.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

MODES = ("plain", "starttls", "resume")
HELO = "client.example"
SENDER = "sender@client.example"
SERVER_NAME = "mx.bench.example"
#: Errors kept for the report; the rest are only counted.
KEPT_ERRORS = 5


class ReplyError(Exception):
    """The server answered something other than what the step expects."""


def message(size: int) -> bytes:
    """A message of ``size`` octets (headers and body, CRLF lines, none starting with a
    dot), followed by the end-of-data line."""
    head = (
        f"From: <{SENDER}>\r\nTo: <rcpt@bench.example>\r\nSubject: bench\r\n"
        "Message-ID: <bench@client.example>\r\n\r\n"
    ).encode()
    line = b"La de da de da de da de da de da de da de da de da de da de da de da de da.\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head) - 2)] + b"\r\n"
    return head + body + b".\r\n"


class Lines:
    """Replies read from a socket, one whole (multi-line) reply at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def reply(self, expect: bytes) -> bytes:
        """The next reply; ``ReplyError`` unless its code starts with ``expect``."""
        while True:
            end = self.buffer.find(b"\r\n")
            while end < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ReplyError(f"connection closed; read {self.buffer[-200:]!r}")
                self.buffer += chunk
                end = self.buffer.find(b"\r\n")
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if line[3:4] != b"-":
                if not line.startswith(expect):
                    raise ReplyError(f"expected {expect.decode()}, got {line[:200]!r}")
                return line

    def command(self, line: bytes, expect: bytes) -> bytes:
        self.sock.sendall(line)
        return self.reply(expect)


@dataclass
class Tally:
    """What the threads did, under one lock."""

    messages: int = 0
    connections: int = 0
    tls: int = 0
    resumed: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    ciphers: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def secured(self, sock: ssl.SSLSocket) -> None:
        cipher = sock.cipher()
        with self.lock:
            self.tls += 1
            self.resumed += bool(sock.session_reused)
            self.versions[sock.version() or "?"] += 1
            self.ciphers[cipher[0] if cipher else "?"] += 1

    def failed(self, error: BaseException) -> None:
        with self.lock:
            self.error_count += 1
            if len(self.errors) < KEPT_ERRORS:
                self.errors.append(f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class Plan:
    port: int
    mode: str
    many: bool
    content: bytes
    io_timeout: float
    deadline: float


class Session:
    """One thread's connections, one after another, keeping its last TLS session."""

    def __init__(self, plan: Plan, context: ssl.SSLContext, tally: Tally) -> None:
        self.plan, self.context, self.tally = plan, context, tally
        self.session: ssl.SSLSession | None = None

    def run(self, messages: int) -> None:
        try:
            if self.plan.many:
                self.connection(messages)
            else:
                for _ in range(messages):
                    if time.monotonic() > self.plan.deadline:
                        raise TimeoutError("the run's time is up")
                    self.connection(1)
        except (OSError, ReplyError) as error:
            self.tally.failed(error)

    def connection(self, messages: int) -> None:
        sock = socket.create_connection(("127.0.0.1", self.plan.port), self.plan.io_timeout)
        try:
            lines = Lines(sock)
            lines.reply(b"220")
            lines.command(b"EHLO " + HELO.encode() + b"\r\n", b"250")
            if self.plan.mode != "plain":
                sock = self.starttls(lines)
                lines = Lines(sock)
                lines.command(b"EHLO " + HELO.encode() + b"\r\n", b"250")
                self.keep_session(sock)
            for _ in range(messages):
                self.transaction(lines)
            lines.command(b"QUIT\r\n", b"221")
            with self.tally.lock:
                self.tally.connections += 1
        finally:
            sock.close()

    def starttls(self, lines: Lines) -> ssl.SSLSocket:
        lines.command(b"STARTTLS\r\n", b"220")
        offered = self.session if self.plan.mode == "resume" else None
        secure = self.context.wrap_socket(lines.sock, server_hostname=SERVER_NAME, session=offered)
        self.tally.secured(secure)
        return secure

    def keep_session(self, sock: socket.socket) -> None:
        """The session to offer next time: TLS 1.3 tickets arrive after the handshake,
        so this is taken once a reply has been read inside TLS."""
        if self.plan.mode == "resume" and isinstance(sock, ssl.SSLSocket):
            session = sock.session
            if session is not None and session.has_ticket:
                self.session = session

    def transaction(self, lines: Lines) -> None:
        lines.command(f"MAIL FROM:<{SENDER}>\r\n".encode(), b"250")
        lines.command(b"RCPT TO:<rcpt@bench.example>\r\n", b"250")
        lines.command(b"DATA\r\n", b"354")
        lines.command(self.plan.content, b"250")
        with self.tally.lock:
            self.tally.messages += 1


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def shares(messages: int, sessions: int) -> list[int]:
    """``messages`` spread over ``sessions`` threads, none of them empty."""
    sessions = max(1, min(sessions, messages))
    return [messages // sessions + (i < messages % sessions) for i in range(sessions)]


def run(plan: Plan, messages: int, sessions: int) -> dict[str, object]:
    tally, context = Tally(), client_context()
    threads = [
        threading.Thread(target=Session(plan, context, tally).run, args=(share,), daemon=True)
        for share in shares(messages, sessions)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, plan.deadline - time.monotonic()) + plan.io_timeout)
    seconds = time.perf_counter() - start
    return {
        "messages": tally.messages,
        "connections": tally.connections,
        "tls": tally.tls,
        "resumed": tally.resumed,
        "versions": dict(tally.versions),
        "ciphers": dict(tally.ciphers),
        "errors": tally.errors,
        "error_count": tally.error_count,
        "seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tls_client", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, default="starttls")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--many", action="store_true", help="all messages of a session over one")
    parser.add_argument("--size", type=int, default=1024, help="octets of a message")
    parser.add_argument("--io-timeout", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="of the whole run")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    plan = Plan(args.port, args.mode, args.many, message(args.size), args.io_timeout, deadline)
    print(json.dumps(run(plan, args.messages, args.sessions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
