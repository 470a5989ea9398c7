"""Per-client limits across the workers of one supervisor (docs/operations.md), performed
for real: two workers, clients from several loopback addresses. To know which worker
serves a connection, the test stops the other one (SIGSTOP) while it connects: the kernel
then hands the connection to the worker that runs. Each worker alone has seen fewer than
the limit; together they are over it, and the one that runs refuses."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Server, serving

LIMITED = "127.0.0.1"
OTHER = "127.0.0.2"  # the same /24: the network limits are set high enough here
EXEMPT = "127.0.0.3"


def read_reply(conn: socket.socket) -> bytes:
    data = b""
    while not re.search(rb"(?:^|\r\n)\d{3} [^\r\n]*\r\n$", data):
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def connect(port: int, source: str) -> tuple[socket.socket, bytes]:
    conn = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    return conn, read_reply(conn)


def command(conn: socket.socket, line: bytes) -> bytes:
    conn.sendall(line + b"\r\n")
    return read_reply(conn)


@contextlib.contextmanager
def only(server: Server, serving_pid: int) -> Iterator[None]:
    """Every worker but ``serving_pid`` stopped meanwhile (well within the supervisor's
    heartbeat timeout)."""
    others = [pid for pid in server.worker_pids() if pid != serving_pid]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def servers_of(server: Server, source: str, count: int) -> set[str]:
    """The workers (server ids) that opened ``count`` sessions from ``source`` (their logs
    reach the supervisor's stderr a little later)."""
    end = time.monotonic() + 10
    while True:
        records = [r for r in server.events("connection_open") if r.get("remote") == source]
        if len(records) >= count or time.monotonic() > end:
            return {r["server"] for r in records}
        time.sleep(0.05)


LIMITS = {
    "WILDBOAR_CLIENTS_CONNECTIONS": "4",
    "WILDBOAR_CLIENTS_MESSAGES_PER_MINUTE": "3",
    "WILDBOAR_CLIENTS_RECIPIENTS_PER_MINUTE": "4",
    "WILDBOAR_CLIENTS_NETWORK_CONNECTIONS": "0",  # off: OTHER shares LIMITED's /24
    "WILDBOAR_CLIENTS_EXEMPT": f"{EXEMPT}/32",
}


@pytest.fixture
def server(spool_dir: Path) -> Iterator[Server]:
    with serving(spool_dir, workers=2, env=LIMITS) as up:
        up.wait_for("worker_ready", count=4)  # the workers' own records and the supervisor's
        yield up


def test_concurrent_sessions_of_one_address_are_counted_across_workers(server: Server) -> None:
    first, second = server.worker_pids()
    held: list[socket.socket] = []
    try:
        for pid in (first, second):
            with only(server, pid):
                for _ in range(2):  # two on each worker: each alone is under the limit of 4
                    conn, greeting = connect(server.port, LIMITED)
                    held.append(conn)
                    assert greeting.startswith(b"220 "), greeting
        assert len(servers_of(server, LIMITED, 4)) == 2
        for pid in (first, second):  # the fifth is refused, whichever worker takes it
            with only(server, pid):
                conn, greeting = connect(server.port, LIMITED)
                conn.close()
                assert (
                    greeting
                    == b"421 4.7.0 Too many connections from 127.0.0.1, try again later\r\n"
                )
        # Meanwhile another address, and an exempt one, are served by both.
        for pid in (first, second):
            with only(server, pid):
                for source in (OTHER, EXEMPT, EXEMPT, EXEMPT, EXEMPT, EXEMPT):
                    conn, greeting = connect(server.port, source)
                    held.append(conn)
                    assert greeting.startswith(b"220 "), (source, greeting)
        [record, *_] = server.wait_for("client_limited", 2)
        assert record["limit"] == "connections" and record["client"] == LIMITED
        assert record["stage"] == "connect" and record["remote"] == LIMITED
        assert record["value"] == 4 and record["count"] == 5
        # One ends: the next is let in.
        held.pop(0).close()
        conn, greeting = _connect_soon(server.port, LIMITED)
        held.append(conn)
        assert greeting.startswith(b"220 "), greeting
    finally:
        for conn in held:
            conn.close()


def _connect_soon(port: int, source: str, attempts: int = 50) -> tuple[socket.socket, bytes]:
    """The worker notices a closed session at its next read: retry a refusal a while."""
    for _ in range(attempts):
        conn, greeting = connect(port, source)
        if greeting.startswith(b"220 "):
            return conn, greeting
        conn.close()
        time.sleep(0.1)
    return conn, greeting


def test_messages_and_recipients_per_minute_are_counted_across_workers(server: Server) -> None:
    first, second = server.worker_pids()
    sessions: dict[int, socket.socket] = {}
    try:
        for pid in (first, second):
            with only(server, pid):
                conn, greeting = connect(server.port, LIMITED)
                assert greeting.startswith(b"220 "), greeting
                sessions[pid] = conn
                assert command(conn, b"EHLO client.example").startswith(b"250")
        # Transactions: two on the first worker, one on the second; the fourth is deferred.
        for pid, expected in ((first, b"250"), (first, b"250"), (second, b"250")):
            assert command(sessions[pid], b"MAIL FROM:<a@example.net>").startswith(expected)
            assert command(sessions[pid], b"RSET").startswith(b"250")
        reply = command(sessions[first], b"MAIL FROM:<a@example.net>")
        assert reply == (
            b"450 4.7.1 Too many messages from 127.0.0.1 in the last minute, try again later\r\n"
        )
        # The limit is 127.0.0.1's: another address begins its transactions meanwhile.
        other, greeting = connect(server.port, OTHER)
        with other:
            assert command(other, b"EHLO other.example").startswith(b"250")
            assert command(other, b"MAIL FROM:<o@example.net>").startswith(b"250")
        # Every attempt counts: the refused one too, on either worker.
        assert command(sessions[second], b"MAIL FROM:<a@example.net>").startswith(b"450 4.7.1")
        limited = server.wait_for("client_limited", 2)  # logged a moment after the reply
        assert {r["limit"] for r in limited} == {"messages_per_minute"}
    finally:
        for conn in sessions.values():
            conn.close()


def test_recipients_per_minute_are_counted_across_workers(server: Server) -> None:
    first, second = server.worker_pids()
    sessions: dict[int, socket.socket] = {}
    try:
        for pid in (first, second):
            with only(server, pid):
                conn, greeting = connect(server.port, LIMITED)
                assert greeting.startswith(b"220 "), greeting
                sessions[pid] = conn
                assert command(conn, b"EHLO client.example").startswith(b"250")
                assert command(conn, b"MAIL FROM:<a@example.net>").startswith(b"250")
        for pid in (first, first, second, second):
            assert command(sessions[pid], b"RCPT TO:<b@example.org>").startswith(b"250")
        reply = command(sessions[first], b"RCPT TO:<c@example.org>")
        assert reply == (
            b"450 4.7.1 Too many recipients from 127.0.0.1 in the last minute, try again later\r\n"
        )
        # The transaction goes on with the recipients it has.
        conn = sessions[second]
        assert command(conn, b"DATA").startswith(b"354")
        assert command(conn, b"Subject: x\r\n\r\nbody\r\n.").startswith(b"250")
        [record] = server.wait_for("client_limited")
        assert record["limit"] == "recipients_per_minute" and record["stage"] == "rcpt"
    finally:
        for conn in sessions.values():
            conn.close()


NETWORK = {
    "WILDBOAR_CLIENTS_CONNECTIONS_PER_MINUTE": "5",
    "WILDBOAR_CLIENTS_NETWORK_CONNECTIONS_PER_MINUTE": "8",
    "WILDBOAR_CLIENTS_EXEMPT": "",
}


def test_new_connections_per_minute_of_an_address_and_its_network(spool_dir: Path) -> None:
    """Five a minute from one address, eight from its /24, across both workers: the sixth
    from 127.0.0.1 is refused, 127.0.0.2 has three more before its network is full, and
    127.0.1.1, in another /24, is served throughout."""
    with serving(spool_dir, workers=2, env=NETWORK) as server:
        first, second = server.worker_pids()
        greetings: list[bytes] = []
        for pid in (first, second, first):
            with only(server, pid):
                for _ in range(2):
                    conn, greeting = connect(server.port, LIMITED)
                    conn.close()
                    greetings.append(greeting)
        assert [g[:4] for g in greetings] == [b"220 "] * 5 + [b"421 "]
        assert greetings[-1] == (
            b"421 4.7.0 Too many connections from 127.0.0.1 in the last minute, try again later\r\n"
        )
        # The network has seen six; two more from 127.0.0.2, then its /24 is full.
        greetings.clear()
        for pid in (second, first, second):
            with only(server, pid):
                conn, greeting = connect(server.port, OTHER)
                conn.close()
                greetings.append(greeting)
                conn, greeting = connect(server.port, "127.0.1.1")
                conn.close()
                assert greeting.startswith(b"220 "), greeting
        assert [g[:4] for g in greetings] == [b"220 ", b"220 ", b"421 "]
        assert greetings[-1] == (
            b"421 4.7.0 Too many connections from 127.0.0.0/24 in the last minute,"
            b" try again later\r\n"
        )
        limits = [r["limit"] for r in server.wait_for("client_limited", 2)]
        assert limits == ["connections_per_minute", "network_connections_per_minute"]


def test_a_dead_workers_sessions_stop_counting(server: Server) -> None:
    """A worker killed with four sessions of 127.0.0.1 open: its segment of the table is
    zeroed when the supervisor reaps it, so the address is served again at once."""
    first, second = server.worker_pids()
    held: list[socket.socket] = []
    try:
        with only(server, first):
            for _ in range(4):
                conn, greeting = connect(server.port, LIMITED)
                held.append(conn)
                assert greeting.startswith(b"220 "), greeting
        with only(server, second):
            conn, greeting = connect(server.port, LIMITED)
            conn.close()
            assert greeting.startswith(b"421 4.7.0 "), greeting
        os.kill(first, signal.SIGKILL)
        server.wait_for("worker_exited", component="supervisor")
        with only(server, second):
            conn, greeting = connect(server.port, LIMITED)
            held.append(conn)
            assert greeting.startswith(b"220 "), greeting
    finally:
        for conn in held:
            conn.close()


def test_every_worker_of_a_supervisor_shares_its_table(server: Server) -> None:
    ready = [r for r in server.events("worker_ready") if "component" not in r]
    assert [r["clients_table"] for r in ready] == ["shared", "shared"]
