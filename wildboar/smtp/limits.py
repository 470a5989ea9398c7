"""Named, configurable limits of one SMTP session.

Owns: the numbers that bound what a client can make the server hold or do.
Must not know: sockets, clocks, configuration files (``wildboar.config`` fills a ``Limits``).
Security: every limit here caps memory or work that a remote client controls; a value
below an RFC minimum is refused at construction, so a typo cannot make the server
non-conforming.
"""

from __future__ import annotations

import msgspec

# RFC 5321 §4.5.3.1.4: a command line, including CRLF, of at least 512 octets.
RFC_MIN_COMMAND_LINE = 512
# RFC 5321 §4.5.3.1.6: a text line, including CRLF, of at least 1000 octets.
RFC_MIN_TEXT_LINE = 1000
# RFC 5321 §4.5.3.1.7: message content of at least 64K octets.
RFC_MIN_MESSAGE_SIZE = 64 * 1024
# RFC 5321 §4.5.3.1.8: at least 100 recipients per transaction.
RFC_MIN_RECIPIENTS = 100

# Octets each advertised extension may add to a MAIL or RCPT command line.
# RFC 1870 §3 (SIZE), RFC 3030 §3 (BODY=BINARYMIME), RFC 6531 §3.1 (SMTPUTF8),
# RFC 3461 §5.4 (ENVID=100 + RET=8 on MAIL; NOTIFY=28 + ORCPT=500 on RCPT, plus
# the keywords, "=" and separators).
ALLOWANCE_SIZE = 26
ALLOWANCE_BINARYMIME = 16
ALLOWANCE_SMTPUTF8 = 10
ALLOWANCE_DSN = 500 + len(" ORCPT=") + 28 + len(" NOTIFY=")


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Per-session limits. Defaults follow Postfix's where the RFC sets only a floor."""

    #: Command line including CRLF, before extension allowances (RFC 5321 §4.5.3.1.4).
    command_line: int = RFC_MIN_COMMAND_LINE
    #: Message text line including CRLF, excluding a stuffed dot (RFC 5321 §4.5.3.1.6).
    text_line: int = RFC_MIN_TEXT_LINE
    #: Message size in octets, counted as RFC 1870 §5 counts it; advertised in EHLO SIZE.
    message_size: int = 10_240_000
    #: Recipients accepted per transaction; more get ``452 4.5.3`` (RFC 5321 §4.5.3.1.10).
    recipients: int = 1000
    #: Error replies per session before ``421 4.7.0`` and close (Postfix: 20).
    errors: int = 20
    #: Commands per session before ``421 4.7.0`` and close.
    commands: int = 100_000
    #: Largest piece of message content handed out in one ``MessageData`` event.
    data_chunk: int = 64 * 1024
    #: Received headers in a message before it is refused as a loop (RFC 5321 §6.3).
    hops: int = 100

    def __post_init__(self) -> None:
        floors = {
            "command_line": RFC_MIN_COMMAND_LINE,
            "text_line": RFC_MIN_TEXT_LINE,
            "message_size": RFC_MIN_MESSAGE_SIZE,
            "recipients": RFC_MIN_RECIPIENTS,
            "errors": 1,
            "commands": 1,
            "data_chunk": 1024,
            "hops": 1,
        }
        for name, floor in floors.items():
            value = getattr(self, name)
            if value < floor:
                raise ValueError(f"limit {name} = {value} is below the minimum {floor}")


class Extensions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which ESMTP extensions the server offers in its EHLO reply."""

    pipelining: bool = True  # RFC 2920
    size: bool = True  # RFC 1870
    eightbitmime: bool = True  # RFC 6152
    smtputf8: bool = True  # RFC 6531; requires 8BITMIME
    chunking: bool = True  # RFC 3030 CHUNKING
    binarymime: bool = True  # RFC 3030 BINARYMIME; requires CHUNKING
    dsn: bool = True  # RFC 3461

    def __post_init__(self) -> None:
        if self.smtputf8 and not self.eightbitmime:
            raise ValueError("SMTPUTF8 requires 8BITMIME (RFC 6531 §3.1)")
        if self.binarymime and not self.chunking:
            raise ValueError("BINARYMIME requires CHUNKING (RFC 3030 §3)")

    def command_line_limit(self, base: int) -> int:
        """The longest MAIL/RCPT line accepted, with each offered extension's allowance."""
        allowances = (
            (self.size, ALLOWANCE_SIZE),
            (self.binarymime, ALLOWANCE_BINARYMIME),
            (self.smtputf8, ALLOWANCE_SMTPUTF8),
            (self.dsn, ALLOWANCE_DSN),
        )
        return base + sum(extra for offered, extra in allowances if offered)
