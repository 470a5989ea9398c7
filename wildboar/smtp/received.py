"""The Received trace header a server prepends to each accepted message (RFC 5321 §4.4).

Owns: the text of the header, from the envelope and the facts the I/O layer knows
(client address, time, message id).
Must not know: clocks or sockets: the caller passes ``when`` and the addresses.
Security: only validated values go in: the EHLO name passed the grammar, the address is
formatted from ``ipaddress``, and folding uses CRLF + TAB only.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import ipaddress
import re

from .events import Envelope

# What may go in the TLS comment: OpenSSL's names are such tokens; anything else is dropped.
_TOKEN = re.compile(r"[^A-Za-z0-9._-]")


@functools.lru_cache(maxsize=4)
def _date(when: datetime.datetime) -> str:
    """RFC 5322 date-time with a numeric zone; changes once a second, so it is cached."""
    return email.utils.format_datetime(when)


@functools.lru_cache(maxsize=4096)
def address_literal(address: str) -> str:
    """The RFC 5321 §4.1.3 address literal of an IP address (``[IPv6:...]`` for IPv6).

    Cached: a busy server sees the same client addresses over and over."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"


def received_header(
    envelope: Envelope,
    *,
    by: str,
    client_address: str,
    client_name: str | None = None,
    when: datetime.datetime,
    id: str,
    tls: tuple[str, str] | None = None,
) -> bytes:
    """``Received: from HELO (NAME [IP]) by HOST with PROTO id ID [for <RCPT>]; DATE``.

    The FOR clause names the recipient only when there is exactly one (§4.4: it "MUST
    contain exactly one <path> entry"), so other recipients are not disclosed, and only
    when it has a domain (not for ``<Postmaster>``). ``tls``, the TLS version and cipher
    of the session, goes in a comment (``(using TLSv1.3 with cipher ...)``, as Postfix
    writes it).
    """
    if when.tzinfo is None:
        raise ValueError("the Received date needs a time zone (RFC 5321 §4.4)")
    tcp_info = address_literal(client_address)
    if client_name:
        tcp_info = f"{client_name} {tcp_info}"
    helo = envelope.helo or "unknown"
    lines = [
        f"Received: from {helo} ({tcp_info})",
        f"\tby {by} with {envelope.protocol} id {id}",
    ]
    if tls is not None:
        version, cipher = (_TOKEN.sub("", part) for part in tls)
        lines.append(f"\t(using {version or 'TLS'} with cipher {cipher or 'unknown'})")
    # "for" takes a Path or Mailbox (§4.4), which needs a domain: not the bare
    # <Postmaster> that §4.1.1.3 makes every server accept.
    if len(envelope.recipients) == 1 and "@" in envelope.recipients[0].address:
        lines.append(f"\tfor <{envelope.recipients[0].address}>")
    lines[-1] += f"; {_date(when.replace(microsecond=0))}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
