"""What the tests against a real Dovecot read back from its Maildirs: the message as
wildboar handed it over, below the three fields Dovecot adds (``Return-Path``,
``Delivered-To``, its ``Received``; docs/lmtp.md), and the id in wildboar's ``Received``
field, which is the one its ``250 2.0.0 Ok: queued as urn:uuid:<id>`` named."""

from __future__ import annotations

import re

#: wildboar's own trace field for a client that said ``EHLO client.example`` from
#: 127.0.0.1 (``wildboar.smtp.received``), the id it gave the message in the middle.
RECEIVED = re.compile(
    rb"Received: from client\.example \(\[127\.0\.0\.1\]\)\r\n"
    rb"\tby mx\.test\.example with [A-Z]+ id (?P<id>[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12})"
    rb"(?:\r\n\tfor <[^>\r\n]+>)?; [^\r\n]+\r\n"
)
#: The first of the fields Dovecot adds on top of every message it stores.
DOVECOT_TOP = b"Return-Path: <"
QUEUED = re.compile(rb"Ok: queued as urn:uuid:([0-9a-f-]{36})")


def handed_over(stored: bytes) -> tuple[str, bytes]:
    """(wildboar's id, the content below its Received field) of a stored message; an
    ``AssertionError`` if the message does not have exactly Dovecot's fields, then
    wildboar's, on top."""
    assert stored.startswith(DOVECOT_TOP), stored[:200]
    match = RECEIVED.search(stored)
    assert match is not None, stored[:600]
    dovecots = stored[: match.start()]
    assert dovecots.count(b"\r\nReceived: ") == 1, dovecots  # Dovecot's own, and no more
    return match["id"].decode(), stored[match.end() :]


def queued_id(reply_text: bytes) -> str:
    """The id in wildboar's ``250 2.0.0 Ok: queued as urn:uuid:<id>``."""
    match = QUEUED.search(reply_text)
    assert match is not None, reply_text
    return match[1].decode()
