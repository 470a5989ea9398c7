"""The SMTP core as a worker drives it, for any input: ``run(data)``.

The input is an 8-octet header (``Options``: how the listener is set up, how the reads are
cut, how the policy answers, whether the TLS handshake succeeds) followed by the octets
the client sends. ``Session`` plays the worker: it feeds each read, pulls events until
``NEED_DATA`` or ``PAUSED``, answers every question (at once or only after the next read,
as a slow policy check would), runs the "handshake" after ``StartTls``, optionally reads
a PROXY protocol header first, may time out (421) right after any event, and ends with
the client's end of input or a 421 timeout.

What must hold for any input (an ``AssertionError`` otherwise):
- nothing raises; a misuse of the API (answering with no question, ``tls_started`` out of
  TLS) raises ``LocalProtocolError`` and changes nothing;
- every reply is whole and well formed: a 3-digit code of RFC 5321 §4.2, the same code on
  every line of a multi-line reply, printable text, CRLF, at most 512 octets a line with
  its CRLF (§4.5.3.1.5), an enhanced status code of the reply's class (RFC 2034 §4) but
  on the greeting and the EHLO/HELO reply;
- the buffer is bounded: when the core asks for data it holds less than one unit of what
  it is reading (a command line of the current limit, a DATA piece of ``data_chunk``,
  nothing of a BDAT chunk); while a question waits it holds what it was fed, no more;
- the state moves only along the edges of ``INPUT_MOVES`` when fed and the edge the answer
  names when answered: nothing goes back to the greeting, a session leaves TLS only
  through ``tls_started`` or its end, CLOSED is for good;
- STARTTLS: ``StartTls`` comes only when offered, once, with the 220 last in the output
  and nothing buffered; nothing at all is answered for octets pipelined behind it or sent
  during the handshake; after ``tls_started`` the session knows nothing of before;
- every accepted MAIL ends exactly once; ``MessageData`` only inside a live transaction,
  in pieces of at most ``data_chunk``; an accepted message's envelope is what was
  accepted, its size the octets handed out, and text content has CRLF line ends only, no
  NUL, no line over ``text_line``, no more Received fields than ``hops``;
- a listener that requires TLS never asks MAIL, RCPT or a message before it;
- the core never pauses without a reason (a question, the handshake, the close) and never
  waits for data after the end of input; after ``ConnectionClosed`` it is silent for good.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Final

from wildboar import proxy, smtp

S = smtp.State
HOST: Final = "mx.example.org"
HEADER: Final = 8
#: Cuts the client's octets into reads in the default mode (``Reads.SEPARATOR``).
SEPARATOR: Final = b"\x00READ\x00"
# RFC 5321 §4.5.3.1.5: a reply line, including CRLF, of at most 512 octets.
REPLY_LINE_MAX: Final = 512
QUESTIONS: Final = (smtp.ClientConnected, smtp.Hello, smtp.MailFrom, smtp.RcptTo,
                    smtp.MessageComplete)  # fmt: skip
COMMAND_STATES: Final = frozenset({S.CONNECTED, S.REFUSED, S.READY, S.MAIL, S.RCPT, S.CHUNKING})
HELLO_STATES: Final = frozenset({S.CONNECTED, S.READY, S.MAIL, S.RCPT, S.CHUNKING})
#: Every limit at its RFC floor, errors and commands low: the limits are reached fast.
SMALL_LIMITS: Final = smtp.Limits(message_size=64 * 1024, recipients=100, errors=3,
                                  commands=40, data_chunk=1024, hops=2)  # fmt: skip
TIMEOUT: Final = smtp.Reply(421, "4.4.2", "Error: timeout exceeded")

# --- the header ----------------------------------------------------------------

# Octet 0: the listener and the worker's habits.
STARTTLS = 0x01  # STARTTLS offered
REQUIRE_TLS = 0x02  # 530 before TLS
IMPLICIT_TLS = 0x04  # the session runs over TLS from the start
PROXY = 0x08  # a PROXY protocol header comes first
LATE_ANSWERS = 0x10  # each answer only after the next read
LATE_HANDSHAKE = 0x20  # one more read arrives before the handshake is done
NO_EOF = 0x40  # the input ends with a 421 timeout, not the client's end of input
MISUSE = 0x80  # probe the API with calls that must raise
# Octet 1: extensions not offered, and the limits.
NO_PIPELINING, NO_SIZE, NO_8BITMIME, NO_SMTPUTF8 = 0x01, 0x02, 0x04, 0x08
NO_CHUNKING, NO_BINARYMIME, NO_DSN, SMALL = 0x10, 0x20, 0x40, 0x80
# Octet 2: how the octets are cut into reads (low 2 bits) and the seed of random cuts.
# Octets 3-6: the policy, 2 bits per question (``Answer``), for 16 questions in turn.
# Octet 7: bit 0, the TLS handshake fails; bit 1, the client leaves during it; bits 2-7,
# N > 0: the worker times out (421) right after the core's N-th event, wherever it is.
TLS_FAILS, EOF_IN_HANDSHAKE = 0x01, 0x02


class Reads:
    SEPARATOR, LINES, OCTETS, RANDOM = 0, 1, 2, 3


class Answer:
    ACCEPT, ACCEPT_TEXT, REFUSE, DEFER = 0, 1, 2, 3


@dataclass(frozen=True)
class Options:
    session: int = 0
    extensions_off: int = 0
    reads: int = Reads.SEPARATOR
    seed: int = 0
    policy: int = 0
    misc: int = 0

    @classmethod
    def parse(cls, data: bytes) -> tuple[Options, bytes]:
        head = data[:HEADER].ljust(HEADER, b"\x00")
        options = cls(
            session=head[0],
            extensions_off=head[1],
            reads=head[2] & 0x03,
            seed=head[2] >> 2,
            policy=int.from_bytes(head[3:7], "little"),
            misc=head[7],
        )
        return options, data[HEADER:]

    def encode(self) -> bytes:
        cut = self.reads | self.seed << 2
        head = bytes((self.session, self.extensions_off, cut))
        return head + self.policy.to_bytes(4, "little") + bytes((self.misc,))

    def has(self, flag: int) -> bool:
        return bool(self.session & flag)

    def answer(self, index: int) -> int:
        return self.policy >> (2 * (index % 16)) & 0x03

    @property
    def timeout_after(self) -> int:
        return self.misc >> 2

    def limits(self) -> smtp.Limits:
        return SMALL_LIMITS if self.extensions_off & SMALL else smtp.Limits()

    def extensions(self) -> smtp.Extensions:
        off = self.extensions_off
        eightbit = not off & NO_8BITMIME
        chunking = not off & NO_CHUNKING
        return smtp.Extensions(
            pipelining=not off & NO_PIPELINING,
            size=not off & NO_SIZE,
            eightbitmime=eightbit,
            smtputf8=eightbit and not off & NO_SMTPUTF8,
            chunking=chunking,
            binarymime=chunking and not off & NO_BINARYMIME,
            dsn=not off & NO_DSN,
        )


def split(options: Options, stream: bytes) -> list[bytes]:
    """The reads the client's octets arrive in (none empty: ``b""`` is end of input)."""
    if options.reads == Reads.SEPARATOR:
        pieces = stream.split(SEPARATOR)
    elif options.reads == Reads.LINES:
        pieces = re.split(rb"(?<=\r\n)", stream)
    elif options.reads == Reads.OCTETS:
        pieces = [stream[i : i + 1] for i in range(len(stream))]
    else:
        rng = random.Random(options.seed)
        cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, 1 + options.seed)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return [piece for piece in pieces if piece]


# --- what the replies and the state may be ---------------------------------------

_LINE = re.compile(rb"([2-5][0-5][0-9])([ -])([\t\x20-\x7e]*)")
_ENHANCED = re.compile(rb"([245])\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")


def check_replies(out: bytes) -> list[int]:
    """The codes of the replies in ``out``, which must hold whole, well-formed replies."""
    assert out == b"" or out.endswith(b"\r\n"), out[-80:]
    codes: list[int] = []
    lines: list[re.Match[bytes]] = []
    for line in out.split(b"\r\n")[:-1]:
        assert len(line) + 2 <= REPLY_LINE_MAX, len(line)
        match = _LINE.fullmatch(line)
        assert match is not None, line
        lines.append(match)
        if match[2] == b" ":
            codes.append(_check_reply(lines))
            lines = []
    assert not lines, "a multi-line reply without its last line"
    return codes


def _check_reply(lines: list[re.Match[bytes]]) -> int:
    code = lines[0][1]
    assert all(line[1] == code for line in lines), [line[0] for line in lines]
    # RFC 2034 §4: not on the greeting nor the EHLO/HELO reply, which start with our name.
    plain = code in (b"220", b"250") and lines[0][3].split(b" ")[0] == HOST.encode()
    if not plain and not code.startswith(b"3"):
        for line in lines:
            found = _ENHANCED.fullmatch(line[3].split(b" ", 1)[0])
            assert found is not None and found[1] == code[:1], line[0]
    return int(code)


def _closure(edges: dict[smtp.State, set[smtp.State]]) -> dict[smtp.State, frozenset[smtp.State]]:
    reach = {state: {state, *targets} for state, targets in edges.items()}
    changed = True
    while changed:
        changed = False
        for targets in reach.values():
            more = set().union(*(reach[t] for t in targets)) - targets
            changed = changed or bool(more)
            targets.update(more)
    return {state: frozenset(targets) for state, targets in reach.items()}


# Where input alone (no answer, no handshake) may take a session, written from RFC 5321
# §4.1.1, RFC 3030 and RFC 3207, not from the core's table. A question's answer moves the
# session along one edge of ``Session.answer``; the handshake from TLS to CONNECTED.
INPUT_MOVES: Final = _closure(
    {
        S.GREETING: set(),  # waits for the answer to ClientConnected
        S.REFUSED: {S.CLOSED},
        S.CONNECTED: {S.TLS, S.CLOSED},  # RSET, a refused command: same state
        S.READY: {S.TLS, S.CLOSED},
        S.MAIL: {S.READY, S.CLOSED},  # RSET
        S.RCPT: {S.READY, S.DATA, S.BDAT, S.CHUNKING, S.CLOSED},
        S.DATA: {S.READY, S.CLOSED},
        S.BDAT: {S.CHUNKING, S.READY, S.CLOSED},
        S.CHUNKING: {S.BDAT, S.READY, S.CLOSED},
        S.TLS: {S.CLOSED},  # the client left during the handshake
        S.CLOSED: set(),
    }
)


@dataclass
class Transaction:
    """What the worker knows of the transaction it accepted."""

    sender: str
    params: smtp.MailParams
    recipients: list[smtp.Recipient] = field(default_factory=list)
    content: bytearray = field(default_factory=bytearray)
    data: bool = False  # DATA state seen
    chunks: bool = False  # BDAT or CHUNKING state seen


# --- the worker ------------------------------------------------------------------


class Session:
    """One connection, driven as the worker drives it, checking every invariant."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.limits = options.limits()
        self.extensions = options.extensions()
        self.tls = options.has(IMPLICIT_TLS)
        self.conn = smtp.ServerConnection(
            HOST,
            limits=self.limits,
            extensions=self.extensions,
            tls=self.tls,
            starttls=options.has(STARTTLS),
            require_tls=options.has(REQUIRE_TLS),
        )
        self.state = self.conn.state
        self.gone = False  # the worker dropped the connection without a close
        self.closed = False  # ConnectionClosed seen
        self.eof = False
        self.asked = 0
        self.events = 0
        self.held: smtp.Question | None = None  # a question answered after the next read
        self.handshake_due = False
        self.starttls_seen = 0
        self.hello: smtp.Hello | None = None
        self.txn: Transaction | None = None

    @property
    def line_limit(self) -> int:
        base = self.limits.command_line
        extended = self.hello is not None and self.hello.extended
        return self.extensions.command_line_limit(base) if extended else base

    # --- moving bytes ---

    def receive(self, piece: bytes) -> None:
        conn = self.conn
        state, backlog, dropped = conn.state, conn.input_backlog, conn.dropped_after_starttls
        conn.receive_data(piece)
        self.eof = self.eof or not piece
        assert conn.state is state
        if state is S.CLOSED:
            assert conn.input_backlog == backlog  # ignored, and costs nothing
        elif state is S.TLS:
            # Plaintext after our 220 is never a command (CVE-2011-0411).
            assert conn.input_backlog == 0
            assert conn.dropped_after_starttls == dropped + len(piece)
        else:
            assert conn.input_backlog == backlog + len(piece)

    def pump(self) -> None:
        """Pull events until the core needs data or waits; answer what it asks."""
        conn = self.conn
        out = bytearray()
        was_tls, now_tls = self.state is S.TLS, False
        while True:
            event = conn.next_event()
            self.moved(INPUT_MOVES[self.state])
            if event is smtp.NEED_DATA:
                self.need_data()
                break
            if event is smtp.PAUSED:
                assert self.held is not None or self.state in (S.TLS, S.CLOSED), self.state
                break
            assert isinstance(event, smtp.Event)
            self.record(event)
            now_tls = now_tls or isinstance(event, smtp.StartTls)
            self.events += 1
            # As the worker's shutdown: a 421 to a session the core has not closed yet.
            if self.events == self.options.timeout_after and conn.state is not S.CLOSED:
                out += conn.data_to_send()
                self.time_out()  # even with a question queued behind this event
                continue
            if isinstance(event, QUESTIONS):
                if self.options.has(LATE_ANSWERS):
                    self.held = event
                else:
                    out += self.answer(event)
        out += conn.data_to_send()
        codes = check_replies(bytes(out))
        if now_tls:  # the 220 is the last thing said before the handshake
            assert codes and codes[-1] == 220 and out.endswith(b"Ready to start TLS\r\n")
        if was_tls:  # nothing is answered between the 220 and the handshake
            assert out == b"", out
        if self.closed:
            assert conn.next_event() is smtp.PAUSED and conn.data_to_send() == b""

    def feed(self, piece: bytes) -> None:
        if self.handshake_due:
            if self.options.has(LATE_HANDSHAKE):
                self.receive(piece)  # arrives before the handshake is done: dropped
                self.pump()
                self.handshake()
                return
            self.handshake()
            if self.gone:
                return
        self.receive(piece)
        if self.held is not None:
            self.check_holding()
            self.answer_held()
        self.pump()

    def check_holding(self) -> None:
        """While a question waits, the core takes nothing and says nothing."""
        conn = self.conn
        backlog = conn.input_backlog
        assert conn.next_event() is smtp.PAUSED
        assert conn.data_to_send() == b""
        assert conn.input_backlog == backlog and conn.state is self.state

    def answer_held(self) -> None:
        question, self.held = self.held, None
        assert question is not None
        check_replies(self.answer(question))

    # --- answering ---

    def answer(self, question: smtp.Question) -> bytes:
        answer = self.choose(question)
        conn = self.conn
        before, backlog = conn.state, conn.input_backlog
        out = conn.send(answer)
        self.accepted(question, answer)
        codes = check_replies(out)
        if isinstance(answer, smtp.Reply) and answer.code in (421, 521):
            expected = {S.CLOSED}
        elif isinstance(question, smtp.ClientConnected):
            # A client that spoke before the greeting gets 554 and the close.
            expected = {S.REFUSED} if isinstance(answer, smtp.Reply) else {S.CONNECTED}
            expected = {S.CLOSED} if backlog and not isinstance(answer, smtp.Reply) else expected
        elif isinstance(answer, smtp.Reply):
            expected = {before, S.CLOSED}  # closed only when the error budget is spent
            if conn.state is S.CLOSED:
                assert codes[-1] == 421, codes
        else:
            expected = {ACCEPTED_STATE[type(question)]}
        self.moved(frozenset(expected))
        return out

    def choose(self, question: smtp.Question) -> smtp.Answer:
        index, self.asked = self.asked, self.asked + 1
        kind = self.options.answer(index)
        if kind == Answer.ACCEPT:
            return smtp.Accept()
        if kind == Answer.ACCEPT_TEXT:
            return smtp.Accept("Ok: queued as 4Bq2Lm0Zx" if index % 2 else "ready")
        refusals = REFUSALS[type(question)]
        return refusals[kind == Answer.DEFER][index % 2]

    def accepted(self, question: smtp.Question, answer: smtp.Answer) -> None:
        """What the worker learns from an answer it gave."""
        if not isinstance(answer, smtp.Accept):
            return
        if isinstance(question, smtp.Hello):
            self.hello = question
        elif isinstance(question, smtp.MailFrom):
            self.txn = Transaction(question.sender, question.params)
        elif isinstance(question, smtp.RcptTo):
            assert self.txn is not None
            self.txn.recipients.append(smtp.Recipient(question.recipient, question.params))

    # --- events ---

    def record(self, event: smtp.Event) -> None:
        assert not self.closed, f"{event!r} after ConnectionClosed"
        state = self.state
        if isinstance(event, smtp.ClientConnected):
            assert state is S.GREETING and self.asked == 0
        elif isinstance(event, smtp.Hello):
            assert state in HELLO_STATES, state
            assert event.extended or self.tls_done(), "HELO before TLS on a TLS-only listener"
        elif isinstance(event, smtp.MailFrom):
            assert state is S.READY and self.hello is not None and self.txn is None
            assert self.tls_done(), "MAIL before TLS on a TLS-only listener"
            self.check_mail(event)
        elif isinstance(event, smtp.RcptTo):
            assert state in (S.MAIL, S.RCPT) and self.txn is not None
            assert len(self.txn.recipients) < self.limits.recipients
            self.check_rcpt(event, self.txn)
        elif isinstance(event, smtp.MessageData):
            assert self.txn is not None, "content outside a live transaction"
            assert 0 < len(event.data) <= self.limits.data_chunk, len(event.data)
            self.txn.content += event.data
        elif isinstance(event, smtp.MessageComplete):
            assert state is S.READY and self.txn is not None
            self.check_message(self.txn, event.envelope)
            self.txn = None
        elif isinstance(event, smtp.TransactionAborted):
            self.aborted(event)
        elif isinstance(event, smtp.StartTls):
            self.started_tls()
        else:
            assert isinstance(event, smtp.ConnectionClosed)
            assert state is S.CLOSED and self.txn is None  # RFC 5321 §4.1.1.10
            self.closed = True

    def offered(self, extension: bool) -> bool:
        return extension and self.hello is not None and self.hello.extended

    def check_mail(self, event: smtp.MailFrom) -> None:
        """A parameter only of an extension offered (RFC 5321 §4.1.1.11); a SIZE within
        the limit (RFC 1870 §6.1); a UTF-8 sender only with SMTPUTF8 (RFC 6531 §3.4)."""
        ext, params = self.extensions, event.params
        if params.size is not None:
            assert self.offered(ext.size) and params.size <= self.limits.message_size
        if params.body == "8BITMIME":
            assert self.offered(ext.eightbitmime)
        if params.body == "BINARYMIME":
            assert self.offered(ext.binarymime)
        if params.smtputf8:
            assert self.offered(ext.smtputf8)
        if params.ret is not None or params.envid is not None:
            assert self.offered(ext.dsn)
        assert event.sender.isascii() or params.smtputf8

    def check_rcpt(self, event: smtp.RcptTo, txn: Transaction) -> None:
        if event.params.notify is not None or event.params.orcpt is not None:
            assert self.offered(self.extensions.dsn)
        assert event.recipient.isascii() or txn.params.smtputf8

    def tls_done(self) -> bool:
        return self.tls or not self.options.has(REQUIRE_TLS)

    def aborted(self, event: smtp.TransactionAborted) -> None:
        assert self.txn is not None, "a transaction ended twice"
        if event.reason == "refused":
            assert event.reply is not None and event.reply.code // 100 == 5
            assert event.envelope is not None
            assert event.envelope.size <= self.limits.message_size + self.limits.data_chunk
        else:
            assert event.reply is None
        self.txn = None

    def check_message(self, txn: Transaction, envelope: smtp.Envelope) -> None:
        assert self.hello is not None and self.tls_done()
        assert envelope.sender == txn.sender and envelope.mail == txn.params
        assert envelope.recipients == tuple(txn.recipients) and envelope.recipients
        assert envelope.helo == self.hello.name
        assert envelope.size == len(txn.content) <= self.limits.message_size
        assert not (txn.data and envelope.chunked) and not (txn.chunks and not envelope.chunked)
        # RFC 3848 §1, RFC 6531 §3.7.3: the WITH protocol type.
        base = "UTF8SMTP" if txn.params.smtputf8 else "ESMTP" if self.hello.extended else "SMTP"
        assert envelope.protocol == base + ("S" if self.tls else ""), envelope.protocol
        binary = envelope.chunked and txn.params.body == "BINARYMIME"
        if not binary:
            check_text(bytes(txn.content), self.limits, data=not envelope.chunked)

    def started_tls(self) -> None:
        conn = self.conn
        assert self.options.has(STARTTLS) and not self.tls and not self.starttls_seen
        assert self.state is S.TLS and self.txn is None
        assert conn.input_backlog == 0  # what was pipelined behind STARTTLS is gone
        self.starttls_seen += 1
        self.handshake_due = True

    def handshake(self) -> None:
        """The worker's TLS handshake, after the 220 went out."""
        self.handshake_due = False
        conn = self.conn
        if self.state is not S.TLS:
            return  # the client left during the handshake: the core closed
        assert conn.data_to_send() == b"" and conn.next_event() is smtp.PAUSED
        self.probe_misuse()
        if self.options.misc & TLS_FAILS:
            self.gone = True  # the worker aborts the transport; the core is dropped
            return
        conn.tls_started()
        self.tls = True
        self.hello = None
        self.moved(frozenset({S.CONNECTED}))
        assert conn.tls and conn.input_backlog == 0
        # A new session with nothing in it: nothing to answer until the client speaks.
        assert conn.next_event() is smtp.NEED_DATA
        assert conn.data_to_send() == b""

    # --- invariants ---

    def moved(self, allowed: frozenset[smtp.State]) -> None:
        state = self.conn.state
        assert state in allowed, f"{self.state} -> {state}"
        self.state = state
        if self.txn is not None:
            self.txn.data = self.txn.data or state is S.DATA
            self.txn.chunks = self.txn.chunks or state in (S.BDAT, S.CHUNKING)

    def need_data(self) -> None:
        """The core waits for the client: it holds less than the unit it reads."""
        assert not self.eof, "NEED_DATA after the end of input"
        backlog, state = self.conn.input_backlog, self.state
        if state in COMMAND_STATES:
            assert backlog < self.line_limit, (backlog, self.line_limit)
        elif state is S.DATA:
            assert backlog < self.limits.data_chunk, backlog
        else:
            assert state is S.BDAT and backlog == 0, (state, backlog)
        self.probe_misuse()

    def probe_misuse(self) -> None:
        """The caller's mistakes raise ``LocalProtocolError`` and change nothing."""
        if not self.options.has(MISUSE):
            return
        conn = self.conn
        state, backlog = conn.state, conn.input_backlog
        _raises(lambda: conn.send(smtp.Accept()))
        if state is not S.TLS:
            _raises(conn.tls_started)
        assert conn.state is state and conn.input_backlog == backlog

    # --- the start and the end ---

    def start(self, pieces: list[bytes]) -> list[bytes]:
        """The greeting (after a PROXY header if one is expected); the reads left."""
        if self.options.has(PROXY):
            pieces = self.read_proxy_header(pieces)
            if self.gone:
                return []
        self.pump()
        return pieces

    def read_proxy_header(self, pieces: list[bytes]) -> list[bytes]:
        """As the worker does on a listener behind a trusted proxy: the header first; a
        bad one closes the connection with no SMTP reply, the rest goes to the core."""
        parser = proxy.ProxyParser()
        for index, piece in enumerate([*pieces, b""]):
            parser.receive_data(piece)
            event = parser.next_event()
            if isinstance(event, proxy.ProxyError):
                self.gone = True
                assert self.conn.data_to_send() == b""
                return []
            if isinstance(event, proxy.ProxyHeader):
                if event.rest:
                    self.receive(event.rest)
                return pieces[index + 1 :]
        raise AssertionError("the end of input leaves the PROXY header undecided")

    def finish(self) -> None:
        """The end: the client's end of input, or the worker's 421 timeout."""
        if self.gone or self.closed:
            return self.after_close()
        if self.handshake_due:
            if self.options.misc & EOF_IN_HANDSHAKE:
                self.receive(b"")
                self.pump()  # the core closes: the handshake has nothing to do
            self.handshake()
            if self.gone:
                return None
        if self.closed:
            return self.after_close()
        if self.options.has(NO_EOF):
            self.time_out()
            self.pump()
        else:
            self.receive(b"")
            self.pump()
            while self.held is not None:
                self.answer_held()
                self.pump()
        assert self.closed and self.state is S.CLOSED
        return self.after_close()

    def time_out(self) -> None:
        """421 at any moment (RFC 5321 §3.8), even with a question unanswered."""
        self.held = None
        self.handshake_due = False  # a handshake under way is simply dropped
        out = self.conn.send(TIMEOUT)
        assert check_replies(out)[-1:] == [421]
        self.moved(frozenset({S.CLOSED}))

    def after_close(self) -> None:
        if self.gone:
            return
        conn = self.conn
        backlog = conn.input_backlog
        conn.receive_data(b"QUIT\r\n")
        assert conn.input_backlog == backlog and conn.next_event() is smtp.PAUSED
        assert conn.data_to_send() == b""


ACCEPTED_STATE: Final = {
    smtp.Hello: S.READY,
    smtp.MailFrom: S.MAIL,
    smtp.RcptTo: S.RCPT,
    smtp.MessageComplete: S.READY,
}
# (permanent, temporary) refusals, two of each, taken in turn.
_Pair = tuple[smtp.Reply, smtp.Reply]
REFUSALS: Final[dict[type, tuple[_Pair, _Pair]]] = {
    smtp.ClientConnected: (
        (smtp.Reply(554, "5.7.1", "Access denied"), smtp.Reply(521, "5.3.2", "No mail here")),
        (smtp.Reply(421, "4.7.0", "Too busy"), smtp.Reply(421, "4.3.2", "Shutting down")),
    ),
    smtp.Hello: (
        (smtp.Reply(550, "5.7.1", "Go away"), smtp.Reply(504, "5.5.2", "Bad name")),
        (smtp.Reply(450, "4.7.1", "Try later"), smtp.Reply(421, "4.3.2", "Shutting down")),
    ),
    smtp.MailFrom: (
        (smtp.Reply(550, "5.7.1", "Sender refused"), smtp.Reply(553, "5.1.8", "Bad domain")),
        (smtp.Reply(451, "4.3.0", "Try later"), smtp.Reply(421, "4.3.2", "Shutting down")),
    ),
    smtp.RcptTo: (
        (smtp.Reply(550, "5.1.1", "No such user"), smtp.Reply(550, "5.7.1", "Relay denied")),
        (smtp.Reply(450, "4.2.1", "Mailbox busy"), smtp.Reply(421, "4.4.2", "Timeout")),
    ),
    smtp.MessageComplete: (
        (smtp.Reply(554, "5.7.1", "Rejected"), smtp.Reply(552, "5.2.2", "Mailbox full")),
        (smtp.Reply(451, "4.3.0", "Handoff failed"), smtp.Reply(421, "4.3.2", "Shutting down")),
    ),
}


def check_text(content: bytes, limits: smtp.Limits, *, data: bool) -> None:
    """Accepted text content (RFC 5321 §2.3.8, §4.5.3.1.6, §6.3): CRLF line ends only, no
    NUL, lines within ``text_line``, at most ``hops`` Received fields in the header."""
    lines = content.split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines), "bare CR or LF"
    assert b"\x00" not in content, "NUL"
    assert max(map(len, lines)) <= limits.text_line - 2, "line too long"
    if data:
        assert content == b"" or content.endswith(b"\r\n")  # DATA ends at CRLF.CRLF
    complete = lines[:-1]  # header fields are lines ended by CRLF
    header = complete[: complete.index(b"")] if b"" in complete else complete
    received = sum(line[:9].lower() == b"received:" for line in header)
    assert received <= limits.hops, received


def _raises(call: object) -> None:
    assert callable(call)
    try:
        call()
    except smtp.LocalProtocolError:
        return
    raise AssertionError(f"{call!r} did not raise LocalProtocolError")


def run(data: bytes) -> None:
    """One session from one fuzz input; raises ``AssertionError`` if an invariant breaks."""
    options, stream = Options.parse(data)
    session = Session(options)
    for piece in session.start(split(options, stream)):
        if session.gone or session.closed:
            break
        session.feed(piece)
    session.finish()
