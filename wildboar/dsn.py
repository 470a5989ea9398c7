"""Delivery status notifications: the bounce for recipients an accepted message never reached.

Owns: deciding whether a DSN is due for a recipient (RFC 3461 §4.1 NOTIFY, §5.2 / RFC 5321
§6.1 never for a ``<>`` sender) and writing it as one RFC 5322 message from ``<>`` to the
envelope sender: ``multipart/report; report-type=delivery-status`` (RFC 6522) with a
human-readable part, the ``message/delivery-status`` fields of RFC 3464 §2, and the
original (RFC 3461 §4.3 RET: ``message/rfc822`` or ``text/rfc822-headers``), marked
``Auto-Submitted: auto-replied`` (RFC 3834 §5). Addresses that are not ASCII switch the
report to RFC 6533 (``message/global-delivery-status``, ``utf-8`` address types); an
original with UTF-8 header fields is returned as ``message/global`` (RFC 6532 §3.7) or
``message/global-headers`` (RFC 6533 §6.4) when it came with SMTPUTF8.
Decisions where the RFCs leave a choice:
- no NOTIFY means FAILURE only (RFC 3461 §4.1 allows FAILURE or FAILURE,DELAY): a sender
  who asked for nothing hears about a failure, never about a delay;
- no RET means FULL (§4.3 leaves it to the MTA), except that the headers alone are returned
  for an original over ``FULL_LIMIT`` octets, a BODY=BINARYMIME one, one that is not valid
  ``8bit`` (RFC 2045 §2.8: lines up to 998 octets, no NUL, CR and LF only as CRLF), and in a
  report of delays only (RFC 3461 §4.3 RET is about failed DSNs; a delay notice that carries
  the whole message again helps nobody);
- ENVID and ORCPT are reported decoded from xtext (the record holds them decoded; RFC 3461
  §6.3), escaping whatever is not printable text;
- a recipient refused for a while and then given up keeps its last reply's status
  (``Action: failed`` with ``Status: 4.x.x``), as Postfix does, rather than 5.4.7;
- ``Remote-MTA`` is ``dns; HOST`` for a host name, an address or an ``lmtp:HOST:PORT``
  target, and ``x-unix; PATH`` for a unix socket (``lmtp:unix:/run/dovecot/lmtp``).
The output is deterministic (Message-ID and boundary are digests of the inputs), so the
same report for the same failures is the same bytes.
Must not know: sockets, spools, brokers, clocks (``now`` and the dates are given), config.
Security: every header field is built here from checked parts: an envelope address, a
host name or a date with a control character (CR, LF, NUL, ...) raises ``ValueError``
instead of reaching the output, ENVID and ORCPT text is escaped, reply text is printable
US-ASCII by ``Reply``'s own check, and the boundary is checked against the content. The
original is copied as octets, never parsed and re-serialised.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from .message import Message, Orcpt, Recipient
from .smtp import Reply

#: Originals larger than this are returned as their header section only (Postfix's
#: ``bounce_size_limit`` is 50 000; most MTAs accept a report this size without question).
FULL_LIMIT = 128 * 1024
SUBJECT_FAILED = "Undelivered Mail Returned to Sender"
SUBJECT_DELAYED = "Delayed Mail (still being retried)"
CRLF = "\r\n"

Action = Literal["failed", "delayed"]
#: What of the original a report carries.
Returned = Literal["message", "headers", "nothing"]


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """One recipient the message did not reach, and the last word about it."""

    #: The envelope (RCPT TO) address.
    recipient: str
    #: The last reply for it, e.g. ``552 5.2.2 <carol@example.org> Quota exceeded``.
    reply: Reply
    action: Action = "failed"
    #: Who gave the reply: a host name, or an LMTP target (``lmtp:unix:/PATH``,
    #: ``lmtp:HOST:PORT``).
    remote_mta: str | None = None
    last_attempt: datetime.datetime
    #: For ``delayed``: when the retries stop.
    will_retry_until: datetime.datetime | None = None


# --- whether a DSN is due -------------------------------------------------------------


def wanted(message: Message, failure: Failure) -> bool:
    """Whether ``failure`` calls for a DSN (RFC 3461 §4.1, §5.2; no NOTIFY: FAILURE only).

    Raises ``ValueError`` when the recipient is not one of the message's."""
    if message.email.sender == "":
        return False  # RFC 3461 §5.2, RFC 5321 §6.1: never a DSN about a DSN
    notify = _recipient(message, failure.recipient).notify
    if notify is None:
        return failure.action == "failed"
    return ("FAILURE" if failure.action == "failed" else "DELAY") in notify


def _recipient(message: Message, address: str) -> Recipient:
    for recipient in message.email.recipients:
        if recipient.address == address:
            return recipient
    raise ValueError(f"{address!r} is not a recipient of {message.email.id}")


# --- the report -----------------------------------------------------------------------


class _Part(msgspec.Struct, frozen=True):
    headers: list[str]
    body: bytes


def build(
    message: Message,
    failures: Sequence[Failure],
    *,
    reporting_mta: str,
    arrival: datetime.datetime,
    now: datetime.datetime,
    message_id_domain: str,
) -> bytes | None:
    """The DSN for the ``failures`` that are ``wanted``, as a whole RFC 5322 message with
    CRLF line ends (to be sent from ``<>`` to ``message.email.sender``), or None if none
    is wanted. Raises ``ValueError`` for a name, address or date that cannot go in a
    header field (a control character, a naive datetime)."""
    due = [f for f in failures if wanted(message, f)]
    if not due:
        return None
    _check_host(reporting_mta)
    _check_host(message_id_domain)
    returned, original = _original(message, full=_return_full(message, due))
    parts = [
        _human(due, reporting_mta, returned),
        _status(message, due, reporting_mta, arrival, _needs_utf8(message, due)),
    ]
    if original is not None:
        parts.append(original)
    digest = _digest(message, due, now)
    boundary = _boundary(digest, parts)
    head = _top_headers(message, due, reporting_mta, now, f"<{digest[:32]}@{message_id_domain}>")
    return _assemble(head, parts, boundary)


def _top_headers(
    message: Message, due: Sequence[Failure], reporting_mta: str, now: datetime.datetime, msgid: str
) -> list[str]:
    failed = any(f.action == "failed" for f in due)
    return [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{_address(message.email.sender)}>",
        f"Subject: {SUBJECT_FAILED if failed else SUBJECT_DELAYED}",
        f"Date: {_date(now)}",
        f"Message-ID: {msgid}",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5
        "MIME-Version: 1.0",
    ]


def _assemble(head: list[str], parts: Sequence[_Part], boundary: str) -> bytes:
    eight_bit = not all(p.body.isascii() for p in parts)
    head = [
        *head,
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        # RFC 2045 §6.4: a multipart holding 8bit parts is itself 8bit
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
    ]
    out = [_lines(head), b"\r\nThis is a MIME-encapsulated message.\r\n"]
    for part in parts:
        out += [b"\r\n--", boundary.encode(), b"\r\n", _lines(part.headers), b"\r\n", part.body]
    out += [b"\r\n--", boundary.encode(), b"--\r\n"]
    return b"".join(out)


def _lines(lines: Iterable[str]) -> bytes:
    return "".join(line + CRLF for line in lines).encode("utf-8")


def _digest(message: Message, due: Sequence[Failure], now: datetime.datetime) -> str:
    seed = [message.email.id, now.isoformat(), *(f"{f.action} {f.recipient}" for f in due)]
    return hashlib.sha256("\n".join(seed).encode("utf-8")).hexdigest()


def _boundary(digest: str, parts: Sequence[_Part]) -> str:
    """A boundary that occurs in no part (RFC 2046 §5.1.1)."""
    for n in range(100):
        boundary = f"=_wildboar_{digest[:40]}_{n}"
        if not any(boundary.encode() in p.body for p in parts):
            return boundary
    raise AssertionError("no boundary found")  # pragma: no cover - 100 digests in the content


# --- part 1: for people -----------------------------------------------------------------


def _human(due: Sequence[Failure], reporting_mta: str, returned: Returned) -> _Part:
    failed = [f for f in due if f.action == "failed"]
    delayed = [f for f in due if f.action == "delayed"]
    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if failed:
        lines += ["Your message could not be delivered to these recipients:", ""]
        lines += [line for f in failed for line in _explain(f)]
    if delayed:
        lines += ["Your message has not been delivered yet to these recipients.", ""]
        lines += ["Delivery is still being tried; you need not send it again.", ""]
        lines += [line for f in delayed for line in _explain(f)]
    lines.append(_ATTACHED[returned])
    return _part("text/plain", _lines(lines))


_ATTACHED: dict[Returned, str] = {
    "message": "Your message is attached.",
    "headers": "The header section of your message is attached.",
    "nothing": "Your message is not attached: not even its header section could be returned.",
}


def _explain(failure: Failure) -> list[str]:
    lines = [f"<{_address(failure.recipient)}>:"]
    lines += ["    " + line for line in failure.reply.to_bytes().decode("ascii").splitlines()]
    if failure.remote_mta:
        lines.append(f"    (reported by {_mta(failure.remote_mta)[1]})")
    if failure.will_retry_until is not None:
        lines.append(f"    (will be retried until {_date(failure.will_retry_until)})")
    return [*lines, ""]


def _part(kind: str, body: bytes) -> _Part:
    """A MIME part: 7bit if ``body`` is ASCII, else 8bit (RFC 2045 §6.2)."""
    ascii_only = body.isascii()
    charset = "; charset=" + ("us-ascii" if ascii_only else "utf-8") if kind == "text/plain" else ""
    encoding = "7bit" if ascii_only else "8bit"
    return _Part([f"Content-Type: {kind}{charset}", f"Content-Transfer-Encoding: {encoding}"], body)


# --- part 2: for programs (RFC 3464 §2) -------------------------------------------------


def _status(
    message: Message,
    due: Sequence[Failure],
    reporting_mta: str,
    arrival: datetime.datetime,
    utf8: bool,
) -> _Part:
    blocks = [_per_message(message, reporting_mta, arrival)]
    blocks += [_per_recipient(message, f) for f in due]
    # RFC 6533 §6.1: the UTF-8 form, for reports naming a non-ASCII address
    kind = "message/global-delivery-status" if utf8 else "message/delivery-status"
    return _part(kind, b"\r\n".join(_lines(block) for block in blocks))


def _per_message(message: Message, reporting_mta: str, arrival: datetime.datetime) -> list[str]:
    lines = [f"Reporting-MTA: dns; {reporting_mta}"]  # RFC 3464 §2.2.2
    if message.email.envid is not None:  # RFC 3461 §6.3 (a), RFC 3464 §2.2.1
        lines.append(f"Original-Envelope-Id: {_escaped(message.email.envid)}")
    lines.append(f"Arrival-Date: {_date(arrival)}")  # §2.2.5
    return lines


def _per_recipient(message: Message, failure: Failure) -> list[str]:
    reply = failure.reply
    lines = []
    orcpt = _recipient(message, failure.recipient).orcpt
    if orcpt is not None:  # RFC 3461 §6.3 (c), RFC 3464 §2.3.1
        lines.append(f"Original-Recipient: {_original_recipient(orcpt)}")
    lines += [
        f"Final-Recipient: {_typed_address(failure.recipient)}",  # §2.3.2
        f"Action: {failure.action}",  # §2.3.3
        f"Status: {reply.status or f'{reply.code // 100}.0.0'}",  # §2.3.4, RFC 3463
    ]
    if failure.remote_mta:
        kind, name = _mta(failure.remote_mta)
        lines.append(f"Remote-MTA: {kind}; {name}")  # §2.3.5
    lines += _fold("Diagnostic-Code", _diagnostic(reply))  # §2.3.6
    lines.append(f"Last-Attempt-Date: {_date(failure.last_attempt)}")  # §2.3.7
    if failure.action == "delayed" and failure.will_retry_until is not None:
        lines.append(f"Will-Retry-Until: {_date(failure.will_retry_until)}")  # §2.3.9
    return lines


def _diagnostic(reply: Reply) -> str:
    prefix = f"{reply.code} {reply.status} " if reply.status else f"{reply.code} "
    return "smtp; " + prefix + " ".join(line.strip() for line in reply.lines)


def _fold(name: str, value: str, width: int = 78) -> list[str]:
    """``name: value`` folded at white space into lines of about ``width`` (RFC 5322
    §2.2.3); runs of white space become one space, so no line is white space only."""
    words = value.split()
    lines = [f"{name}: {words[0]}"]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > width:
            lines.append(" " + word)
        else:
            lines[-1] += " " + word
    return lines


# --- addresses ------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 6533 §3: QCHAR is printable ASCII but "+", "=" and "\"; the rest is \x{HEX}.
_UTF8_ADDR_UNSAFE = re.compile(r"[\x00-\x20+=\\\x7f]")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# RFC 5321 §4.1.2 Domain (LDH labels) or address-literal, at most 255 octets.
_DOMAIN = re.compile(rf"(?=[^\n]{{1,255}}\Z){_LABEL}(?:\.{_LABEL})*|\[[0-9A-Za-z.:]+\]")
# A bare IPv4 or IPv6 address, as an LMTP target may name its host.
_BARE_IP = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[0-9.]+")
_LMTP_INET = re.compile(r"(?:lmtp:)?(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):[0-9]+")


def _address(address: str) -> str:
    """An envelope address as it may stand in a header field: no control characters."""
    if _CONTROL.search(address):
        raise ValueError(f"control character in address {address!r}")
    return address


def _typed_address(address: str) -> str:
    """``rfc822; addr``, or RFC 6533 ``utf-8; addr`` for a non-ASCII one."""
    if address.isascii():
        return f"rfc822; {_address(address)}"
    return f"utf-8; {_utf8_addr(_address(address))}"


def _original_recipient(orcpt: Orcpt) -> str:
    kind = orcpt.type.lower()
    if kind == "utf-8" or (kind == "rfc822" and not orcpt.address.isascii()):
        return f"utf-8;{_utf8_addr(orcpt.address)}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", orcpt.type):
        raise ValueError(f"bad ORCPT address type {orcpt.type!r}")
    return f"{orcpt.type};{_escaped(orcpt.address)}"


def _utf8_addr(address: str) -> str:
    """RFC 6533 §3 ``utf-8-addr-unitext``: UTF-8 kept, specials as ``\\x{HEX}``."""
    return _UTF8_ADDR_UNSAFE.sub(lambda m: f"\\x{{{ord(m.group()):02X}}}", address)


def _escaped(text: str) -> str:
    """Printable ASCII as it is; any other octet as RFC 3461 §4 xtext ``+HH``."""
    if _PRINTABLE.fullmatch(text):
        return text
    return "".join(
        c if " " <= c <= "~" and c != "+" else "".join(f"+{b:02X}" for b in c.encode("utf-8"))
        for c in text
    )


def _needs_utf8(message: Message, due: Sequence[Failure]) -> bool:
    orcpts = [_recipient(message, f.recipient).orcpt for f in due]
    addresses = [message.email.sender, *(f.recipient for f in due)]
    addresses += [o.address for o in orcpts if o is not None]
    return not all(a.isascii() for a in addresses)


def _check_host(name: str, *, bare_ip: bool = False) -> None:
    if not (_DOMAIN.fullmatch(name) or (bare_ip and _BARE_IP.fullmatch(name))):
        raise ValueError(f"{name!r} is not a host name")


def _mta(name: str) -> tuple[str, str]:
    """The RFC 3464 §2.1.2 (mta-name-type, mta-name) of a host or LMTP target."""
    if name.startswith(("lmtp:unix:", "unix:", "/")):
        path = name.removeprefix("lmtp:").removeprefix("unix:")
        if not _PRINTABLE.fullmatch(path):
            raise ValueError(f"bad socket path {path!r}")
        return "x-unix", path
    inet = _LMTP_INET.fullmatch(name)
    host = (inet.group("v6") or inet.group("host")) if inet else name
    _check_host(host, bare_ip=True)
    return "dns", host


def _date(when: datetime.datetime) -> str:
    """An RFC 5322 §3.3 date-time; a naive datetime is refused (its zone is unknown)."""
    if when.utcoffset() is None:
        raise ValueError("a DSN date needs a time zone")
    return email.utils.format_datetime(when)


# --- part 3: the original (RFC 3461 §4.3, RFC 3462) -------------------------------------

# RFC 2045 §2.8: 8bit data is lines of at most 998 octets, no NUL, CR and LF only as CRLF.
_NOT_8BIT = re.compile(rb"[^\r\n]{999}|\x00|\r(?!\n)|(?<!\r)\n")


def _return_full(message: Message, due: Sequence[Failure]) -> bool:
    email_ = message.email
    return (
        email_.ret != "HDRS"
        and email_.body != "BINARYMIME"
        and any(f.action == "failed" for f in due)
        and len(email_.data) <= FULL_LIMIT
        and not _NOT_8BIT.search(email_.data)
    )


def _original(message: Message, *, full: bool) -> tuple[Returned, _Part | None]:
    data = message.email.data
    headers = _headers(data)
    # RFC 6532 §3.7, RFC 6533 §6.4: the global types for UTF-8 header fields, which only
    # an SMTPUTF8 message may have; legacy 8-bit junk stays message/rfc822 (as Postfix)
    utf8 = message.email.smtputf8 and not headers.isascii()
    if full:
        return "message", _part("message/global" if utf8 else "message/rfc822", data)
    if len(headers) > FULL_LIMIT or _NOT_8BIT.search(headers):
        return "nothing", None
    return "headers", _part("message/global-headers" if utf8 else "text/rfc822-headers", headers)


def _headers(data: bytes) -> bytes:
    """The header section of ``data``, each field with its CRLF, without the empty line."""
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]
