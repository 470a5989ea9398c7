"""The accepted message on the wire: one msgspec Struct tree, JSON or msgpack.

Owns: the schema every handoff and consumer shares (DESIGN.md "The message on the wire"),
a superset of the original Wildboar JSON message: ``server``, ``connection``,
``transaction`` and ``email`` objects with ``urn:uuid:`` ids and creation times, plus the
ESMTP parameters, the HELO name and the Received header that was added. ``version`` names
the schema revision; consumers must ignore fields they do not know.
Must not know: sockets, brokers, files.
Security: decoding validates every field against the schema (types, URN pattern, enums),
so a consumer never acts on a malformed record.
"""

from __future__ import annotations

import datetime
import os
from typing import Annotated, Any, Literal

import msgspec

from .smtp.events import Envelope
from .smtp.events import Recipient as EnvelopeRecipient

SCHEMA_VERSION = 1
CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_MSGPACK = "application/msgpack"

URN = Annotated[
    str,
    msgspec.Meta(
        # "$(?!\n)": a pattern is searched with Python's re, whose "$" also matches
        # before a final newline; the lookahead keeps the same meaning in JSON Schema.
        pattern=r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$(?!\n)",
        description="A random (version 4) UUID as a URN (RFC 9562 §4, RFC 8141).",
    ),
]
Time = Annotated[datetime.datetime, msgspec.Meta(tz=True)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


_RANDOM_BATCH = 16 * 256
_random = bytearray()
os.register_at_fork(after_in_child=_random.clear)  # a child never reuses its parent's ids


def new_urn() -> str:
    """A fresh ``urn:uuid:`` identifier: a version 4 UUID (RFC 9562 §5.4) from the OS's
    CSPRNG, drawn 256 at a time (a worker makes three per message; one getrandom() call
    each would show), formatted without a ``uuid.UUID`` object (which costs more than the
    rest)."""
    if not _random:
        _random.extend(os.urandom(_RANDOM_BATCH))
    raw = _random[-16:]
    del _random[-16:]
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 9562 variant
    h = raw.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Server(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: URN
    creation_time: Time
    hostname: str


class Remote(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    family: Literal["ipv4", "ipv6", "unix"]
    address: str
    port: Port | None = None
    #: The client's host name, when a trusted proxy's XCLIENT NAME gave one.
    name: str | None = None


class Local(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    address: str
    port: Port | None = None


class Connection(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: URN
    creation_time: Time
    remote: Remote
    local: Local
    #: True when the session ran over TLS.
    tls: bool = False
    #: The TLS protocol version and cipher (OpenSSL's names), when it did.
    tls_version: str | None = None
    tls_cipher: str | None = None
    #: The SASL login the client authenticated as, when a trusted proxy's XCLIENT LOGIN
    #: gave one (the proxy authenticated it).
    login: str | None = None


class Transaction(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: URN
    creation_time: Time
    #: The name the client gave in HELO/EHLO.
    helo_name: str
    #: The RFC 3848 / RFC 6531 protocol type ("ESMTP", "UTF8SMTPS", ...).
    protocol: str


class Orcpt(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    type: str
    address: str


class Recipient(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    address: str
    notify: list[Literal["NEVER", "SUCCESS", "FAILURE", "DELAY"]] | None = None
    orcpt: Orcpt | None = None


class Email(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    id: URN
    creation_time: Time
    sender: str = msgspec.field(name="from")
    to: list[str]
    #: The raw RFC 5322 message with the Received header prepended (base64 in JSON).
    data: bytes
    #: Octets in ``data``.
    size: int
    #: The Received header that was prepended, without its final CRLF.
    received: str
    recipients: list[Recipient]
    declared_size: int | None = None
    body: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None = None
    smtputf8: bool = False
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None


class Rejection(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Why the message was refused: by the server after its content (the reply the client
    got), or by a consumer stage behind it (``stage``: its name; the code a bounce for it
    would carry)."""

    code: Annotated[int, msgspec.Meta(ge=400, le=599)]
    enhanced: str
    text: str
    stage: str | None = None


class Verdict(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What one consumer stage found (docs/consumers.md): ``result`` is the stage's own
    word (``pass``, ``tag``, ``reject``; SPF's ``pass``, ``fail``, ``softfail``, ...),
    ``reason`` a line for people, ``details`` anything else as text."""

    stage: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    result: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    reason: str | None = None
    time: Time
    details: dict[str, str] = msgspec.field(default_factory=dict)


class RecipientStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A recipient and the reply the mail store last gave for it."""

    address: str
    code: Annotated[int, msgspec.Meta(ge=200, le=599)]
    enhanced: str
    #: The reply's text, its lines joined by spaces.
    text: str


class Retry(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Where a delivery that is retried stands (records in the LMTP retry spool only)."""

    #: Attempts made so far, the first one (during the SMTP session) included.
    attempts: Annotated[int, msgspec.Meta(ge=1)]
    last_attempt: Time
    next_attempt: Time
    #: The reply of the last attempt for each recipient still owed a delivery.
    recipients: list[RecipientStatus]


class Message(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    version: int = SCHEMA_VERSION
    server: Server
    connection: Connection
    transaction: Transaction
    email: Email
    #: Set only on records published to the rejected exchange.
    rejection: Rejection | None = None
    #: Set only on records waiting for an LMTP retry.
    retry: Retry | None = None
    #: What each consumer stage the message passed through found, in order.
    verdicts: list[Verdict] = msgspec.field(default_factory=list)


def build_email(
    envelope: Envelope,
    *,
    id: str,
    creation_time: datetime.datetime,
    received: bytes,
    content: bytes,
) -> Email:
    """The ``email`` object of an accepted transaction; ``data`` = Received + content."""
    data = received + content
    mail = envelope.mail
    return Email(
        id=id,
        creation_time=creation_time,
        sender=envelope.sender,
        to=[r.address for r in envelope.recipients],
        data=data,
        size=len(data),
        received=received.decode("utf-8").removesuffix("\r\n"),
        recipients=[_recipient(r) for r in envelope.recipients],
        declared_size=mail.size,
        body=mail.body,
        smtputf8=mail.smtputf8,
        ret=mail.ret,
        envid=mail.envid,
    )


def _recipient(recipient: EnvelopeRecipient) -> Recipient:
    params = recipient.params
    orcpt = params.orcpt
    return Recipient(
        address=recipient.address,
        notify=list(params.notify) if params.notify is not None else None,
        orcpt=Orcpt(type=orcpt.addr_type, address=orcpt.address) if orcpt else None,
    )


_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(Message)
_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message, content_type: str = CONTENT_TYPE_JSON) -> bytes:
    if content_type == CONTENT_TYPE_MSGPACK:
        return _msgpack_encoder.encode(message)
    if content_type == CONTENT_TYPE_JSON:
        return _json_encoder.encode(message)
    raise ValueError(f"unknown content type {content_type!r}")


def decode(data: bytes, content_type: str = CONTENT_TYPE_JSON) -> Message:
    """Decode and validate; raises ``msgspec.ValidationError`` naming the bad field."""
    if content_type == CONTENT_TYPE_MSGPACK:
        return _msgpack_decoder.decode(data)
    if content_type == CONTENT_TYPE_JSON:
        return _json_decoder.decode(data)
    raise ValueError(f"unknown content type {content_type!r}")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the JSON form (published as ``docs/message.schema.json``)."""
    schema: dict[str, Any] = msgspec.json.schema(Message)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"wildboar accepted message, version {SCHEMA_VERSION}"
    return schema
