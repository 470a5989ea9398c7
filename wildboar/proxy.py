"""``ProxyParser``: the sans-IO reader of the PROXY protocol header, versions 1 and 2.

A TLS terminator or load balancer in front of wildboar (HAProxy, stunnel, a cloud load
balancer) opens each connection it relays with a header naming the client's address and
port and the address the client connected to; version 2 adds what the proxy learnt from
TLS. This module reads that header from the first octets of a connection and hands back
everything after it untouched (``ProxyHeader.rest``): the start of the SMTP session.

Owns: the two formats of HAProxy's specification ("The PROXY protocol, Versions 1 & 2",
2020/03/05, https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt, cited as §):
telling them apart and from anything else (§2.2, end), the version 1 line (§2.1), the
version 2 fixed part, address blocks and TLVs (§2.2, §2.2.1-§2.2.8), CRC-32C (§2.2.3,
RFC 4960 Appendix B), the cap on a header's size; and their wire form (``build_v1``,
``build_v2``) for test harnesses and fixtures.
Must not know: sockets, clocks (the header's timeout, at least 3 s by §2, is the
listener's), which peers may send a header (§5: only trusted proxies, which the listener
decides before this parser sees an octet), what the addresses are used for, SMTP.

Usage::

    parser = ProxyParser(max_size=4096)
    parser.receive_data(data)              # b"" when the peer closed
    event = parser.next_event()
    if event is NEED_DATA: ...             # read more (under the listener's timeout)
    elif isinstance(event, ProxyError): ...  # log event.reason, close
    else: ...                              # event.source, ...; event.rest to the SMTP core

The parser reads one header: ``next_event`` returns ``NEED_DATA`` until it is decided,
then the same ``ProxyHeader`` or ``ProxyError`` on every call; data fed after that is a
caller's bug (``ProxyUsageError``): what follows the header belongs to the SMTP session.

Choices where the specification leaves the receiver free (docs/proxy.md):
- Strict: anything that does not match exactly is refused (§2.1 "Any sequence which does
  not exactly match the protocol must be discarded"); a header split across any number
  of reads is read all the same (§2 recommends tolerance).
- Version 2 over UDP (any family) is refused when relayed: an SMTP listener cannot be
  relaying a datagram. UNIX stream is reported as ``Family.UNKNOWN`` without addresses,
  the fallback §2.2 prescribes for a valid combination the receiver does not support.
  Family/protocol bytes other than the seven §2.2 lists are refused.
- LOCAL (§2.2: the proxy's own connection, such as a health check; HAProxy 2.6 also
  sends it for a client of a unix socket) ignores the family and its addresses, but its
  TLVs are read and a CRC-32C among them is verified.
- A TLV type this module names may appear once (two AUTHORITY TLVs would be two
  answers to one question); NOOP any number of times; other types (custom 0xE0-0xEF,
  experimental, unassigned) are kept raw, in order, in ``Tlvs.other``.
- Text TLVs are decoded (UTF-8 for AUTHORITY and CN, US-ASCII for the others, §2.2.2,
  §2.2.6, §2.2.7) and refused if they hold a control character.

Security: the octets come from the network, and nothing they hold raises: a header that
is malformed, too big or absent is a ``ProxyError`` whose reason is this module's own
text with at most numbers in it, never a peer's octets, so it may be logged as it is.
Memory is bounded: between reads the parser holds fewer than 107 octets (version 1) or
``max_size`` (version 2), whatever it is fed, and nothing once decided. A version
2 header longer than ``max_size`` is refused from its 16-octet fixed part, before its
body is read. The only per-octet Python loop is CRC-32C, run only when the TLV is there,
over at most ``max_size`` octets (some 0.3 ms for 4096). Whether a connection may send a
header at all is the listener's question, never guessed from the octets (§5).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, NamedTuple

import msgspec

__all__ = [
    "CLIENT_CERT_CONN",
    "CLIENT_CERT_SESS",
    "CLIENT_SSL",
    "DEFAULT_MAX_SIZE",
    "MIN_MAX_SIZE",
    "NEED_DATA",
    "UNIQUE_ID_MAX",
    "V1_MAX_LINE",
    "V2_FIXED",
    "V2_MAX_SIZE",
    "V2_SIGNATURE",
    "Address",
    "Command",
    "Event",
    "Family",
    "IPAddress",
    "NeedData",
    "ProxyError",
    "ProxyHeader",
    "ProxyParser",
    "ProxyUsageError",
    "SslInfo",
    "SslSubtype",
    "Tlv",
    "TlvType",
    "Tlvs",
    "build_v1",
    "build_v2",
    "crc32c",
]

# --- limits ----------------------------------------------------------------------

#: §2.1: the longest version 1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6
#: addresses and two five-digit ports).
V1_MAX_LINE: Final = 107
#: §2.2: the 12-octet signature that starts a version 2 header.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: §2.2: signature, version and command, family and protocol, 16-bit length.
V2_FIXED: Final = 16
#: §2.2: the length field has 16 bits, so no version 2 header is longer.
V2_MAX_SIZE: Final = V2_FIXED + 0xFFFF
#: A header with every TLV named here at its practical largest (a 255-octet SNI, a
#: 128-octet unique ID, a 64-character CN: RFC 5280 ub-common-name) is under 1 KiB;
#: 4096 leaves room for a cloud load balancer's custom TLVs.
DEFAULT_MAX_SIZE: Final = 4096
#: §2: both formats are designed to fit in 536 octets, the smallest TCP segment every
#: host accepts; a smaller cap would refuse headers the specification means to be sent.
MIN_MAX_SIZE: Final = 536
#: §2.2.5: a unique ID is at most 128 octets.
UNIQUE_ID_MAX: Final = 128

_V1_PREFIX: Final = b"PROXY"


class TlvType(enum.IntEnum):
    """§2.2: the registered TLV types."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    NETNS = 0x30


class SslSubtype(enum.IntEnum):
    """§2.2.6: the TLVs inside an SSL TLV."""

    VERSION = 0x21
    CN = 0x22
    CIPHER = 0x23
    SIG_ALG = 0x24
    KEY_ALG = 0x25


#: §2.2.6: the bits of ``SslInfo.client``.
CLIENT_SSL: Final = 0x01
CLIENT_CERT_CONN: Final = 0x02
CLIENT_CERT_SESS: Final = 0x04


# --- events ----------------------------------------------------------------------


class NeedData(enum.Enum):
    """What ``next_event`` returns while the header is incomplete."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class Command(enum.Enum):
    #: Relayed on behalf of a client: the addresses are the client's (v1 always).
    PROXY = "proxy"
    #: §2.2: the proxy's own connection (a health check; for HAProxy also a client on a
    #: unix socket): no addresses given, the real endpoints are the proxy's.
    LOCAL = "local"


class Family(enum.Enum):
    TCP4 = "TCP4"
    TCP6 = "TCP6"
    #: v1 UNKNOWN, v2 UNSPEC or UNIX stream, and every LOCAL: no addresses given.
    UNKNOWN = "UNKNOWN"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Address(msgspec.Struct, frozen=True):
    """One end of the relayed connection."""

    ip: IPAddress
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError("port out of range")
        if isinstance(self.ip, ipaddress.IPv6Address) and self.ip.scope_id is not None:
            raise ValueError("an address with a scope has no wire form")


class Tlv(msgspec.Struct, frozen=True):
    """A TLV of a type this module does not interpret, as received."""

    type: int
    value: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 0xFF or len(self.value) > 0xFFFF:
            raise ValueError("TLV type or length out of range")


def _check_text(name: str, value: str | None, *, ascii_only: bool) -> None:
    if value is None:
        return
    if ascii_only and not value.isascii():
        raise ValueError(f"{name} is not US-ASCII")
    if _CONTROL.search(value):
        raise ValueError(f"{name} holds a control character")


def _check_other(name: str, other: tuple[Tlv, ...], named: frozenset[int]) -> None:
    if any(tlv.type in named for tlv in other):
        raise ValueError(f"{name} holds a type this module interprets")


class SslInfo(msgspec.Struct, frozen=True, kw_only=True):
    """§2.2.6: the client's side of TLS, as the proxy saw it."""

    #: ``CLIENT_SSL | CLIENT_CERT_CONN | CLIENT_CERT_SESS``; other bits kept as sent.
    client: int = 0
    #: 0 when the client presented a certificate and it was verified (see ``verified``).
    verify: int = 0
    version: str | None = None  # e.g. "TLSv1.3"
    cn: str | None = None  # the Common Name of the client certificate's subject
    cipher: str | None = None  # e.g. "TLS_AES_256_GCM_SHA384"
    sig_alg: str | None = None  # e.g. "RSA-SHA256"
    key_alg: str | None = None  # e.g. "RSA2048"
    other: tuple[Tlv, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.client <= 0xFF or not 0 <= self.verify <= 0xFFFFFFFF:
            raise ValueError("SSL client or verify field out of range")
        for name in ("version", "cipher", "sig_alg", "key_alg"):
            _check_text(f"SSL {name}", getattr(self, name), ascii_only=True)
        _check_text("SSL CN", self.cn, ascii_only=False)
        _check_other("SSL TLV", self.other, frozenset(SslSubtype))

    @property
    def tls(self) -> bool:
        """The client connected over TLS."""
        return bool(self.client & CLIENT_SSL)

    @property
    def verified(self) -> bool:
        """The client presented a certificate and the proxy verified it (§2.2.6: ``verify``
        alone is 0 also when no certificate came)."""
        presented = self.client & (CLIENT_CERT_CONN | CLIENT_CERT_SESS)
        return bool(presented) and self.verify == 0


class Tlvs(msgspec.Struct, frozen=True, kw_only=True):
    """The TLVs of a version 2 header, decoded (§2.2.1-§2.2.8)."""

    alpn: bytes | None = None  # §2.2.1, e.g. b"h2"
    authority: str | None = None  # §2.2.2: the SNI the client sent
    #: §2.2.3: a CRC-32C was present (and matched: otherwise the header is refused).
    crc32c: bool = False
    unique_id: bytes | None = None  # §2.2.5
    ssl: SslInfo | None = None  # §2.2.6
    netns: str | None = None  # §2.2.7
    other: tuple[Tlv, ...] = ()

    def __post_init__(self) -> None:
        if self.unique_id is not None and len(self.unique_id) > UNIQUE_ID_MAX:
            raise ValueError("unique ID longer than 128 octets")
        _check_text("AUTHORITY", self.authority, ascii_only=False)
        _check_text("NETNS", self.netns, ascii_only=True)
        _check_other("TLVs", self.other, frozenset(TlvType))


_NO_TLVS: Final = Tlvs()


class ProxyHeader(msgspec.Struct, frozen=True, kw_only=True):
    """A complete, valid header, and what followed it in the same read."""

    version: Literal[1, 2]
    command: Command
    family: Family
    #: The client's end and the end it connected to; None when ``family`` is UNKNOWN.
    source: Address | None
    destination: Address | None
    tlvs: Tlvs = _NO_TLVS
    #: The octets after the header in the read that completed it: the SMTP session's.
    rest: bytes = b""

    def __post_init__(self) -> None:
        if self.version not in (1, 2):
            raise ValueError("version 1 or 2")
        if (self.source is None) != (self.destination is None):
            raise ValueError("source and destination go together")
        if self.version == 1 and (self.command is Command.LOCAL or self.tlvs != _NO_TLVS):
            raise ValueError("version 1 has neither LOCAL nor TLVs")
        if self.command is Command.LOCAL and self.family is not Family.UNKNOWN:
            raise ValueError("LOCAL carries no family")
        _check_family(self.family, self.source, self.destination)


def _check_family(family: Family, source: Address | None, dest: Address | None) -> None:
    if family is Family.UNKNOWN:
        if source is not None:
            raise ValueError("no addresses with family UNKNOWN")
        return
    kind = ipaddress.IPv4Address if family is Family.TCP4 else ipaddress.IPv6Address
    if source is None or dest is None:
        raise ValueError(f"{family.value} needs addresses")
    if not isinstance(source.ip, kind) or not isinstance(dest.ip, kind):
        raise ValueError(f"{family.value} needs {kind.__name__} addresses")


class ProxyError(msgspec.Struct, frozen=True):
    """The octets are not a valid header: close the connection (§2.1, §2.2)."""

    #: This module's words, never the peer's octets.
    reason: str


class ProxyUsageError(Exception):
    """The caller used the parser wrongly (fed data once the header was decided)."""


Event = ProxyHeader | ProxyError | NeedData


class _Malformed(Exception):
    """Raised inside the parser only; becomes the ``ProxyError`` the caller gets."""


# --- CRC-32C ---------------------------------------------------------------------

# RFC 4960 Appendix B (= RFC 3720 B.4): CRC-32C, the Castagnoli polynomial 0x1EDC6F41,
# reflected (0x82F63B78), initial value and final XOR 0xFFFFFFFF.
_CASTAGNOLI_REFLECTED: Final = 0x82F63B78


def _crc32c_entry(byte: int) -> int:
    crc = byte
    for _ in range(8):
        crc = (crc >> 1) ^ _CASTAGNOLI_REFLECTED if crc & 1 else crc >> 1
    return crc


_CRC32C_TABLE: Final = tuple(_crc32c_entry(byte) for byte in range(256))


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C of ``data``; ``crc32c(b"123456789") == 0xE3069283``."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- the parser ------------------------------------------------------------------


class ProxyParser:
    """Reads one PROXY protocol header (v1 or v2) from the start of a connection."""

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if not MIN_MAX_SIZE <= max_size <= V2_MAX_SIZE:
            raise ValueError(f"max_size must be within {MIN_MAX_SIZE}..{V2_MAX_SIZE}")
        #: The largest version 2 header accepted, fixed part included.
        self.max_size = max_size
        self._buffer = bytearray()
        self._result: ProxyHeader | ProxyError | None = None

    @property
    def buffered(self) -> int:
        """Octets held while the header is incomplete (0 once decided)."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """The next octets from the peer; ``b""`` when it closed the connection."""
        if self._result is not None:
            raise ProxyUsageError("the header is decided: later octets are the session's")
        if not data:
            reason = "closed before the header was complete" if self._buffer else "closed"
            self._decide(ProxyError(f"connection {reason}"))
            return
        self._buffer += data
        result: ProxyHeader | ProxyError | None
        try:
            result = _parse(self._buffer, self.max_size)
        except _Malformed as error:
            result = ProxyError(str(error))
        if result is not None:
            self._decide(result)

    def next_event(self) -> Event:
        """``NEED_DATA`` until the header is decided, then its result, on every call."""
        return NEED_DATA if self._result is None else self._result

    def _decide(self, result: ProxyHeader | ProxyError) -> None:
        self._result = result
        self._buffer = bytearray()


def _parse(buf: bytearray, max_size: int) -> ProxyHeader | None:
    """The header in ``buf`` if complete, None for more octets; raises ``_Malformed``."""
    if V2_SIGNATURE.startswith(buf[: len(V2_SIGNATURE)]):
        return _parse_v2(buf, max_size) if len(buf) > len(V2_SIGNATURE) else None
    if _V1_PREFIX.startswith(buf[: len(_V1_PREFIX)]):
        return _parse_v1(buf) if len(buf) > len(_V1_PREFIX) else None
    raise _Malformed(_not_a_header(bytes(buf[:16])))


# What a client that sends no header may send first (RFC 5321 §4.1, 2033, 3207 STARTTLS,
# 4954): its first four octets, to name the likely cause of the error.
_SMTP_VERBS: Final = frozenset(
    b"EHLO HELO LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN HELP AUTH STAR".split()
)


def _not_a_header(head: bytes) -> str:
    if head[:4].upper() in _SMTP_VERBS:
        return "not a PROXY protocol header but an SMTP command: the peer sends none"
    if head[:2] == b"\x16\x03":
        return "not a PROXY protocol header but a TLS handshake: the peer sends none"
    return "not a PROXY protocol header"


# --- version 1 (§2.1) --------------------------------------------------------------

# "PROXY" SP ( "TCP4" SP IPv4 SP IPv4 / "TCP6" SP IPv6 SP IPv6 ) SP port SP port CRLF
# port = "0" / %x31-39 0*4DIGIT       ; 0..65535, "Heading zeroes are not permitted"
_PORT = rb"(0|[1-9][0-9]{0,4})"
_V1_TCP = re.compile(
    rb"PROXY (TCP4|TCP6) ([0-9A-Fa-f:.]+) ([0-9A-Fa-f:.]+) " + _PORT + b" " + _PORT
)
# "PROXY" SP "UNKNOWN" [ SP *anything-but-CRLF ] CRLF   ; "the receiver must ignore
# anything presented before the CRLF is found"
_V1_UNKNOWN = re.compile(rb"PROXY UNKNOWN(?: .*)?")  # the line holds no CR or LF
# "exactly 4 integers in the range [0..255] ... Heading zeroes are not permitted"
_OCTET = rb"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(_OCTET + rb"(?:\." + _OCTET + rb"){3}")
# Groups of 1-4 hex digits, one "::" at most, 128 bits (ipaddress checks the rest); the
# dotted tail of an IPv4-mapped address, as inet_ntop(3) writes it, is accepted.
_IPV6 = re.compile(rb"[0-9A-Fa-f:]{2,39}|[0-9A-Fa-f:]{2,30}" + _IPV4.pattern)


def _v1_line(buf: bytearray) -> bytes | None:
    """The line without its CRLF, None for more octets."""
    cr = buf.find(b"\r", 0, V1_MAX_LINE - 1)
    lf = buf.find(b"\n", 0, V1_MAX_LINE)
    if lf != -1 and (cr == -1 or lf < cr):
        raise _Malformed("v1: a line feed without carriage return")
    if cr == -1:
        if len(buf) >= V1_MAX_LINE - 1:
            raise _Malformed("v1: no CRLF within 107 octets")
        return None
    if cr + 1 == len(buf):
        return None
    if buf[cr + 1] != 0x0A:
        raise _Malformed("v1: a carriage return without line feed")
    return bytes(buf[:cr])


def _parse_v1(buf: bytearray) -> ProxyHeader | None:
    line = _v1_line(buf)
    if line is None:
        return None
    rest = bytes(buf[len(line) + 2 :])
    if _V1_UNKNOWN.fullmatch(line):
        return ProxyHeader(
            version=1, command=Command.PROXY, family=Family.UNKNOWN,
            source=None, destination=None, rest=rest,
        )  # fmt: skip
    match = _V1_TCP.fullmatch(line)
    if match is None:
        raise _Malformed("v1: does not match PROXY TCP4|TCP6|UNKNOWN with single spaces")
    family = Family(match[1].decode())
    return ProxyHeader(
        version=1, command=Command.PROXY, family=family,
        source=_v1_address(family, match[2], match[4]),
        destination=_v1_address(family, match[3], match[5]), rest=rest,
    )  # fmt: skip


def _v1_address(family: Family, ip: bytes, port: bytes) -> Address:
    v4 = family is Family.TCP4
    kind = ipaddress.IPv4Address if v4 else ipaddress.IPv6Address
    if not (_IPV4 if v4 else _IPV6).fullmatch(ip):
        raise _Malformed(f"v1: not an {'IPv4' if v4 else 'IPv6'} address")
    try:
        parsed: IPAddress = kind(ip.decode("ascii"))
    except ValueError:  # its text would quote the octets
        raise _Malformed(f"v1: not an {'IPv4' if v4 else 'IPv6'} address") from None
    if int(port) > 0xFFFF:
        raise _Malformed("v1: port beyond 65535")
    return Address(parsed, int(port))


# --- version 2 (§2.2) --------------------------------------------------------------


class _Layout(NamedTuple):
    """What a family/protocol byte means: the family reported for a relayed connection
    (None: refused) and the length of its address block."""

    family: Family | None
    address_length: int


# §2.2 "In practice, the following protocol bytes are expected"; any other is refused.
_LAYOUTS: Final[dict[int, _Layout]] = {
    0x00: _Layout(Family.UNKNOWN, 0),  # UNSPEC
    0x11: _Layout(Family.TCP4, 4 + 4 + 2 + 2),
    0x12: _Layout(None, 4 + 4 + 2 + 2),  # UDP over IPv4
    0x21: _Layout(Family.TCP6, 16 + 16 + 2 + 2),
    0x22: _Layout(None, 16 + 16 + 2 + 2),  # UDP over IPv6
    0x31: _Layout(Family.UNKNOWN, 108 + 108),  # UNIX stream: no IP address to give
    0x32: _Layout(None, 108 + 108),  # UNIX datagram
}
_COMMANDS: Final = {0x0: Command.LOCAL, 0x1: Command.PROXY}


def _parse_v2(buf: bytearray, max_size: int) -> ProxyHeader | None:
    """The header once all its octets are in ``buf``; its fixed part checked first."""
    command = _v2_command(buf[12])
    if len(buf) < 14:
        return None
    layout = _v2_layout(buf[13], command)
    if len(buf) < V2_FIXED:
        return None
    size = V2_FIXED + int.from_bytes(buf[14:16], "big")
    if size > max_size:
        raise _Malformed(f"v2: a header of {size} octets, over the limit of {max_size}")
    if size < V2_FIXED + layout.address_length:
        raise _Malformed("v2: length shorter than the address block")
    if len(buf) < size:
        return None
    header = bytes(buf[:size])
    return _decode_v2(header, command, layout, rest=bytes(buf[size:]))


def _v2_command(ver_cmd: int) -> Command:
    if ver_cmd >> 4 != 2:
        raise _Malformed(f"v2: version {ver_cmd >> 4}, not 2")
    command = _COMMANDS.get(ver_cmd & 0x0F)
    if command is None:
        raise _Malformed(f"v2: command {ver_cmd & 0x0F}, neither LOCAL nor PROXY")
    return command


def _v2_layout(fam: int, command: Command) -> _Layout:
    layout = _LAYOUTS.get(fam)
    if layout is None:
        raise _Malformed(f"v2: address family and protocol 0x{fam:02x} undefined")
    if layout.family is None and command is Command.PROXY:
        raise _Malformed("v2: a datagram connection relayed to a stream listener")
    return layout


def _decode_v2(header: bytes, command: Command, layout: _Layout, rest: bytes) -> ProxyHeader:
    end = V2_FIXED + layout.address_length
    tlvs = _decode_tlvs(header, end)
    # None only for a datagram, which _v2_layout lets through for LOCAL alone.
    family = (layout.family if command is Command.PROXY else None) or Family.UNKNOWN
    source = destination = None
    if family is not Family.UNKNOWN:
        source, destination = _v2_addresses(header[V2_FIXED:end], family)
    return ProxyHeader(
        version=2, command=command, family=family, source=source,
        destination=destination, tlvs=tlvs, rest=rest,
    )  # fmt: skip


def _v2_addresses(block: bytes, family: Family) -> tuple[Address, Address]:
    """Source and destination from an address block: both addresses, then both ports."""
    kind = ipaddress.IPv4Address if family is Family.TCP4 else ipaddress.IPv6Address
    width = 4 if family is Family.TCP4 else 16
    ports = block[2 * width :]
    return (
        Address(kind(block[:width]), int.from_bytes(ports[:2], "big")),
        Address(kind(block[width : 2 * width]), int.from_bytes(ports[2:], "big")),
    )


class _Item(NamedTuple):
    """One TLV found in a header: its type and where its value lies."""

    type: int
    start: int
    end: int


def _split(data: bytes, start: int, end: int) -> Iterator[_Item]:
    """The TLVs in ``data[start:end]``, which they must fill exactly (§2.2)."""
    offset = start
    while offset < end:
        if end - offset < 3:
            raise _Malformed("a TLV cut short in its type or length")
        value = offset + 3
        length = int.from_bytes(data[offset + 1 : value], "big")
        if value + length > end:
            raise _Malformed("a TLV's length goes beyond its end")
        yield _Item(data[offset], value, value + length)
        offset = value + length


def _utf8(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise _Malformed("not UTF-8") from None


def _ascii(value: bytes) -> str:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise _Malformed("not US-ASCII") from None


def _crc_field(value: bytes) -> bool:
    if len(value) != 4:
        raise _Malformed("not 4 octets")
    return True  # verified over the whole header by _check_crc


def _decode_ssl(value: bytes) -> SslInfo:
    if len(value) < 5:
        raise _Malformed("shorter than its client and verify fields")
    fields, other = _collect(value, _split(value, 5, len(value)), _SSL_FIELDS)
    verify = int.from_bytes(value[1:5], "big")
    try:
        return SslInfo(client=value[0], verify=verify, other=other, **fields)
    except ValueError as error:  # a field's rule, in our words
        raise _Malformed(str(error)) from None


_Decoder = Callable[[bytes], Any]
# Type: (field name, decoder); a decoder raises _Malformed. No name: dropped (NOOP).
_SSL_FIELDS: Final[dict[int, tuple[str, _Decoder]]] = {
    SslSubtype.VERSION: ("version", _ascii),
    SslSubtype.CN: ("cn", _utf8),
    SslSubtype.CIPHER: ("cipher", _ascii),
    SslSubtype.SIG_ALG: ("sig_alg", _ascii),
    SslSubtype.KEY_ALG: ("key_alg", _ascii),
}
_TLV_FIELDS: Final[dict[int, tuple[str, _Decoder]]] = {
    TlvType.ALPN: ("alpn", bytes),
    TlvType.AUTHORITY: ("authority", _utf8),
    TlvType.CRC32C: ("crc32c", _crc_field),
    TlvType.NOOP: ("", bytes),  # §2.2.4: "should be ignored when parsed"
    TlvType.UNIQUE_ID: ("unique_id", bytes),
    TlvType.SSL: ("ssl", _decode_ssl),
    TlvType.NETNS: ("netns", _ascii),
}


def _collect(
    data: bytes, items: Iterator[_Item], table: dict[int, tuple[str, _Decoder]]
) -> tuple[dict[str, Any], tuple[Tlv, ...]]:
    """The fields ``table`` names, decoded, and the TLVs it does not name (NOOP dropped)."""
    fields: dict[str, Any] = {}
    other: list[Tlv] = []
    for item in items:
        value = data[item.start : item.end]
        name, decode = table.get(item.type, ("", bytes))
        if item.type not in table:
            other.append(Tlv(item.type, value))
        if not name:
            continue
        if name in fields:
            raise _Malformed(f"TLV 0x{item.type:02x} more than once")
        try:
            fields[name] = decode(value)
        except _Malformed as error:
            raise _Malformed(f"TLV 0x{item.type:02x}: {error}") from None
    return fields, tuple(other)


def _decode_tlvs(header: bytes, start: int) -> Tlvs:
    try:
        items = list(_split(header, start, len(header)))
        fields, other = _collect(header, iter(items), _TLV_FIELDS)
        if fields.get("crc32c"):
            _check_crc(header, next(i for i in items if i.type == TlvType.CRC32C))
        return Tlvs(other=other, **fields)
    except (_Malformed, ValueError) as error:  # a ValueError: a field's rule, our words
        raise _Malformed(f"v2: {error}") from None


def _check_crc(header: bytes, item: _Item) -> None:
    """§2.2.3: the CRC-32C of the whole header with the checksum's value zeroed."""
    zeroed = header[: item.start] + bytes(4) + header[item.end :]
    if crc32c(zeroed) != int.from_bytes(header[item.start : item.end], "big"):
        raise _Malformed("CRC-32C mismatch")


# --- the wire form, for harnesses and fixtures -----------------------------------


def build_v1(header: ProxyHeader) -> bytes:
    """The version 1 line for ``header``, followed by ``header.rest``."""
    if header.version != 1:
        raise ValueError("not a version 1 header")
    src, dst = header.source, header.destination
    if src is None or dst is None:
        return b"PROXY UNKNOWN\r\n" + header.rest
    line = f"PROXY {header.family.value} {src.ip} {dst.ip} {src.port} {dst.port}\r\n"
    return line.encode("ascii") + header.rest


def build_v2(header: ProxyHeader) -> bytes:
    """The version 2 header for ``header`` (a CRC-32C TLV first when ``tlvs.crc32c``),
    followed by ``header.rest``."""
    if header.version != 2:
        raise ValueError("not a version 2 header")
    fam, block = _v2_block(header)
    crc = _tlv(TlvType.CRC32C, bytes(4)) if header.tlvs.crc32c else b""
    body = block + crc + _encode_tlvs(header.tlvs)
    if len(body) > 0xFFFF:
        raise ValueError("header too long for version 2")
    ver_cmd = 0x21 if header.command is Command.PROXY else 0x20
    wire = V2_SIGNATURE + bytes((ver_cmd, fam)) + len(body).to_bytes(2, "big") + body
    if crc:
        at = V2_FIXED + len(block) + 3
        wire = wire[:at] + crc32c(wire).to_bytes(4, "big") + wire[at + 4 :]
    return wire + header.rest


def _v2_block(header: ProxyHeader) -> tuple[int, bytes]:
    src, dst = header.source, header.destination
    if src is None or dst is None:
        return 0x00, b""
    fam = 0x11 if header.family is Family.TCP4 else 0x21
    ports = src.port.to_bytes(2, "big") + dst.port.to_bytes(2, "big")
    return fam, src.ip.packed + dst.ip.packed + ports


def _tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


def _encode_tlvs(tlvs: Tlvs) -> bytes:
    fields: list[tuple[int, bytes | None]] = [
        (TlvType.ALPN, tlvs.alpn),
        (TlvType.AUTHORITY, _encoded(tlvs.authority)),
        (TlvType.UNIQUE_ID, tlvs.unique_id),
        (TlvType.SSL, None if tlvs.ssl is None else _encode_ssl(tlvs.ssl)),
        (TlvType.NETNS, _encoded(tlvs.netns)),
    ]
    return _encode(fields, tlvs.other)


def _encode_ssl(ssl: SslInfo) -> bytes:
    fields: list[tuple[int, bytes | None]] = [
        (SslSubtype.VERSION, _encoded(ssl.version)),
        (SslSubtype.CN, _encoded(ssl.cn)),
        (SslSubtype.CIPHER, _encoded(ssl.cipher)),
        (SslSubtype.SIG_ALG, _encoded(ssl.sig_alg)),
        (SslSubtype.KEY_ALG, _encoded(ssl.key_alg)),
    ]
    head = bytes((ssl.client,)) + ssl.verify.to_bytes(4, "big")
    return head + _encode(fields, ssl.other)


def _encoded(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8")


def _encode(fields: list[tuple[int, bytes | None]], other: tuple[Tlv, ...]) -> bytes:
    named = b"".join(_tlv(kind, value) for kind, value in fields if value is not None)
    return named + b"".join(_tlv(tlv.type, tlv.value) for tlv in other)
