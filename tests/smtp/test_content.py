"""Message content (DATA and BDAT) and the named limits."""

from __future__ import annotations

import datetime

import pytest

from wildboar import smtp

from .client import Client, session, statuses

HEADERS = b"From: a@example.net\r\nSubject: t\r\n\r\n"


def stuff(content: bytes) -> bytes:
    """The client side of RFC 5321 §4.5.2 transparency."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    return (b"." + stuffed if stuffed.startswith(b".") else stuffed) + b".\r\n"


def data_session(bytewise: bool = False, **kwargs: object) -> Client:
    client = session(bytewise, **kwargs)
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
    assert client.round(b"DATA\r\n") == ["354"]
    return client


def bdat_session(mail: bytes = b"MAIL FROM:<a@example.net>", **kwargs: object) -> Client:
    client = session(**kwargs)
    assert client.round(mail + b"\r\nRCPT TO:<b@example.org>\r\n") == ["250 2.1.0", "250 2.1.5"]
    return client


@pytest.mark.parametrize(
    "content",
    [
        HEADERS + b"plain\r\n",
        HEADERS + b".\r\n..\r\n...\r\n.x\r\n",
        b".starts with a dot\r\n",
        b"",
        HEADERS,
        HEADERS + b"\r\n\r\n",
        HEADERS + "8-bit caf\u00e9\r\n".encode(),
        HEADERS + b"x" * 998 + b"\r\n",
        HEADERS + b"." + b"x" * 997 + b"\r\n",
    ],
    ids=repr,
)
def test_data_arrives_unstuffed_and_intact(content: bytes, bytewise: bool) -> None:
    client = data_session(bytewise)
    assert client.round(stuff(content)) == ["250 2.0.0"]
    assert client.accepted[0].content == content
    assert client.accepted[0].envelope.size == len(content)  # RFC 1870 §5 counting


def test_large_message_comes_in_bounded_pieces() -> None:
    limits = smtp.Limits(data_chunk=4096)
    client = data_session(limits=limits)
    body = b"".join(
        b"line %06d ....................................................\r\n" % i
        for i in range(20_000)
    )
    content = HEADERS + body
    wire = stuff(content)
    for start in range(0, len(wire), 50_000):
        client.send(wire[start : start + 50_000])
        assert client.conn.input_backlog <= 50_000
    assert client.accepted[0].content == content
    pieces = [e.data for e in client.events if isinstance(e, smtp.MessageData)]
    assert max(map(len, pieces)) <= 4096 + 2
    assert b"".join(pieces) == content


def test_line_longer_than_a_chunk_is_handed_out_mid_line() -> None:
    limits = smtp.Limits(data_chunk=1024, text_line=100_000)
    client = data_session(limits=limits)
    content = HEADERS + b"y" * 50_000 + b"\r\n.x\r\n"
    assert client.round(stuff(content)) == ["250 2.0.0"]
    assert client.accepted[0].content == content


def test_message_size_limit_drains_then_refuses(bytewise: bool) -> None:
    limits = smtp.Limits(message_size=64 * 1024)
    client = data_session(bytewise, limits=limits)
    content = HEADERS + b"z" * 70 * 1024 + b"\r\n"
    assert client.round(stuff(content)) == ["552 5.3.4"]
    assert client.accepted == []
    aborted = [e for e in client.events if isinstance(e, smtp.TransactionAborted)]
    assert [(e.reason, e.reply and e.reply.code) for e in aborted] == [("refused", 552)]
    # The refused transaction's envelope comes with it, for a record of the rejection.
    envelope = aborted[0].envelope
    assert envelope is not None
    assert envelope.recipients and envelope.size > limits.message_size
    assert client.round(b"NOOP\r\n") == ["250 2.0.0"]


def test_declared_size_over_the_limit_is_refused_at_mail() -> None:
    client = session(limits=smtp.Limits(message_size=100_000))
    assert client.round(b"MAIL FROM:<a@example.net> SIZE=100001\r\n") == ["552 5.3.4"]
    assert client.round(b"MAIL FROM:<a@example.net> SIZE=100000\r\n") == ["250 2.1.0"]


def test_text_line_limit() -> None:
    client = data_session()
    assert client.round(stuff(HEADERS + b"x" * 999 + b"\r\n")) == ["554 5.6.0"]
    assert client.accepted == []


def test_loop_detection_counts_received_headers_only() -> None:
    limits = smtp.Limits(hops=5)
    ok = b"Received: from a\r\n" * 5 + HEADERS + b"Received: in the body\r\n" * 10
    client = data_session(limits=limits)
    assert client.round(stuff(ok)) == ["250 2.0.0"]
    loop = b"received: from a\r\n" * 6 + HEADERS
    client = data_session(limits=limits)
    assert client.round(stuff(loop)) == ["554 5.4.0"]


def test_received_header_split_across_pieces_is_counted() -> None:
    client = bdat_session(limits=smtp.Limits(hops=1))
    assert client.round(b"BDAT 23\r\nReceived: from a\r\nRecei") == ["250 2.0.0"]
    assert client.round(b"BDAT 21 LAST\r\nved: from b\r\n\r\nbody\r\n") == ["554 5.4.0"]


def test_recipient_limit_is_452_and_the_rest_are_kept(bytewise: bool) -> None:
    client = session(bytewise, limits=smtp.Limits(recipients=100))
    client.send(b"MAIL FROM:<a@example.net>\r\n")
    group = b"".join(b"RCPT TO:<r%d@example.org>\r\n" % i for i in range(105))
    assert client.round(group) == ["250 2.1.5"] * 100 + ["452 4.5.3"] * 5
    client.send(b"DATA\r\n")
    assert client.round(stuff(HEADERS)) == ["250 2.0.0"]
    assert len(client.accepted[0].envelope.recipients) == 100
    assert not client.closed  # 452 is not a client error (RFC 5321 §4.5.3.1.10)


def test_error_budget_closes_with_421() -> None:
    client = session(limits=smtp.Limits(errors=3))
    assert client.round(b"FOO\r\n") == ["500 5.5.2"]
    assert client.conn.errors == 1
    assert client.round(b"BAR\r\n") == ["500 5.5.2"]
    assert client.round(b"BAZ\r\n") == ["500 5.5.2", "421 4.7.0"]
    assert client.closed
    assert client.conn.errors == 3


def test_command_budget_closes_with_421() -> None:
    client = session(limits=smtp.Limits(commands=3))
    assert client.round(b"NOOP\r\n") == ["250 2.0.0"]
    assert client.round(b"NOOP\r\n") == ["250 2.0.0"]
    assert client.round(b"NOOP\r\n") == ["421 4.7.0"]  # EHLO was the first
    assert client.closed


def test_command_line_limit_before_and_after_ehlo(bytewise: bool) -> None:
    client = Client(bytewise=bytewise)
    assert client.round(b"NOOP " + b"x" * 505 + b"\r\n") == ["250 2.0.0"]  # 512 with CRLF
    assert client.round(b"NOOP " + b"x" * 506 + b"\r\n") == ["500 5.5.2"]
    assert client.round(b"NOOP\r\n") == ["250 2.0.0"]  # in sync after the long line
    client.send(b"EHLO a.example\r\n")
    long_mail = b"MAIL FROM:<a@example.net> SIZE=1 BODY=8BITMIME ENVID=" + b"e" * 100 + b"\r\n"
    assert client.round(long_mail) == ["250 2.1.0"]


def test_huge_command_line_costs_only_the_limit() -> None:
    client = session()
    piece = b"A" * 65536
    assert client.round(piece) == ["500 5.5.2"]
    for _ in range(160):  # 10 MiB without a line end
        assert client.send(piece) == b""
        assert client.conn.input_backlog == 0
    assert client.round(b"\r\nNOOP\r\n") == ["250 2.0.0"]


def test_huge_line_whose_crlf_is_split() -> None:
    client = session()
    client.send(b"A" * 2000 + b"\r")
    assert client.round(b"\nNOOP\r\n") == ["250 2.0.0"]


# --- BDAT (RFC 3030) -------------------------------------------------------------------


def test_bdat_chunks_make_one_message(bytewise: bool) -> None:
    client = bdat_session()
    client.bytewise = bytewise
    part1, part2 = HEADERS + b"first\r", b"\nsecond\r\n"
    assert client.round(b"BDAT %d\r\n" % len(part1) + part1) == ["250 2.0.0"]
    assert client.round(b"BDAT %d LAST\r\n" % len(part2) + part2) == ["250 2.0.0"]
    assert client.accepted[0].content == part1 + part2
    assert client.accepted[0].envelope.chunked


def test_bdat_pipelined_chunks() -> None:
    client = bdat_session()
    wire = b"BDAT 5\r\nabc\r\nBDAT 0\r\nBDAT 7 last\r\ndef\r\n\r\n"
    assert client.round(wire) == ["250 2.0.0"] * 3
    assert client.accepted[0].content == b"abc\r\ndef\r\n\r\n"


def test_bdat_zero_last_ends_the_message() -> None:
    client = bdat_session()
    assert client.round(b"BDAT 4\r\nab\r\n") == ["250 2.0.0"]
    assert client.round(b"BDAT 0 LAST\r\n") == ["250 2.0.0"]
    assert client.accepted[0].content == b"ab\r\n"


def test_bdat_over_the_size_limit_is_drained_and_then_skipped() -> None:
    client = bdat_session(limits=smtp.Limits(message_size=65536))
    assert client.round(b"BDAT 70000\r\n" + b"x" * 70000) == ["552 5.3.4"]
    assert client.round(b"BDAT 3\r\nabc") == ["551 5.0.0"]
    assert client.round(b"BDAT 3 LAST\r\nabc") == ["551 5.0.0"]
    assert client.accepted == []
    assert client.conn.state is smtp.State.READY
    assert client.round(b"MAIL FROM:<a@example.net>\r\n") == ["250 2.1.0"]


def test_bdat_last_over_the_size_limit() -> None:
    client = bdat_session(limits=smtp.Limits(message_size=65536))
    assert client.round(b"BDAT 70000 LAST\r\n" + b"x" * 70000) == ["552 5.3.4"]
    assert client.conn.state is smtp.State.READY


def test_bdat_content_error_then_rset() -> None:
    client = bdat_session()
    assert client.round(b"BDAT 4\r\na\nb\r") == ["550 5.5.2"]
    assert client.round(b"BDAT 2 LAST\r\n\r\n") == ["551 5.0.0"]
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
    assert client.round(b"BDAT 2\r\nxy") == ["250 2.0.0"]
    assert client.round(b"RSET\r\n") == ["250 2.0.0"]
    assert client.events[-1] == smtp.TransactionAborted("reset")


def test_bdat_ending_in_a_bare_cr_is_refused() -> None:
    client = bdat_session()
    assert client.round(b"BDAT 3 LAST\r\nab\r") == ["550 5.5.2"]


@pytest.mark.parametrize(
    ("setup", "status"),
    [
        (b"", "503 5.5.1"),
        (b"MAIL FROM:<a@example.net>\r\n", "554 5.5.1"),
    ],
)
def test_bdat_out_of_sequence_is_drained_first(setup: bytes, status: str) -> None:
    client = session()
    client.send(setup)
    assert client.round(b"BDAT 12\r\nNOOP\r\nNOOP\r\n") == [status]
    assert client.round(b"NOOP\r\n") == ["250 2.0.0"]


def test_bdat_after_helo_is_drained_and_refused() -> None:
    client = Client()
    client.send(b"HELO a.example\r\n")
    assert client.round(b"BDAT 6\r\nQUIT\r\n") == ["503 5.5.1"]
    assert not client.closed


def test_bdat_when_chunking_is_off() -> None:
    ext = smtp.Extensions(chunking=False, binarymime=False)
    client = bdat_session(extensions=ext)
    assert client.round(b"BDAT 6\r\nQUIT\r\n") == ["503 5.5.1"]


@pytest.mark.parametrize(
    "line",
    [
        b"BDAT\r\n",
        b"BDAT x\r\n",
        b"BDAT -1\r\n",
        b"BDAT 1 FIRST\r\n",
        b"BDAT " + b"9" * 19 + b"\r\n",
    ],
)
def test_bdat_syntax_error_closes(line: bytes) -> None:
    client = bdat_session()
    assert client.round(line) == ["421 4.5.4"]
    assert client.closed


def test_data_after_bdat_and_binarymime_with_data() -> None:
    client = bdat_session()
    client.send(b"BDAT 2\r\nab")
    assert client.round(b"DATA\r\n") == ["503 5.5.1"]
    assert client.round(b"RCPT TO:<c@example.org>\r\n") == ["503 5.5.1"]
    assert client.round(b"MAIL FROM:<a@example.net>\r\n") == ["503 5.5.1"]
    client = bdat_session(b"MAIL FROM:<a@example.net> BODY=BINARYMIME")
    assert client.round(b"DATA\r\n") == ["503 5.5.1"]


def test_data_with_arguments_is_refused() -> None:
    client = session()
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
    assert client.round(b"DATA now\r\n") == ["501 5.5.4"]


def test_end_of_input_inside_bdat() -> None:
    client = bdat_session()
    client.send(b"BDAT 10\r\nabc")
    client.eof()
    assert client.events[-2:] == [smtp.TransactionAborted("closed"), smtp.ConnectionClosed("eof")]


def test_end_of_input_while_a_chunk_is_dropped() -> None:
    client = session()
    client.send(b"BDAT 10\r\nabc")
    client.eof()
    assert client.events[-1] == smtp.ConnectionClosed("eof")


# --- protocol names and the Received header ----------------------------------------------


@pytest.mark.parametrize(
    ("hello", "mail", "tls", "protocol"),
    [
        (b"HELO", b"MAIL FROM:<a@example.net>", False, "SMTP"),
        (b"EHLO", b"MAIL FROM:<a@example.net>", False, "ESMTP"),
        (b"EHLO", b"MAIL FROM:<a@example.net>", True, "ESMTPS"),
        (b"EHLO", "MAIL FROM:<\u00e5@example.net> SMTPUTF8".encode(), False, "UTF8SMTP"),
        (b"EHLO", b"MAIL FROM:<a@example.net> SMTPUTF8", True, "UTF8SMTPS"),
    ],
)
def test_protocol_type(hello: bytes, mail: bytes, tls: bool, protocol: str) -> None:
    client = Client()
    client.conn.tls = tls
    client.send(hello + b" client.example\r\n")
    for line in (mail, b"RCPT TO:<b@example.org>", b"DATA"):
        assert statuses(client.send(line + b"\r\n"))[0] in ("250 2.1.0", "250 2.1.5", "354")
    assert client.round(stuff(HEADERS)) == ["250 2.0.0"]
    assert client.accepted[0].envelope.protocol == protocol


def test_received_header() -> None:
    client = data_session()
    client.round(stuff(HEADERS))
    envelope = client.accepted[0].envelope
    when = datetime.datetime(
        2026, 11, 22, 9, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1))
    )
    header = smtp.received_header(
        envelope, by="mx.example.org", client_address="2001:db8::1", when=when, id="42"
    )
    assert header == (
        b"Received: from client.example ([IPv6:2001:db8::1])\r\n"
        b"\tby mx.example.org with ESMTP id 42\r\n"
        b"\tfor <b@example.org>; Sun, 22 Nov 2026 09:30:00 +0100\r\n"
    )
    named = smtp.received_header(
        envelope,
        by="mx",
        client_address="::ffff:192.0.2.7",
        client_name="c.example",
        when=when,
        id="7",
    )
    assert named.startswith(b"Received: from client.example (c.example [192.0.2.7])\r\n")
    with pytest.raises(ValueError, match="time zone"):
        smtp.received_header(
            envelope, by="mx", client_address="192.0.2.1", when=when.replace(tzinfo=None), id="1"
        )


def test_received_header_names_the_tls_session_in_a_comment() -> None:
    client = data_session()
    client.round(stuff(HEADERS))
    when = datetime.datetime(2026, 11, 22, 9, 30, tzinfo=datetime.UTC)
    header = smtp.received_header(
        client.accepted[0].envelope,
        by="mx.example.org",
        client_address="192.0.2.1",
        when=when,
        id="42",
        tls=("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    )
    assert b"\tby mx.example.org with ESMTP id 42\r\n" in header
    assert b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n\tfor <b@" in header
    # Only token characters: nothing can end the comment or the field.
    odd = smtp.received_header(
        client.accepted[0].envelope,
        by="mx",
        client_address="192.0.2.1",
        when=when,
        id="1",
        tls=("TLSv1.3) x\r\nX-Evil: 1", ""),
    )
    assert b"(using TLSv1.3xX-Evil1 with cipher unknown)" in odd and b"\r\nX-Evil" not in odd


def received_for(recipients: bytes) -> bytes:
    """The Received field of a message to ``recipients`` (RCPT lines)."""
    client = session()
    client.send(b"MAIL FROM:<a@example.net>\r\n" + recipients + b"DATA\r\n")
    client.round(stuff(HEADERS))
    return smtp.received_header(
        client.accepted[0].envelope,
        by="mx.example.org",
        client_address="192.0.2.1",
        when=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        id="9",
    )


def test_received_header_names_no_recipient_when_there_are_several() -> None:
    header = received_for(b"RCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\n")
    assert b" for " not in header and b"\tfor" not in header
    assert header.endswith(b"id 9; Thu, 01 Jan 2026 00:00:00 +0000\r\n")


def test_received_header_leaves_out_a_postmaster_without_domain() -> None:
    """§4.4's FOR takes a Path or Mailbox, both with a domain; <Postmaster> has none."""
    header = received_for(b"RCPT TO:<Postmaster>\r\n")
    assert b"for" not in header and b"Postmaster" not in header
    assert header.endswith(b"id 9; Thu, 01 Jan 2026 00:00:00 +0000\r\n")


def test_binarymime_content_still_counts_received_fields() -> None:
    """Only the body is binary (RFC 3030 §3): the header section is counted for the hop
    limit (RFC 5321 §6.3), while bare LF, NUL and long lines stay allowed."""
    mail = b"MAIL FROM:<a@example.net> BODY=BINARYMIME"
    loop = b"Received: from x by y\r\n" * 6 + b"Subject: loop\r\n\r\nbody\r\n"
    client = bdat_session(mail, limits=smtp.Limits(hops=5))
    assert client.round(b"BDAT %d LAST\r\n" % len(loop) + loop) == ["554 5.4.0"]
    assert client.accepted == []
    binary = b"Received: from x by y\r\n" * 5 + b"Subject: b\r\n\r\n\x00\n\r" + b"y" * 2000
    client = bdat_session(mail, limits=smtp.Limits(hops=5))
    assert client.round(b"BDAT %d LAST\r\n" % len(binary) + binary) == ["250 2.0.0"]
    assert client.accepted[0].content == binary
    # "Received:" lines in the body of a binary message are not hops.
    body = b"Subject: b\r\n\r\n" + b"Received: in the body\r\n" * 10
    client = bdat_session(mail, limits=smtp.Limits(hops=5))
    assert client.round(b"BDAT %d LAST\r\n" % len(body) + body) == ["250 2.0.0"]
    # Nor is "received:" after a bare LF inside a binary header line: a field starts a line.
    inside = b"Received: a\r\n" * 5 + b"X-Data: 1\nreceived: 2\nReceived: 3\r\n\r\nbody"
    client = bdat_session(mail, limits=smtp.Limits(hops=5))
    assert client.round(b"BDAT %d LAST\r\n" % len(inside) + inside) == ["250 2.0.0"]
