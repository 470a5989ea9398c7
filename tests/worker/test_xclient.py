"""XCLIENT on a real worker over loopback: offered only to the listener's xclient_hosts
(127.0.0.1 here; a client on 127.0.0.2 is not one), and the client it names is the client
of the record, the Received field, the logs and the per-IP session count."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from wildboar import message as M

from .harness import WorkerProcess, running_worker, spool_files

PROXY = "127.0.0.1"
OTHER = "127.0.0.2"
CONTENT = b"Subject: behind a proxy\r\n\r\nhello\r\n"


@pytest.fixture
def worker(spool_dir: Path) -> Iterator[WorkerProcess]:
    config = spool_dir.parent / "wildboar-xclient.toml"
    config.write_text(
        '[recipients]\ndomains = ["example.org"]\n\n'
        '[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 0\n'
        'xclient_hosts = ["127.0.0.1/32"]\n'
    )
    config.chmod(0o644)
    env = {"WILDBOAR_SESSIONS_PER_CLIENT_IP": "2"}
    with running_worker(spool_dir, "--config", str(config), env=env) as running:
        yield running


def records(spool: Path) -> list[M.Message]:
    return [msgspec.msgpack.decode(p.read_bytes(), type=M.Message) for p in spool_files(spool)]


def connect(worker: WorkerProcess, source: str = PROXY) -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=10, source_address=(source, 0), local_hostname="client.example")
    client.connect("127.0.0.1", worker.port)
    return client


def xclient(client: smtplib.SMTP, attributes: str) -> tuple[int, bytes]:
    client.ehlo("proxy.example")  # then the client's own EHLO, after the new greeting
    assert client.has_extn("xclient")
    return client.docmd("XCLIENT", attributes)


def test_the_client_a_trusted_proxy_names_is_the_client(worker: WorkerProcess) -> None:
    with connect(worker) as client:
        reply = xclient(client, "ADDR=192.0.2.7 PORT=4567 NAME=client.example.net LOGIN=alice")
        assert reply == (220, b"mx.test.example ESMTP")
        client.ehlo_resp = None  # the session starts over: smtplib must say EHLO again
        assert client.sendmail("a@example.net", ["b@example.org"], CONTENT) == {}
    [record] = records(worker.spool)
    remote = record.connection.remote
    assert (remote.family, remote.address, remote.port) == ("ipv4", "192.0.2.7", 4567)
    assert remote.name == "client.example.net" and record.connection.login == "alice"
    assert record.connection.local.port == worker.port
    assert record.email.received.startswith(
        "Received: from client.example (client.example.net [192.0.2.7])\r\n"
        "\tby mx.test.example with ESMTPA id "
    )
    [said] = worker.wait_log("xclient")
    assert said["proxy"] == PROXY and said["remote"] == "192.0.2.7"
    assert said["name"] == "client.example.net" and said["login"] == "alice"
    closed = worker.wait_log("connection_close")
    assert [c["remote"] for c in closed] == ["192.0.2.7"]


def test_an_ipv6_client_and_an_unknown_name(worker: WorkerProcess) -> None:
    with connect(worker) as client:
        assert xclient(client, "ADDR=IPV6:2001:DB8::5 NAME=[UNAVAILABLE]")[0] == 220
        client.ehlo_resp = None
        assert client.sendmail("a@example.net", ["b@example.org"], CONTENT) == {}
    [record] = records(worker.spool)
    remote = record.connection.remote
    assert (remote.family, remote.address, remote.port, remote.name) == (
        "ipv6",
        "2001:db8::5",
        None,
        None,
    )
    assert "([IPv6:2001:db8::5])" in record.email.received
    assert " with ESMTP id " in record.email.received


def test_any_other_client_gets_550_and_stays_itself(worker: WorkerProcess) -> None:
    with connect(worker, OTHER) as client:
        client.ehlo("client.example")
        assert not client.has_extn("xclient")
        code, text = client.docmd("XCLIENT", "ADDR=192.0.2.7")
        assert code == 550 and text.startswith(b"5.7.0 ")
        assert client.sendmail("a@example.net", ["b@example.org"], CONTENT) == {}
    [record] = records(worker.spool)
    assert record.connection.remote.address == OTHER
    assert record.connection.login is None


def test_a_malformed_attribute_is_named(worker: WorkerProcess) -> None:
    with connect(worker) as client:
        assert xclient(client, "ADDR=192.0.2.300") == (501, b"5.5.4 Error: bad XCLIENT ADDR value")
        assert client.docmd("XCLIENT", "ADDR=[UNAVAILABLE]")[0] == 220
    assert [s["remote"] for s in worker.wait_log("xclient")] == [PROXY]  # its own again


def wait_greeted(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        data += sock.recv(4096)
    return data


def xclient_raw(worker: WorkerProcess, address: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", worker.port), timeout=10)
    assert wait_greeted(sock).startswith(b"220 ")
    sock.sendall(f"XCLIENT ADDR={address}\r\n".encode())
    return sock, wait_greeted(sock)


def test_sessions_count_under_the_address_xclient_named(worker: WorkerProcess) -> None:
    """sessions.per_client_ip (2 here) counts the real clients, not the proxy: the proxy
    relays more than 2 sessions, and a third for one client address is refused."""
    first, reply1 = xclient_raw(worker, "192.0.2.7")
    second, reply2 = xclient_raw(worker, "192.0.2.7")
    other, reply3 = xclient_raw(worker, "192.0.2.8")
    assert [r[:4] for r in (reply1, reply2, reply3)] == [b"220 "] * 3
    third, refused = xclient_raw(worker, "192.0.2.7")
    assert refused.startswith(b"421 4.7.0 ")
    assert third.recv(100) == b""  # closed
    [logged] = worker.wait_log("xclient_refused")
    assert logged["remote"] == "192.0.2.7" and logged["proxy"] == PROXY
    first.close()
    time.sleep(0.3)
    again, reply = xclient_raw(worker, "192.0.2.7")
    assert reply.startswith(b"220 ")
    for sock in (second, other, third, again):
        sock.close()
