"""Fuzz the core: arbitrary octets into a greeted session, whole, split at random points and
one byte at a time (h11's fuzz habit), and endless streams that must cost bounded memory.

The invariants: the core never raises; every reply parses and is well formed; nothing comes
out after ``ConnectionClosed``; every accepted MAIL ends exactly once (``MessageComplete`` or
``TransactionAborted``); ``MessageData`` pieces stay within ``Limits.data_chunk``; and the
input backlog stays under the limit of the unit being read. The driver answers every
question at once, so the core is never ``PAUSED`` waiting for it and must drain its buffer.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from wildboar import smtp

from .client import HOST, replies, statuses

S = smtp.State
CHUNK = 1024  # the smallest data_chunk Limits allows, so fuzzed content spans pieces
LIMITS = smtp.Limits(data_chunk=CHUNK)
# The longest command line after EHLO: the base limit plus every offered extension's
# allowance (RFC 5321 §4.5.3.1.4, RFC 1870 §3, RFC 3030 §3, RFC 6531 §3.1, RFC 3461 §5.4).
LINE_LIMIT = smtp.Extensions().command_line_limit(smtp.Limits().command_line)
COMMAND_STATES = frozenset({S.CONNECTED, S.REFUSED, S.READY, S.MAIL, S.RCPT, S.CHUNKING})
QUESTIONS = (
    smtp.ClientConnected,
    smtp.Hello,
    smtp.MailFrom,
    smtp.RcptTo,
    smtp.MessageComplete,
    smtp.Xclient,
)

_LINE = re.compile(rb"([2-5][0-5][0-9])([ -])(.*)")
_ENHANCED = re.compile(rb"([245])\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")


def check_reply(reply: list[bytes]) -> None:
    """RFC 5321 §4.2 reply lines; RFC 2034 §4 enhanced codes, except on the greeting and
    EHLO/HELO replies (which start with the server's name, RFC 5321 §4.1.1.1, §4.2)."""
    first = _LINE.fullmatch(reply[0])
    assert first is not None, reply
    code = first.group(1)
    plain = code in (b"220", b"250") and first.group(3).split(b" ")[0] == HOST.encode()
    for line in reply:
        match = _LINE.fullmatch(line)
        assert match is not None and match.group(1) == code, reply
        assert all(0x20 <= byte <= 0x7E or byte == 0x09 for byte in match.group(3)), line
        if plain or code.startswith(b"3"):
            continue
        found = _ENHANCED.fullmatch(match.group(3).split(b" ", 1)[0])
        assert found is not None and found.group(1) == code[:1], line


class Driver:
    """A client of the public API that answers every question with ``Accept`` and keeps
    only what the invariants need (no message content, so streams cost no memory here)."""

    def __init__(self, limits: smtp.Limits = LIMITS) -> None:
        # Trusted with XCLIENT, so that fuzzed XCLIENT commands are parsed and accepted.
        self.conn = smtp.ServerConnection(HOST, limits=limits, xclient=True)
        self.limits = limits
        self.out = bytearray()
        self.events: list[smtp.Event] = []
        self.data_octets = 0
        self.in_transaction = False
        self.content_refused = False
        self.closed = False
        self.extended = False  # the last HELO/EHLO (all accepted) was EHLO
        assert statuses(self.pump()) == ["220"]

    @property
    def state(self) -> smtp.State:
        return self.conn.state

    def feed(self, piece: bytes) -> bytes:
        """Feed one piece (``b""`` is end of input); check the invariants; return replies."""
        was_closed = self.closed
        backlog = self.conn.input_backlog
        self.conn.receive_data(piece)
        out = self.pump()
        if was_closed:
            # Input after the close is ignored, and costs nothing.
            assert out == b"" and self.conn.input_backlog == backlog
        else:
            self.check_backlog(len(piece))
        return out

    def pump(self) -> bytes:
        out = bytearray()
        while (event := self.conn.next_event()) not in (smtp.NEED_DATA, smtp.PAUSED):
            assert not self.closed, f"{event!r} after ConnectionClosed"
            self.record(event)
            if isinstance(event, QUESTIONS):
                out += self.conn.send(smtp.Accept())
            out += self.conn.data_to_send()
        out += self.conn.data_to_send()
        if self.closed:
            # After ConnectionClosed: nothing more, ever.
            assert self.conn.next_event() is smtp.PAUSED
            assert self.conn.data_to_send() == b""
        for reply in replies(bytes(out)):
            check_reply(reply)
        self.out += out
        return bytes(out)

    def record(self, event: smtp.Event) -> None:
        """Every accepted MAIL ends once; content only inside a live transaction."""
        self.events.append(event)
        if isinstance(event, smtp.Hello):
            self.extended = event.extended
        elif isinstance(event, smtp.Xclient):
            assert not self.in_transaction
            self.extended = False  # accepted: the session starts over
        elif isinstance(event, smtp.MailFrom):
            assert not self.in_transaction
            self.in_transaction, self.content_refused = True, False
        elif isinstance(event, smtp.MessageData):
            assert self.in_transaction and not self.content_refused
            assert 0 < len(event.data) <= self.limits.data_chunk, len(event.data)
            self.data_octets += len(event.data)
        elif isinstance(event, smtp.TransactionAborted | smtp.MessageComplete):
            assert self.in_transaction
            self.in_transaction = False
        elif isinstance(event, smtp.ConnectionClosed):
            assert not self.in_transaction  # RFC 5321 §4.1.1.10: the transaction is cancelled
            self.closed = True

    def check_backlog(self, piece: int) -> None:
        backlog = self.conn.input_backlog
        if self.closed:
            # Closed by this piece: what is left is at most the unit that was being read
            # and the piece itself.
            assert backlog <= max(LINE_LIMIT, self.limits.data_chunk) + piece
        elif self.state in COMMAND_STATES:
            # At most one incomplete command line: 512 octets (RFC 5321 §4.5.3.1.4), plus
            # the extensions' allowances after EHLO.
            limit = LINE_LIMIT if self.extended else self.limits.command_line
            assert backlog < limit, (backlog, limit)
        elif self.state is S.DATA:
            assert backlog < self.limits.data_chunk  # at most one piece of content
        else:
            assert backlog == 0, self.state  # a BDAT chunk is consumed as it arrives

    def lines(self, *lines: bytes) -> list[str]:
        """Send whole lines one at a time (no pipelining); the status of each reply."""
        return [status for line in lines for status in statuses(self.feed(line))]

    def finish(self) -> None:
        """End of input: the session closes and any transaction is cancelled."""
        self.feed(b"")
        assert self.closed and self.state is S.CLOSED
        assert isinstance(self.events[-1], smtp.ConnectionClosed)


# --- where the fuzz starts -----------------------------------------------------------

PREFIXES: dict[str, list[bytes]] = {
    "greeted": [],
    "EHLO": [b"EHLO client.example\r\n"],
    "HELO": [b"HELO client.example\r\n"],
    "RCPT": [
        b"EHLO client.example\r\n",
        b"MAIL FROM:<a@example.net>\r\n",
        b"RCPT TO:<b@example.org>\r\n",
    ],
    "DATA": [
        b"EHLO client.example\r\n",
        b"MAIL FROM:<a@example.net>\r\n",
        b"RCPT TO:<b@example.org>\r\n",
        b"DATA\r\n",
    ],
    "BDAT": [
        b"EHLO client.example\r\n",
        b"MAIL FROM:<a@example.net>\r\n",
        b"RCPT TO:<b@example.org>\r\n",
        b"BDAT 100\r\n",
    ],
}

FRAGMENTS = [
    b"EHLO client.example",
    b"HELO client.example",
    b"MAIL FROM:<a@example.net>",
    b"MAIL FROM:<> BODY=BINARYMIME SIZE=10",
    b"RCPT TO:<b@example.org>",
    b"RCPT TO:<Postmaster> NOTIFY=NEVER",
    b"DATA",
    b"BDAT ",
    b"BDAT 3",
    b"BDAT 0 LAST",
    b" LAST",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY a",
    b"HELP",
    b"EXPN a",
    b"GET /",
    b"XCLIENT ADDR=192.0.2.1 NAME=a.example",
    b"XCLIENT ADDR=IPV6:2001:db8::1 LOGIN=j+C3+A9",
    b" PORT=25 HELO=[192.0.2.1] PROTO=ESMTP",
    b"=[UNAVAILABLE]",
    b"Subject: x",
    b"\r\n",
    b"\r\n.\r\n",
    b"\r",
    b"\n",
    b"\x00",
    b".",
    b"..",
    b" ",
    b":",
    b"<",
    b">",
    b"=",
    b"0",
    b"7",
    b"\x80",
    b"\xff",
    b"\xc3\xa9",
    b"x" * 600,
]

fragments = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map(b"".join)
# Lines made of fragments, so that a session fed line by line gets somewhere.
fragment_lines = st.lists(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=4).map(b"".join),
    max_size=30,
).map(lambda lines: b"".join(line + b"\r\n" for line in lines))
payloads = st.binary(max_size=4096) | fragments | fragment_lines


@st.composite
def split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` whole, one octet at a time, at every CRLF, or at random points."""
    how = draw(st.sampled_from(["whole", "octets", "lines", "random"]))
    if how == "whole":
        return [data]
    if how == "octets":
        return [data[i : i + 1] for i in range(len(data))]
    if how == "lines":
        return [line for line in re.split(rb"(?<=\r\n)", data) if line]
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=20)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if a != b]


def start(prefix: str) -> Driver:
    driver = Driver()
    for line in PREFIXES[prefix]:
        driver.feed(line)
    assert not driver.closed
    return driver


@given(prefix=st.sampled_from(sorted(PREFIXES)), pieces=payloads.flatmap(split))
def test_fuzz_never_raises_and_keeps_every_invariant(prefix: str, pieces: list[bytes]) -> None:
    driver = start(prefix)
    for piece in pieces:
        driver.feed(piece)
    driver.finish()


@given(pieces=payloads.flatmap(split), more=st.lists(payloads, max_size=3))
def test_nothing_after_the_close(pieces: list[bytes], more: list[bytes]) -> None:
    driver = start("EHLO")
    for piece in [*pieces, b"QUIT\r\n", *more]:
        driver.feed(piece)
    if not driver.closed:
        # Input still pending ahead of the QUIT (an open chunk or DATA): end it.
        driver.finish()
    assert driver.closed
    for piece in more:
        assert driver.feed(piece) == b""


@given(prefix=st.sampled_from(sorted(PREFIXES)), pieces=st.lists(payloads, max_size=5))
def test_an_unanswered_question_holds_the_input(prefix: str, pieces: list[bytes]) -> None:
    # While a question waits for its answer the core consumes nothing: input_backlog grows
    # by exactly what is fed, so the I/O layer can stop reading at its high-water mark.
    # Once answered, the backlog drains back under the bound of the unit being read.
    driver = start(prefix)
    conn = driver.conn
    if driver.state is S.DATA:
        conn.receive_data(b".\r\n")
    elif driver.state is S.BDAT:
        conn.receive_data(b"x" * 98 + b"\r\n" + b"BDAT 0 LAST\r\n")
    else:
        conn.receive_data(b"HELO client.example\r\n")
    question = conn.next_event()
    while not isinstance(question, QUESTIONS):
        driver.record(question)
        question = conn.next_event()
    driver.record(question)
    for reply in replies(conn.data_to_send()):  # e.g. the 250 for the chunk before
        check_reply(reply)
    held = conn.input_backlog
    for piece in pieces:
        conn.receive_data(piece)
        held += len(piece)
        assert conn.next_event() is smtp.PAUSED
        assert conn.data_to_send() == b""
        assert conn.input_backlog == held
    for reply in replies(conn.send(smtp.Accept())):
        check_reply(reply)
    driver.pump()
    driver.check_backlog(held)
    driver.finish()


def test_message_data_never_exceeds_data_chunk() -> None:
    # Content whose end marker falls right at the data_chunk boundary: the last CRLF and
    # the content before it must still come in pieces of at most data_chunk octets.
    for extra in (-2, -1, 0, 1, 2):
        driver = start("DATA")
        size = CHUNK + extra
        content = b"".join(b"x" * 98 + b"\r\n" for _ in range(size // 100))
        content += b"y" * (size - len(content) - 2) + b"\r\n"
        assert len(content) == size
        assert statuses(driver.feed(content + b".\r\n")) == ["250 2.0.0"]
        assert driver.data_octets == size


# --- endless streams ----------------------------------------------------------------

PIECE = 64 * 1024
PIECES = 16 * 1024  # 1 GiB in all, never held at once


def test_endless_command_line_costs_one_reply_and_no_memory() -> None:
    driver = start("RCPT")
    piece = b"x" * PIECE
    got: list[str] = []
    for _ in range(PIECES):
        got += statuses(driver.feed(piece))
        assert driver.conn.input_backlog < LINE_LIMIT
    # RFC 5321 §4.3.2 / Postfix: "500 5.5.2 ... command too long", once, and no close.
    assert got == ["500 5.5.2"]
    assert driver.state is S.RCPT
    # The session carries on after the over-long line's CRLF, the transaction intact.
    assert driver.lines(b"\r\n") == []
    assert driver.lines(b"NOOP\r\n", b"DATA\r\n") == ["250 2.0.0", "354"]
    assert driver.lines(b"Subject: t\r\n", b".\r\n") == ["250 2.0.0"]
    driver.finish()


def test_endless_data_line_is_refused_after_the_end_marker() -> None:
    limits = smtp.Limits(text_line=1 << 40, message_size=1 << 20)
    driver = Driver(limits)
    driver.lines(*PREFIXES["DATA"])
    piece = b"x" * PIECE
    for _ in range(PIECES):
        # RFC 1870 §6.3, RFC 5321 §4.2.5: read on and say nothing before the end marker.
        assert driver.feed(piece) == b""
        assert driver.conn.input_backlog < limits.data_chunk
    assert driver.data_octets <= limits.message_size
    aborted = [e for e in driver.events if isinstance(e, smtp.TransactionAborted)]
    assert len(aborted) == 1 and aborted[0].reason == "refused"
    assert aborted[0].reply is not None and aborted[0].reply.code == 552
    assert statuses(driver.feed(b"\r\n.\r\n")) == ["552 5.3.4"]
    assert driver.state is S.READY
    assert driver.lines(b"NOOP\r\n") == ["250 2.0.0"]
    driver.finish()


def test_endless_data_line_with_default_limits() -> None:
    driver = Driver(smtp.Limits())
    driver.lines(*PREFIXES["DATA"])
    piece = b"x" * PIECE
    for _ in range(PIECES):
        assert driver.feed(piece) == b""
        assert driver.conn.input_backlog < smtp.Limits().data_chunk
    got = statuses(driver.feed(b"\r\n.\r\n"))
    # Over both the text line limit (RFC 5321 §4.5.3.1.6) and the size limit (RFC 1870):
    # either refusal is right, as long as it is one reply after the end marker.
    assert len(got) == 1 and got[0] in ("554 5.6.0", "552 5.3.4"), got
    assert driver.lines(b"NOOP\r\n") == ["250 2.0.0"]
    driver.finish()


def test_endless_bdat_chunk_over_the_limit_is_drained_then_refused() -> None:
    driver = Driver(smtp.Limits())
    driver.lines(*PREFIXES["RCPT"])
    driver.feed(b"BDAT %d LAST\r\n" % (PIECE * PIECES))
    piece = b"x" * PIECE
    for _ in range(PIECES - 1):
        # RFC 3030 §2: "accept and discard the associated message data before sending".
        assert driver.feed(piece) == b""
        assert driver.conn.input_backlog == 0
    assert statuses(driver.feed(piece)) == ["552 5.3.4"]
    assert driver.data_octets == 0
    assert driver.state is S.READY
    assert driver.lines(b"NOOP\r\n") == ["250 2.0.0"]
    driver.finish()


def test_endless_bdat_chunk_within_the_limit_comes_in_bounded_pieces() -> None:
    limits = smtp.Limits(message_size=PIECE * PIECES)
    driver = Driver(limits)
    driver.lines(
        b"EHLO client.example\r\n",
        b"MAIL FROM:<a@example.net> BODY=BINARYMIME\r\n",
        b"RCPT TO:<b@example.org>\r\n",
    )
    driver.feed(b"BDAT %d LAST\r\n" % (PIECE * PIECES))
    piece = bytes(range(256)) * (PIECE // 256)
    for _ in range(PIECES - 1):
        assert driver.feed(piece) == b""
        assert driver.conn.input_backlog == 0
    assert statuses(driver.feed(piece)) == ["250 2.0.0"]
    assert driver.data_octets == PIECE * PIECES
    complete = [e for e in driver.events if isinstance(e, smtp.MessageComplete)]
    assert complete[0].envelope.size == PIECE * PIECES
    driver.finish()
