"""The PROXY protocol reader for any input: ``run(data)``.

The input is a 2-octet header (``Options``: the parser's ``max_size``, how the octets are
cut into reads, whether the peer closes at the end) followed by the peer's octets, fed as
the listener feeds them until the header is decided.

What must hold for any input (an ``AssertionError`` otherwise):
- ``receive_data`` raises nothing until the header is decided, and ``ProxyUsageError``
  (the one documented exception) for any octet fed after;
- memory is bounded: while undecided the parser holds exactly what it was fed, less than
  107 octets (version 1) or ``max_size`` (version 2); nothing once decided;
- a decision is final: ``next_event`` returns the same result on every call;
- the end of input decides (no ``NEED_DATA`` after ``b""``);
- a refusal's reason is printable US-ASCII in the module's own words, never the peer's;
- a header accepted was read from the start of the input, ends inside the read that
  completed it (``rest`` is exactly what followed, the SMTP session's octets), is a
  version 1 line of at most 107 octets or a version 2 header of exactly the length its
  fixed part gives and at most ``max_size``, and has a wire form
  (``build_v1``/``build_v2``) that reads back as the same header.
"""

from __future__ import annotations

import inspect
import random
import re
from dataclasses import dataclass
from typing import Final

from wildboar import proxy

HEADER: Final = 2
#: Cuts the peer's octets into reads in the default mode.
SEPARATOR: Final = b"\x00READ\x00"
MAX_SIZES: Final = (proxy.MIN_MAX_SIZE, proxy.DEFAULT_MAX_SIZE, 1024, proxy.V2_MAX_SIZE)
# Octet 0: bits 0-1 the max_size, bits 2-3 the reads, bit 4 no end of input.
NO_EOF = 0x10
SEPARATED, WHOLE, OCTETS, RANDOM = 0, 1, 2, 3
_WORDS = frozenset(re.findall(r"[A-Za-z]+", inspect.getsource(proxy)))


@dataclass(frozen=True)
class Options:
    max_size: int = proxy.DEFAULT_MAX_SIZE
    reads: int = SEPARATED
    eof: bool = True
    seed: int = 0

    @classmethod
    def parse(cls, data: bytes) -> tuple[Options, bytes]:
        head = data[:HEADER].ljust(HEADER, b"\x00")
        options = cls(
            max_size=MAX_SIZES[head[0] & 0x03],
            reads=head[0] >> 2 & 0x03,
            eof=not head[0] & NO_EOF,
            seed=head[1],
        )
        return options, data[HEADER:]

    def encode(self) -> bytes:
        size = MAX_SIZES.index(self.max_size)
        return bytes((size | self.reads << 2 | (0 if self.eof else NO_EOF), self.seed))


def split(options: Options, stream: bytes) -> list[bytes]:
    if options.reads == SEPARATED:
        pieces = stream.split(SEPARATOR)
    elif options.reads == WHOLE:
        pieces = [stream]
    elif options.reads == OCTETS:
        pieces = [stream[i : i + 1] for i in range(len(stream))]
    else:
        rng = random.Random(options.seed)
        cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, 1 + options.seed)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return [piece for piece in pieces if piece]


def check_error(error: proxy.ProxyError) -> None:
    reason = error.reason
    assert re.fullmatch(r"[ -~]{1,200}", reason), reason
    # Every word is one the module itself writes: the peer's octets are never quoted.
    words = re.findall(r"[A-Za-z]+", re.sub(r"0x[0-9a-f]+", "", reason))
    stray = set(words) - _WORDS
    assert not stray, (reason, stray)


def check_header(header: proxy.ProxyHeader, fed: bytes, last: bytes, max_size: int) -> None:
    rest = header.rest
    assert fed.endswith(rest) and len(rest) < len(last), "rest is not what followed"
    wire = fed[: len(fed) - len(rest)]
    if header.version == 1:
        assert wire.startswith(b"PROXY ") and wire.endswith(b"\r\n")
        assert len(wire) <= proxy.V1_MAX_LINE and wire.count(b"\r\n") == 1
    else:
        assert wire.startswith(proxy.V2_SIGNATURE)
        assert len(wire) == proxy.V2_FIXED + int.from_bytes(wire[14:16], "big") <= max_size
    build = proxy.build_v1 if header.version == 1 else proxy.build_v2
    again = proxy.ProxyParser(max_size=proxy.V2_MAX_SIZE)
    again.receive_data(build(header))
    assert again.next_event() == header, "the wire form does not read back"


def _usage_error(parser: proxy.ProxyParser, data: bytes) -> None:
    try:
        parser.receive_data(data)
    except proxy.ProxyUsageError:
        return
    raise AssertionError("data after the decision was taken")


def run(data: bytes) -> None:
    """One connection's first octets; raises ``AssertionError`` if an invariant breaks."""
    options, stream = Options.parse(data)
    pieces = split(options, stream)
    if options.eof:
        pieces.append(b"")
    parser = proxy.ProxyParser(max_size=options.max_size)
    bound = max(options.max_size, proxy.V1_MAX_LINE)
    fed = b""
    for piece in pieces:
        parser.receive_data(piece)
        fed += piece
        event = parser.next_event()
        if event is proxy.NEED_DATA:
            assert piece, "NEED_DATA after the end of input"
            assert parser.buffered == len(fed) < bound, (parser.buffered, len(fed))
            continue
        assert parser.buffered == 0 and parser.next_event() is event
        if isinstance(event, proxy.ProxyError):
            check_error(event)
        else:
            assert isinstance(event, proxy.ProxyHeader)
            check_header(event, fed, piece, options.max_size)
        _usage_error(parser, b"EHLO x\r\n")
        _usage_error(parser, b"")
        assert parser.next_event() is event
        return
    assert not options.eof and parser.next_event() is proxy.NEED_DATA
