"""STARTTLS in the core (RFC 3207): a state change, and nothing the client said in
plaintext survives it. The I/O layer runs the handshake; here it is stood in for by
``tls_started``."""

from __future__ import annotations

import pytest

from wildboar import smtp

from .client import Client

S = smtp.State


def lines(out: bytes) -> list[bytes]:
    return out.split(b"\r\n")[:-1]


def tls_client(bytewise: bool = False) -> Client:
    client = Client(bytewise=bytewise, starttls=True)
    assert b"STARTTLS" in client.send(b"EHLO client.example\r\n")
    return client


def test_starttls_is_offered_only_when_the_io_layer_can_run_it() -> None:
    plain = Client()
    assert b"STARTTLS" not in plain.send(b"EHLO client.example\r\n")
    assert plain.send(b"STARTTLS\r\n") == b"502 5.5.1 Error: command not implemented\r\n"
    ehlo = lines(tls_client().send(b"EHLO client.example\r\n"))
    assert b"250-STARTTLS" in ehlo


def test_starttls_answers_220_and_waits_for_the_handshake(bytewise: bool) -> None:
    client = tls_client(bytewise)
    assert client.send(b"STARTTLS\r\n") == b"220 2.0.0 Ready to start TLS\r\n"
    assert client.conn.state is S.TLS
    assert isinstance(client.events[-1], smtp.StartTls)
    assert client.conn.next_event() is smtp.PAUSED


def test_after_the_handshake_the_session_starts_again(bytewise: bool) -> None:
    client = tls_client(bytewise)
    client.send(b"STARTTLS\r\n")
    client.conn.tls_started()
    assert client.conn.state is S.CONNECTED and client.conn.tls
    # RFC 3207 §4.2: no greeting again, the EHLO is forgotten: a MAIL needs a new one.
    assert client.send(b"MAIL FROM:<a@example.net>\r\n").startswith(b"503 5.5.1")
    ehlo = client.send(b"EHLO client.example\r\n")
    assert ehlo.startswith(b"250-mx.example.org") and b"STARTTLS" not in ehlo
    assert client.send(b"STARTTLS\r\n") == b"503 5.5.1 Error: TLS already active\r\n"
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    assert client.send(b"Subject: x\r\n\r\nhi\r\n.\r\n").startswith(b"250 ")
    [accepted] = client.accepted
    assert accepted.envelope.protocol == "ESMTPS"  # RFC 3848


@pytest.mark.parametrize(
    "behind",
    [b"RSET\r\n", b"MAIL FROM:<evil@example.net>\r\n", b"EHLO evil.example\r\nNOOP\r\n", b"x"],
)
def test_what_was_pipelined_behind_starttls_is_dropped_unanswered(
    behind: bytes, bytewise: bool
) -> None:
    """CVE-2011-0411: ``STARTTLS\\r\\nRSET\\r\\n`` in one segment must not get a reply to
    RSET inside TLS, nor any effect."""
    client = tls_client(bytewise)
    out = client.send(b"STARTTLS\r\n" + behind)
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert client.conn.dropped_after_starttls == len(behind)
    client.conn.tls_started()
    assert client.send(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"  # one command, one reply
    assert client.conn.state is S.CONNECTED


def test_plaintext_sent_during_the_handshake_is_dropped_too() -> None:
    client = tls_client()
    client.send(b"STARTTLS\r\n")
    assert client.send(b"QUIT\r\n") == b""
    assert client.conn.dropped_after_starttls == 6
    client.conn.tls_started()
    assert client.send(b"QUIT\r\n").startswith(b"221 ")


def test_starttls_takes_no_parameters_and_not_inside_a_transaction() -> None:
    client = tls_client()
    assert client.send(b"STARTTLS now\r\n") == b"501 5.5.4 Syntax error: no arguments allowed\r\n"
    client.send(b"MAIL FROM:<a@example.net>\r\n")
    assert client.send(b"STARTTLS\r\n") == b"503 5.5.1 Error: MAIL transaction in progress\r\n"
    client.send(b"RCPT TO:<b@example.org>\r\n")
    assert client.send(b"STARTTLS\r\n").startswith(b"503 5.5.1")
    assert client.send(b"RSET\r\n").startswith(b"250 ")
    assert client.send(b"STARTTLS\r\n").startswith(b"220 ")


def test_starttls_before_ehlo_is_taken() -> None:
    client = Client(starttls=True)
    assert client.send(b"STARTTLS\r\n").startswith(b"220 ")
    client.conn.tls_started()
    assert client.send(b"EHLO client.example\r\n").startswith(b"250-")


def test_a_client_gone_during_the_handshake_closes_the_session() -> None:
    client = tls_client()
    client.send(b"STARTTLS\r\n")
    client.eof()
    assert client.closed and client.conn.state is S.CLOSED
    with pytest.raises(smtp.LocalProtocolError):
        client.conn.tls_started()


def test_a_listener_that_requires_tls_refuses_mail_before_it() -> None:
    client = Client(starttls=True)
    client.conn.require_tls = True  # as a submission listener's configuration sets it
    assert client.send(b"EHLO client.example\r\n").startswith(b"250-")
    must = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    for command in (b"MAIL FROM:<a@example.net>", b"RCPT TO:<b@example.org>", b"HELO x",
                    b"VRFY b", b"HELP", b"DATA"):  # fmt: skip
        assert client.send(command + b"\r\n") == must, command
    for command in (b"NOOP", b"RSET"):
        assert client.send(command + b"\r\n").startswith(b"250 "), command
    assert client.send(b"BDAT 3 LAST\r\nabc").startswith(b"503 5.5.1")  # chunk dropped
    assert client.send(b"STARTTLS\r\n").startswith(b"220 ")
    client.conn.tls_started()
    client.send(b"EHLO client.example\r\n")
    assert client.send(b"MAIL FROM:<a@example.net>\r\n").startswith(b"250 ")


def test_tls_started_without_starttls_is_the_callers_bug() -> None:
    with pytest.raises(smtp.LocalProtocolError):
        tls_client().conn.tls_started()
