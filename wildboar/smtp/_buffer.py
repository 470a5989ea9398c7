"""Byte-level framing: command lines, DATA content and BDAT chunks.

Owns: where a command line ends (CRLF only), where DATA ends (CRLF "." CRLF only, RFC 5321
§4.1.1.4), dot-unstuffing (§4.5.2), and the content checks shared by DATA and BDAT (bare
CR or LF, NUL, text line length, Received-header count).
Must not know: commands, replies' wording, state. Results are plain values.
Security: this is where SMTP smuggling is stopped (CVE-2023-51764/51765/51766). A bare CR
or LF never ends anything; only the exact sequence CR LF "." CR LF ends DATA. Memory is
bounded: a command line beyond its limit is discarded as it arrives, and content leaves
in pieces of at most ``data_chunk`` octets. The scans use ``bytes.find``/``count``/``split``
(C loops), never per-byte Python loops.
"""

from __future__ import annotations

import enum

CRLF = b"\r\n"
END_OF_DATA = b"\r\n.\r\n"


class LineError(enum.Enum):
    TOO_LONG = "too long"
    BARE_NEWLINE = "bare newline"


class ReceiveBuffer:
    """Bytes received and not yet consumed."""

    def __init__(self) -> None:
        #: The bytes themselves; read directly on hot paths (``len(buf.data)``), changed
        #: only through the methods below.
        self.data = bytearray()
        # Discarding the rest of an over-long command line until its CRLF.
        self._discarding = False
        # The discarded line's last byte was CR (its LF may come next).
        self._discard_cr = False

    def __len__(self) -> int:
        return len(self.data)

    def append(self, data: bytes) -> None:
        self.data += data

    def take(self, count: int) -> bytes:
        # One copy, through a view (a slice of the bytearray would be a second one); the
        # view is gone before the delete, which a live export would forbid.
        with memoryview(self.data) as view:
            piece = bytes(view[:count])
        del self.data[:count]
        return piece

    def peek(self, count: int) -> bytes:
        return bytes(self.data[:count])

    def find(self, needle: bytes, start: int = 0, end: int | None = None) -> int:
        return self.data.find(needle, start, len(self.data) if end is None else end)

    def rfind(self, needle: bytes, end: int) -> int:
        return self.data.rfind(needle, 0, end)

    def next_line(self, limit: int) -> bytes | LineError | None:
        """The next command line without its CRLF, a ``LineError``, or None for more data.

        ``limit`` counts the CRLF. A too-long line is reported once, as soon as it is
        known, and then silently discarded up to its CRLF.
        """
        if self._discarding and not self._discard():
            return None
        lf = self.data.find(b"\n", 0, limit)
        if lf == -1:
            return self._incomplete_line(limit)
        if lf == 0 or self.data[lf - 1] != 0x0D or self.data.find(b"\r", 0, lf - 1) != -1:
            return LineError.BARE_NEWLINE
        line = bytes(self.data[: lf - 1])
        del self.data[: lf + 1]
        return line

    def _incomplete_line(self, limit: int) -> LineError | None:
        cr = self.data.find(b"\r", 0, limit)
        if cr != -1 and cr + 1 < len(self.data) and self.data[cr + 1] != 0x0A:
            return LineError.BARE_NEWLINE  # a CR followed by something other than LF
        if len(self.data) < limit:
            return None
        self._discarding = True
        self._discard_cr = False
        return LineError.TOO_LONG

    def _discard(self) -> bool:
        """Drop the over-long line's bytes; True once its CRLF has gone too."""
        if self._discard_cr and self.data[:1] == b"\n":
            del self.data[:1]
            self._discarding = False
            return True
        end = self.data.find(CRLF)
        if end == -1:
            self._discard_cr = self.data[-1:] == b"\r"
            self.data.clear()
            return False
        del self.data[: end + 2]
        self._discarding = False
        return True

    @property
    def discarding(self) -> bool:
        return self._discarding


class DataReader:
    """Reads DATA content: finds the end, unstuffs dots, hands out bounded pieces."""

    def __init__(self, chunk: int) -> None:
        self._chunk = chunk
        # The next byte in the buffer starts a line (right after DATA or after a CRLF).
        self._line_start = True

    def read(self, buf: ReceiveBuffer) -> tuple[bytes, bool] | None:
        """(unstuffed content, end reached) or None when more data is needed."""
        if self._line_start and buf.peek(3) == b".\r\n":
            buf.take(3)
            return b"", True
        # The region handed out (content + its CRLF) must fit in one chunk.
        end = buf.find(END_OF_DATA, 0, self._chunk + len(END_OF_DATA) - 2)
        if end != -1:
            region = buf.take(end + 2)
            buf.take(3)
            return self._unstuff(region), True
        return self._read_partial(buf)

    def _read_partial(self, buf: ReceiveBuffer) -> tuple[bytes, bool] | None:
        limit = min(len(buf), self._chunk)
        last = buf.rfind(CRLF, limit)
        if last != -1:
            region = buf.take(last + 2)
            return self._unstuff(region), False
        if len(buf) < self._chunk:
            return None
        # One line longer than a chunk: hand it out mid-line, keeping a trailing CR so a
        # CR LF split across reads is still seen as one line end.
        take = limit - 1 if buf.peek(limit)[-1:] == b"\r" else limit
        region = buf.take(take)
        unstuffed = self._unstuff(region)
        self._line_start = False
        return unstuffed, False

    def _unstuff(self, region: bytes) -> bytes:
        # RFC 5321 §4.5.2: a line's leading "." is removed. Lines start after each CRLF
        # inside the region, and at its start when the previous region ended a line.
        if self._line_start and region[:1] == b".":
            region = region[1:]
        self._line_start = region.endswith(CRLF) or (not region and self._line_start)
        # Most content has no line starting with a dot: a search is a fifth of a replace.
        return region.replace(b"\r\n.", CRLF) if b"\r\n." in region else region


class ContentError(enum.Enum):
    BARE_NEWLINE = "bare newline"
    NUL = "NUL"
    LINE_TOO_LONG = "line too long"
    TOO_MANY_HOPS = "too many hops"


class ContentChecker:
    """Checks message content piece by piece, whatever the piece boundaries.

    Text content (DATA, and BDAT unless BODY=BINARYMIME) must have CRLF line ends only,
    no NUL, lines within ``text_line`` octets with their CRLF, and at most ``hops``
    Received header fields; binary content only the last. The first problem found is kept
    in ``error``.
    """

    def __init__(self, *, text_line: int, hops: int, binary: bool = False) -> None:
        # BODY=BINARYMIME (RFC 3030 §3): only the body is binary; the header section is
        # still counted for Received fields (RFC 5321 §6.3 loop detection).
        self._binary = binary
        self._max_line = text_line - 2
        self._hops = hops
        self._pending_cr = False
        self._line_len = 0
        self._line_head = b""
        self._in_headers = True
        self._received = 0
        self.error: ContentError | None = None

    def feed(self, piece: bytes) -> None:
        if self.error is not None or not piece:
            return
        if self._pending_cr:
            piece = b"\r" + piece
        self._pending_cr = piece.endswith(b"\r")
        if self._pending_cr:
            piece = piece[:-1]
        self.error = self._check(piece)

    def finish(self) -> ContentError | None:
        """End of content: a dangling CR is a bare CR."""
        if self.error is None and self._pending_cr and not self._binary:
            self.error = ContentError.BARE_NEWLINE
        return self.error

    def _check(self, piece: bytes) -> ContentError | None:
        if self._binary:
            return self._check_binary(piece)
        lines = piece.split(CRLF)
        # A CR or LF left once the CRLF pairs are gone is a bare one. (Joining and two
        # memchr() scans cost a third of counting CRs and LFs with bytes.count.)
        rest = b"".join(lines) if len(lines) > 1 else piece
        if b"\r" in rest or b"\n" in rest:
            return ContentError.BARE_NEWLINE
        if b"\x00" in rest:
            return ContentError.NUL
        if self._too_long(lines):
            return ContentError.LINE_TOO_LONG
        if self._in_headers:
            self._count_received(lines)
            if self._received > self._hops:
                return ContentError.TOO_MANY_HOPS
        self._advance(lines)
        return None

    def _check_binary(self, piece: bytes) -> ContentError | None:
        if not self._in_headers:
            return None  # the body: anything goes
        lines = piece.split(CRLF)
        self._count_received(lines)
        if self._received > self._hops:
            return ContentError.TOO_MANY_HOPS
        self._advance(lines)
        return None

    def _too_long(self, lines: list[bytes]) -> bool:
        if self._line_len + len(lines[0]) > self._max_line:
            return True
        return len(lines) > 1 and max(map(len, lines[1:])) > self._max_line

    def _count_received(self, lines: list[bytes]) -> None:
        # lines[:-1] ended with CRLF in this piece; the first continues the partial line.
        complete = lines[:-1]
        if not complete:
            return
        head = self._line_head + complete[0]
        if not head:
            self._in_headers = False
            return
        if head[:9].lower() == b"received:":
            self._received += 1
        rest = complete[1:]
        if b"" in rest:  # the empty line that ends the header section
            rest = rest[: rest.index(b"")]
            self._in_headers = False
        if not rest:
            return
        if self._binary:  # a line may hold a bare LF here: look at each line's start
            self._received += sum(line[:9].lower() == b"received:" for line in rest)
        else:  # text has no bare LF (checked before), so LF can join the lines
            self._received += (b"\n" + b"\n".join(rest)).lower().count(b"\nreceived:")

    def _advance(self, lines: list[bytes]) -> None:
        if len(lines) == 1:
            self._line_len += len(lines[0])
            self._line_head = (self._line_head + lines[0])[:9]
        else:
            self._line_len = len(lines[-1])
            self._line_head = lines[-1][:9]
