"""wildboar behind HAProxy: PROXY protocol v1 and v2 headers on a listener that requires
them. The client's real address (127.0.0.2 here; HAProxy connects from 127.0.0.1) is what
the record, the Received field and the logs show; a connection that is not from a trusted
proxy, or has no valid header, is closed without an SMTP reply."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .. import haproxy, unprivileged
from . import certificates
from .harness import Server, serving, spooled

CLIENT = "127.0.0.2"


@pytest.fixture(scope="module")
def certificate() -> Iterator[tuple[Path, Path]]:
    with unprivileged.spool_directory() as directory:
        yield certificates.make(directory, "mx.test.example")


@pytest.fixture
def server(spool_dir: Path, certificate: tuple[Path, Path]) -> Iterator[Server]:
    cert, key = certificate
    config = spool_dir.parent / "wildboar.toml"
    proxied = 'proxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]\n'
    tls = f'certificate = "{cert}"\nkey = "{key}"\n'
    config.write_text(
        '[recipients]\ndomains = ["example.org"]\n\n'
        f'[[listen]]\nname = "smtp"\nhost = "127.0.0.1"\nport = 0\n{proxied}\n'
        '[[listen]]\nname = "elsewhere"\nhost = "127.0.0.1"\nport = 0\nproxy_protocol = true\n'
        'trusted_proxies = ["192.0.2.0/24"]\n\n'
        f'[[listen]]\nname = "smtps"\nhost = "127.0.0.1"\nport = 0\ntls = "implicit"\n{tls}'
        f"{proxied}\n"
        f'[[listen]]\nname = "submission"\nhost = "127.0.0.1"\nport = 0\ntls = "starttls"\n'
        f"require_tls = true\n{tls}{proxied}"
    )
    env = {"WILDBOAR_TIMEOUTS_HANDSHAKE": "1"}
    with serving(spool_dir, "--config", str(config), listen=(), workers=2, env=env) as up:
        yield up


def port(server: Server, name: str) -> int:
    found = server.wait_for("listening", 2, component="supervisor")
    return int(next(e["port"] for e in found if e["name"] == name))


def send_from(
    address: tuple[str, int], subject: str, *, tls: bool = False
) -> dict[str, tuple[int, bytes]]:
    """One message from CLIENT to ``address``, over TLS from the first octet if ``tls``."""
    client: smtplib.SMTP
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        client = smtplib.SMTP_SSL(*address, timeout=30, source_address=(CLIENT, 0), context=context)
    else:
        client = smtplib.SMTP(*address, timeout=30, source_address=(CLIENT, 0))
    with client:
        client.ehlo("client.example")
        assert not client.has_extn("starttls")  # TLS already, or not on this listener
        body = f"Subject: {subject}\r\n\r\nthrough the proxy\r\n".encode()
        return client.sendmail("a@example.net", ["b@example.org"], body)


@pytest.mark.parametrize("options", ["send-proxy", "send-proxy-v2"])
def test_the_client_behind_haproxy_is_the_client(server: Server, options: str) -> None:
    target = ("127.0.0.1", port(server, "smtp"))
    with haproxy.HAProxy([haproxy.Route("mx", target, options)]) as proxy:
        front = proxy.address("mx")
        assert isinstance(front, tuple)
        assert send_from(front, options) == {}
    [record] = spooled(server.spool)
    assert record.connection.remote.address == CLIENT
    assert record.connection.remote.family == "ipv4"
    assert record.connection.local.port == front[1]  # HAProxy's frontend, as it said
    assert f"[{CLIENT}]" in record.email.received
    [header] = server.wait_for("proxy_header")
    assert header["remote"] == CLIENT and header["version"] == (2 if "v2" in options else 1)
    accepted = server.wait_for("message_accepted")
    assert accepted and not haproxy.debian_service_running()


def assert_closed_without_reply(address: tuple[str, int], send: bytes) -> None:
    with socket.create_connection(address, timeout=30) as raw:
        if send:
            raw.sendall(send)
        assert raw.recv(4096) == b""


def test_a_client_without_a_header_is_closed_without_a_reply(server: Server) -> None:
    target = ("127.0.0.1", port(server, "smtp"))
    assert_closed_without_reply(target, b"EHLO client.example\r\n")
    assert_closed_without_reply(target, b"PROXY TCP4 1.2.3.4 nonsense\r\n")
    refused = server.wait_for("proxy_refused", 2)
    assert all(r["reason"] for r in refused)
    assert spooled(server.spool) == []


def test_a_proxy_that_never_finishes_its_header_is_dropped(server: Server) -> None:
    """A trusted address that sends half a header and waits (or nothing): dropped after
    timeouts.handshake (1 s here), no reply; its place is free again."""
    target = ("127.0.0.1", port(server, "smtp"))
    started = time.monotonic()
    assert_closed_without_reply(target, b"PROXY TCP4 192.0.2.1 ")
    assert_closed_without_reply(target, b"")
    assert time.monotonic() - started < 10
    refused = server.wait_for("proxy_refused", 2)
    assert {r["reason"] for r in refused} == {"no PROXY header in time"}


def test_a_header_from_an_untrusted_address_is_refused(server: Server) -> None:
    target = ("127.0.0.1", port(server, "elsewhere"))
    with haproxy.HAProxy([haproxy.Route("mx", target, "send-proxy-v2")]) as proxy:
        front = proxy.address("mx")
        assert isinstance(front, tuple)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            send_from(front, "untrusted")
    [refused] = server.wait_for("proxy_refused")
    assert refused["reason"] == "not a trusted proxy" and refused["remote"] == "127.0.0.1"
    assert spooled(server.spool) == []


def test_implicit_tls_behind_a_tcp_proxy_reads_the_header_first(server: Server) -> None:
    """HAProxy relays TCP (TLS passes through) with a v2 header in front: wildboar reads
    the header, then does the handshake itself; the record has both facts."""
    target = ("127.0.0.1", port(server, "smtps"))
    with haproxy.HAProxy([haproxy.Route("mx", target, "send-proxy-v2")]) as proxy:
        front = proxy.address("mx")
        assert isinstance(front, tuple)
        assert send_from(front, "implicit", tls=True) == {}
    [record] = spooled(server.spool)
    assert record.connection.remote.address == CLIENT
    assert record.connection.tls and record.connection.tls_version in ("TLSv1.2", "TLSv1.3")
    assert "with ESMTPS" in record.email.received and f"[{CLIENT}]" in record.email.received


@pytest.mark.parametrize("listener", ["smtp", "submission"])
def test_tls_ended_at_the_proxy_is_the_sessions_tls(server: Server, listener: str) -> None:
    """HAProxy terminates TLS and says so in the SSL TLV (version, cipher): the session
    counts as TLS (Received ``with ESMTPS``, the record's TLS fields as HAProxy gave them);
    STARTTLS is not offered, and a listener's require_tls is met."""
    target = ("127.0.0.1", port(server, listener))
    options = "send-proxy-v2 proxy-v2-options ssl,ssl-cipher"
    with haproxy.HAProxy([haproxy.Route("mx", target, options, tls=True)]) as proxy:
        front = proxy.address("mx")
        assert isinstance(front, tuple)
        assert send_from(front, listener, tls=True) == {}
    [record] = spooled(server.spool)
    connection = record.connection
    assert connection.remote.address == CLIENT
    assert connection.tls and connection.tls_version == "TLSv1.3"
    assert connection.tls_cipher and connection.tls_cipher.startswith("TLS_")
    assert f"(using TLSv1.3 with cipher {connection.tls_cipher})" in record.email.received
    assert "with ESMTPS" in record.email.received
    [relayed] = server.wait_for("tls_relayed")
    assert relayed["version"] == "TLSv1.3"


def test_starttls_behind_a_tcp_proxy(server: Server) -> None:
    """The header, then plaintext SMTP, then STARTTLS with wildboar itself."""
    target = ("127.0.0.1", port(server, "submission"))
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with haproxy.HAProxy([haproxy.Route("mx", target, "send-proxy")]) as proxy:
        front = proxy.address("mx")
        assert isinstance(front, tuple)
        with smtplib.SMTP(*front, timeout=30, source_address=(CLIENT, 0)) as client:
            code, _ = client.mail("a@example.net")
            assert code == 530  # require_tls
            client.rset()
            client.starttls(context=context)
            body = b"Subject: starttls\r\n\r\nthrough the proxy\r\n"
            assert client.sendmail("a@example.net", ["b@example.org"], body) == {}
    [record] = spooled(server.spool)
    assert record.connection.remote.address == CLIENT and record.connection.tls
    assert "with ESMTPS" in record.email.received


def test_an_ipv4_client_named_by_a_dual_stack_proxy_is_an_ipv4_client(server: Server) -> None:
    """A proxy listening on IPv6 and IPv4 at once names an IPv4 client ::ffff:a.b.c.d
    (TCP6): the record, the Received field and the limits see the IPv4 address."""
    target = ("127.0.0.1", port(server, "smtp"))
    with socket.create_connection(target, timeout=30) as raw:
        raw.sendall(b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:198.51.100.25 40000 25\r\n")
        replies = raw.makefile("rb")
        assert replies.readline().startswith(b"220 ")
        for command in (b"HELO client.example", b"MAIL FROM:<a@example.net>",
                        b"RCPT TO:<b@example.org>", b"DATA"):  # fmt: skip
            raw.sendall(command + b"\r\n")
            assert replies.readline()[:1] in (b"2", b"3")
        raw.sendall(b"Subject: mapped\r\n\r\nhello\r\n.\r\n")
        assert replies.readline().startswith(b"250 ")
    [record] = spooled(server.spool)
    assert record.connection.remote.address == "192.0.2.7"
    assert record.connection.remote.family == "ipv4"
    assert record.connection.local.address == "198.51.100.25"
    assert "[192.0.2.7]" in record.email.received
