"""The SMTP server state machine, as tables. Everything that moves the session from one
state to another lives in this file (RFC 5321 §3.3, §4.1.1, §4.1.4; RFC 3030 §2-3).

Rules of this file:
- ``SEQUENCE`` says which commands are out of order in which state, and the reply they get.
  A (state, verb) pair not in it is in order and goes to its handler.
- ``BDAT_SEQUENCE`` and ``bdat_refusal`` do the same for BDAT, whose refusals come after
  its chunk; ``LAST_IN_GROUP`` and ``GROUP_EXEMPT`` are the pipelining rules (RFC 2920),
  ``BEFORE_TLS`` what a listener that requires TLS takes first, ``CONTENT``, ``IDLE`` and
  ``MOVES_WITHOUT_INPUT`` the states the I/O layer and the parser treat apart.
- ``TRANSITIONS`` lists every state change. ``Machine.fire`` refuses a pair not in it: that
  would be a bug in the core, never something a client can cause.

Must not know: bytes, parsing, the caller's policy.
Security: a command that is out of sequence is answered and changes nothing.
"""

from __future__ import annotations

import enum

from . import replies as R
from .errors import LocalProtocolError
from .replies import Reply


class State(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; skip Enum.__hash__ in hot lookups

    GREETING = "greeting"  # waiting for the caller to answer ClientConnected
    REFUSED = "refused"  # greeted with 554: everything but QUIT gets 503 (RFC 5321 §3.1)
    CONNECTED = "connected"  # greeted; no HELO/EHLO accepted yet
    READY = "ready"  # HELO/EHLO accepted; no transaction
    MAIL = "mail"  # MAIL accepted; no recipient accepted yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading DATA content up to CRLF.CRLF
    CHUNKING = "chunking"  # between BDAT chunks of one transaction
    BDAT = "bdat"  # reading a BDAT chunk that belongs to the message
    TLS = "tls"  # 220 sent to STARTTLS: the I/O layer runs the handshake (RFC 3207 §4)
    CLOSED = "closed"


class Verb(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; skip Enum.__hash__ in hot lookups

    EHLO = "EHLO"
    HELO = "HELO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BDAT = "BDAT"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    HELP = "HELP"
    STARTTLS = "STARTTLS"
    XCLIENT = "XCLIENT"


class Trigger(enum.Enum):
    __hash__ = object.__hash__  # members are singletons; skip Enum.__hash__ in hot lookups

    GREET = "greet"
    REFUSE = "refuse"
    HELLO = "hello"  # HELO/EHLO accepted: a fresh start (RFC 5321 §4.1.1.1)
    RESET = "reset"  # RSET (RFC 5321 §4.1.1.5)
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # 354 sent
    BDAT = "bdat"  # a chunk for the message begins
    CHUNK_DONE = "chunk done"  # a non-LAST chunk was read
    CHUNK_DROPPED = "chunk dropped"  # a refused chunk was read and dropped (RFC 3030 §2)
    LAST_DROPPED = "last dropped"  # a refused LAST chunk was read and dropped
    MESSAGE_DONE = "message done"  # content complete: answered, refused, or given up
    STARTTLS = "starttls"  # 220 sent to STARTTLS
    TLS_STARTED = "tls started"  # the handshake succeeded: a new session (RFC 3207 §4.2)
    XCLIENT = "xclient"  # XCLIENT accepted: greeted again, a new session (Postfix XCLIENT)
    CLOSE = "close"


_TRANSACTION = (State.MAIL, State.RCPT, State.CHUNKING)
_SESSION = (State.CONNECTED, State.READY, *_TRANSACTION)

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.GREETING, Trigger.GREET): State.CONNECTED,
    (State.GREETING, Trigger.REFUSE): State.REFUSED,
    **{(s, Trigger.HELLO): State.READY for s in _SESSION},
    **{(s, Trigger.RESET): s for s in (State.CONNECTED, State.READY)},
    **{(s, Trigger.RESET): State.READY for s in _TRANSACTION},
    (State.READY, Trigger.MAIL): State.MAIL,
    (State.MAIL, Trigger.RCPT): State.RCPT,
    (State.RCPT, Trigger.RCPT): State.RCPT,
    (State.RCPT, Trigger.DATA): State.DATA,
    (State.RCPT, Trigger.BDAT): State.BDAT,
    (State.CHUNKING, Trigger.BDAT): State.BDAT,
    (State.BDAT, Trigger.CHUNK_DONE): State.CHUNKING,
    (State.BDAT, Trigger.MESSAGE_DONE): State.READY,
    (State.DATA, Trigger.MESSAGE_DONE): State.READY,
    (State.RCPT, Trigger.CHUNK_DROPPED): State.CHUNKING,
    (State.CHUNKING, Trigger.CHUNK_DROPPED): State.CHUNKING,
    (State.RCPT, Trigger.LAST_DROPPED): State.READY,
    (State.CHUNKING, Trigger.LAST_DROPPED): State.READY,
    (State.CONNECTED, Trigger.STARTTLS): State.TLS,
    (State.READY, Trigger.STARTTLS): State.TLS,
    (State.TLS, Trigger.TLS_STARTED): State.CONNECTED,
    (State.CONNECTED, Trigger.XCLIENT): State.CONNECTED,
    (State.READY, Trigger.XCLIENT): State.CONNECTED,
    **{(s, Trigger.CLOSE): State.CLOSED for s in State},
}


def _table(
    replies: dict[Verb, Reply], states: tuple[State, ...]
) -> dict[tuple[State, Verb], Reply]:
    return {(state, verb): reply for state in states for verb, reply in replies.items()}


# Out-of-sequence commands (RFC 5321 §4.1.4: "a 503 failure reply MUST be returned and the
# SMTP server MUST stay in the same state"). BDAT is absent on purpose: its chunk must be
# read and dropped before any reply (RFC 3030 §2), so its sequence errors live in
# ``BDAT_SEQUENCE`` and are sent after the chunk.
SEQUENCE: dict[tuple[State, Verb], Reply] = {
    **_table(
        {v: R.REFUSED_SEQUENCE for v in Verb if v not in (Verb.QUIT, Verb.BDAT)},
        (State.REFUSED,),
    ),
    (State.CONNECTED, Verb.MAIL): R.NEED_HELO,
    (State.CONNECTED, Verb.RCPT): R.NEED_MAIL,
    (State.CONNECTED, Verb.DATA): R.NEED_MAIL,
    (State.READY, Verb.RCPT): R.NEED_MAIL,
    (State.READY, Verb.DATA): R.NEED_MAIL,
    (State.MAIL, Verb.MAIL): R.NESTED_MAIL,
    (State.MAIL, Verb.DATA): R.NEED_RCPT,
    (State.RCPT, Verb.MAIL): R.NESTED_MAIL,
    (State.CHUNKING, Verb.MAIL): R.NESTED_MAIL,
    (State.CHUNKING, Verb.RCPT): R.RCPT_AFTER_BDAT,
    (State.CHUNKING, Verb.DATA): R.DATA_AFTER_BDAT,
    **_table({Verb.STARTTLS: R.TLS_IN_TRANSACTION}, _TRANSACTION),
    # XCLIENT: "at any time, except in the middle of a mail delivery transaction"
    # (Postfix XCLIENT_README; Postfix answers 503 5.5.1 there).
    **_table({Verb.XCLIENT: R.XCLIENT_IN_TRANSACTION}, _TRANSACTION),
}

# BDAT outside a transaction with recipients: the chunk is dropped, then this reply, and
# the state stays as it was.
BDAT_SEQUENCE: dict[State, Reply] = {
    State.REFUSED: R.REFUSED_SEQUENCE,
    State.CONNECTED: R.NEED_MAIL,
    State.READY: R.NEED_MAIL,
    State.MAIL: R.NEED_RCPT,
}


def bdat_refusal(state: State, offered: bool) -> Reply | None:
    """Why a BDAT in ``state`` is refused, if it is (its chunk is read and dropped first,
    RFC 3030 §2), in this order: a refused session's 503, CHUNKING not offered (after
    HELO, or switched off), then the transaction's sequence (``BDAT_SEQUENCE``)."""
    if state is State.REFUSED:
        return BDAT_SEQUENCE[state]
    if not offered:
        return R.BDAT_NOT_OFFERED
    return BDAT_SEQUENCE.get(state)


# RFC 2920 §3.1: EHLO, DATA, VRFY, EXPN, TURN, QUIT and NOOP can only be the last command
# of a pipelined group, so input already waiting behind them is a synchronization error
# (policy of Postfix 3.9, smtpd_forbid_unauth_pipelining). HELO starts a session like EHLO
# and is treated alike, as Postfix does. QUIT is left out: the session ends either way.
# XCLIENT too: an accepted one greets again, and a client that speaks before a greeting is
# out of sync (the same check as at connect).
LAST_IN_GROUP = frozenset({Verb.EHLO, Verb.HELO, Verb.DATA, Verb.VRFY, Verb.NOOP, Verb.XCLIENT})
# STARTTLS must end a group too (RFC 3207 §4.2), but what a client pipelines behind it is
# not an error to answer in plaintext: it is dropped unread, so that no plaintext command
# can be answered inside TLS (CVE-2011-0411).

# Commands that input already waiting behind is never a synchronization error for: QUIT
# (the session ends either way), BDAT (what follows it is its chunk, RFC 3030 §2), and
# STARTTLS (what follows it is dropped unread, above).
GROUP_EXEMPT = frozenset({Verb.QUIT, Verb.BDAT, Verb.STARTTLS})

# What a listener that requires TLS answers before it (RFC 3207 §4: 530 5.7.0 to the
# rest). BDAT too: no transaction can be open before TLS, so its chunk is read and dropped
# with the reply of BDAT_SEQUENCE.
BEFORE_TLS = frozenset({Verb.EHLO, Verb.NOOP, Verb.STARTTLS, Verb.QUIT, Verb.RSET, Verb.BDAT})

# States in which the client is inside a mail transaction.
IN_TRANSACTION = frozenset({*_TRANSACTION, State.DATA, State.BDAT})
# States in which the client sends message content, not commands (the I/O layer applies
# its data-block timeout there).
CONTENT = frozenset({State.DATA, State.BDAT})
# States without a transaction: a session that is stopping can be closed in one of them.
IDLE = frozenset({State.GREETING, State.REFUSED, State.CONNECTED, State.READY})
# States that can move on with no input at all: an empty BDAT chunk (``BDAT 0 LAST``).
# Everywhere else (but for a chunk being dropped) an empty buffer means waiting for the
# client.
MOVES_WITHOUT_INPUT = frozenset({State.BDAT})


class Machine:
    """The current state, moved only through ``TRANSITIONS``."""

    def __init__(self) -> None:
        self.state = State.GREETING

    def fire(self, trigger: Trigger) -> State:
        try:
            self.state = TRANSITIONS[self.state, trigger]
        except KeyError:
            raise LocalProtocolError(f"no transition for {trigger} in {self.state}") from None
        return self.state
