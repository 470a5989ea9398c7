"""SMTP smuggling (CVE-2023-51764/51765/51766) and bare CR/LF: nothing but CRLF.CRLF ends
DATA, no smuggled command is ever executed, and the message carrying the attempt is refused.
"""

from __future__ import annotations

import pytest

from wildboar import smtp

from .client import Client, session

SMUGGLED = b"MAIL FROM:<ceo@victim.example>\r\nRCPT TO:<x@victim.example>\r\nDATA\r\n"

# The public vectors: SEC Consult's research tool, hannob/smtpsmug, Exim's advisory.
VECTORS = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
]


def _open_data(client: Client) -> None:
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
    assert client.round(b"DATA\r\n") == ["354"]


@pytest.mark.parametrize("vector", VECTORS, ids=repr)
def test_vector_never_ends_data_and_is_refused(vector: bytes, bytewise: bool) -> None:
    client = session(bytewise)
    _open_data(client)
    attack = b"Subject: hi\r\n\r\nbody" + vector + SMUGGLED + b"Subject: smuggled\r\n\r\nx"
    # Nothing has ended the message yet: no reply, no smuggled MAIL event.
    assert client.send(attack) == b""
    assert sum(isinstance(e, smtp.MailFrom) for e in client.events) == 1
    # The real end of data: the whole thing is refused as one message.
    status = client.round(b"\r\n.\r\n")
    assert status in (["550 5.5.2"], ["554 5.6.0"])
    assert client.accepted == []
    assert sum(isinstance(e, smtp.MailFrom) for e in client.events) == 1
    aborted = [e for e in client.events if isinstance(e, smtp.TransactionAborted)]
    assert [a.reason for a in aborted] == ["refused"]
    # The session goes on, in sync.
    assert client.round(b"NOOP\r\n") == ["250 2.0.0"]


@pytest.mark.parametrize("vector", [b"\n.\n", b"\n.\r\n", b"\r\n.\n"], ids=repr)
def test_vector_in_bdat_text_is_refused(vector: bytes) -> None:
    client = session()
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
    chunk = b"Subject: hi\r\n\r\nbody" + vector + SMUGGLED
    assert client.round(b"BDAT %d LAST\r\n" % len(chunk) + chunk) == ["550 5.5.2"]
    assert client.accepted == []
    assert sum(isinstance(e, smtp.MailFrom) for e in client.events) == 1


def test_binarymime_content_is_carried_bit_for_bit() -> None:
    client = session()
    client.send(b"MAIL FROM:<a@example.net> BODY=BINARYMIME\r\nRCPT TO:<b@example.org>\r\n")
    chunk = b"Content-Type: application/octet-stream\r\n\r\n\x00\n.\n\r\xff"
    assert client.round(b"BDAT %d LAST\r\n" % len(chunk) + chunk) == ["250 2.0.0"]
    assert client.accepted[0].content == chunk
    assert client.accepted[0].envelope.mail.body == "BINARYMIME"


@pytest.mark.parametrize(
    "line", [b"NOOP\nNOOP\r\n", b"NOOP\rNOOP\r\n", b"NOOP\n", b"RSET\r\r\n", b"\n"], ids=repr
)
def test_bare_newline_in_a_command_closes_the_session(line: bytes, bytewise: bool) -> None:
    client = session(bytewise)
    assert client.round(line) == ["521 5.5.2"]
    assert client.closed
    assert client.send(b"NOOP\r\n") == b""


def test_bare_lf_is_answered_at_once_not_after_a_timeout() -> None:
    # A client that ends lines with LF only gets its answer without sending a CRLF.
    client = session()
    assert client.round(b"EHLO client.example\n") == ["521 5.5.2"]


def test_cr_lf_split_across_reads_is_one_line_end() -> None:
    client = session()
    assert client.send(b"NOOP\r") == b""
    assert client.round(b"\n") == ["250 2.0.0"]


def test_data_split_at_every_point_of_the_end_marker() -> None:
    content = b"Subject: t\r\n\r\nline\r\n..dot\r\n"
    wire = content.replace(b"\r\n..", b"\r\n...") + b".\r\n"
    for cut in range(len(wire) + 1):
        client = session()
        _open_data(client)
        replies = client.send(wire[:cut]) + client.send(wire[cut:])
        assert replies == b"250 2.0.0 Ok\r\n", cut
        assert client.accepted[0].content == content, cut


def test_nul_in_data_is_refused() -> None:
    client = session()
    _open_data(client)
    assert client.round(b"Subject: t\r\n\r\na\x00b\r\n.\r\n") == ["554 5.6.0"]


def test_pipelined_commands_after_data_are_a_sync_error() -> None:
    # RFC 5321 §3.3: data "MUST NOT be sent unless a 354 reply is received".
    client = session()
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
    assert client.round(b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n") == ["554 5.5.0"]
    assert client.closed
    assert client.accepted == []


@pytest.mark.parametrize(
    "group",
    [
        b"EHLO a.example\r\nMAIL FROM:<a@example.net>\r\n",
        b"NOOP\r\nNOOP\r\n",
        b"VRFY a\r\nNOOP\r\n",
        b"HELO a.example\r\nNOOP\r\n",
    ],
)
def test_commands_that_must_end_a_group(group: bytes) -> None:
    client = session()
    assert client.round(group) == ["554 5.5.0"]
    assert client.closed


def test_no_pipelining_without_ehlo() -> None:
    client = Client()
    assert client.round(b"HELO a.example\r\n") == ["250"]
    assert client.round(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n") == [
        "554 5.5.0"
    ]


def test_no_pipelining_when_not_offered() -> None:
    client = Client(extensions=smtp.Extensions(pipelining=False))
    client.send(b"EHLO a.example\r\n")
    assert client.round(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n") == [
        "554 5.5.0"
    ]


def test_client_talking_before_the_greeting_is_a_sync_error() -> None:
    conn = smtp.ServerConnection("mx.example.org")
    conn.receive_data(b"EHLO early.example\r\n")
    assert conn.next_event() == smtp.ClientConnected()
    out = conn.send(smtp.Accept())
    assert out == b"220 mx.example.org ESMTP\r\n554 5.5.0 Error: SMTP protocol synchronization\r\n"
    assert conn.next_event() == smtp.ConnectionClosed("error")


def test_bdat_without_pipelining_must_wait_for_each_reply() -> None:
    client = Client(extensions=smtp.Extensions(pipelining=False))
    client.send(b"EHLO a.example\r\n")
    client.send(b"MAIL FROM:<a@example.net>\r\n")
    client.send(b"RCPT TO:<b@example.org>\r\n")
    assert client.round(b"BDAT 3\r\nabcBDAT 3 LAST\r\ndef") == ["250 2.0.0", "554 5.5.0"]
    assert client.closed
