"""Events the core hands its caller, and the answers the caller gives back.

Owns: the frozen value objects that cross the sans-IO boundary. ``Question`` events
(``ClientConnected``, ``Hello``, ``MailFrom``, ``RcptTo``, ``MessageComplete``,
``Xclient``) pause the connection until the caller answers with ``Accept`` or a refusing
``Reply``; the other events only inform.
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


class Unavailable(enum.Enum):
    """An XCLIENT attribute the proxy could not learn (Postfix XCLIENT_README)."""

    #: ``[UNAVAILABLE]``: unknown, e.g. a host name lookup that failed for good.
    PERMANENT = "[UNAVAILABLE]"
    #: ``[TEMPUNAVAIL]``: unknown for now, e.g. a lookup that failed for a while.
    TEMPORARY = "[TEMPUNAVAIL]"


class Xclient(msgspec.Struct, frozen=True, kw_only=True):
    """Question: a proxy the caller trusts (``ServerConnection.xclient``) says who its
    client is (Postfix's XCLIENT). ``Accept`` greets again with ``220`` and the session
    starts over (no HELO/EHLO, as at connect); a ``Reply`` refuses it (``421`` closes).

    Each field is None when the command did not name that attribute (what an earlier
    XCLIENT said of it stands), an ``Unavailable`` when the proxy does not know it, else
    the value, decoded (xtext) and checked: ``addr`` an IPv4 or IPv6 address in its
    canonical form (no ``IPV6:`` prefix; an IPv4-mapped IPv6 address as IPv4), ``port``
    0-65535, ``name`` a domain name, ``helo`` a domain or an address literal as EHLO takes
    it, ``proto`` ``SMTP`` or ``ESMTP``, ``login`` the SASL login name (UTF-8, no control
    characters)."""

    addr: str | Unavailable | None = None
    port: int | Unavailable | None = None
    name: str | Unavailable | None = None
    helo: str | Unavailable | None = None
    proto: Literal["SMTP", "ESMTP"] | Unavailable | None = None
    login: str | Unavailable | None = None


class ConnectionClosed(msgspec.Struct, frozen=True):
    """Information: the session is over; send what is pending, then close the socket."""

    reason: Literal["quit", "eof", "refused", "error", "local"]


class Accept(msgspec.Struct, frozen=True):
    """Answer: yes. ``text`` replaces the default reply text (e.g. the queue id)."""

    text: str | None = None


Question = ClientConnected | Hello | MailFrom | RcptTo | MessageComplete | Xclient
Event = Question | MessageData | TransactionAborted | StartTls | ConnectionClosed
Answer = Accept | Reply
