"""Named, configurable limits of one SMTP session.

Owns: the numbers that bound what a client can make the server hold or do.
Must not know: sockets, clocks, configuration files (``wildboar.config`` fills a ``Limits``).
Security: every limit here caps memory or work that a remote client controls; a value
below an RFC minimum is refused at construction, so a typo cannot make the server
non-conforming.
"""

from __future__ import annotations

from typing import NamedTuple

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
        return base + sum(e.allowance for e in EXTENSIONS if self.offers(e))

    def offers(self, extension: Extension) -> bool:
        """Whether ``extension`` is on: its switch here, or, for the ones a session
        decides (STARTTLS, XCLIENT), False: the session asks ``ehlo_keywords``."""
        if extension.switch is None:
            return True
        return bool(getattr(self, extension.switch, False))

    def ehlo_keywords(self, message_size: int, *, starttls: bool, xclient: bool) -> list[str]:
        """The EHLO reply's keywords, in the table's order."""
        session = {"starttls": starttls, "xclient": xclient}
        keywords = []
        for extension in EXTENSIONS:
            on = session.get(extension.switch or "")
            if on is None:
                on = self.offers(extension)
            if on:
                keywords.append(extension.ehlo(message_size))
        return keywords

    def mail_parameters(self) -> frozenset[str]:
        """The MAIL parameters accepted after EHLO (none after HELO, RFC 1869 §4.5)."""
        return frozenset(p for e in EXTENSIONS if self.offers(e) for p in e.mail)

    def rcpt_parameters(self) -> frozenset[str]:
        """The RCPT parameters accepted after EHLO."""
        return frozenset(p for e in EXTENSIONS if self.offers(e) for p in e.rcpt)


class Extension(NamedTuple):
    """One ESMTP extension the server can offer: everything else derives from this."""

    #: The field of ``Extensions`` that switches it (``None``: always offered; "starttls"
    #: and "xclient": offered by the session, to some clients, in some states).
    switch: str | None
    #: Its EHLO keyword, with parameters; ``{size}`` is the session's message size.
    keyword: str
    #: The MAIL and RCPT parameters it brings (several may bring the same: BODY).
    mail: tuple[str, ...] = ()
    rcpt: tuple[str, ...] = ()
    #: Octets it may add to a MAIL or RCPT command line (RFC 5321 §4.5.3.1.4).
    allowance: int = 0
    #: Where it is defined.
    rfc: str = ""

    def ehlo(self, message_size: int) -> str:
        return self.keyword.format(size=message_size)


#: The extensions, in the order of the EHLO reply.
EXTENSIONS: tuple[Extension, ...] = (
    Extension("pipelining", "PIPELINING", rfc="RFC 2920"),
    Extension("size", "SIZE {size}", mail=("SIZE",), allowance=ALLOWANCE_SIZE, rfc="RFC 1870"),
    Extension("starttls", "STARTTLS", rfc="RFC 3207"),
    Extension("eightbitmime", "8BITMIME", mail=("BODY",), rfc="RFC 6152"),
    Extension(
        "smtputf8", "SMTPUTF8", mail=("SMTPUTF8",), allowance=ALLOWANCE_SMTPUTF8, rfc="RFC 6531"
    ),
    Extension(None, "ENHANCEDSTATUSCODES", rfc="RFC 2034"),
    Extension("chunking", "CHUNKING", rfc="RFC 3030"),
    Extension(
        "binarymime", "BINARYMIME", mail=("BODY",), allowance=ALLOWANCE_BINARYMIME, rfc="RFC 3030"
    ),
    Extension(
        "dsn",
        "DSN",
        mail=("RET", "ENVID"),
        rcpt=("NOTIFY", "ORCPT"),
        allowance=ALLOWANCE_DSN,
        rfc="RFC 3461",
    ),
    Extension("xclient", "XCLIENT ADDR PORT NAME HELO PROTO LOGIN", rfc="Postfix XCLIENT"),
    Extension(None, "HELP", rfc="RFC 5321 §4.1.1.8"),
)
