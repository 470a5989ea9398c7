"""Transcripts for every command, fed whole and one byte at a time."""

from __future__ import annotations

import pytest

from wildboar import smtp

from .client import Client, replies, session, statuses

MESSAGE = b"Subject: t\r\n\r\nbody\r\n"


def test_greeting_names_the_host(bytewise: bool) -> None:
    client = Client(bytewise=bytewise)
    assert client.greeting == b"220 mx.example.org ESMTP\r\n"
    assert isinstance(client.events[0], smtp.ClientConnected)


def test_ehlo_lists_every_extension(bytewise: bool) -> None:
    client = Client(bytewise=bytewise)
    reply = client.send(b"EHLO client.example\r\n")
    assert reply.split(b"\r\n")[:-1] == [
        b"250-mx.example.org",
        b"250-PIPELINING",
        b"250-SIZE 10240000",
        b"250-8BITMIME",
        b"250-SMTPUTF8",
        b"250-ENHANCEDSTATUSCODES",
        b"250-CHUNKING",
        b"250-BINARYMIME",
        b"250-DSN",
        b"250 HELP",
    ]
    assert client.events[-1] == smtp.Hello("client.example", extended=True)


def test_ehlo_lists_only_offered_extensions() -> None:
    ext = smtp.Extensions(pipelining=False, chunking=False, binarymime=False, dsn=False)
    client = Client(extensions=ext, limits=smtp.Limits(message_size=100_000))
    reply = client.send(b"ehlo client.example\r\n")
    assert b"PIPELINING" not in reply and b"CHUNKING" not in reply and b"DSN" not in reply
    assert b"250-SIZE 100000\r\n" in reply


def test_helo_gets_a_plain_reply_and_no_extensions(bytewise: bool) -> None:
    client = Client(bytewise=bytewise)
    assert client.send(b"HELO client.example\r\n") == b"250 mx.example.org\r\n"
    # RFC 1869 §4.5: no parameters after HELO
    assert client.round(b"MAIL FROM:<a@example.net> SIZE=10\r\n") == ["555 5.5.4"]


@pytest.mark.parametrize(
    "line",
    [
        b"EHLO\r\n",
        b"EHLO \r\n",
        b"EHLO bad_name.example\r\n",
        b"EHLO -bad.example\r\n",
        b"EHLO two words\r\n",
        b"EHLO [300.1.1.1]\r\n",
    ],
)
def test_ehlo_syntax_errors(line: bytes) -> None:
    client = Client()
    assert client.round(line) == ["501 5.5.4"]
    assert client.conn.state is smtp.State.CONNECTED


@pytest.mark.parametrize("name", [b"[192.0.2.1]", b"[IPv6:2001:db8::1]", b"localhost", b"a.b-c.d"])
def test_ehlo_accepts_domains_and_address_literals(name: bytes) -> None:
    client = Client()
    assert client.round(b"EHLO " + name + b"\r\n") == ["250"]


def test_one_transaction_end_to_end(bytewise: bool) -> None:
    client = session(bytewise)
    assert client.round(b"MAIL FROM:<alice@example.net>\r\n") == ["250 2.1.0"]
    assert client.round(b"RCPT TO:<bob@example.org>\r\n") == ["250 2.1.5"]
    assert client.round(b"DATA\r\n") == ["354"]
    assert client.round(MESSAGE + b".\r\n") == ["250 2.0.0"]
    assert client.round(b"QUIT\r\n") == ["221 2.0.0"]
    assert client.closed
    [message] = client.accepted
    assert message.content == MESSAGE
    assert message.envelope.sender == "alice@example.net"
    assert [r.address for r in message.envelope.recipients] == ["bob@example.org"]
    assert message.envelope.protocol == "ESMTP"
    assert message.envelope.size == len(MESSAGE)
    assert isinstance(client.events[-1], smtp.ConnectionClosed)


def test_pipelined_group_gets_replies_in_order(bytewise: bool) -> None:
    client = session(bytewise)
    group = (
        b"MAIL FROM:<a@example.net>\r\n"
        b"RCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n"
    )
    assert client.round(group) == ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"]
    # RFC 2920 §3.1: message content may be the first "command" of the next group
    assert client.round(MESSAGE + b".\r\nRSET\r\nMAIL FROM:<>\r\n") == [
        "250 2.0.0",
        "250 2.0.0",
        "250 2.1.0",
    ]


def test_accept_text_is_the_queue_reply() -> None:
    def policy(question: smtp.Question) -> smtp.Answer:
        if isinstance(question, smtp.MessageComplete):
            return smtp.Accept("Ok: queued as 42")
        return smtp.Accept()

    client = session(policy=policy)
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    assert client.send(MESSAGE + b".\r\n") == b"250 2.0.0 Ok: queued as 42\r\n"


@pytest.mark.parametrize("text", ["queued\r\n250 2.0.0 smuggled", "queued as caf\u00e9"])
def test_accept_text_that_is_not_one_ascii_line_is_a_caller_mistake(text: str) -> None:
    conn = smtp.ServerConnection("mx.example.org")
    conn.next_event()
    conn.send(smtp.Accept())
    conn.receive_data(b"EHLO a.example\r\n")
    conn.next_event()
    conn.send(smtp.Accept())
    conn.receive_data(b"MAIL FROM:<a@example.net>\r\n")
    assert isinstance(conn.next_event(), smtp.MailFrom)
    with pytest.raises(smtp.LocalProtocolError):
        conn.send(smtp.Accept(text))


def test_policy_refusals_reach_the_client_and_keep_the_state() -> None:
    def policy(question: smtp.Question) -> smtp.Answer:
        if isinstance(question, smtp.RcptTo) and question.recipient.startswith("nobody"):
            return smtp.Reply(550, "5.1.1", "No such user")
        if isinstance(question, smtp.MessageComplete):
            return smtp.Reply(451, "4.3.0", "Try again later")
        return smtp.Accept()

    client = session(policy=policy)
    assert client.round(b"MAIL FROM:<a@example.net>\r\n") == ["250 2.1.0"]
    assert client.send(b"RCPT TO:<nobody@example.org>\r\n") == b"550 5.1.1 No such user\r\n"
    assert client.conn.state is smtp.State.MAIL
    assert client.round(b"DATA\r\n") == ["554 5.5.1"]
    assert client.round(b"RCPT TO:<b@example.org>\r\nDATA\r\n") == ["250 2.1.5", "354"]
    assert client.send(MESSAGE + b".\r\n") == b"451 4.3.0 Try again later\r\n"
    assert client.accepted == []
    assert client.conn.state is smtp.State.READY


def test_refused_connection_answers_503_until_quit(bytewise: bool) -> None:
    def policy(question: smtp.Question) -> smtp.Answer:
        if isinstance(question, smtp.ClientConnected):
            return smtp.Reply(554, "5.7.1", "mx.example.org No SMTP service here")
        return smtp.Accept()

    client = Client(bytewise=bytewise, policy=policy)
    assert client.greeting == b"554 5.7.1 mx.example.org No SMTP service here\r\n"
    assert client.round(b"EHLO client.example\r\n") == ["503 5.7.0"]
    assert client.round(b"MAIL FROM:<a@example.net>\r\n") == ["503 5.7.0"]
    assert client.round(b"BDAT 3\r\nabc") == ["503 5.7.0"]
    assert client.round(b"QUIT\r\n") == ["221 2.0.0"]
    assert client.closed


@pytest.mark.parametrize("code", [421, 521])
def test_connection_refused_with_close(code: int) -> None:
    def policy(question: smtp.Question) -> smtp.Answer:
        return smtp.Reply(code, f"{code // 100}.7.0", "mx.example.org go away")

    client = Client(policy=policy)
    assert statuses(client.greeting) == [f"{code} {code // 100}.7.0"]
    assert client.closed
    assert client.send(b"EHLO x.example\r\n") == b""


def test_mail_before_helo_is_refused() -> None:
    client = Client()
    assert client.round(b"MAIL FROM:<a@example.net>\r\n") == ["503 5.5.1"]
    assert client.round(b"RCPT TO:<a@example.net>\r\n") == ["503 5.5.1"]
    assert client.round(b"DATA\r\n") == ["503 5.5.1"]


def test_sequence_errors(bytewise: bool) -> None:
    client = session(bytewise)
    assert client.round(b"RCPT TO:<b@example.org>\r\n") == ["503 5.5.1"]
    assert client.round(b"DATA\r\n") == ["503 5.5.1"]
    assert client.round(b"MAIL FROM:<a@example.net>\r\n") == ["250 2.1.0"]
    assert client.round(b"MAIL FROM:<a@example.net>\r\n") == ["503 5.5.1"]
    assert client.round(b"DATA\r\n") == ["554 5.5.1"]


def test_rset_ends_the_transaction(bytewise: bool) -> None:
    client = session(bytewise)
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
    assert client.round(b"RSET\r\n") == ["250 2.0.0"]
    assert client.events[-1] == smtp.TransactionAborted("reset")
    assert client.round(b"RCPT TO:<b@example.org>\r\n") == ["503 5.5.1"]
    assert client.round(b"RSET now\r\n") == ["501 5.5.4"]
    assert client.round(b"RSET  \r\n") == ["250 2.0.0"]  # trailing white space tolerated


@pytest.mark.parametrize("blank", [b" ", b"\t", b" \t ", b"\t\t"])
def test_trailing_white_space_after_any_command_is_tolerated(blank: bytes) -> None:
    """RFC 5321 §4.1.1: servers SHOULD tolerate trailing white space, a TAB too."""
    client = session()
    assert client.round(b"NOOP" + blank + b"\r\n") == ["250 2.0.0"]
    assert client.round(b"RSET" + blank + b"\r\n") == ["250 2.0.0"]
    client.send(b"MAIL FROM:<a@example.net>" + blank + b"\r\n")
    assert client.round(b"RCPT TO:<b@example.org>" + blank + b"\r\n") == ["250 2.1.5"]
    assert client.round(b"BDAT 3 LAST" + blank + b"\r\nabc") == ["250 2.0.0"]
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\n")
    assert client.round(b"DATA" + blank + b"\r\n") == ["354"]
    assert client.round(b"x\r\n.\r\n") == ["250 2.0.0"]
    assert client.round(b"QUIT" + blank + b"\r\n") == ["221 2.0.0"]


def test_ehlo_in_a_transaction_resets_it() -> None:
    client = session()
    client.send(b"MAIL FROM:<a@example.net>\r\n")
    assert client.round(b"EHLO again.example\r\n") == ["250"]
    assert smtp.TransactionAborted("hello") in client.events
    assert client.round(b"RCPT TO:<b@example.org>\r\n") == ["503 5.5.1"]


def test_refused_ehlo_keeps_the_transaction() -> None:
    def policy(question: smtp.Question) -> smtp.Answer:
        if isinstance(question, smtp.Hello) and question.name == "bad.example":
            return smtp.Reply(550, "5.7.1", "Go away")
        return smtp.Accept()

    client = session(policy=policy)
    client.send(b"MAIL FROM:<a@example.net>\r\n")
    assert client.round(b"EHLO bad.example\r\n") == ["550 5.7.1"]
    assert client.conn.state is smtp.State.MAIL


def test_noop_vrfy_help(bytewise: bool) -> None:
    client = Client(bytewise=bytewise)  # allowed before EHLO (RFC 5321 §4.1.4)
    assert client.round(b"NOOP\r\n") == ["250 2.0.0"]
    assert client.round(b"NOOP anything at all\r\n") == ["250 2.0.0"]
    assert client.round(b"VRFY bob\r\n") == ["252 2.0.0"]
    assert client.round(b"VRFY\r\n") == ["501 5.5.4"]
    help_reply = replies(client.send(b"HELP\r\n"))
    assert [line[:10] for line in help_reply[0]] == [b"214-2.0.0 ", b"214 2.0.0 "]
    assert client.round(b"HELP MAIL\r\n") == ["214 2.0.0"]


def test_quit_closes_and_aborts_the_transaction(bytewise: bool) -> None:
    client = session(bytewise)
    client.send(b"MAIL FROM:<a@example.net>\r\n")
    assert client.round(b"QUIT\r\n") == ["221 2.0.0"]
    assert client.events[-2:] == [smtp.TransactionAborted("quit"), smtp.ConnectionClosed("quit")]
    assert client.conn.state is smtp.State.CLOSED
    assert client.send(b"NOOP\r\n") == b""


def test_quit_with_arguments_is_refused() -> None:
    client = session()
    assert client.round(b"QUIT now\r\n") == ["501 5.5.4"]
    assert not client.closed


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"FOO\r\n", "500 5.5.2"),
        (b"\r\n", "500 5.5.2"),
        (b"EXPN staff\r\n", "502 5.5.1"),
        (b"TURN\r\n", "502 5.5.1"),
        (b"STARTTLS\r\n", "502 5.5.1"),
        (b"AUTH PLAIN\r\n", "502 5.5.1"),
        (b"mail\tFROM:<a@b.example>\r\n", "500 5.5.2"),
    ],
)
def test_unknown_and_unimplemented_commands(line: bytes, status: str) -> None:
    client = session()
    assert client.round(line) == [status]
    assert not client.closed


@pytest.mark.parametrize(
    "line",
    [b"GET / HTTP/1.1\r\n", b"POST /x HTTP/1.0\r\n", b"CONNECT a:25\r\n", b"Subject: hi\r\n"],
)
def test_web_and_header_lines_end_the_session(line: bytes) -> None:
    client = session()
    assert client.round(line) == ["221 2.7.0"]
    assert client.closed


def test_non_ascii_command_is_refused() -> None:
    client = session()
    assert client.round("NOOP caf\u00e9\r\n".encode()) == ["501 5.5.2"]
    assert client.round(b"NOOP \xff\r\n") == ["501 5.5.2"]
    assert client.round(b"MAIL FROM:<\xff@example.net> SMTPUTF8\r\n") == ["501 5.5.2"]


def test_end_of_input_closes_and_aborts() -> None:
    client = session()
    client.send(b"MAIL FROM:<a@example.net>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    client.send(b"partial content\r\n")
    client.eof()
    assert client.events[-2:] == [smtp.TransactionAborted("closed"), smtp.ConnectionClosed("eof")]
    assert client.accepted == []


def test_pipelined_quit_after_eof_is_still_answered() -> None:
    client = session()
    client.conn.receive_data(b"NOOP\r\n")
    client.conn.receive_data(b"")
    assert client.round(b"") == ["250 2.0.0"]
    assert client.closed


def test_shutdown_421_at_any_time() -> None:
    client = session()
    client.send(b"MAIL FROM:<a@example.net>\r\n")
    out = client.conn.send(smtp.Reply(421, "4.3.2", "mx.example.org shutting down"))
    assert out == b"421 4.3.2 mx.example.org shutting down\r\n"
    client.round(b"")
    assert client.events[-2:] == [smtp.TransactionAborted("closed"), smtp.ConnectionClosed("local")]


def test_shutdown_while_a_question_waits() -> None:
    conn = smtp.ServerConnection("mx.example.org")
    assert conn.next_event() == smtp.ClientConnected()
    conn.send(smtp.Accept())
    conn.receive_data(b"EHLO a.example\r\n")
    assert isinstance(conn.next_event(), smtp.Hello)
    out = conn.send(smtp.Reply(421, "4.4.2", "mx.example.org timeout"))
    assert out == b"421 4.4.2 mx.example.org timeout\r\n"
    assert conn.next_event() == smtp.ConnectionClosed("local")
    assert conn.next_event() is smtp.PAUSED


def test_caller_mistakes_raise_local_protocol_error() -> None:
    conn = smtp.ServerConnection("mx.example.org")
    with pytest.raises(smtp.LocalProtocolError):
        conn.send(smtp.Accept())  # the question was not asked yet
    assert conn.next_event() == smtp.ClientConnected()
    with pytest.raises(smtp.LocalProtocolError):
        conn.send(smtp.Reply(250, "2.0.0", "a refusal must be 4xx/5xx"))
    with pytest.raises(smtp.LocalProtocolError):
        conn.send(smtp.Reply(550, "5.0.0", "a greeting refusal is 554 or 521"))
    conn.send(smtp.Accept())
    with pytest.raises(smtp.LocalProtocolError):
        conn.send(smtp.Accept())  # nothing pending
    conn.receive_data(b"MAIL FROM:<a@example.net>\r\n")
    assert conn.next_event() is smtp.NEED_DATA  # MAIL before EHLO: answered by the core
    assert conn.data_to_send() == b"503 5.5.1 Error: send HELO/EHLO first\r\n"


@pytest.mark.parametrize(
    "bad",
    [
        lambda: smtp.Reply(250, "", "missing enhanced code"),
        lambda: smtp.Reply(250, "5.0.0", "class mismatch"),
        lambda: smtp.Reply(550, "5.01.0", "leading zero"),
        lambda: smtp.Reply(354, "2.0.0", "3xx has no enhanced code"),
        lambda: smtp.Reply(600, "5.0.0", "bad code"),
        lambda: smtp.Reply(550, "5.0.0", "two\r\nlines"),
        lambda: smtp.Reply(550, "5.0.0", "caf\u00e9"),
        lambda: smtp.ServerConnection("bad_host"),
        lambda: smtp.ServerConnection("mx.example.org", banner="x\r\n250 y"),
        lambda: smtp.Limits(recipients=99),
        lambda: smtp.Extensions(eightbitmime=False),
        lambda: smtp.Extensions(chunking=False),
    ],
)
def test_invalid_local_values_are_refused(bad: object) -> None:
    with pytest.raises((smtp.LocalProtocolError, ValueError)):
        bad()  # type: ignore[operator]


def test_multiline_reply_repeats_code_and_status() -> None:
    reply = smtp.Reply(550, "5.7.1", ("first", "second"))
    assert reply.to_bytes() == b"550-5.7.1 first\r\n550 5.7.1 second\r\n"


def test_refusal_text_from_the_policy_is_sent_verbatim() -> None:
    def policy(question: smtp.Question) -> smtp.Answer:
        if isinstance(question, smtp.MailFrom):
            return smtp.Reply(450, "4.7.1", ("Greylisted,", "try again in 5 minutes"))
        return smtp.Accept()

    client = session(policy=policy)
    out = client.send(b"MAIL FROM:<a@example.net>\r\n")
    assert out == b"450-4.7.1 Greylisted,\r\n450 4.7.1 try again in 5 minutes\r\n"
