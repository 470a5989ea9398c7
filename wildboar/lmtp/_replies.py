"""Replies from an LMTP (or SMTP) server: framing, parsing, and the LHLO capabilities.

Owns: splitting the server's bytes into replies (RFC 5321 §4.2 ``Reply-line``, multi-line
replies of one code), the enhanced status code of a reply (RFC 3463 §2, RFC 2034 §4), the
LHLO keywords (RFC 2033 §4.1, RFC 1869 §4) and the bounds on what a server can make the
client hold.
Must not know: which command a reply answers (``client.py`` matches replies by count),
sockets, clocks.
Security: a server's text is reduced to printable US-ASCII (TAB kept, as RFC 5321
``textstring`` allows; every other octet becomes ``?``) before it is put in a
``wildboar.smtp.Reply``, so it can be relayed to an SMTP client without injecting a line
break or a second reply. Memory is bounded by ``MAX_LINE`` and ``MAX_LINES``. Nothing here
raises on server bytes but ``ReplyError``.

Line ends: only CRLF ends a reply line. A bare LF or a bare CR is a ``ReplyError``: every
LMTP server sends CRLF (RFC 5321 §2.3.8 "MUST NOT recognize ... any other"), and a stream
that does not is one whose reply count can no longer be trusted.
"""

from __future__ import annotations

import re

import msgspec

from wildboar.smtp.errors import LocalProtocolError
from wildboar.smtp.replies import Reply

# RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets; MDAs quote addresses (up to 256
# octets) and error texts in theirs, so allow four times that before calling it an attack.
MAX_LINE = 2048
# Lines in one reply. An LHLO reply lists one keyword a line; nothing legitimate comes near.
MAX_LINES = 100


class ReplyError(Exception):
    """The server's bytes are not a well-formed reply. The text is for the log only."""


# Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF
# Reply-code = %x32-35 %x30-35 %x30-39                                (RFC 5321 §4.2)
_LINE = re.compile(rb"([2-5][0-5][0-9])(?:([ -])(.*))?", re.DOTALL)
# status-code = class "." subject "." detail, "always followed by one or more spaces"
# (RFC 3463 §2, RFC 2034 §3); leading zeros are normalised away when a server sends them.
_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: +|\Z)")
# ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")               (RFC 5321 §4.1.1.1)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_SIZE = re.compile(r"[0-9]{1,20}")  # RFC 1870 §3: SIZE [1*20DIGIT]

# textstring = 1*(%d09 / %d32-126): everything else becomes "?".
_SANITIZE = bytes(b if b == 0x09 or 0x20 <= b <= 0x7E else 0x3F for b in range(256))


def sanitize(text: bytes) -> str:
    """Reply text as printable US-ASCII, one ``?`` for each octet that is not."""
    return text.translate(_SANITIZE).decode("ascii")


def _split_status(code: int, text: str) -> tuple[str, str] | None:
    """(status, rest of the text) when ``text`` starts with a status of ``code``'s class."""
    match = _STATUS.match(text)
    if match is None or int(match.group(1)) != code // 100:
        return None
    status = ".".join(str(int(part)) for part in match.groups())
    return status, text[match.end() :]


def _strip_status(code: int, status: str, text: str) -> str:
    """A continuation line without the status it repeats (RFC 2034 §4)."""
    found = _split_status(code, text)
    return found[1] if found is not None and found[0] == status else text


def _as_text(lines: list[str]) -> str | tuple[str, ...]:
    return lines[0] if len(lines) == 1 else tuple(lines)


def build_reply(code: int, lines: list[str]) -> Reply:
    """A ``Reply`` from a code and its sanitized text lines.

    The enhanced status code comes from the first line when it carries one of the right
    class; otherwise it is synthesized as ``X.0.0`` from the code class (greeting, LHLO,
    servers without ENHANCEDSTATUSCODES). 3xx replies carry none (RFC 2034 §4).
    """
    if code // 100 == 3:
        return Reply(code, "", _as_text(lines))
    found = _split_status(code, lines[0])
    if found is None:
        return Reply(code, f"{code // 100}.0.0", _as_text(lines))
    status, first = found
    rest = [_strip_status(code, status, line) for line in lines[1:]]
    return Reply(code, status, _as_text([first, *rest]))


def _parse_line(line: bytes) -> tuple[int, bool, str]:
    """(code, whether more lines follow, sanitized text) of one line without its CRLF."""
    if b"\r" in line:
        raise ReplyError("bare CR in a reply line")
    match = _LINE.fullmatch(line)
    if match is None:
        raise ReplyError("malformed reply line")
    return int(match.group(1)), match.group(2) == b"-", sanitize(match.group(3) or b"")


class ReplyReader:
    """Bytes in, whole ``Reply`` objects out, in order; bounded."""

    def __init__(self, *, max_line: int = MAX_LINE, max_lines: int = MAX_LINES) -> None:
        self._max_line = max_line
        self._max_lines = max_lines
        self._buffer = bytearray()
        self._code: int | None = None
        self._lines: list[str] = []

    @property
    def partial(self) -> bool:
        """Whether bytes of an unfinished reply are held."""
        return bool(self._buffer) or bool(self._lines)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None until more bytes come. Raises ``ReplyError``."""
        while (line := self._next_line()) is not None:
            reply = self._add_line(line)
            if reply is not None:
                return reply
        return None

    def _next_line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) >= self._max_line:
                raise ReplyError(f"reply line longer than {self._max_line} octets")
            return None
        if end + 1 > self._max_line:
            raise ReplyError(f"reply line longer than {self._max_line} octets")
        if end == 0 or self._buffer[end - 1] != 0x0D:
            raise ReplyError("bare LF in a reply")
        line = bytes(self._buffer[: end - 1])
        del self._buffer[: end + 1]
        return line

    def _add_line(self, line: bytes) -> Reply | None:
        code, more, text = _parse_line(line)
        if self._code is not None and code != self._code:
            raise ReplyError("reply code changed within a multi-line reply")
        self._code = code
        self._lines.append(text)
        if more:
            if len(self._lines) >= self._max_lines:
                raise ReplyError(f"reply of more than {self._max_lines} lines")
            return None
        lines, self._lines, self._code = self._lines, [], None
        try:
            return build_reply(code, lines)
        except LocalProtocolError as error:  # not reachable: the text is sanitized
            raise ReplyError(str(error)) from None


class ServerExtensions(msgspec.Struct, frozen=True, kw_only=True):
    """What the server offered in its LHLO reply (all False before a successful LHLO)."""

    pipelining: bool = False  # RFC 2920
    eightbitmime: bool = False  # RFC 6152
    smtputf8: bool = False  # RFC 6531
    chunking: bool = False  # RFC 3030 BDAT
    binarymime: bool = False  # RFC 3030 §3 (usable only with CHUNKING)
    enhancedstatuscodes: bool = False  # RFC 2034
    size: bool = False  # RFC 1870
    #: The SIZE parameter: 0 means no fixed limit; None when absent or not a number.
    size_limit: int | None = None
    #: Every keyword offered, upper-case (keywords are case-insensitive, RFC 5321 §2.2.2).
    keywords: frozenset[str] = frozenset()


def _keyword_params(lines: tuple[str, ...]) -> dict[str, list[str]]:
    """``ehlo-line = ehlo-keyword *( SP ehlo-param )``, the first line being the domain."""
    found: dict[str, list[str]] = {}
    for line in lines[1:]:
        words = line.split()
        if words and _KEYWORD.fullmatch(words[0]):
            found.setdefault(words[0].upper(), words[1:])
    return found


def parse_lhlo(reply: Reply) -> ServerExtensions:
    """The extensions of a positive LHLO reply (RFC 2033 §4.1: as EHLO's, RFC 1869 §4)."""
    found = _keyword_params(reply.lines)
    size = found.get("SIZE") or [""]
    return ServerExtensions(
        pipelining="PIPELINING" in found,
        eightbitmime="8BITMIME" in found,
        smtputf8="SMTPUTF8" in found,
        chunking="CHUNKING" in found,
        binarymime="BINARYMIME" in found,
        enhancedstatuscodes="ENHANCEDSTATUSCODES" in found,
        size="SIZE" in found,
        size_limit=int(size[0]) if _SIZE.fullmatch(size[0]) else None,
        keywords=frozenset(found),
    )
