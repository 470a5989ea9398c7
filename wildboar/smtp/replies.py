"""SMTP replies: the value object, its wire form, and the catalogue the core sends.

Owns: reply validation (RFC 5321 §4.2 reply-code ranges, RFC 3463 enhanced status code
syntax and class agreement, RFC 2034 §4 "in all 2xx, 4xx and 5xx response lines") and
serialisation, including multi-line replies.
Must not know: sockets, sessions, policy.
Security: reply text is checked to be printable US-ASCII, so neither client input nor a
caller's exception text can inject a line break or a second reply.
"""

from __future__ import annotations

import functools
import re

import msgspec

from .errors import LocalProtocolError

# RFC 3463 §2: status-code = class "." subject "." detail; subject and detail are
# 1*3digit "without leading zero digits".
_ENHANCED = re.compile(r"([245])\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")
# RFC 5321 §4.2: textstring = 1*(%d09 / %d32-126)
_TEXT = re.compile(r"[\t\x20-\x7e]*")


class Reply(msgspec.Struct, frozen=True, dict=True):
    """One SMTP reply: ``code``, enhanced status ``status`` and one or more text lines.

    ``status`` is required for 2xx/4xx/5xx and must be empty for 3xx (RFC 2034 §4).
    """

    code: int
    status: str
    text: str | tuple[str, ...]

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 559 or self.code // 10 % 10 > 5:
            raise LocalProtocolError(f"reply code {self.code} is outside RFC 5321 §4.2")
        self._check_status()
        for line in self.lines:
            if not _TEXT.fullmatch(line):
                raise LocalProtocolError("reply text must be printable US-ASCII on one line")

    def _check_status(self) -> None:
        if self.code // 100 == 3:
            if self.status:
                raise LocalProtocolError("3xx replies carry no enhanced status code")
            return
        match = _ENHANCED.fullmatch(self.status)
        if match is None:
            raise LocalProtocolError(f"bad enhanced status code {self.status!r}")
        if int(match.group(1)) != self.code // 100:
            raise LocalProtocolError(f"status {self.status} does not match reply {self.code}")

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    @functools.cached_property
    def closes(self) -> bool:
        """Whether the server closes the connection after sending this reply."""
        return self.code in (221, 421, 521)

    def to_bytes(self) -> bytes:
        return self._wire

    def with_text(self, text: str) -> bytes:
        """The wire form of this reply's code and status with ``text`` instead, checked as
        the constructor checks it (one line of printable US-ASCII). Cheaper than a new
        ``Reply`` for a text used once, such as a queue id."""
        if not _TEXT.fullmatch(text):
            raise LocalProtocolError("reply text must be printable US-ASCII on one line")
        prefix = f"{self.status} " if self.status else ""
        return f"{self.code} {prefix}{text}\r\n".encode("ascii")

    @functools.cached_property
    def _wire(self) -> bytes:
        prefix = f"{self.status} " if self.status else ""
        lines = self.lines
        out = [f"{self.code}-{prefix}{line}\r\n" for line in lines[:-1]]
        out.append(f"{self.code} {prefix}{lines[-1]}\r\n")
        return "".join(out).encode("ascii")


def plain_lines(code: int, lines: list[str]) -> bytes:
    """Serialise a reply without enhanced codes: greeting and EHLO/HELO (RFC 2034 §4)."""
    if not all(_TEXT.fullmatch(line) for line in lines):
        raise LocalProtocolError("reply text must be printable US-ASCII on one line")
    out = [f"{code}-{line}\r\n" for line in lines[:-1]]
    out.append(f"{code} {lines[-1]}\r\n")
    return "".join(out).encode("ascii")


# --- the catalogue --------------------------------------------------------------
# Texts follow Postfix where it is the de-facto reference, so operators recognise them.

OK = Reply(250, "2.0.0", "Ok")
MAIL_OK = Reply(250, "2.1.0", "Ok")
RCPT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
VRFY = Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(
    214,
    "2.0.0",
    ("Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP", "End of HELP"),
)

NOT_RECOGNIZED = Reply(500, "5.5.2", "Error: command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: command line too long")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
# RFC 3207 §4: STARTTLS.
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")
TLS_IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
# Postfix's XCLIENT extension (XCLIENT_README): only from the hosts the I/O layer trusts.
XCLIENT_DENIED = Reply(
    550, "5.7.0", "Error: insufficient authorization: XCLIENT is not allowed from this client"
)
XCLIENT_IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
SYNTAX_XCLIENT = Reply(501, "5.5.4", "Syntax: XCLIENT attribute=value ...")
NOT_ASCII = Reply(501, "5.5.2", "Error: non-ASCII characters in command")
FORBIDDEN = Reply(221, "2.7.0", "Error: this is an SMTP server, not a web or proxy server")
BARE_NEWLINE_COMMAND = Reply(
    521, "5.5.2", "Error: bare <CR> or <LF> in command; only <CR><LF> ends a line"
)
SYNC = Reply(554, "5.5.0", "Error: SMTP protocol synchronization")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Error: too many commands")
REFUSED_SEQUENCE = Reply(503, "5.7.0", "Error: access denied")

NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(554, "5.5.1", "Error: no valid recipients")
RCPT_AFTER_BDAT = Reply(503, "5.5.1", "Error: RCPT after BDAT in the same transaction")
DATA_AFTER_BDAT = Reply(503, "5.5.1", "Error: DATA after BDAT in the same transaction")
DATA_BINARYMIME = Reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT, not DATA")
BDAT_NOT_OFFERED = Reply(503, "5.5.1", "Error: BDAT requires EHLO and CHUNKING")
BDAT_AFTER_ERROR = Reply(551, "5.0.0", "Error: chunk discarded after an earlier error; send RSET")
BDAT_SYNTAX = Reply(421, "4.5.4", "Error: Syntax: BDAT count [LAST]; closing connection")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")

SYNTAX_EHLO = Reply(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: HELO hostname")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_NO_ARGS = Reply(501, "5.5.4", "Syntax error: no arguments allowed")
SYNTAX_VRFY = Reply(501, "5.5.4", "Syntax: VRFY address")
BAD_SENDER = Reply(553, "5.1.7", "Error: bad sender address syntax")
BAD_RECIPIENT = Reply(553, "5.1.3", "Error: bad recipient address syntax")
SENDER_TOO_LONG = Reply(501, "5.1.7", "Error: sender path too long")
RECIPIENT_TOO_LONG = Reply(501, "5.1.3", "Error: recipient path too long")
SENDER_NEEDS_UTF8 = Reply(550, "5.6.7", "Error: must declare SMTPUTF8 to send a unicode address")
RECIPIENT_NEEDS_UTF8 = Reply(553, "5.6.7", "Error: must declare SMTPUTF8 to send a unicode address")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Error: unsupported or malformed parameter")
BAD_PARAMETER = Reply(501, "5.5.4", "Error: invalid parameter value")
DUPLICATE_PARAMETER = Reply(501, "5.5.4", "Error: duplicate parameter")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Error: message size exceeds fixed limit")
BARE_NEWLINE_DATA = Reply(550, "5.5.2", "Error: bare <CR> or <LF> in message data")
NUL_IN_DATA = Reply(554, "5.6.0", "Error: NUL character in message data")
TEXT_LINE_TOO_LONG = Reply(554, "5.6.0", "Error: message line too long")
TOO_MANY_HOPS = Reply(554, "5.4.0", "Error: too many hops (mail loop?)")


@functools.lru_cache(maxsize=64)
def xclient_bad_value(attribute: str) -> Reply:
    """``501 5.5.4`` naming the XCLIENT attribute whose value is malformed."""
    return Reply(501, "5.5.4", f"Error: bad XCLIENT {attribute} value")


@functools.lru_cache(maxsize=64)
def xclient_duplicate(attribute: str) -> Reply:
    return Reply(501, "5.5.4", f"Error: XCLIENT {attribute} given twice")


@functools.lru_cache(maxsize=64)
def xclient_unknown(attribute: str) -> Reply:
    """An attribute name this server does not take; ``attribute`` is a checked token."""
    return Reply(501, "5.5.4", f"Error: unknown XCLIENT attribute {attribute}")
