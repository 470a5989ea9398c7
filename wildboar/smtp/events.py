"""Events the core hands its caller, and the answers the caller gives back.

Owns: the frozen value objects that cross the sans-IO boundary. ``Question`` events
(``ClientConnected``, ``Hello``, ``MailFrom``, ``RcptTo``, ``MessageComplete``) pause the
connection until the caller answers with ``Accept`` or a refusing ``Reply``; the other
events only inform.
Must not know: how the caller decides, or how bytes travel.
Security: every field is decoded and validated before an event is built; a consumer never
sees a raw command line.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

import msgspec

from .replies import Reply

Body = Literal["7BIT", "8BITMIME", "BINARYMIME"]
Ret = Literal["FULL", "HDRS"]
Notify = Literal["NEVER", "SUCCESS", "FAILURE", "DELAY"]


class Wait(enum.Enum):
    """What ``next_event`` returns when it has no event."""

    #: More bytes from the client are needed.
    NEED_DATA = "NEED_DATA"
    #: A question is waiting for the caller's answer, or the connection is closed.
    PAUSED = "PAUSED"


NEED_DATA: Final = Wait.NEED_DATA
PAUSED: Final = Wait.PAUSED


class MailParams(msgspec.Struct, frozen=True, kw_only=True):
    """MAIL FROM parameters (RFC 1870 SIZE, RFC 6152/3030 BODY, RFC 6531 SMTPUTF8,
    RFC 3461 RET and ENVID, the latter xtext-decoded)."""

    size: int | None = None
    body: Body | None = None
    smtputf8: bool = False
    ret: Ret | None = None
    envid: str | None = None


class Orcpt(msgspec.Struct, frozen=True):
    """RFC 3461 §4.2 ORCPT: address type (``rfc822``, ``utf-8``, ...) and decoded address."""

    addr_type: str
    address: str


class RcptParams(msgspec.Struct, frozen=True, kw_only=True):
    """RCPT TO parameters (RFC 3461 NOTIFY and ORCPT)."""

    notify: tuple[Notify, ...] | None = None
    orcpt: Orcpt | None = None


class Recipient(msgspec.Struct, frozen=True):
    address: str
    params: RcptParams = RcptParams()


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the session learned about one transaction, for the message record."""

    helo: str
    #: RFC 3848 / RFC 6531 §3.7.3 protocol type for the Received header's WITH clause.
    protocol: str
    sender: str
    mail: MailParams
    recipients: tuple[Recipient, ...]
    #: Octets of message content received (RFC 1870 §5 counting).
    size: int
    #: True when the content came in BDAT chunks, False for DATA.
    chunked: bool


class ClientConnected(msgspec.Struct, frozen=True):
    """Question: greet this client (``Accept``) or refuse it (a 554/521/421 ``Reply``)?"""


class Hello(msgspec.Struct, frozen=True):
    """Question: the client said EHLO (``extended``) or HELO with this name."""

    name: str
    extended: bool


class MailFrom(msgspec.Struct, frozen=True):
    """Question: accept this reverse-path (``""`` is the null sender ``<>``)?"""

    sender: str
    params: MailParams


class RcptTo(msgspec.Struct, frozen=True):
    """Question: accept this recipient?"""

    recipient: str
    params: RcptParams


class MessageData(msgspec.Struct, frozen=True):
    """Information: the next piece of message content, dot-unstuffed, CRLF line ends."""

    data: bytes


class MessageComplete(msgspec.Struct, frozen=True):
    """Question: the content is complete and valid; is it durably accepted?

    ``Accept`` sends ``250``; a 4xx ``Reply`` makes the client retry later.
    """

    envelope: Envelope


class TransactionAborted(msgspec.Struct, frozen=True):
    """Information: the open transaction ended without a message; drop its content.

    ``reply`` is the refusal the core sent when it refused the content itself (size,
    bare newline, NUL, long line, loop); None when the client reset or left. With a
    refusal, ``envelope`` is the transaction's envelope (``size``: the octets taken before
    the refusal), so the caller can record what it refused.
    """

    reason: Literal["reset", "hello", "quit", "closed", "refused"]
    reply: Reply | None = None
    envelope: Envelope | None = None


class StartTls(msgspec.Struct, frozen=True):
    """Information: ``220 Ready to start TLS`` is in ``data_to_send``; send it, then run the
    TLS handshake as the server and call ``tls_started`` (or close the connection if the
    handshake fails). What the client sent behind STARTTLS was dropped; the I/O layer
    feeds nothing more until the handshake is done."""


class ConnectionClosed(msgspec.Struct, frozen=True):
    """Information: the session is over; send what is pending, then close the socket."""

    reason: Literal["quit", "eof", "refused", "error", "local"]


class Accept(msgspec.Struct, frozen=True):
    """Answer: yes. ``text`` replaces the default reply text (e.g. the queue id)."""

    text: str | None = None


Question = ClientConnected | Hello | MailFrom | RcptTo | MessageComplete
Event = Question | MessageData | TransactionAborted | StartTls | ConnectionClosed
Answer = Accept | Reply
