"""The sans-IO LMTP client (wildboar.lmtp) against in-memory transcripts of a Dovecot-like
server: no sockets. Server bytes are fed whole and one byte at a time."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wildboar.lmtp import (
    CONNECTION_LOST,
    NEED_DATA,
    PROTOCOL_ERROR,
    Bdat,
    BdatReply,
    ClientConnection,
    Closed,
    Command,
    Content,
    Data,
    DataReady,
    Event,
    Greeting,
    Lhlo,
    LhloDone,
    LocalProtocolError,
    Mail,
    MailReply,
    Quit,
    Rcpt,
    RcptReply,
    RecipientResult,
    Rset,
    RsetDone,
    State,
    dot_stuff,
)
from wildboar.smtp import Reply

GREETING = b"220 host Dovecot ready.\r\n"
LHLO_REPLY = (
    b"250-host\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n"
)
SENDER = "sender@client.test"
RECIPIENTS = ("alice@example.org", "x@y", "carol@example.org")
UNKNOWN = Reply(550, "5.1.1", "<x@y> User doesn't exist: x@y")
SAVED = Reply(250, "2.0.0", "<alice@example.org> Saved")
QUOTA = Reply(552, "5.2.2", "<carol@example.org> Quota exceeded (mailbox for user is full)")

BYTEWISE = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


def drain(conn: ClientConnection) -> list[Event]:
    events: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
    return events


def state_of(conn: ClientConnection) -> State:
    """``conn.state``, read afresh (keeps mypy from narrowing it across a ``send``)."""
    return conn.state


def feed(conn: ClientConnection, data: bytes, *, bytewise: bool = False) -> list[Event]:
    """Feed ``data`` (whole, or one byte at a time, draining after each) and return the
    events it produced."""
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    events: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        events.extend(drain(conn))
    return events


def connect(lhlo: bytes = LHLO_REPLY, *, bytewise: bool = False) -> ClientConnection:
    conn = ClientConnection("client.test")
    assert feed(conn, GREETING, bytewise=bytewise) == [
        Greeting(Reply(220, "2.0.0", "host Dovecot ready."))
    ]
    assert conn.send(Lhlo()) == b"LHLO client.test\r\n"
    events = feed(conn, lhlo, bytewise=bytewise)
    assert len(events) == 1
    assert isinstance(events[0], LhloDone)
    assert conn.state is State.READY
    return conn


def envelope(conn: ClientConnection, recipients: tuple[str, ...] = RECIPIENTS) -> bytes:
    """MAIL + RCPT... + DATA, pipelined: the one write."""
    out = conn.send(Mail(SENDER, ("BODY=8BITMIME",)))
    for rcpt in recipients:
        out += conn.send(Rcpt(rcpt))
    return out + conn.send(Data())


ENVELOPE_REPLIES = (
    b"250 2.1.0 OK\r\n"
    b"250 2.1.5 OK\r\n"
    b"550 5.1.1 <x@y> User doesn't exist: x@y\r\n"
    b"250 2.1.5 OK\r\n"
    b"354 OK\r\n"
)
RESULTS = (
    b"250 2.0.0 <alice@example.org> Saved\r\n"
    b"552 5.2.2 <carol@example.org> Quota exceeded (mailbox for user is full)\r\n"
)


# --- the Dovecot transcripts ---------------------------------------------------------


@BYTEWISE
def test_lhlo_extensions(bytewise: bool) -> None:
    conn = ClientConnection("client.test")
    feed(conn, GREETING, bytewise=bytewise)
    conn.send(Lhlo())
    (done,) = feed(conn, LHLO_REPLY, bytewise=bytewise)
    assert isinstance(done, LhloDone)
    assert done.reply == Reply(
        250, "2.0.0", ("host", "8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING")
    )
    ext = done.extensions
    assert (ext.pipelining, ext.eightbitmime, ext.chunking, ext.enhancedstatuscodes) == (
        True,
        True,
        True,
        True,
    )
    assert not (ext.smtputf8 or ext.binarymime or ext.size)
    assert ext.keywords == {"8BITMIME", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING"}
    assert conn.extensions == ext


def test_lhlo_keywords_are_case_insensitive_and_size_parsed() -> None:
    conn = connect(b"250-host\r\n250-pipelining\r\n250-Size 1048576\r\n250 smtputf8\r\n")
    assert conn.extensions.pipelining
    assert conn.extensions.smtputf8
    assert (conn.extensions.size, conn.extensions.size_limit) == (True, 1048576)
    assert connect(b"250-host\r\n250 SIZE\r\n").extensions.size_limit is None


@BYTEWISE
def test_pipelined_transaction_with_per_recipient_results(bytewise: bool) -> None:
    conn = connect(bytewise=bytewise)
    assert envelope(conn) == (
        b"MAIL FROM:<sender@client.test> BODY=8BITMIME\r\n"
        b"RCPT TO:<alice@example.org>\r\nRCPT TO:<x@y>\r\nRCPT TO:<carol@example.org>\r\n"
        b"DATA\r\n"
    )
    assert conn.owed == 5
    assert feed(conn, ENVELOPE_REPLIES, bytewise=bytewise) == [
        MailReply(Reply(250, "2.1.0", "OK")),
        RcptReply(0, Reply(250, "2.1.5", "OK")),
        RcptReply(1, UNKNOWN),
        RcptReply(2, Reply(250, "2.1.5", "OK")),
        DataReady(Reply(354, "", "OK")),
    ]
    assert conn.state is State.CONTENT
    assert conn.send(Content(b"Subject: hi\r\n\r\nbody\r\n")) == (
        b"Subject: hi\r\n\r\nbody\r\n.\r\n"
    )
    assert state_of(conn) is State.READY
    assert feed(conn, RESULTS, bytewise=bytewise) == [
        RecipientResult(0, SAVED),
        RecipientResult(2, QUOTA),
    ]
    assert conn.owed == 0
    # The connection is reused: a new transaction, then QUIT.
    conn.send(Mail(""))
    assert feed(conn, b"250 2.1.0 OK\r\n") == [MailReply(Reply(250, "2.1.0", "OK"))]
    conn.send(Rset())
    assert feed(conn, b"250 2.0.0 OK\r\n") == [RsetDone(Reply(250, "2.0.0", "OK"))]
    assert conn.send(Quit()) == b"QUIT\r\n"
    assert feed(conn, b"221 2.0.0 Bye\r\n", bytewise=bytewise) == [
        Closed(Reply(221, "2.0.0", "Bye"))
    ]
    assert state_of(conn) is State.CLOSED
    conn.receive_data(b"")
    assert conn.next_event() is NEED_DATA


def test_null_sender_and_next_transaction_pipelined_after_content() -> None:
    conn = connect()
    assert conn.send(Mail("")) == b"MAIL FROM:<>\r\n"
    conn.send(Rcpt("alice@example.org"))
    conn.send(Data())
    feed(conn, b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 OK\r\n")
    # RFC 2920 §3.1: content may start a group; MAIL may follow it at once.
    out = conn.send(Content(b"x\r\n")) + conn.send(Mail(SENDER)) + conn.send(Rcpt("b@c.d"))
    assert out == b"x\r\n.\r\nMAIL FROM:<sender@client.test>\r\nRCPT TO:<b@c.d>\r\n"
    assert feed(conn, b"250 2.0.0 saved\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n") == [
        RecipientResult(0, Reply(250, "2.0.0", "saved")),
        MailReply(Reply(250, "2.1.0", "OK")),
        RcptReply(0, Reply(250, "2.1.5", "OK")),
    ]


@BYTEWISE
def test_bdat(bytewise: bool) -> None:
    conn = connect(bytewise=bytewise)
    first, last = b"Subject: x\r\n\r\n", b".not stuffed\r\n"
    out = conn.send(Mail(SENDER)) + conn.send(Rcpt("alice@example.org"))
    out += conn.send(Rcpt("carol@example.org")) + conn.send(Bdat(first, last=False))
    assert out.endswith(b"BDAT 14\r\nSubject: x\r\n\r\n")
    # LAST waits until a recipient is accepted and the earlier chunk answered.
    with pytest.raises(LocalProtocolError):
        conn.send(Bdat(last, last=True))
    replies = b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n250 2.0.0 Added 14 octets\r\n"
    events = feed(conn, replies, bytewise=bytewise)
    assert events[-1] == BdatReply(Reply(250, "2.0.0", "Added 14 octets"))
    assert conn.send(Bdat(last, last=True)) == b"BDAT 14 LAST\r\n.not stuffed\r\n"
    assert conn.state is State.READY
    results = b"250 2.0.0 <alice@example.org> Saved\r\n452 4.2.2 <carol@example.org> full\r\n"
    assert feed(conn, results, bytewise=bytewise) == [
        RecipientResult(0, SAVED),
        RecipientResult(1, Reply(452, "4.2.2", "<carol@example.org> full")),
    ]


def test_bdat_single_chunk_after_recipients() -> None:
    conn = connect()
    conn.send(Mail(SENDER))
    conn.send(Rcpt("alice@example.org"))
    feed(conn, b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n")
    assert conn.send(Bdat(b"", last=True)) == b"BDAT 0 LAST\r\n"
    assert feed(conn, b"250 2.0.0 ok\r\n") == [RecipientResult(0, Reply(250, "2.0.0", "ok"))]


def test_failed_chunk_needs_rset() -> None:
    conn = connect()
    conn.send(Mail(SENDER))
    conn.send(Rcpt("alice@example.org"))
    conn.send(Bdat(b"abc", last=False))
    feed(conn, b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n552 5.3.4 too big\r\n")
    with pytest.raises(LocalProtocolError):
        conn.send(Bdat(b"", last=True))
    conn.send(Rset())
    assert feed(conn, b"250 2.0.0 OK\r\n") == [RsetDone(Reply(250, "2.0.0", "OK"))]
    assert conn.state is State.READY


@BYTEWISE
def test_connection_lost_after_first_of_two_results(bytewise: bool) -> None:
    conn = connect()
    envelope(conn)
    feed(conn, ENVELOPE_REPLIES)
    conn.send(Content(b"hello\r\n"))
    events = feed(conn, b"250 2.0.0 <alice@example.org> Saved\r\n", bytewise=bytewise)
    assert events == [RecipientResult(0, SAVED)]
    events = feed(conn, b"")
    assert events == [
        RecipientResult(2, CONNECTION_LOST),
        Closed(None, "connection closed with replies owed"),
    ]
    assert CONNECTION_LOST.code == 451
    assert CONNECTION_LOST.status == "4.4.2"
    with pytest.raises(LocalProtocolError):
        conn.send(Mail(SENDER))


def test_connection_lost_inside_a_reply() -> None:
    conn = connect()
    envelope(conn)
    events = feed(conn, b"250 2.1.0 OK\r\n250 2.1") + feed(conn, b"")
    assert events == [
        MailReply(Reply(250, "2.1.0", "OK")),
        RcptReply(0, CONNECTION_LOST),
        RcptReply(1, CONNECTION_LOST),
        RcptReply(2, CONNECTION_LOST),
        DataReady(CONNECTION_LOST),
        Closed(None, "connection closed inside a reply"),
    ]


def test_connection_lost_before_greeting_and_idle_close() -> None:
    conn = ClientConnection("client.test")
    assert feed(conn, b"") == [
        Greeting(CONNECTION_LOST),
        Closed(None, "connection closed with replies owed"),
    ]
    idle = connect()
    assert feed(idle, b"") == [Closed(None, None)]


def test_421_ends_the_session_and_the_rest_is_temporary() -> None:
    conn = connect()
    envelope(conn)
    bye = Reply(421, "4.3.2", "Shutting down")
    assert feed(conn, b"250 2.1.0 OK\r\n421 4.3.2 Shutting down\r\n") == [
        MailReply(Reply(250, "2.1.0", "OK")),
        RcptReply(0, bye),
        RcptReply(1, CONNECTION_LOST),
        RcptReply(2, CONNECTION_LOST),
        DataReady(CONNECTION_LOST),
        Closed(bye),
    ]
    conn.receive_data(b"more bytes in flight")  # dropped
    assert conn.next_event() is NEED_DATA


def test_unsolicited_421() -> None:
    conn = connect()
    assert feed(conn, b"421 4.4.2 idle timeout\r\n") == [
        Closed(Reply(421, "4.4.2", "idle timeout"))
    ]


# --- servers of other kinds ----------------------------------------------------------


@BYTEWISE
def test_server_without_pipelining(bytewise: bool) -> None:
    conn = connect(b"250-host\r\n250 8BITMIME\r\n", bytewise=bytewise)
    assert not conn.extensions.pipelining
    conn.send(Mail(SENDER))
    with pytest.raises(LocalProtocolError, match="PIPELINING"):
        conn.send(Rcpt("alice@example.org"))
    assert feed(conn, b"250 2.1.0 OK\r\n", bytewise=bytewise) == [
        MailReply(Reply(250, "2.1.0", "OK"))
    ]
    for index, rcpt in enumerate(("alice@example.org", "bob@example.org")):
        conn.send(Rcpt(rcpt))
        events = feed(conn, b"250 2.1.5 OK\r\n", bytewise=bytewise)
        assert events == [RcptReply(index, Reply(250, "2.1.5", "OK"))]
    conn.send(Data())
    feed(conn, b"354 go\r\n", bytewise=bytewise)
    conn.send(Content(b"hi\r\n"))
    with pytest.raises(LocalProtocolError, match="PIPELINING"):
        conn.send(Mail(SENDER))
    assert len(feed(conn, b"250 2.0.0 a\r\n250 2.0.0 b\r\n", bytewise=bytewise)) == 2
    conn.send(Mail(SENDER))  # now nothing is owed


def test_server_without_enhanced_status_codes() -> None:
    conn = connect(b"250-host\r\n250 PIPELINING\r\n")
    conn.send(Mail(SENDER))
    conn.send(Rcpt("a@b.c"))
    conn.send(Rcpt("d@e.f"))
    conn.send(Data())
    replies = b"250 OK\r\n251 forwarded\r\n550 No such user here\r\n354 Start mail input\r\n"
    assert feed(conn, replies) == [
        MailReply(Reply(250, "2.0.0", "OK")),
        RcptReply(0, Reply(251, "2.0.0", "forwarded")),
        RcptReply(1, Reply(550, "5.0.0", "No such user here")),
        DataReady(Reply(354, "", "Start mail input")),
    ]
    conn.send(Content(b"x"))
    assert feed(conn, b"450 try later\r\n") == [
        RecipientResult(0, Reply(450, "4.0.0", "try later"))
    ]


def test_reply_parsing_details() -> None:
    conn = connect()
    conn.send(Mail(SENDER))
    conn.send(Rcpt("a@b.c"))
    conn.send(Rcpt("d@e.f"))
    conn.send(Rcpt("g@h.i"))
    replies = (
        b"250 2.01.0\r\n"  # leading zero normalised, no text
        b"550-5.1.1 first\r\n550-5.1.1 second\r\n550 5.1.1 third\r\n"  # repeated status
        b"550 caf\xc3\xa9\t\x00\x7f x\r\n"  # sanitized; no status: synthesized
        b"250 5.1.1 class mismatch\r\n"  # not a status of this class: text
    )
    assert feed(conn, replies) == [
        MailReply(Reply(250, "2.1.0", "")),
        RcptReply(0, Reply(550, "5.1.1", ("first", "second", "third"))),
        RcptReply(1, Reply(550, "5.0.0", "caf??\t?? x")),
        RcptReply(2, Reply(250, "2.0.0", "5.1.1 class mismatch")),
    ]


def test_mail_refused_with_pipelined_commands() -> None:
    conn = connect()
    envelope(conn, ("a@b.c", "d@e.f"))
    replies = b"550 5.7.1 no\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.0 No\r\n"
    events = feed(conn, replies)
    assert [type(e) for e in events] == [MailReply, RcptReply, RcptReply, DataReady]
    assert conn.state is State.READY  # the transaction never began
    conn.send(Mail(SENDER))


def test_data_refused_leaves_the_transaction_open() -> None:
    conn = connect()
    envelope(conn, ("a@b.c",))
    feed(conn, b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n451 4.3.0 later\r\n")
    assert conn.state is State.RCPT
    with pytest.raises(LocalProtocolError):
        conn.send(Mail(SENDER))
    conn.send(Rset())
    assert state_of(conn) is State.READY


def test_data_refused_locally_when_no_recipient_was_accepted() -> None:
    conn = connect()
    conn.send(Mail(SENDER))
    conn.send(Rcpt("x@y"))
    feed(conn, b"250 2.1.0 OK\r\n550 5.1.1 <x@y> User doesn't exist: x@y\r\n")
    with pytest.raises(LocalProtocolError, match="RSET"):
        conn.send(Data())
    with pytest.raises(LocalProtocolError, match="RSET"):
        conn.send(Bdat(b"x", last=False))
    conn.send(Rset())


def test_354_without_an_accepted_recipient_is_a_protocol_error() -> None:
    conn = connect()
    envelope(conn, ("x@y",))
    events = feed(conn, b"250 2.1.0 OK\r\n550 5.1.1 no\r\n354 go\r\n")
    assert events[-2:] == [
        DataReady(PROTOCOL_ERROR),
        Closed(None, "354 with no recipient accepted (RFC 2033 §4.2)"),
    ]


def test_greeting_refused_allows_only_quit() -> None:
    conn = ClientConnection("client.test")
    busy = Reply(554, "5.0.0", "host busy")
    assert feed(conn, b"554 host busy\r\n") == [Greeting(busy)]
    assert conn.state is State.REFUSED
    with pytest.raises(LocalProtocolError):
        conn.send(Lhlo())
    conn.send(Quit())
    assert feed(conn, b"221 2.0.0 Bye\r\n") == [Closed(Reply(221, "2.0.0", "Bye"))]


def test_lhlo_refused() -> None:
    conn = ClientConnection("client.test")
    feed(conn, GREETING)
    conn.send(Lhlo())
    (done,) = feed(conn, b"500 5.5.2 what\r\n")
    assert done == LhloDone(Reply(500, "5.5.2", "what"), conn.extensions)
    assert not conn.extensions.keywords
    assert conn.state is State.GREETED


# --- what the client refuses to send -------------------------------------------------


@pytest.mark.parametrize(
    "commands",
    [
        [Rcpt("a@b.c")],  # RCPT before MAIL
        [Data()],
        [Content(b"x")],
        [Bdat(b"x", last=True)],
        [Lhlo()],  # LHLO once
        [Mail(SENDER), Data()],  # DATA before any RCPT
        [Mail(SENDER), Mail(SENDER)],  # nested MAIL
        [Mail(SENDER), Rcpt("a@b.c"), Data(), Rcpt("d@e.f")],  # DATA ends a group
        [Mail(SENDER), Rcpt("a@b.c"), Data(), Content(b"x")],  # content before the 354
        [Mail(SENDER), Rcpt("a@b.c"), Bdat(b"x", last=False), Data()],  # DATA after BDAT
        [Quit(), Rset()],
        [Mail(SENDER, ("SMTPUTF8",))],  # not offered
        [Mail(SENDER, ("BODY=BINARYMIME",))],
        [Mail(SENDER, ("BODY=9BIT",))],
        [Mail(SENDER, ("SIZE=10",))],
        [Mail(SENDER, ("RET=FULL",))],
        [Mail(SENDER, ("BODY=8BITMIME", "body=8bitmime"))],  # twice
        [Mail(SENDER, ("BODY=8BITMIME X",))],  # two parameters in one
        [Mail(SENDER, ("BODY=8BITMIME\r\nRSET",))],
        [Mail(SENDER, (" BODY=8BITMIME",))],
        [Mail("a@b.c>\r\nRCPT TO:<evil@x.y")],  # no line can be injected
        [Mail("j\u00fcrgen@example.org")],  # UTF-8 without SMTPUTF8
        [Mail("@relay.example:a@b.c")],  # no source routes
        [Mail("no-at-sign")],
        [Mail(SENDER), Rcpt("")],
        [Mail(SENDER), Rcpt("a@b.c\r\nDATA")],
        [Mail(SENDER), Rcpt("j\u00fcrgen@example.org")],
        [Mail(SENDER), Rcpt("a@b.c", ("NOTIFY=NEVER",))],  # DSN not offered
    ],
)
def test_refused_commands(commands: list[object]) -> None:
    conn = connect()
    *before, last = commands
    for command in before:
        conn.send(command)  # type: ignore[arg-type]
    owed = conn.owed
    with pytest.raises(LocalProtocolError):
        conn.send(last)  # type: ignore[arg-type]
    assert conn.owed == owed  # a refused command changes nothing


def test_extension_dependent_commands_when_offered() -> None:
    lhlo = b"250-host\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n"
    conn = connect(lhlo + b"250-BINARYMIME\r\n250-DSN\r\n250 SIZE 0\r\n")
    params = ("BODY=BINARYMIME", "SMTPUTF8", "SIZE=10", "RET=HDRS")
    assert (
        conn.send(Mail("j\u00fcrgen@example.org", params))
        == (
            "MAIL FROM:<j\u00fcrgen@example.org> BODY=BINARYMIME SMTPUTF8 SIZE=10 RET=HDRS\r\n"
        ).encode()
    )
    assert conn.send(Rcpt("\u00e9@example.org", ("NOTIFY=NEVER",))) == (
        "RCPT TO:<\u00e9@example.org> NOTIFY=NEVER\r\n".encode()
    )
    assert conn.send(Rcpt("Postmaster")) == b"RCPT TO:<Postmaster>\r\n"
    with pytest.raises(LocalProtocolError, match="BINARYMIME"):
        conn.send(Data())
    conn.send(Bdat(b"\x00\xff binary", last=False))


def test_8bit_content_needs_8bitmime() -> None:
    conn = connect(b"250-host\r\n250 PIPELINING\r\n")
    conn.send(Mail(SENDER))
    conn.send(Rcpt("a@b.c"))
    conn.send(Data())
    feed(conn, b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 go\r\n")
    with pytest.raises(LocalProtocolError, match="8BITMIME"):
        conn.send(Content("caf\u00e9".encode()))
    conn.send(Content(b"cafe"))


def test_bad_lhlo_name_and_send_after_close() -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection("bad name\r\nMAIL")
    conn = connect()
    feed(conn, b"")
    with pytest.raises(LocalProtocolError):
        conn.send(Quit())


# --- dot-stuffing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"no final line end", b"no final line end\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b".leading\r\nmid.dle\r\n..two\r\n.", b"..leading\r\nmid.dle\r\n...two\r\n..\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        # Bare LF / CR are sent as they are; a "." after one is doubled as well, so that
        # no lenient server can see an end of data in the content.
        (b"a\n.\nb", b"a\n..\nb\r\n.\r\n"),
        (b"a\r.\r", b"a\r..\r\r\n.\r\n"),
    ],
)
def test_dot_stuffing(content: bytes, wire: bytes) -> None:
    assert dot_stuff(content) == wire


def _stuffed_line_by_line(data: bytes) -> bytes:
    """The rule, spelled out: a "." that begins the content or follows a CR or an LF is
    doubled; then a line end if missing, then the end of data."""
    out = bytearray()
    for index, byte in enumerate(data):
        if byte == ord(".") and (index == 0 or data[index - 1] in b"\r\n"):
            out += b"."
        out.append(byte)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return bytes(out) + b".\r\n"


@given(st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b".."]), max_size=40))
def test_dot_stuffing_follows_the_rule_for_any_content(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    assert dot_stuff(data) == _stuffed_line_by_line(data)


def test_content_is_dot_stuffed_on_the_wire() -> None:
    conn = connect()
    envelope(conn, ("alice@example.org",))
    feed(conn, b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 OK\r\n")
    assert conn.send(Content(b"Subject: x\r\n\r\n.\r\n..\r\n")) == (
        b"Subject: x\r\n\r\n..\r\n...\r\n.\r\n"
    )


# --- malformed replies -------------------------------------------------------------------


MALFORMED = [
    pytest.param(b"hello\r\n", id="garbage"),
    pytest.param(b"600 bad code\r\n", id="code-600"),
    pytest.param(b"199 x\r\n", id="code-199"),
    pytest.param(b"260 x\r\n", id="code-260"),
    pytest.param(b"2500 x\r\n", id="four-digits"),
    pytest.param(b"250x\r\n", id="no-separator"),
    pytest.param(b"25\r\n", id="short"),
    pytest.param(b"250 2.1.0 OK\n", id="bare-lf"),
    pytest.param(b"250 2.1.0\rOK\r\n", id="bare-cr"),
    pytest.param(b"250-2.1.0 a\r\n550 5.1.1 b\r\n", id="code-changes"),
    pytest.param(b"250 " + b"x" * 3000 + b"\r\n", id="overlong-line"),
    pytest.param(b"250 " + b"x" * 3000, id="overlong-no-crlf"),
    pytest.param(b"250-x\r\n" * 100 + b"250 x\r\n", id="too-many-lines"),
    pytest.param(b"250 2.1.0 OK\r\n354 go\r\n", id="354-to-rcpt"),
    pytest.param(b"221 2.0.0 Bye\r\n", id="221-to-mail"),
    pytest.param(b"250 2.1.0 OK\r\n" + b"250 2.1.5 OK\r\n" * 3 + b"250 ok\r\n", id="250-to-data"),
]


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("garbage", MALFORMED)
def test_malformed_reply_ends_cleanly(garbage: bytes, bytewise: bool) -> None:
    conn = connect()
    envelope(conn)
    events = feed(conn, garbage, bytewise=bytewise) + feed(conn, b"")
    closed = events[-1]
    assert isinstance(closed, Closed)
    assert closed.error is not None
    assert closed.reply is None
    assert sum(isinstance(event, Closed) for event in events) == 1
    # Every command got its event: MAIL, three RCPTs, DATA.
    assert [type(e) for e in events[:-1]] == [MailReply, RcptReply, RcptReply, RcptReply, DataReady]
    assert PROTOCOL_ERROR in [getattr(e, "reply", None) for e in events]
    assert conn.state is State.CLOSED
    assert conn.next_event() is NEED_DATA


def test_malformed_results_make_the_rest_temporary() -> None:
    conn = connect()
    envelope(conn)
    feed(conn, ENVELOPE_REPLIES)
    conn.send(Content(b"x"))
    assert feed(conn, b"250 2.0.0 ok\r\n!!!\r\n") == [
        RecipientResult(0, Reply(250, "2.0.0", "ok")),
        RecipientResult(2, PROTOCOL_ERROR),
        Closed(None, "malformed reply line"),
    ]


def test_unsolicited_reply() -> None:
    conn = connect()
    assert feed(conn, b"250 2.0.0 surprise\r\n") == [Closed(None, "unsolicited 250 reply")]


# --- arbitrary server bytes ----------------------------------------------------------------

# A mostly sensible server (replies of a plausible class, a 354 when DATA is next), with
# closes, wrong replies and arbitrary bytes mixed in.
_GOOD = st.sampled_from(
    [
        b"250 2.1.5 OK\r\n",
        b"250 OK\r\n",
        b"550 5.1.1 <x@y> User doesn't exist: x@y\r\n",
        b"451 4.3.0 later\r\n",
        b"250-2.0.0 multi\r\n250 2.0.0 end\r\n",
    ]
)
_RARE = st.sampled_from(
    [b"421 4.3.2 bye\r\n", b"221 2.0.0 Bye\r\n", b"354 go\r\n", b"\r\n", b"250-open\r\n", b""]
)


def _server_bytes(data_next: bool) -> st.SearchStrategy[bytes]:
    good = st.just(b"354 go\r\n") if data_next else _GOOD
    return st.one_of(*[good] * 8, _RARE, st.binary(max_size=12))


class _Driver:
    """Drives a connection as the handoff would, whatever the server answers: LHLO, two
    transactions of MAIL, two RCPTs and DATA (pipelined when offered), then QUIT."""

    def __init__(self) -> None:
        self.conn = ClientConnection("client.test")
        self.events: list[Event] = []
        self.sent: list[Command] = []
        self.plan: list[Command] = []
        self.transactions = 0

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        while True:
            new = drain(self.conn)
            self.events.extend(new)
            if self.conn.state is State.CLOSED or not (self._act() or new):
                return

    def _act(self) -> bool:
        """Send what comes next, if anything may go now; whether something was sent."""
        conn = self.conn
        if conn.state is State.CONTENT:
            return self._send(Content(b"x\r\n"))
        if conn.owed and not conn.extensions.pipelining:
            return False
        if self.plan:
            return self._send_planned()
        if conn.owed:
            return False
        return self._start()

    def _start(self) -> bool:
        state = self.conn.state
        if state is State.GREETED:
            return self._send(Lhlo())
        if state is State.REFUSED or (state is State.READY and self.transactions >= 2):
            return self._send(Quit())
        if state is State.READY:
            self.transactions += 1
            self.plan = [Mail(SENDER), Rcpt("a@b.c"), Rcpt("d@e.f"), Data()]
            return self._send_planned()
        if state in (State.MAIL, State.RCPT):
            return self._send(Rset())
        return False

    def _send_planned(self) -> bool:
        try:
            self._send(self.plan[0])
        except LocalProtocolError:  # no recipient accepted, or MAIL refused: start over
            self.plan = [Rset()] if self.conn.state is State.RCPT else []
            return bool(self.plan) and self._send_planned()
        del self.plan[0]
        return True

    def _send(self, command: Command) -> bool:
        self.conn.send(command)
        self.sent.append(command)
        return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), pipelining=st.booleans())
def test_arbitrary_server_bytes(data: st.DataObject, pipelining: bool) -> None:
    """Whatever the server sends: no exception, every command answered once, ``Closed``
    last, and no 2xx result for a recipient whose RCPT reply was not a 2xx."""
    driver = _Driver()
    driver.feed(b"220 host ready\r\n")
    driver.feed(b"250-host\r\n250 PIPELINING\r\n" if pipelining else b"250 host\r\n")
    for _ in range(40):
        conn = driver.conn
        if conn.state is State.CLOSED:
            break
        chunk = data.draw(_server_bytes(conn.state is State.DATA and conn.owed == 1))
        if chunk and data.draw(st.booleans()):
            for i in range(len(chunk)):
                driver.feed(chunk[i : i + 1])
        else:
            driver.feed(chunk)
    driver.feed(b"")
    events = driver.events
    assert isinstance(events[-1], Closed)
    assert sum(isinstance(e, Closed) for e in events) == 1
    assert driver.conn.state is State.CLOSED
    answers = [e for e in events if not isinstance(e, RecipientResult | Closed)]
    asked = [c for c in driver.sent if not isinstance(c, Content | Quit)]
    assert len(answers) == len(asked) + 1  # and the greeting
    _check_results(events)


def _check_results(events: list[Event]) -> None:
    accepted: set[int] = set()
    resulted: set[int] = set()
    for event in events:
        if isinstance(event, MailReply):
            accepted, resulted = set(), set()
        elif isinstance(event, RcptReply) and event.reply.code // 100 == 2:
            accepted.add(event.index)
        elif isinstance(event, RecipientResult):
            assert event.index in accepted
            assert event.index not in resulted
            resulted.add(event.index)
