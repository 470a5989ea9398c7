"""``ServerConnection``: the sans-IO SMTP server, one per client connection.

Owns: turning received bytes into events and replies, in order (RFC 2920 §3.2 (1)), using
the framing of ``_buffer.py``, the grammar of ``_commands.py`` and the tables of
``state.py``; the session's limits; the pipelining synchronization check.
Must not know: sockets, clocks, randomness, logging, policy. Questions go out as events and
come back as ``Accept`` or ``Reply`` through ``send``.

Usage, as with h11::

    conn = ServerConnection("mx.example.org")
    conn.receive_data(data)          # b"" at end of input
    while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
        if isinstance(event, Question):  # answered with Accept() or a Reply(...)
            transport.write(conn.send(Accept()))
    transport.write(conn.data_to_send())

``send`` returns the reply bytes ready to go out and takes them (``data_to_send`` does not
return them again): write what it returns.

Security: every client mistake becomes a reply with an enhanced status code; nothing a
client sends raises. Memory per connection is bounded by the limits (see ``limits.py``).
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from . import _commands as C
from . import replies as R
from ._buffer import ContentChecker, ContentError, DataReader, LineError, ReceiveBuffer
from .errors import LocalProtocolError
from .events import (
    NEED_DATA,
    PAUSED,
    Accept,
    Answer,
    ClientConnected,
    ConnectionClosed,
    Envelope,
    Event,
    Hello,
    MailFrom,
    MailParams,
    MessageComplete,
    MessageData,
    Question,
    RcptTo,
    Recipient,
    StartTls,
    TransactionAborted,
    Unavailable,
    Wait,
    Xclient,
)
from .limits import Extensions, Limits
from .replies import Reply, plain_lines
from .state import (
    BEFORE_TLS,
    GROUP_EXEMPT,
    IN_TRANSACTION,
    LAST_IN_GROUP,
    MOVES_WITHOUT_INPUT,
    SEQUENCE,
    Machine,
    State,
    Trigger,
    Verb,
    bdat_refusal,
)

CONTENT_REPLIES: dict[ContentError, Reply] = {
    ContentError.BARE_NEWLINE: R.BARE_NEWLINE_DATA,
    ContentError.NUL: R.NUL_IN_DATA,
    ContentError.LINE_TOO_LONG: R.TEXT_LINE_TOO_LONG,
    ContentError.TOO_MANY_HOPS: R.TOO_MANY_HOPS,
}
CloseReason = Literal["quit", "eof", "refused", "error", "local"]


class _Transaction:
    """What one mail transaction has gathered so far."""

    def __init__(self, sender: str, params: MailParams, checker: ContentChecker | None) -> None:
        self.sender = sender
        self.params = params
        self.recipients: list[Recipient] = []
        self.size = 0
        self.chunked = False
        self.checker = checker
        # The refusal of the content, once known; the transaction then only drains.
        self.failed: Reply | None = None


class _Skip:
    """A BDAT chunk being read only to be dropped, and what to do after it."""

    def __init__(self, left: int, reply: Reply, trigger: Trigger | None, counts: bool) -> None:
        self.left = left
        self.reply = reply
        self.trigger = trigger
        self.counts = counts


class ServerConnection:
    """The server side of one SMTP session."""

    def __init__(
        self,
        hostname: str,
        *,
        limits: Limits | None = None,
        extensions: Extensions | None = None,
        banner: str = "ESMTP",
        tls: bool = False,
        starttls: bool = False,
        require_tls: bool = False,
        xclient: bool = False,
    ) -> None:
        if C.parse_hello(hostname) is None or hostname.startswith("["):
            raise LocalProtocolError(f"server hostname {hostname!r} is not a domain name")
        plain_lines(220, [banner])  # validates the banner text
        self.hostname = hostname
        self.limits = limits or Limits()
        self.extensions = extensions or Extensions()
        self.banner = banner
        #: Whether the session runs over TLS (RFC 3848 "ESMTPS"); set by the I/O layer.
        self.tls = tls
        #: Whether STARTTLS is offered (RFC 3207): the I/O layer can run a handshake. Never
        #: once the session runs over TLS.
        self.starttls = starttls
        #: Whether every command but EHLO, NOOP, STARTTLS, QUIT and RSET gets ``530 5.7.0``
        #: before TLS (RFC 3207 §4: a submission listener that requires it).
        self.require_tls = require_tls and not tls
        #: Octets the client sent behind its STARTTLS, dropped unread (CVE-2011-0411).
        self.dropped_after_starttls = 0
        #: Whether the client may send XCLIENT (a proxy the I/O layer trusts, which it
        #: says before the greeting is answered): offered in EHLO and asked as an
        #: ``Xclient`` question; from anyone else ``550 5.7.0``.
        self.xclient = xclient
        #: The SASL login an accepted XCLIENT named (RFC 3848 "ESMTPA").
        self.login: str | None = None
        self._machine = Machine()
        self._buf = ReceiveBuffer()
        self._out: list[bytes] = []
        first = ClientConnected()
        self._events: deque[Event] = deque([first])
        self._pending: Question | None = first
        self._asked = False
        self._eof = False
        self._errors = 0
        self._commands = 0
        self._helo = ""
        self._extended = False
        self._line_limit = self.limits.command_line
        self._txn: _Transaction | None = None
        self._reader: DataReader | None = None
        self._chunk_left = 0
        self._chunk_last = False
        self._skip: _Skip | None = None

    # --- the public surface --------------------------------------------------------

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def errors(self) -> int:
        """Client errors so far, counted against ``limits.errors`` (its ``421 4.7.0``
        closes the session when they reach it)."""
        return self._errors

    @property
    def input_backlog(self) -> int:
        """Bytes received and not yet consumed; the I/O layer pauses reading above a mark."""
        return len(self._buf.data)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed its side."""
        state = self._machine.state
        if state is State.CLOSED:
            return
        if data:
            if state is State.TLS:  # plaintext after our 220: never a command
                self.dropped_after_starttls += len(data)
                return
            self._buf.append(data)
        else:
            self._eof = True

    def next_event(self) -> Event | Wait:
        """The next event, ``NEED_DATA``, or ``PAUSED`` while a question waits for its answer
        (and for good once the connection is closed)."""
        events = self._events
        while True:
            if events:
                event = events.popleft()
                if event is self._pending:
                    self._asked = True
                return event
            state = self._machine.state
            if state is State.TLS:
                if not self._eof:
                    return PAUSED  # until tls_started
                self._close("eof")  # the client went away during the handshake
                continue
            if self._pending is not None or state is State.CLOSED:
                return PAUSED
            if (
                not self._buf.data
                and not self._eof
                and state not in MOVES_WITHOUT_INPUT
                and self._skip is None
            ):
                return NEED_DATA  # nothing to parse (a BDAT chunk, read or dropped, may be empty)
            if not self._step():
                return NEED_DATA

    def send(self, answer: Answer) -> bytes:
        """Answer the question last returned by ``next_event``; returns every reply byte
        that is ready to go out, in order.

        A ``Reply`` with code 421 may be sent at any time (shutdown, timeout): it closes the
        session (RFC 5321 §3.8).
        """
        if isinstance(answer, Reply) and answer.code == 421 and self.state is not State.CLOSED:
            self._drop_question()
            self._reply(answer, close="local")
            return self.data_to_send()
        question = self._pending
        if question is None or not self._asked:
            raise LocalProtocolError("there is no question to answer")
        if isinstance(answer, Reply) and answer.code < 400:
            raise LocalProtocolError("a refusal is a 4xx or 5xx Reply; use Accept to accept")
        self._answer(question, answer)
        self._pending = None
        return self.data_to_send()

    def tls_started(self) -> None:
        """The TLS handshake after ``StartTls`` succeeded: the session starts again inside
        TLS, knowing nothing of before (RFC 3207 §4.2): no HELO/EHLO, no transaction, no
        input; the client must send EHLO again. STARTTLS is not offered any more."""
        if self._machine.state is not State.TLS:
            raise LocalProtocolError("tls_started without a STARTTLS accepted")
        self.tls = True
        self._helo = ""
        self._extended = False
        self._line_limit = self.limits.command_line
        self._buf = ReceiveBuffer()
        self._machine.fire(Trigger.TLS_STARTED)

    def data_to_send(self) -> bytes:
        """Reply bytes produced so far and not yet taken."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    # --- answers ---------------------------------------------------------------------

    def _answer(self, question: Question, answer: Answer) -> None:
        # Most frequent first: this runs for every MAIL, RCPT and message.
        if type(question) is RcptTo:
            self._answer_rcpt(question, answer)
        elif type(question) is MailFrom:
            self._answer_mail(question, answer)
        elif type(question) is MessageComplete:
            self._answer_message(answer)
        elif type(question) is Hello:
            self._answer_hello(question, answer)
        elif type(question) is Xclient:
            self._answer_xclient(question, answer)
        else:
            self._answer_connect(answer)

    def _answer_connect(self, answer: Answer) -> None:
        if isinstance(answer, Reply):
            if answer.code not in (554, 521):
                raise LocalProtocolError("refuse a connection with 554, 521 or 421")
            self._machine.fire(Trigger.REFUSE)
            self._reply(answer, close="refused")
            return
        self._machine.fire(Trigger.GREET)
        self._greet(answer)

    def _greet(self, answer: Accept) -> None:
        self._out.append(plain_lines(220, [f"{self.hostname} {answer.text or self.banner}"]))
        if len(self._buf.data):
            self._desync()  # the client spoke before the greeting

    def _answer_hello(self, question: Hello, answer: Answer) -> None:
        if isinstance(answer, Reply):
            self._error(answer)  # RFC 5321 §4.1.4: refused, same state
            return
        self._abort("hello")
        self._machine.fire(Trigger.HELLO)
        self._helo = question.name
        self._extended = question.extended
        base = self.limits.command_line
        self._line_limit = self.extensions.command_line_limit(base) if question.extended else base
        if question.extended:
            self._out.append(plain_lines(250, [self.hostname, *self._keywords()]))
        else:
            self._out.append(plain_lines(250, [self.hostname]))

    def _answer_xclient(self, question: Xclient, answer: Answer) -> None:
        """Accepted: greeted again, a session that knows no HELO/EHLO (Postfix: "the
        server resets state to the initial SMTP greeting protocol stage"). TLS stays."""
        if isinstance(answer, Reply):
            self._error(answer)
            return
        self._machine.fire(Trigger.XCLIENT)
        self._helo = ""
        self._extended = False
        self._line_limit = self.limits.command_line
        if question.login is not None:
            self.login = None if isinstance(question.login, Unavailable) else question.login
        self._greet(answer)

    def _keywords(self) -> list[str]:
        return self.extensions.ehlo_keywords(
            self.limits.message_size, starttls=self.starttls and not self.tls, xclient=self.xclient
        )

    def _answer_mail(self, question: MailFrom, answer: Answer) -> None:
        if isinstance(answer, Reply):
            self._error(answer)
            return
        checker = ContentChecker(
            text_line=self.limits.text_line,
            hops=self.limits.hops,
            binary=question.params.body == "BINARYMIME",
        )
        self._txn = _Transaction(question.sender, question.params, checker)
        self._machine.fire(Trigger.MAIL)
        self._out.append(_accepted(R.MAIL_OK, answer))

    def _answer_rcpt(self, question: RcptTo, answer: Answer) -> None:
        if isinstance(answer, Reply):
            self._error(answer)
            return
        assert self._txn is not None
        self._txn.recipients.append(Recipient(question.recipient, question.params))
        self._machine.fire(Trigger.RCPT)
        self._out.append(_accepted(R.RCPT_OK, answer))

    def _answer_message(self, answer: Answer) -> None:
        if isinstance(answer, Reply):
            self._reply(answer, close="local")
        else:
            self._out.append(_accepted(R.OK, answer))

    def _drop_question(self) -> None:
        pending = self._pending
        if pending is not None and not self._asked:
            self._events.remove(pending)
            if type(pending) is MessageComplete:
                # The caller has had the content but will never get the question, and the
                # transaction is no longer open for ``_close`` to end: end it here.
                self._events.append(TransactionAborted("closed"))
        self._pending = None

    # --- input -----------------------------------------------------------------------

    def _step(self) -> bool:
        """Consume some input; False when nothing can be done without more bytes."""
        if self._skip is not None:
            return self._step_skip(self._skip)
        state = self._machine.state
        if state is State.DATA:
            return self._step_data()
        if state is State.BDAT:
            return self._step_bdat()
        return self._step_command()

    def _end_of_input(self) -> bool:
        """No complete unit is buffered: at end of input the session is over."""
        if not self._eof:
            return False
        self._close("eof")
        return True

    def _step_command(self) -> bool:
        line = self._buf.next_line(self._line_limit)
        if line is None:
            return self._end_of_input()
        if line is LineError.BARE_NEWLINE:
            self._reply(R.BARE_NEWLINE_COMMAND, close="error")
            return True
        self._commands += 1  # a too-long line counts; a bare newline ends the session
        if self._commands > self.limits.commands:
            self._reply(R.TOO_MANY_COMMANDS, close="error")
        elif line is LineError.TOO_LONG:
            self._error(R.LINE_TOO_LONG)
        else:
            self._command(line)
        return True

    def _command(self, line: bytes) -> None:
        decoded = C.decode(line, utf8_ok=self._extended and self.extensions.smtputf8)
        if isinstance(decoded, Reply):
            self._error(decoded)
            return
        verb = C.classify(decoded[0])
        if isinstance(verb, Reply):
            self._error(verb)
            return
        if (
            self._buf.data
            and (verb in LAST_IN_GROUP or not self._pipelining())
            and verb not in GROUP_EXEMPT
        ):
            self._desync()
            return
        refusal = SEQUENCE.get((self._machine.state, verb))
        if self.require_tls and not self.tls and verb not in BEFORE_TLS:
            refusal = R.MUST_STARTTLS
        if refusal is not None:
            self._error(refusal)
        else:
            _HANDLERS[verb](self, decoded[1])

    def _pipelining(self) -> bool:
        return self._extended and self.extensions.pipelining

    # --- command handlers ---------------------------------------------------------

    def _hello(self, args: str, *, extended: bool) -> None:
        name = C.parse_hello(args)
        if name is None:
            self._error(R.SYNTAX_EHLO if extended else R.SYNTAX_HELO)
        else:
            self._ask(Hello(name, extended))

    def _ehlo(self, args: str) -> None:
        self._hello(args, extended=True)

    def _helo_cmd(self, args: str) -> None:
        self._hello(args, extended=False)

    def _mail(self, args: str) -> None:
        parsed = C.parse_mail(
            args, self.extensions, extended=self._extended, max_size=self.limits.message_size
        )
        if isinstance(parsed, Reply):
            self._error(parsed)
        else:
            self._ask(MailFrom(*parsed))

    def _rcpt(self, args: str) -> None:
        txn = self._txn
        assert txn is not None
        if len(txn.recipients) >= self.limits.recipients:
            self._reply(R.TOO_MANY_RECIPIENTS)  # RFC 5321 §4.5.3.1.10; not a client error
            return
        parsed = C.parse_rcpt(
            args, self.extensions, extended=self._extended, utf8=txn.params.smtputf8
        )
        if isinstance(parsed, Reply):
            self._error(parsed)
        else:
            self._ask(RcptTo(*parsed))

    def _data(self, args: str) -> None:
        assert self._txn is not None
        if args.strip(" \t"):
            self._error(R.SYNTAX_NO_ARGS)
        elif self._txn.params.body == "BINARYMIME":
            self._error(R.DATA_BINARYMIME)  # RFC 3030 §3
        else:
            self._machine.fire(Trigger.DATA)
            self._reader = DataReader(self.limits.data_chunk)
            self._reply(R.START_DATA)

    def _bdat(self, args: str) -> None:
        parsed = C.parse_bdat(args)
        if parsed is None:
            self._reply(R.BDAT_SYNTAX, close="error")  # the chunk's end cannot be known
            return
        size, last = parsed
        offered = self._extended and self.extensions.chunking
        refusal = bdat_refusal(self._machine.state, offered)
        if refusal is not None:
            self._skip = _Skip(size, refusal, None, counts=True)
        else:
            self._bdat_chunk(size, last)

    def _bdat_chunk(self, size: int, last: bool) -> None:
        txn = self._txn
        assert txn is not None
        dropped = Trigger.LAST_DROPPED if last else Trigger.CHUNK_DROPPED
        if txn.failed is not None:
            self._skip = _Skip(size, R.BDAT_AFTER_ERROR, dropped, counts=False)
        elif txn.size + size > self.limits.message_size:
            self._fail(R.SIZE_EXCEEDED)
            self._skip = _Skip(size, R.SIZE_EXCEEDED, dropped, counts=False)
        else:
            txn.chunked = True
            self._chunk_left = size
            self._chunk_last = last
            self._machine.fire(Trigger.BDAT)

    def _rset(self, args: str) -> None:
        if args.strip(" \t"):
            self._error(R.SYNTAX_NO_ARGS)  # RFC 5321 §4.1.1.5
            return
        self._abort("reset")
        self._machine.fire(Trigger.RESET)
        self._reply(R.OK)

    def _noop(self, args: str) -> None:
        self._reply(R.OK)  # RFC 5321 §4.1.1.9: an argument is ignored

    def _quit(self, args: str) -> None:
        if args.strip(" \t"):
            self._error(R.SYNTAX_NO_ARGS)
            return
        self._abort("quit")
        self._reply(R.BYE, close="quit")

    def _vrfy(self, args: str) -> None:
        # RFC 5321 §3.5.3, §7.3: 252 when the address is not verified in real time.
        self._reply(R.VRFY) if args.strip(" \t") else self._error(R.SYNTAX_VRFY)

    def _help(self, args: str) -> None:
        self._reply(R.HELP)

    def _starttls(self, args: str) -> None:
        if self.tls or not self.starttls:
            self._error(R.TLS_ACTIVE if self.tls else R.NOT_IMPLEMENTED)
        elif args.strip(" \t"):
            self._error(R.SYNTAX_NO_ARGS)  # RFC 3207 §4: "STARTTLS" with no parameters
        else:
            # Whatever the client pipelined behind STARTTLS was sent in plaintext: dropped
            # unread, never answered inside TLS (CVE-2011-0411).
            self.dropped_after_starttls += len(self._buf.data)
            self._buf = ReceiveBuffer()
            self._machine.fire(Trigger.STARTTLS)
            self._reply(R.READY_FOR_TLS)
            self._events.append(StartTls())

    def _xclient(self, args: str) -> None:
        if not self.xclient:
            self._error(R.XCLIENT_DENIED)
            return
        parsed = C.parse_xclient(args)
        if isinstance(parsed, Reply):
            self._error(parsed)
        else:
            self._ask(parsed)

    # --- message content ---------------------------------------------------------

    def _step_data(self) -> bool:
        assert self._reader is not None
        result = self._reader.read(self._buf)
        if result is None:
            return self._end_of_input()
        piece, ended = result
        self._content(piece)
        if ended:
            self._reader = None
            self._end_of_message()
        return True

    def _step_bdat(self) -> bool:
        take = min(self._chunk_left, len(self._buf.data), self.limits.data_chunk)
        if take == 0 and self._chunk_left:
            return self._end_of_input()
        self._chunk_left -= take
        self._content(self._buf.take(take))
        if not self._chunk_left:
            self._end_of_chunk()
        return True

    def _step_skip(self, skip: _Skip) -> bool:
        take = min(skip.left, len(self._buf.data))
        if take == 0 and skip.left:
            return self._end_of_input()
        self._buf.take(take)
        skip.left -= take
        if not skip.left:
            self._skip = None
            if skip.trigger is Trigger.LAST_DROPPED:
                self._txn = None
            if skip.trigger is not None:
                self._machine.fire(skip.trigger)
            self._error(skip.reply) if skip.counts else self._reply(skip.reply)
            self._check_chunk_sync()
        return True

    def _content(self, piece: bytes) -> None:
        txn = self._txn
        assert txn is not None
        if txn.failed is not None or not piece:
            return
        txn.size += len(piece)
        if txn.size > self.limits.message_size:
            self._fail(R.SIZE_EXCEEDED)  # RFC 1870 §6.3: read on, then 552
            return
        if txn.checker is not None:
            txn.checker.feed(piece)
            if txn.checker.error is not None:
                self._fail(CONTENT_REPLIES[txn.checker.error])
                return
        self._events.append(MessageData(piece))

    def _fail(self, reply: Reply) -> None:
        assert self._txn is not None
        self._txn.failed = reply
        self._events.append(TransactionAborted("refused", reply, self._envelope(self._txn)))

    def _end_of_chunk(self) -> None:
        txn = self._txn
        assert txn is not None
        if self._chunk_last:
            self._end_of_message()
            return
        self._machine.fire(Trigger.CHUNK_DONE)
        self._reply(txn.failed or Reply(250, "2.0.0", f"Ok: {txn.size} octets received"))
        self._check_chunk_sync()

    def _check_chunk_sync(self) -> None:
        # Without PIPELINING the client must wait for each chunk's reply.
        closed = self._machine.state is State.CLOSED
        if len(self._buf.data) and not self._pipelining() and not closed:
            self._desync()

    def _end_of_message(self) -> None:
        txn = self._txn
        assert txn is not None
        error = txn.checker.finish() if txn.checker is not None else None
        if txn.failed is None and error is not None:
            self._fail(CONTENT_REPLIES[error])
        self._machine.fire(Trigger.MESSAGE_DONE)
        self._txn = None
        if txn.failed is not None:
            self._reply(txn.failed)
            if self._chunk_last:
                self._check_chunk_sync()
            return
        self._ask(MessageComplete(self._envelope(txn)))

    def _envelope(self, txn: _Transaction) -> Envelope:
        return Envelope(
            helo=self._helo,
            protocol=self._protocol(txn.params.smtputf8),
            sender=txn.sender,
            mail=txn.params,
            recipients=tuple(txn.recipients),
            size=txn.size,
            chunked=txn.chunked,
        )

    def _protocol(self, smtputf8: bool) -> str:
        """RFC 3848 §1 and RFC 6531 §3.7.3 WITH protocol types ("A": a login, here one
        that an XCLIENT named)."""
        base = "UTF8SMTP" if smtputf8 else ("ESMTP" if self._extended else "SMTP")
        return base + ("S" if self.tls else "") + ("A" if self.login else "")

    # --- replies and endings -----------------------------------------------------

    def _ask(self, question: Question) -> None:
        self._events.append(question)
        self._pending = question
        self._asked = False

    def _reply(self, reply: Reply, *, close: CloseReason = "error") -> None:
        self._out.append(reply.to_bytes())
        if reply.closes:
            self._close(close)

    def _desync(self) -> None:
        """Input arrived that the client had to hold back: 554 5.5.0, then close."""
        self._reply(R.SYNC)
        self._close("error")

    def _error(self, reply: Reply) -> None:
        """A reply to a client error: counted against the session's error budget."""
        self._reply(reply)
        if reply.closes:
            return
        self._errors += 1
        if self._errors >= self.limits.errors:
            self._reply(R.TOO_MANY_ERRORS)

    def _abort(self, reason: Literal["reset", "hello", "quit", "closed"]) -> None:
        txn, self._txn = self._txn, None
        if txn is not None and txn.failed is None:
            self._events.append(TransactionAborted(reason))

    def _close(self, reason: CloseReason) -> None:
        if self._machine.state is State.CLOSED:
            return
        if self._machine.state in IN_TRANSACTION or self._txn is not None:
            self._abort("closed")
        self._skip = None
        self._machine.fire(Trigger.CLOSE)
        self._events.append(ConnectionClosed(reason))


def _accepted(default: Reply, answer: Accept) -> bytes:
    """The wire form of an accepting reply (never one that closes the session)."""
    return default.to_bytes() if answer.text is None else default.with_text(answer.text)


_HANDLERS = {
    Verb.EHLO: ServerConnection._ehlo,
    Verb.HELO: ServerConnection._helo_cmd,
    Verb.MAIL: ServerConnection._mail,
    Verb.RCPT: ServerConnection._rcpt,
    Verb.DATA: ServerConnection._data,
    Verb.BDAT: ServerConnection._bdat,
    Verb.RSET: ServerConnection._rset,
    Verb.NOOP: ServerConnection._noop,
    Verb.QUIT: ServerConnection._quit,
    Verb.VRFY: ServerConnection._vrfy,
    Verb.HELP: ServerConnection._help,
    Verb.STARTTLS: ServerConnection._starttls,
    Verb.XCLIENT: ServerConnection._xclient,
}
