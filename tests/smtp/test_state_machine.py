"""Every reachable state against every command, from a table written here (not read from
``wildboar/smtp/state.py``), and Hypothesis over random command sequences with invariants
checked after each step (h2's ``test_state_machines``).

The expected replies follow RFC 5321 §3.1, §3.3, §4.1.1, §4.1.4, §4.2.4, §4.3.2, RFC 3030 §2
and RFC 2034 §4; where the RFC leaves a choice open, Postfix's answer is expected and the
comment says so.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from wildboar import smtp

from .client import Client, accept_all, replies, statuses

S = smtp.State
MESSAGE = b"Subject: t\r\n\r\nbody\r\n"

# --- the commands sent in every state ----------------------------------------------

COMMANDS: dict[str, bytes] = {
    "EHLO": b"EHLO client.example\r\n",
    "HELO": b"HELO client.example\r\n",
    "MAIL": b"MAIL FROM:<alice@example.net>\r\n",
    "RCPT": b"RCPT TO:<bob@example.org>\r\n",
    "DATA": b"DATA\r\n",
    "BDAT 0": b"BDAT 0\r\n",
    "BDAT n": b"BDAT 5\r\nhello",
    "BDAT n LAST": b"BDAT %d LAST\r\n%s" % (len(MESSAGE), MESSAGE),
    "RSET": b"RSET\r\n",
    "NOOP": b"NOOP\r\n",
    "QUIT": b"QUIT\r\n",
    "VRFY": b"VRFY bob\r\n",
    "HELP": b"HELP\r\n",
    "EXPN": b"EXPN staff\r\n",
    "unknown": b"XYZZY\r\n",
    "XCLIENT": b"XCLIENT ADDR=192.0.2.1\r\n",
}

# A BDAT chunk left open so that the session is inside it (State.BDAT).
OPEN_CHUNK = 300
OPEN_CHUNK_HEAD = b"Subject: t\r\n"


def _refuse_connection(question: smtp.Question) -> smtp.Answer:
    if isinstance(question, smtp.ClientConnected):
        return smtp.Reply(554, "5.7.1", "mx.example.org no SMTP service for you")
    return smtp.Accept()


# state name -> (refuse at connect, setup commands, the state they reach)
SETUPS: dict[str, tuple[bool, list[bytes], smtp.State]] = {
    "CONNECTED": (False, [], S.CONNECTED),
    "REFUSED": (True, [], S.REFUSED),
    "READY after HELO": (False, [COMMANDS["HELO"]], S.READY),
    "READY after EHLO": (False, [COMMANDS["EHLO"]], S.READY),
    "MAIL": (False, [COMMANDS["EHLO"], COMMANDS["MAIL"]], S.MAIL),
    "RCPT": (False, [COMMANDS["EHLO"], COMMANDS["MAIL"], COMMANDS["RCPT"]], S.RCPT),
    "DATA": (
        False,
        [COMMANDS["EHLO"], COMMANDS["MAIL"], COMMANDS["RCPT"], COMMANDS["DATA"]],
        S.DATA,
    ),
    "CHUNKING": (
        False,
        [COMMANDS["EHLO"], COMMANDS["MAIL"], COMMANDS["RCPT"], COMMANDS["BDAT n"]],
        S.CHUNKING,
    ),
    "BDAT": (
        False,
        [
            COMMANDS["EHLO"],
            COMMANDS["MAIL"],
            COMMANDS["RCPT"],
            b"BDAT %d\r\n%s" % (OPEN_CHUNK, OPEN_CHUNK_HEAD),
        ],
        S.BDAT,
    ),
}

# --- the expected table -------------------------------------------------------------
# Each entry: the reply status as ``statuses`` writes it ("250 2.1.0"; "250" for EHLO and
# HELO, "354" for DATA), or a tuple of statuses the RFC allows equally, and the state after.
# None means "no reply: the bytes are message content".

Expected = tuple[str | tuple[str, ...] | None, smtp.State]

HELLO = "250"  # RFC 2034 §4: no enhanced code in the reply to EHLO/HELO
BAD_SEQUENCE = "503 5.5.1"  # RFC 5321 §4.1.4, RFC 3463 X.5.1
# RFC 5321 §3.3: DATA (or BDAT, RFC 3030 §2) with no recipient may get 503 or 554.
NO_RECIPIENT = ("503 5.5.1", "554 5.5.1")


def _everywhere(state: smtp.State) -> dict[str, Expected]:
    """Commands that behave the same in every greeted state outside content.

    RFC 5321 §4.1.1.5 RSET "MUST send a 250"; §4.1.1.9 NOOP 250; §4.1.1.10 QUIT 221 and
    close; §3.5.3/§7.3 VRFY that does not verify is 252; §4.1.1.8 HELP 214; EXPN is not
    implemented (not in the §4.5.1 minimum): 502 (§4.2.4); an unknown verb 500 (§4.1.5).
    """
    return {
        "EHLO": (HELLO, S.READY),
        "HELO": (HELLO, S.READY),
        "RSET": ("250 2.0.0", S.READY if state is not S.CONNECTED else S.CONNECTED),
        "NOOP": ("250 2.0.0", state),
        "QUIT": ("221 2.0.0", S.CLOSED),
        "VRFY": ("252 2.0.0", state),
        "HELP": ("214 2.0.0", state),
        "EXPN": ("502 5.5.1", state),
        "unknown": ("500 5.5.2", state),
        # Postfix's XCLIENT from a client not trusted with it (test_xclient.py has the rest).
        "XCLIENT": ("550 5.7.0", state),
    }


def _no_transaction(state: smtp.State) -> dict[str, Expected]:
    """CONNECTED and READY: RCPT without MAIL "MUST" get 503 (§3.3); DATA and BDAT too."""
    return {
        **_everywhere(state),
        "RCPT": (BAD_SEQUENCE, state),
        "DATA": (BAD_SEQUENCE, state),
        # RFC 3030 §2: the chunk is read and dropped, then the refusal.
        "BDAT 0": (BAD_SEQUENCE, state),
        "BDAT n": (BAD_SEQUENCE, state),
        "BDAT n LAST": (BAD_SEQUENCE, state),
    }


def _refused() -> dict[str, Expected]:
    # RFC 5321 §3.1: after a 554 greeting the server "MUST still wait for the client to
    # send a QUIT" and "SHOULD respond to any intervening commands with 503" (Postfix:
    # 503 5.7.0). A verb the server does not know or run keeps its 500/502 (§4.2.4), as
    # in Postfix, where the command lookup comes before the access check.
    table: dict[str, Expected] = {name: ("503 5.7.0", S.REFUSED) for name in COMMANDS}
    table["QUIT"] = ("221 2.0.0", S.CLOSED)
    table["EXPN"] = ("502 5.5.1", S.REFUSED)
    table["unknown"] = ("500 5.5.2", S.REFUSED)
    return table


def _content(state: smtp.State) -> dict[str, Expected]:
    return {name: (None, state) for name in COMMANDS}


EXPECTED: dict[str, dict[str, Expected]] = {
    # MAIL before HELO/EHLO: the client "MUST issue HELO or EHLO before starting a mail
    # transaction" (§4.1.1.1); the server's answer is open, Postfix with
    # smtpd_helo_required=yes says 503 5.5.1.
    "CONNECTED": {**_no_transaction(S.CONNECTED), "MAIL": (BAD_SEQUENCE, S.CONNECTED)},
    "REFUSED": _refused(),
    "READY after HELO": {**_no_transaction(S.READY), "MAIL": ("250 2.1.0", S.MAIL)},
    "READY after EHLO": {**_no_transaction(S.READY), "MAIL": ("250 2.1.0", S.MAIL)},
    "MAIL": {
        **_everywhere(S.MAIL),
        "MAIL": (BAD_SEQUENCE, S.MAIL),  # nested MAIL
        "XCLIENT": (BAD_SEQUENCE, S.MAIL),  # Postfix: not inside a transaction
        "RCPT": ("250 2.1.5", S.RCPT),
        "DATA": (NO_RECIPIENT, S.MAIL),
        "BDAT 0": (NO_RECIPIENT, S.MAIL),
        "BDAT n": (NO_RECIPIENT, S.MAIL),
        "BDAT n LAST": (NO_RECIPIENT, S.MAIL),
    },
    "RCPT": {
        **_everywhere(S.RCPT),
        "MAIL": (BAD_SEQUENCE, S.RCPT),
        "XCLIENT": (BAD_SEQUENCE, S.RCPT),
        "RCPT": ("250 2.1.5", S.RCPT),
        "DATA": ("354", S.DATA),
        # RFC 3030 §2: "A 250 response MUST be sent to each successful BDAT data block".
        "BDAT 0": ("250 2.0.0", S.CHUNKING),
        "BDAT n": ("250 2.0.0", S.CHUNKING),
        "BDAT n LAST": ("250 2.0.0", S.READY),
    },
    "DATA": _content(S.DATA),
    "CHUNKING": {
        **_everywhere(S.CHUNKING),
        "MAIL": (BAD_SEQUENCE, S.CHUNKING),
        "XCLIENT": (BAD_SEQUENCE, S.CHUNKING),
        "RCPT": (BAD_SEQUENCE, S.CHUNKING),  # §3.3 order: RCPT comes before the content
        "DATA": (BAD_SEQUENCE, S.CHUNKING),  # RFC 3030 §2: DATA after BDAT "MUST" be 503
        "BDAT 0": ("250 2.0.0", S.CHUNKING),
        "BDAT n": ("250 2.0.0", S.CHUNKING),
        "BDAT n LAST": ("250 2.0.0", S.READY),
    },
    "BDAT": _content(S.BDAT),
}

# --- reply checks shared by both halves ---------------------------------------------

_LINE = re.compile(rb"([2-5][0-5][0-9])([ -])(.*)")
_ENHANCED = re.compile(rb"([245])\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")


def check_reply(reply: list[bytes], *, plain: bool) -> int:
    """Check one reply's lines; return its code. ``plain``: a greeting or EHLO/HELO reply.

    RFC 5321 §4.2: codes 2yz-5yz, the same code on every line, the last line with SP.
    RFC 2034 §4: every 2xx/4xx/5xx line other than a greeting or an EHLO/HELO reply starts
    with an enhanced code (RFC 3463 §2) of the reply's class, the same on every line.
    """
    codes = set()
    enhanced = set()
    for index, line in enumerate(reply):
        match = _LINE.fullmatch(line)
        assert match is not None, line
        assert (match.group(2) == b" ") == (index == len(reply) - 1), reply
        assert all(0x20 <= byte <= 0x7E or byte == 0x09 for byte in match.group(3)), line
        code = match.group(1)
        codes.add(code)
        if plain or code.startswith(b"3"):
            continue
        status = match.group(3).split(b" ", 1)[0]
        found = _ENHANCED.fullmatch(status)
        assert found is not None, f"no enhanced status code in {line!r}"
        assert found.group(1) == code[:1], f"class of {status!r} does not match {code!r}"
        enhanced.add(status)
    assert len(codes) == 1, reply
    assert len(enhanced) <= 1, reply
    return int(codes.pop())


def check_replies(data: bytes, *, plain: bool = False) -> list[int]:
    return [check_reply(reply, plain=plain) for reply in replies(data)]


def _matches(expected: str | tuple[str, ...], got: list[str]) -> bool:
    allowed = (expected,) if isinstance(expected, str) else expected
    return len(got) == 1 and got[0] in allowed


# --- the table test -------------------------------------------------------------------


def enter(name: str, bytewise: bool) -> Client:
    refuse, setup, state = SETUPS[name]
    client = Client(bytewise=bytewise, policy=_refuse_connection if refuse else accept_all)
    assert len(check_replies(client.greeting, plain=True)) == 1
    for line in setup:
        out = client.send(line)
        hello = line.startswith((b"EHLO", b"HELO"))
        # One reply per setup command, none while a chunk is still open.
        assert len(check_replies(out, plain=hello)) == (0 if client.conn.state is S.BDAT else 1)
    assert client.conn.state is state
    return client


def finish_content(client: Client, name: str, sent: bytes) -> None:
    """Leave DATA or BDAT the regular way; the command bytes must have become content."""
    if name == "DATA":
        tail = b"" if sent.endswith(b"\r\n") else b"\r\n"
        assert client.round(tail + b".\r\n") == ["250 2.0.0"]
        assert client.conn.state is S.READY
        assert client.accepted[-1].content == sent + tail
        return
    rest = OPEN_CHUNK - len(OPEN_CHUNK_HEAD) - len(sent)
    filler = b"x" * (rest - 2) + b"\r\n"
    assert client.round(filler) == ["250 2.0.0"]
    assert client.conn.state is S.CHUNKING
    assert client.round(b"BDAT 0 LAST\r\n") == ["250 2.0.0"]
    assert client.accepted[-1].content == OPEN_CHUNK_HEAD + sent + filler


CASES = [(state, command) for state in EXPECTED for command in COMMANDS]


def test_the_table_covers_every_state_a_client_can_reach() -> None:
    reached = {SETUPS[name][2] for name in EXPECTED}
    # GREETING and TLS wait for the caller (its greeting, its TLS handshake: see
    # test_starttls.py), CLOSED is the end: none takes commands.
    assert reached == set(S) - {S.GREETING, S.TLS, S.CLOSED}
    assert all(set(row) == set(COMMANDS) for row in EXPECTED.values())


@pytest.mark.parametrize(("name", "command"), CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_command_in_state(name: str, command: str, bytewise: bool) -> None:
    client = enter(name, bytewise)
    before = len(client.events)
    wire = COMMANDS[command]
    out = client.send(wire)
    expected, state = EXPECTED[name][command]
    codes = check_replies(out, plain=expected == HELLO)
    if expected is None:
        assert out == b""
        assert client.conn.state is state
        finish_content(client, name, wire)
        return
    got = statuses(out)
    assert _matches(expected, got), f"{command} in {name}: got {got}, expected {expected}"
    assert client.conn.state is state
    closed = [e for e in client.events[before:] if isinstance(e, smtp.ConnectionClosed)]
    assert bool(closed) == (state is S.CLOSED)
    assert bool(closed) == (codes[-1] in (221, 421, 521))
    if state is not S.CLOSED:
        assert client.conn.input_backlog == 0
        # The session goes on: one more unit, one more reply.
        follow = b".\r\n" if state is S.DATA else b"NOOP\r\n"
        assert len(check_replies(client.send(follow))) == 1


def test_helo_reply_is_not_the_extended_form() -> None:
    # RFC 5321 §3.2: "Servers MUST NOT return the extended EHLO-style response to a HELO".
    client = Client()
    assert client.send(COMMANDS["HELO"]) == b"250 mx.example.org\r\n"


def test_help_may_be_pipelined() -> None:
    # RFC 2920 §3.1 names the commands that "can only appear as the last command in a
    # group": EHLO, DATA, VRFY, EXPN, TURN, QUIT and NOOP. HELP is not one of them, so a
    # group with HELP inside is legal and gets a reply per command; the server "MUST NOT
    # flush or otherwise lose the contents of the TCP input buffer" (§3.2 (9)).
    client = enter("READY after EHLO", bytewise=False)
    assert client.round(b"HELP\r\nNOOP\r\n") == ["214 2.0.0", "250 2.0.0"]
    assert client.conn.state is S.READY


def test_rset_in_a_transaction_drops_it() -> None:
    client = enter("RCPT", bytewise=False)
    assert client.round(COMMANDS["RSET"]) == ["250 2.0.0"]
    assert client.events[-1] == smtp.TransactionAborted("reset")
    assert client.round(COMMANDS["DATA"]) == [BAD_SEQUENCE]


def test_ehlo_in_a_transaction_resets_it() -> None:
    # RFC 5321 §4.1.1.1: a mid-session EHLO resets "exactly as if a RSET command had been
    # issued".
    client = enter("CHUNKING", bytewise=False)
    assert client.round(COMMANDS["EHLO"]) == [HELLO]
    assert smtp.TransactionAborted("hello") in client.events
    assert client.round(COMMANDS["RCPT"]) == [BAD_SEQUENCE]
    assert client.accepted == []


# --- Hypothesis over command sequences --------------------------------------------------

# Commands for the random walk: the table's commands, refused variants and syntax errors.
WALK: list[bytes] = [
    *COMMANDS.values(),
    b"EHLO refused.example\r\n",
    b"EHLO\r\n",
    b"HELO [192.0.2.1]\r\n",
    b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<spam@example.com>\r\n",
    b"MAIL FROM:<tempfail@example.com>\r\n",
    b"MAIL FROM:<a@example.net> BODY=BINARYMIME\r\n",
    b"MAIL FROM:<a@example.net> SIZE=999999999999\r\n",
    b"MAIL FROM:<a@example.net> FOO=BAR\r\n",
    b"MAIL FROM:<\xc3\xa9@example.net>\r\n",
    b"MAIL FROM:bad\r\n",
    b"RCPT TO:<nobody@example.org>\r\n",
    b"RCPT TO:<later@example.org>\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"RCPT TO:<bob@example.org> NOTIFY=NEVER,DELAY\r\n",
    b"RCPT TO:\r\n",
    b"DATA now\r\n",
    b"BDAT 0 LAST\r\n",
    b"BDAT 3 LAST\r\nab\r",
    b"BDAT two\r\n",
    b"RSET now\r\n",
    b"NOOP anything\r\n",
    b"QUIT now\r\n",
    b"VRFY\r\n",
    b"HELP MAIL\r\n",
    b"NOOP \xff\r\n",
    b"NOOP " + b"x" * 600 + b"\r\n",
    b"X" * 2000 + b"\r\n",
    b"GET / HTTP/1.1\r\n",
    b"STARTTLS\r\n",
    b"mail from:<lower@example.net>\r\n",
    b"XCLIENT NAME=client.example.net ADDR=IPV6:2001:db8::1 LOGIN=a\r\n",
    b"XCLIENT ADDR=300.1.1.1\r\n",
    b"XCLIENT\r\n",
]

# Lines of message content: none is the end-of-data line.
CONTENT_LINES = st.one_of(
    st.sampled_from(
        [
            b"Subject: t\r\n",
            b"\r\n",
            b"..\r\n",
            b".x\r\n",
            b"QUIT\r\n",
            b"RSET\r\n",
            b"x\n.\r\n",
            b"a\x00b\r\n",
            b"Received: from a\r\n",
            b"x" * 1200 + b"\r\n",
        ]
    ),
    # Random octets, dot-stuffed the way a client must (RFC 5321 §4.5.2) so that no line
    # of them is the lone ".".
    st.binary(max_size=40).map(lambda b: b"x" + b.replace(b"\r\n.", b"\r\n..") + b"\r\n"),
)

# (previous state, next state) -> what may cause the move. Staying put is always legal,
# and so is closing after a closing reply; anything else moving is listed here.
MOVES: dict[tuple[smtp.State, smtp.State], frozenset[str]] = {
    (S.CONNECTED, S.READY): frozenset({"EHLO", "HELO"}),
    (S.READY, S.MAIL): frozenset({"MAIL"}),
    (S.MAIL, S.RCPT): frozenset({"RCPT"}),
    (S.MAIL, S.READY): frozenset({"EHLO", "HELO", "RSET"}),
    (S.RCPT, S.DATA): frozenset({"DATA"}),
    (S.RCPT, S.BDAT): frozenset({"BDAT", "BDAT LAST"}),
    (S.RCPT, S.CHUNKING): frozenset({"BDAT"}),
    (S.RCPT, S.READY): frozenset({"EHLO", "HELO", "RSET", "BDAT LAST"}),
    (S.CHUNKING, S.BDAT): frozenset({"BDAT", "BDAT LAST"}),
    (S.CHUNKING, S.READY): frozenset({"EHLO", "HELO", "RSET", "BDAT LAST"}),
    (S.BDAT, S.CHUNKING): frozenset({"BDAT"}),
    (S.BDAT, S.READY): frozenset({"BDAT LAST"}),
    (S.DATA, S.READY): frozenset({"END"}),
    (S.READY, S.CONNECTED): frozenset({"XCLIENT"}),  # greeted again: a new session
}
# Moving forward takes a positive reply to the command that moves.
FORWARD = frozenset({(S.CONNECTED, S.READY), (S.READY, S.MAIL), (S.MAIL, S.RCPT), (S.RCPT, S.DATA)})
OPEN = b"(open a BDAT chunk)"
ADVANCE = b"(a command that moves the transaction on)"
ADVANCING: dict[smtp.State, list[bytes]] = {
    S.CONNECTED: [COMMANDS["EHLO"], COMMANDS["HELO"]],
    S.REFUSED: [COMMANDS["QUIT"], COMMANDS["NOOP"]],
    S.READY: [COMMANDS["MAIL"], b"MAIL FROM:<tempfail@example.com>\r\n"],
    S.MAIL: [COMMANDS["RCPT"], b"RCPT TO:<nobody@example.org>\r\n"],
    S.RCPT: [
        COMMANDS["RCPT"],
        COMMANDS["DATA"],
        COMMANDS["BDAT n"],
        COMMANDS["BDAT 0"],
        OPEN,
        OPEN,
    ],
    S.CHUNKING: [COMMANDS["BDAT n"], COMMANDS["BDAT n LAST"], OPEN],
}
AFTER_CLOSE = st.sampled_from(WALK) | st.binary(max_size=20)


def _policy(question: smtp.Question) -> smtp.Answer:
    if isinstance(question, smtp.Hello) and question.name == "refused.example":
        return smtp.Reply(550, "5.7.1", "no")
    if isinstance(question, smtp.MailFrom) and question.sender == "spam@example.com":
        return smtp.Reply(550, "5.7.1", "no")
    if isinstance(question, smtp.RcptTo) and question.recipient == "nobody@example.org":
        return smtp.Reply(550, "5.1.1", "no such user")
    if isinstance(question, smtp.RcptTo) and question.recipient == "later@example.org":
        return smtp.Reply(450, "4.2.1", "try later")
    if isinstance(question, smtp.MessageComplete) and (
        question.envelope.sender == "tempfail@example.com"
    ):
        return smtp.Reply(451, "4.3.0", "try later")
    return smtp.Accept()


def _cause(wire: bytes) -> str:
    words = wire.split(b"\r\n", 1)[0].upper().split(b" ")
    if words[0] == b"BDAT" and words[-1] == b"LAST":
        return "BDAT LAST"
    return words[0].decode("ascii", "replace")


class SessionMachine(RuleBasedStateMachine):
    """One session driven by random commands, content lines and BDAT pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.client = Client()
        self.chunk_left = 0
        self.chunk_last = False
        self.chunk_state = S.CONNECTED

    @initialize(
        refuse=st.sampled_from([False, False, False, True]),
        pipelining=st.booleans(),
        chunking=st.sampled_from([True, True, False]),
        errors=st.sampled_from([1000, 1000, 5]),
        xclient=st.booleans(),
    )
    def connect(
        self, refuse: bool, pipelining: bool, chunking: bool, errors: int, xclient: bool
    ) -> None:
        ext = smtp.Extensions(pipelining=pipelining, chunking=chunking, binarymime=chunking)
        policy = _refuse_connection if refuse else _policy
        limits = smtp.Limits(errors=errors)
        self.client = Client(policy=policy, extensions=ext, limits=limits, xclient=xclient)
        assert len(check_replies(self.client.greeting, plain=True)) == 1
        assert self.state is (S.REFUSED if refuse else S.CONNECTED)

    @property
    def state(self) -> smtp.State:
        return self.client.conn.state

    def _step(self, wire: bytes, cause: str, expected_replies: int) -> None:
        before = self.state
        events = len(self.client.events)
        out = self.client.send(wire)
        # The greeting again after an accepted XCLIENT has no enhanced code either.
        plain = cause in ("EHLO", "HELO") or (cause == "XCLIENT" and out.startswith(b"220 "))
        codes = check_replies(out, plain=plain)
        closed = [e for e in self.client.events[events:] if isinstance(e, smtp.ConnectionClosed)]
        # RFC 5321 §4.2 "Every command MUST generate exactly one reply". The one extra
        # reply allowed is a final 421 that closes the session after too many errors
        # (§3.8: 421 may be sent "asynchronously").
        extra = 1 if codes[-1:] == [421] and len(codes) == expected_replies + 1 else 0
        assert len(codes) == expected_replies + extra, (before, wire, out)
        if cause == "HELO" and codes[:1] == [250]:
            assert len(replies(out)[0]) == 1  # §3.2: never the EHLO form to HELO
        self._check_move(before, cause, codes, closed)

    def _check_move(
        self, before: smtp.State, cause: str, codes: list[int], closed: list[smtp.Event]
    ) -> None:
        after = self.state
        assert len(closed) <= 1
        if after is S.CLOSED:
            # Only a closing reply ends the session (RFC 5321 §3.8: after QUIT's 221, a
            # 421, or RFC 7504's 521).
            assert closed and codes and codes[-1] in (221, 421, 521), (before, cause, codes)
            return
        assert not closed
        assert self.client.conn.input_backlog == 0  # every step feeds whole units
        if after is before:
            return
        assert cause in MOVES.get((before, after), frozenset()), (before, after, cause)
        if (before, after) in FORWARD:
            assert codes and codes[-1] in (250, 354), (before, after, codes)
        if codes and codes[-1] >= 400 and cause not in ("END", "BDAT", "BDAT LAST"):
            # §4.1.4: a refused command leaves the state as it was.
            raise AssertionError(f"{cause} refused with {codes} moved {before} to {after}")

    # One rule that acts by state: with a rule per state, most draws would hit a rule whose
    # precondition fails and Hypothesis would discard the example.
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        if self.state is S.CLOSED:
            self.after_close(data.draw(AFTER_CLOSE, label="after close"))
        elif self.state is S.DATA:
            if data.draw(st.integers(0, 4), label="content lines left") == 0:
                self._step(b".\r\n", "END", expected_replies=1)
            else:
                self.content_line(data.draw(CONTENT_LINES, label="content line"))
        elif self.chunk_left:
            self.feed_chunk(data.draw(st.integers(1, 300), label="chunk octets"))
        else:
            wire = data.draw(st.sampled_from([*WALK, *[OPEN] * 6, *[ADVANCE] * 20]))
            if wire == ADVANCE:
                wire = data.draw(st.sampled_from(ADVANCING[self.state]), label="command")
            if wire == OPEN:
                self.open_chunk(
                    data.draw(st.integers(1, 300), label="chunk size"),
                    data.draw(st.integers(0, 299), label="octets sent with it"),
                    data.draw(st.booleans(), label="LAST"),
                )
            else:
                self._step(wire, _cause(wire), expected_replies=1)

    def content_line(self, line: bytes) -> None:
        self._step(line, "CONTENT", expected_replies=0)
        assert self.state is S.DATA

    def open_chunk(self, size: int, sent: int, last: bool) -> None:
        sent = min(sent, size - 1)
        wire = b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"") + b"y" * sent
        self._step(wire, "BDAT LAST" if last else "BDAT", expected_replies=0)
        self.chunk_left = size - sent
        self.chunk_last = last
        self.chunk_state = self.state

    def feed_chunk(self, count: int) -> None:
        count = min(count, self.chunk_left)
        self.chunk_left -= count
        done = self.chunk_left == 0
        cause = "BDAT LAST" if self.chunk_last else "BDAT"
        self._step(b"z" * count, cause, expected_replies=1 if done else 0)
        if not done:
            assert self.state is self.chunk_state  # inside the chunk nothing moves

    def after_close(self, data: bytes) -> None:
        events = len(self.client.events)
        assert self.client.send(data) == b""
        assert self.client.events[events:] == []
        assert self.state is S.CLOSED

    @invariant()
    def bdat_state_means_an_open_chunk(self) -> None:
        if self.state is S.BDAT:
            assert self.chunk_left > 0

    @invariant()
    def one_close_at_most(self) -> None:
        closes = [e for e in self.client.events if isinstance(e, smtp.ConnectionClosed)]
        assert len(closes) == (1 if self.state is S.CLOSED else 0)
        if closes:
            assert self.client.events[-1] == closes[0]


SessionMachine.TestCase.settings = settings(stateful_step_count=60)
TestSession = SessionMachine.TestCase
