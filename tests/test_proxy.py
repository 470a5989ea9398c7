"""The PROXY protocol reader (``wildboar.proxy``): the specification's examples, every
malformed header we could think of, headers split across any number of reads, Hypothesis
round trips through the builders and fuzzing for the invariants (nothing raises, memory
stays bounded, reasons never quote the peer), and the headers a real HAProxy sends.

Section numbers (§) are those of HAProxy's "The PROXY protocol, Versions 1 & 2"
(https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt). The version 2 headers here
are written by hand (``v2``, ``tlv``), independently of the module's ``build_v2``.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import socket
import ssl
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wildboar import proxy
from wildboar.proxy import (
    NEED_DATA,
    Address,
    Command,
    Family,
    ProxyError,
    ProxyHeader,
    ProxyParser,
    SslInfo,
    Tlv,
    Tlvs,
)

from . import haproxy

SIG = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # §2.2, octet by octet
IP = ipaddress.ip_address


# --- helpers ---------------------------------------------------------------------


def read(pieces: Iterable[bytes], **options: int) -> proxy.Event:
    """Feeds ``pieces`` until the header is decided. A header's ``rest`` is then every
    octet after it: its own and those of the pieces not fed (the SMTP session's)."""
    parser = ProxyParser(**options)
    pieces = list(pieces)
    for index, piece in enumerate(pieces):
        parser.receive_data(piece)
        event = parser.next_event()
        if isinstance(event, ProxyHeader):
            after = b"".join(pieces[index + 1 :])
            return msgspec.structs.replace(event, rest=event.rest + after)
        if event is not NEED_DATA:
            return event
    return parser.next_event()


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def ok(data: bytes, **options: int) -> ProxyHeader:
    """The header in ``data``, the same whole and fed one octet at a time."""
    whole = read([data], **options)
    assert isinstance(whole, ProxyHeader), whole
    assert read(bytewise(data), **options) == whole
    return whole


def refused(data: bytes, **options: int) -> str:
    """The reason ``data`` is refused, the same whole and fed one octet at a time."""
    whole = read([data], **options)
    assert isinstance(whole, ProxyError), whole
    assert read(bytewise(data), **options) == whole
    return whole.reason


def v2(
    body: bytes = b"", *, ver_cmd: int = 0x21, fam: int = 0x11, length: int | None = None
) -> bytes:
    size = len(body) if length is None else length
    return SIG + bytes((ver_cmd, fam)) + size.to_bytes(2, "big") + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


def with_crc(wire: bytes) -> bytes:
    """``wire`` (a v2 header) with a CRC-32C TLV appended and its length fixed."""
    body = wire[16:] + tlv(0x03, bytes(4))
    unsummed = v2(body, ver_cmd=wire[12], fam=wire[13])
    return unsummed[:-4] + proxy.crc32c(unsummed).to_bytes(4, "big")


def ports(source: int, destination: int) -> bytes:
    return source.to_bytes(2, "big") + destination.to_bytes(2, "big")


ADDR4 = IP("192.0.2.1").packed + IP("198.51.100.2").packed + ports(56324, 25)
ADDR6 = IP("2001:db8::1").packed + IP("2001:db8::25").packed + ports(56324, 25)
SRC4, DST4 = Address(IP("192.0.2.1"), 56324), Address(IP("198.51.100.2"), 25)
SRC6, DST6 = Address(IP("2001:db8::1"), 56324), Address(IP("2001:db8::25"), 25)
EHLO = b"EHLO client.example\r\n"


# --- CRC-32C ---------------------------------------------------------------------


def crc32c_bitwise(data: bytes) -> int:
    """RFC 4960 Appendix B, one bit at a time: the reference for the table-driven one."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


# RFC 3720 B.4 (iSCSI's CRC32C examples) and the customary check value.
ISCSI_READ = bytes.fromhex(
    "01c00000000000000000000000000000140000000000040000000014000000182800000000000000"
    "0200000000000000"
)
CRC32C_VECTORS = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (ISCSI_READ, 0xD9963A56),
]


@pytest.mark.parametrize(("data", "expected"), CRC32C_VECTORS)
def test_crc32c_known_vectors(data: bytes, expected: int) -> None:
    assert proxy.crc32c(data) == expected
    assert crc32c_bitwise(data) == expected


@given(st.binary(max_size=300))
def test_crc32c_matches_the_bitwise_definition(data: bytes) -> None:
    assert proxy.crc32c(data) == crc32c_bitwise(data)


# --- version 1: the specification's examples (§2.1) ------------------------------


def test_v1_example_before_a_request() -> None:
    request = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
    header = ok(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + request)
    assert header == ProxyHeader(
        version=1,
        command=Command.PROXY,
        family=Family.TCP4,
        source=Address(IP("192.168.0.1"), 56324),
        destination=Address(IP("192.168.0.11"), 443),
        rest=request,
    )


FULL6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


@pytest.mark.parametrize(
    ("line", "family"),
    [
        ("PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", Family.TCP4),  # 56
        (f"PROXY TCP6 {FULL6} {FULL6} 65535 65535\r\n", Family.TCP6),  # 104
        ("PROXY UNKNOWN\r\n", Family.UNKNOWN),  # 15
        (f"PROXY UNKNOWN {FULL6} {FULL6} 65535 65535\r\n", Family.UNKNOWN),  # 107
    ],
)
def test_v1_longest_lines(line: str, family: Family) -> None:
    header = ok(line.encode() + EHLO)
    assert header.family is family and header.rest == EHLO
    if family is Family.UNKNOWN:
        assert header.source is header.destination is None
    else:
        assert header.source == header.destination
        assert header.source is not None and header.source.port == 65535


def test_v1_unknown_ignores_the_rest_of_its_line() -> None:
    # "the receiver must ignore anything presented before the CRLF is found"
    for line in (b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY UNKNOWN  \x00 anything\r\n"):
        assert ok(line).family is Family.UNKNOWN


@pytest.mark.parametrize(
    "address",
    ["::", "::1", "2001:db8::1", "2001:DB8::AbCd", "0001:0002:0003:0004:0005:0006:0007:0008",
     "1:2:3:4:5:6:7:8", "fe80::", "::ffff:192.0.2.1", "64:ff9b::198.51.100.7"],
)  # fmt: skip
def test_v1_ipv6_forms(address: str) -> None:
    header = ok(f"PROXY TCP6 {address} ::1 1 2\r\n".encode())
    assert header.source == Address(ipaddress.IPv6Address(address), 1)


def test_v1_port_zero_and_every_digit_count() -> None:
    for port in (0, 7, 25, 587, 4650, 65535):
        header = ok(f"PROXY TCP4 10.0.0.1 10.0.0.2 {port} 25\r\n".encode())
        assert header.source == Address(IP("10.0.0.1"), port)


# --- version 1: malformed --------------------------------------------------------

V1_GOOD = "PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        # line ends: CRLF only (§2.1 "must not tolerate a single CR or LF")
        ("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\n", "line feed without"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\rX", "carriage return without"),
        ("PROXY TCP4 192.0.2.1\r 198.51.100.2 56324 25\r\n", "carriage return without"),
        ("PROXY TCP4 192.0.2.1\n198.51.100.2 56324 25\r\n", "line feed without"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\n\r", "line feed without"),
        # exactly one space, upper case, nothing else
        ("PROXY  TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", "single spaces"),
        ("PROXY TCP4  192.0.2.1 198.51.100.2 56324 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2  56324 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 \r\n", "single spaces"),
        (" PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", "not a PROXY protocol header"),
        ("PROXY\tTCP4 192.0.2.1 198.51.100.2 56324 25\r\n", "single spaces"),
        ("PROXY TCP4\t192.0.2.1 198.51.100.2 56324 25\r\n", "single spaces"),
        ("proxy TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", "not a PROXY protocol header"),
        ("PROXY tcp4 192.0.2.1 198.51.100.2 56324 25\r\n", "single spaces"),
        ("Proxy TCP4 192.0.2.1 198.51.100.2 56324 25\r\n", "not a PROXY protocol header"),
        ("PROXY unknown\r\n", "single spaces"),
        ("PROXY UNKNOWNX\r\n", "single spaces"),
        ("PROXY\r\n", "single spaces"),
        ("PROXY \r\n", "single spaces"),
        ("PROXY TCP5 192.0.2.1 198.51.100.2 56324 25\r\n", "single spaces"),
        ("PROXY UDP4 192.0.2.1 198.51.100.2 56324 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 56324 25 26\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 56324 25\r\n", "single spaces"),
        ("PROXY TCP4\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1\x00 198.51.100.2 56324 25\r\n", "single spaces"),
        # IPv4: four decimal numbers 0-255, no heading zeroes
        ("PROXY TCP4 192.0.2.01 198.51.100.2 56324 25\r\n", "not an IPv4 address"),
        ("PROXY TCP4 010.0.2.1 198.51.100.2 56324 25\r\n", "not an IPv4 address"),
        ("PROXY TCP4 192.0.2.1 198.51.100.00 56324 25\r\n", "not an IPv4 address"),
        ("PROXY TCP4 256.0.2.1 198.51.100.2 56324 25\r\n", "not an IPv4 address"),
        ("PROXY TCP4 192.0.2 198.51.100.2 56324 25\r\n", "not an IPv4 address"),
        ("PROXY TCP4 192.0.2.1.5 198.51.100.2 56324 25\r\n", "not an IPv4 address"),
        ("PROXY TCP4 0xc0.0.2.1 198.51.100.2 56324 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1. 198.51.100.2 56324 25\r\n", "not an IPv4 address"),
        ("PROXY TCP4 ::1 198.51.100.2 56324 25\r\n", "not an IPv4 address"),
        ("PROXY TCP4 192.0.2.1 ::ffff:198.51.100.2 56324 25\r\n", "not an IPv4 address"),
        # IPv6: hex groups of up to 4, at most one "::", 128 bits
        ("PROXY TCP6 192.0.2.1 ::1 56324 25\r\n", "not an IPv6 address"),
        ("PROXY TCP6 ::1 192.0.2.1 56324 25\r\n", "not an IPv6 address"),
        ("PROXY TCP6 :::1 ::1 56324 25\r\n", "not an IPv6 address"),
        ("PROXY TCP6 1::2::3 ::1 56324 25\r\n", "not an IPv6 address"),
        ("PROXY TCP6 12345::1 ::1 56324 25\r\n", "not an IPv6 address"),
        ("PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 56324 25\r\n", "not an IPv6 address"),
        ("PROXY TCP6 1:2:3:4:5:6:7 ::1 56324 25\r\n", "not an IPv6 address"),
        ("PROXY TCP6 g::1 ::1 56324 25\r\n", "single spaces"),
        ("PROXY TCP6 fe80::1%eth0 ::1 56324 25\r\n", "single spaces"),
        ("PROXY TCP6 [::1] ::1 56324 25\r\n", "single spaces"),
        ("PROXY TCP6 ::ffff:1.2.3.04 ::1 56324 25\r\n", "not an IPv6 address"),
        ("PROXY TCP6 : ::1 56324 25\r\n", "not an IPv6 address"),
        # ports: 0-65535, no heading zeroes
        ("PROXY TCP4 192.0.2.1 198.51.100.2 65536 25\r\n", "port beyond 65535"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 56324 99999\r\n", "port beyond 65535"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 056324 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 56324 025\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 00 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 100000 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 -1 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 +1 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 1e3 25\r\n", "single spaces"),
        ("PROXY TCP4 192.0.2.1 198.51.100.2 ٣ 25\r\n", "single spaces"),  # an Arabic 3
    ],
)
def test_v1_malformed(line: str, reason: str) -> None:
    assert reason in refused(line.encode())


def test_v1_too_long() -> None:
    longest = f"PROXY UNKNOWN {FULL6} {FULL6} 65535 65535\r\n".encode()
    assert len(longest) == proxy.V1_MAX_LINE
    ok(longest)
    assert "no CRLF within 107 octets" in refused(longest[:-2] + b"5\r\n")  # 108
    assert "no CRLF within 107 octets" in refused(b"PROXY UNKNOWN " + b"x" * 200)
    mapped = "0000:0000:0000:0000:0000:ffff:255.255.255.255"  # valid, 45 characters
    assert "107" in refused(f"PROXY TCP6 {mapped} {mapped} 65535 65535\r\n".encode())


def test_v1_is_decided_at_107_octets_without_waiting_for_more() -> None:
    parser = ProxyParser()
    parser.receive_data(b"PROXY UNKNOWN " + b"x" * 91)  # 105 octets: a CR may come
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"\r")
    assert parser.next_event() is NEED_DATA  # its LF ends a line of 107
    parser.receive_data(b"\n")
    assert isinstance(parser.next_event(), ProxyHeader)
    parser = ProxyParser()
    parser.receive_data(b"PROXY UNKNOWN " + b"x" * 92)  # 106 octets, no CR: too long already
    assert isinstance(parser.next_event(), ProxyError)


# --- neither version -------------------------------------------------------------


NOT_A_HEADER = "not a PROXY protocol header"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (EHLO, "but an SMTP command"),
        (b"ehlo client.example\r\n", "but an SMTP command"),
        (b"HELO client.example\r\n", "but an SMTP command"),
        (b"QUIT\r\n", "but an SMTP command"),
        (b"STARTTLS\r\n", "but an SMTP command"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "but a TLS handshake"),
        (b"GET / HTTP/1.1\r\n\r\n", "not a PROXY protocol header"),
        (b"\x00", "not a PROXY protocol header"),
        (b"\r\n", "closed before the header was complete"),  # a prefix of the signature
        (b"\r\nEHLO x\r\n", "not a PROXY protocol header"),
        (b"PROXZ TCP4", "not a PROXY protocol header"),
        (SIG[:-1] + b"X" + b"\x21\x11\x00\x00", "not a PROXY protocol header"),
        (b"\r\n\r\n\x00\r\nQUIT\r\n", "not a PROXY protocol header"),
    ],
)
def test_not_a_header(data: bytes, reason: str) -> None:
    event = read([data, b""])  # then the peer closes
    assert isinstance(event, ProxyError) and reason in event.reason
    # Decided at the first octet that fits neither version, before a hint can be seen.
    octet_by_octet = read([*bytewise(data), b""])
    assert isinstance(octet_by_octet, ProxyError)
    assert octet_by_octet.reason.startswith(NOT_A_HEADER) or octet_by_octet == event


def test_refused_at_the_first_octet_that_is_neither() -> None:
    parser = ProxyParser()
    parser.receive_data(b"E")
    assert isinstance(parser.next_event(), ProxyError)
    parser = ProxyParser()
    parser.receive_data(b"PROX")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"I")
    assert isinstance(parser.next_event(), ProxyError)


def test_closed_before_or_during_the_header() -> None:
    assert read([b""]) == ProxyError("connection closed")
    for partial in (b"PROXY TCP4 1.2.3.4", SIG, v2(ADDR4)[:-1], v2(ADDR4)[:15]):
        assert read([partial, b""]) == ProxyError(
            "connection closed before the header was complete"
        )


# --- version 2: the specification's layouts (§2.2) -------------------------------


def test_v2_tcp4() -> None:
    header = ok(v2(ADDR4) + EHLO)
    assert header == ProxyHeader(
        version=2,
        command=Command.PROXY,
        family=Family.TCP4,
        source=SRC4,
        destination=DST4,
        rest=EHLO,
    )


def test_v2_tcp6() -> None:
    header = ok(v2(ADDR6, fam=0x21) + EHLO)
    assert (header.family, header.source, header.destination) == (Family.TCP6, SRC6, DST6)


def test_v2_local_uses_no_address() -> None:
    # §2.2: LOCAL "must discard the protocol block including the family"
    for wire in (
        v2(ver_cmd=0x20, fam=0x00),
        v2(ADDR4, ver_cmd=0x20),
        v2(ADDR6, ver_cmd=0x20, fam=0x21),
    ):
        header = ok(wire + EHLO)
        assert (header.command, header.family, header.source, header.rest) == (
            Command.LOCAL, Family.UNKNOWN, None, EHLO
        )  # fmt: skip


def test_v2_local_may_say_datagram() -> None:
    # The family of a LOCAL header is ignored; its octets still have to be defined ones.
    assert ok(v2(ADDR4, ver_cmd=0x20, fam=0x12)).command is Command.LOCAL
    assert ok(v2(bytes(216), ver_cmd=0x20, fam=0x32)).command is Command.LOCAL


def test_v2_unspec_and_unix_stream_are_unknown() -> None:
    unix = b"/run/client.sock".ljust(108, b"\0") + b"/run/proxy.sock".ljust(108, b"\0")
    for wire in (v2(fam=0x00), v2(unix, fam=0x31)):
        header = ok(wire + EHLO)
        assert (header.command, header.family, header.source, header.rest) == (
            Command.PROXY, Family.UNKNOWN, None, EHLO
        )  # fmt: skip


def test_v2_length_counts_every_octet_after_the_fixed_part() -> None:
    # "the length of the protocol header in bytes is always exactly 16 + this value"
    wire = v2(ADDR4 + tlv(0x04, b"pad"))
    assert ok(wire + EHLO).rest == EHLO
    assert len(wire) == 16 + 12 + 6


# --- version 2: malformed --------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (v2(ADDR4, ver_cmd=0x11), "version 1, not 2"),
        (v2(ADDR4, ver_cmd=0x31), "version 3, not 2"),
        (v2(ADDR4, ver_cmd=0x01), "version 0, not 2"),
        (v2(ADDR4, ver_cmd=0xF1), "version 15, not 2"),
        (v2(ADDR4, ver_cmd=0x22), "command 2, neither LOCAL nor PROXY"),
        (v2(ADDR4, ver_cmd=0x2F), "command 15, neither"),
        (v2(ADDR4, fam=0x13), "0x13 undefined"),
        (v2(ADDR4, fam=0x41), "0x41 undefined"),
        (v2(ADDR4, fam=0x10), "0x10 undefined"),
        (v2(ADDR4, fam=0x01), "0x01 undefined"),
        (v2(ADDR4, fam=0x33), "0x33 undefined"),
        (v2(ADDR4, fam=0xFF), "0xff undefined"),
        (v2(ADDR4, fam=0x12), "datagram"),
        (v2(ADDR6, fam=0x22), "datagram"),
        (v2(bytes(216), fam=0x32), "datagram"),
        (v2(ADDR4[:11]), "length shorter than the address block"),
        (v2(ADDR6[:35], fam=0x21), "length shorter than the address block"),
        (v2(bytes(215), fam=0x31), "length shorter than the address block"),
        (v2(ADDR4[:11], ver_cmd=0x20), "length shorter than the address block"),
        (v2(ADDR4 + b"\x04"), "TLV cut short"),
        (v2(ADDR4 + b"\x04\x00"), "TLV cut short"),
        (v2(ADDR4 + tlv(0x04, b"") + b"\x01"), "TLV cut short"),
        (v2(ADDR4 + b"\x04\x00\x05abcd"), "TLV's length goes beyond"),
        (v2(ADDR4 + b"\x04\xff\xff"), "TLV's length goes beyond"),
        (v2(b"\x04\x00\x01", ver_cmd=0x20, fam=0x00), "TLV's length goes beyond"),
        (v2(ADDR4 + tlv(0x20, b"\x01\x00\x00\x00")), "TLV 0x20: shorter than its client"),
        (v2(ADDR4 + tlv(0x20, bytes(5) + b"\x21\x00\x09TLSv1.3")), "0x20: a TLV's length"),
        (v2(ADDR4 + tlv(0x20, bytes(5) + b"\x21\x00")), "0x20: a TLV cut short"),
        (v2(ADDR4 + tlv(0x03, bytes(3))), "TLV 0x03: not 4 octets"),
        (v2(ADDR4 + tlv(0x03, bytes(5))), "TLV 0x03: not 4 octets"),
        (v2(ADDR4 + tlv(0x03, bytes(4))), "CRC-32C mismatch"),
        (v2(ADDR4 + tlv(0x02, b"a.example") + tlv(0x02, b"b.example")), "0x02 more than once"),
        (v2(ADDR4 + tlv(0x01, b"smtp") + tlv(0x01, b"smtp")), "0x01 more than once"),
        (v2(ADDR4 + tlv(0x05, b"1") + tlv(0x05, b"1")), "0x05 more than once"),
        (v2(ADDR4 + tlv(0x20, bytes(5)) + tlv(0x20, bytes(5))), "0x20 more than once"),
        (v2(ADDR4 + tlv(0x30, b"a") + tlv(0x30, b"b")), "0x30 more than once"),
        (
            v2(ADDR4 + tlv(0x20, bytes(5) + tlv(0x22, b"a") + tlv(0x22, b"b"))),
            "0x22 more than once",
        ),
        (v2(ADDR4 + tlv(0x02, b"mx.\xffexample")), "TLV 0x02: not UTF-8"),
        (v2(ADDR4 + tlv(0x02, b"mx.example\n")), "AUTHORITY holds a control character"),
        (v2(ADDR4 + tlv(0x02, "mx.\u0085.example".encode())), "control character"),
        (v2(ADDR4 + tlv(0x30, "nétns".encode())), "TLV 0x30: not US-ASCII"),
        (v2(ADDR4 + tlv(0x30, b"ns\x00")), "NETNS holds a control character"),
        (v2(ADDR4 + tlv(0x05, bytes(129))), "unique ID longer than 128 octets"),
        (v2(ADDR4 + tlv(0x20, bytes(5) + tlv(0x21, "TLSv1.3é".encode()))), "0x21: not US-ASCII"),
        (v2(ADDR4 + tlv(0x20, bytes(5) + tlv(0x22, b"\xc3"))), "0x22: not UTF-8"),
        (v2(ADDR4 + tlv(0x20, bytes(5) + tlv(0x22, b"cn\r\n"))), "SSL CN holds a control"),
        (v2(ADDR4 + tlv(0x20, bytes(5) + tlv(0x23, b"AES\x7f"))), "SSL cipher holds a control"),
    ],
)
def test_v2_malformed(wire: bytes, reason: str) -> None:
    assert reason in refused(wire + EHLO)


def test_v2_bad_crc() -> None:
    good = with_crc(v2(ADDR4 + tlv(0x02, b"mx.example.org")))
    assert ok(good).tlvs.crc32c
    crc_type = len(good) - 7
    for index in range(len(good)):  # any octet changed, the checksum's own included
        if index in range(12, 16):
            continue  # the fixed part, whose own checks come first
        if index == crc_type:
            continue  # then it is no CRC-32C TLV any more: nothing says one was meant
        damaged = bytearray(good)
        damaged[index] ^= 0x40
        assert isinstance(read([bytes(damaged)]), ProxyError), index


def test_v2_crc_covers_a_local_header() -> None:
    assert ok(with_crc(v2(ver_cmd=0x20, fam=0x00))).tlvs == Tlvs(crc32c=True)
    damaged = bytearray(with_crc(v2(ver_cmd=0x20, fam=0x00)))
    damaged[-1] ^= 1
    assert "CRC-32C mismatch" in refused(bytes(damaged))


def test_v2_size_cap() -> None:
    def padded(size: int) -> bytes:  # a v2 header of exactly ``size`` octets
        return v2(ADDR4 + tlv(0x04, bytes(size - 16 - 12 - 3)))

    assert ok(padded(4096)).source == SRC4
    assert "a header of 4097 octets, over the limit of 4096" in refused(padded(4097))
    assert ok(padded(600), max_size=600).source == SRC4
    assert "over the limit of 600" in refused(padded(601), max_size=600)
    biggest = padded(proxy.V2_MAX_SIZE)
    assert ok(biggest, max_size=proxy.V2_MAX_SIZE).source == SRC4


def test_v2_over_the_cap_is_refused_from_its_fixed_part() -> None:
    parser = ProxyParser()
    parser.receive_data(v2(length=0xFFFF)[:16])
    event = parser.next_event()
    assert isinstance(event, ProxyError) and "65551 octets" in event.reason
    assert parser.buffered == 0


def test_v2_fixed_part_checked_octet_by_octet() -> None:
    for prefix, error in ((SIG + b"\x11", "version"), (SIG + b"\x21\x12", "datagram")):
        parser = ProxyParser()
        parser.receive_data(prefix)
        event = parser.next_event()
        assert isinstance(event, ProxyError) and error in event.reason


@pytest.mark.parametrize("max_size", [0, 107, proxy.MIN_MAX_SIZE - 1, proxy.V2_MAX_SIZE + 1])
def test_max_size_out_of_range(max_size: int) -> None:
    with pytest.raises(ValueError, match="max_size"):
        ProxyParser(max_size=max_size)


# --- version 2: TLVs (§2.2.1-§2.2.8) ----------------------------------------------


def test_v2_every_tlv() -> None:
    ssl_value = (
        b"\x07"
        + (0).to_bytes(4, "big")
        + b"".join(
            (
                tlv(0x21, b"TLSv1.3"),
                tlv(0x22, "clïent.example.org".encode()),
                tlv(0x23, b"TLS_AES_256_GCM_SHA384"),
                tlv(0x24, b"RSA-SHA256"),
                tlv(0x25, b"RSA2048"),
                tlv(0x26, b"X25519"),  # a subtype of later versions: kept as it came
            )
        )
    )
    body = ADDR4 + b"".join(
        (
            tlv(0x04, b""),
            tlv(0x01, b"smtp"),
            tlv(0x02, "mx.bücher.example".encode()),
            tlv(0x05, bytes(128)),
            tlv(0x20, ssl_value),
            tlv(0x04, b"\xffany\x00padding"),
            tlv(0x30, b"blue"),
            tlv(0xE0, b"\x00custom"),
            tlv(0xF0, b""),
            tlv(0x06, b"unassigned"),
            tlv(0xEA, b"vpce-0123"),
        )
    )
    header = ok(with_crc(v2(body)) + EHLO)
    assert header.rest == EHLO
    assert header.tlvs == Tlvs(
        alpn=b"smtp",
        authority="mx.bücher.example",
        crc32c=True,
        unique_id=bytes(128),
        ssl=SslInfo(
            client=7,
            verify=0,
            version="TLSv1.3",
            cn="clïent.example.org",
            cipher="TLS_AES_256_GCM_SHA384",
            sig_alg="RSA-SHA256",
            key_alg="RSA2048",
            other=(Tlv(0x26, b"X25519"),),
        ),
        netns="blue",
        other=(
            Tlv(0xE0, b"\x00custom"),
            Tlv(0xF0, b""),
            Tlv(0x06, b"unassigned"),
            Tlv(0xEA, b"vpce-0123"),
        ),
    )
    assert header.tlvs.ssl is not None and header.tlvs.ssl.tls and header.tlvs.ssl.verified


def test_v2_ssl_flags() -> None:
    def info(client: int, verify: int) -> SslInfo:
        value = bytes((client,)) + verify.to_bytes(4, "big")
        found = ok(v2(ADDR4 + tlv(0x20, value))).tlvs.ssl
        assert found is not None
        return found

    assert (info(0, 0).tls, info(0, 0).verified) == (False, False)
    assert (info(1, 0).tls, info(1, 0).verified) == (True, False)  # no certificate: 0 too
    assert info(1 | 2, 0).verified and info(1 | 4, 0).verified
    assert not info(1 | 2 | 4, 20).verified  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    assert info(0xFF, 0xFFFFFFFF) == SslInfo(client=0xFF, verify=0xFFFFFFFF)


def test_v2_empty_tlv_values() -> None:
    body = ADDR4 + tlv(0x01, b"") + tlv(0x02, b"") + tlv(0x05, b"") + tlv(0x30, b"")
    assert ok(v2(body)).tlvs == Tlvs(alpn=b"", authority="", unique_id=b"", netns="")


def test_v2_tlvs_of_local_and_unknown_headers() -> None:
    body = tlv(0x05, b"id-1")
    assert ok(v2(body, ver_cmd=0x20, fam=0x00)).tlvs == Tlvs(unique_id=b"id-1")
    assert ok(v2(body, fam=0x00)).tlvs == Tlvs(unique_id=b"id-1")
    assert ok(v2(bytes(216) + body, fam=0x31)).tlvs == Tlvs(unique_id=b"id-1")


# What HAProxy 2.6.12 sent (test_haproxy_*): send-proxy-v2 with proxy-v2-options
# ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c,unique-id behind a TLS
# frontend, and a LOCAL health check with crc32c. Their checksums are HAProxy's own.
HAPROXY_V2_TLS = (
    SIG + b"\x21\x11\x00\xa2\x7f\x00\x00\x01\x7f\x00\x00\x01\xea\x1e\x2e\x55"
    b"\x03\x00\x04\x9d\x4e\x32\x5f\x02\x00\x0emx.example.org"
    b"\x05\x00\x245705f924-53c5-4df0-9da4-3a47c605f97c"
    b"\x20\x00\x54\x07\x00\x00\x00\x00\x21\x00\x07TLSv1.3\x22\x00\x12client.example.org"
    b"\x25\x00\x07RSA2048\x24\x00\x0aRSA-SHA256\x23\x00\x16TLS_AES_256_GCM_SHA384"
)
HAPROXY_V2_CHECK = SIG + b"\x20\x00\x00\x07\x03\x00\x04\xa9\xb8\x7e\x8f"


def test_v2_haproxy_known_answers() -> None:
    header = ok(HAPROXY_V2_TLS)
    assert header.source == Address(IP("127.0.0.1"), 59934)
    assert header.destination == Address(IP("127.0.0.1"), 11861)
    assert header.tlvs == Tlvs(
        authority="mx.example.org",
        crc32c=True,
        unique_id=b"5705f924-53c5-4df0-9da4-3a47c605f97c",
        ssl=SslInfo(
            client=7,
            version="TLSv1.3",
            cn="client.example.org",
            cipher="TLS_AES_256_GCM_SHA384",
            sig_alg="RSA-SHA256",
            key_alg="RSA2048",
        ),
    )
    check = ok(HAPROXY_V2_CHECK)
    assert (check.command, check.tlvs) == (Command.LOCAL, Tlvs(crc32c=True))


# --- the API ---------------------------------------------------------------------


def test_next_event_repeats_the_decision() -> None:
    parser = ProxyParser()
    assert parser.next_event() is NEED_DATA
    parser.receive_data(v2(ADDR4) + EHLO)
    first = parser.next_event()
    assert isinstance(first, ProxyHeader) and parser.next_event() == first
    assert parser.buffered == 0


@pytest.mark.parametrize("data", [v2(ADDR4), b"EHLO x\r\n"])
def test_no_data_once_decided(data: bytes) -> None:
    parser = ProxyParser()
    parser.receive_data(data)
    for more in (EHLO, b""):
        with pytest.raises(proxy.ProxyUsageError):
            parser.receive_data(more)


def test_the_session_is_not_lost_whatever_the_reads() -> None:
    session = EHLO + b"MAIL FROM:<a@example.org>\r\n" * 100
    for wire in (V1_GOOD.encode(), v2(ADDR4), with_crc(v2(ADDR6 + tlv(0x05, b"x"), fam=0x21))):
        data = wire + session
        for cut in range(1, len(data)):
            header = read([data[:cut], data[cut:]])
            assert isinstance(header, ProxyHeader) and header.rest == session


# --- the value objects and the builders ------------------------------------------


def test_builders_write_the_specification_forms() -> None:
    h1 = ProxyHeader(
        version=1, command=Command.PROXY, family=Family.TCP4, source=SRC4, destination=DST4
    )
    assert proxy.build_v1(h1) == V1_GOOD.encode()
    h2 = msgspec.structs.replace(h1, version=2, rest=EHLO)
    assert proxy.build_v2(h2) == v2(ADDR4) + EHLO
    local = ProxyHeader(
        version=2, command=Command.LOCAL, family=Family.UNKNOWN, source=None, destination=None
    )
    assert proxy.build_v2(local) == v2(ver_cmd=0x20, fam=0x00)
    crc = msgspec.structs.replace(local, tlvs=Tlvs(crc32c=True))
    assert proxy.build_v2(crc) == with_crc(v2(ver_cmd=0x20, fam=0x00))
    unknown = msgspec.structs.replace(local, version=1, command=Command.PROXY)
    assert proxy.build_v1(unknown) == b"PROXY UNKNOWN\r\n"
    with pytest.raises(ValueError, match="version 1"):
        proxy.build_v1(h2)
    with pytest.raises(ValueError, match="version 2"):
        proxy.build_v2(h1)
    too_big = msgspec.structs.replace(h2, tlvs=Tlvs(other=(Tlv(0xE0, bytes(0xFFFF - 14)),)))
    with pytest.raises(ValueError, match="too long"):
        proxy.build_v2(too_big)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Address(IP("192.0.2.1"), 65536), "port"),
        (lambda: Address(IP("192.0.2.1"), -1), "port"),
        (lambda: Address(IP("fe80::1%eth0"), 25), "scope"),
        (lambda: Tlv(256, b""), "TLV type"),
        (lambda: Tlv(0xE0, bytes(0x10000)), "TLV type or length"),
        (lambda: Tlvs(other=(Tlv(0x02, b"x"),)), "interprets"),
        (lambda: Tlvs(other=(Tlv(0x04, b"x"),)), "interprets"),
        (lambda: Tlvs(unique_id=bytes(129)), "128"),
        (lambda: Tlvs(authority="a\tb"), "control"),
        (lambda: Tlvs(netns="é"), "US-ASCII"),
        (lambda: SslInfo(client=256), "out of range"),
        (lambda: SslInfo(verify=-1), "out of range"),
        (lambda: SslInfo(cipher="\x00"), "control"),
        (lambda: SslInfo(other=(Tlv(0x21, b"x"),)), "interprets"),
        (lambda: ProxyHeader(version=3, command=Command.PROXY, family=Family.UNKNOWN,
                             source=None, destination=None), "version"),
        (lambda: ProxyHeader(version=1, command=Command.LOCAL, family=Family.UNKNOWN,
                             source=None, destination=None), "LOCAL"),
        (lambda: ProxyHeader(version=1, command=Command.PROXY, family=Family.UNKNOWN,
                             source=None, destination=None, tlvs=Tlvs(alpn=b"x")), "TLVs"),
        (lambda: ProxyHeader(version=2, command=Command.LOCAL, family=Family.TCP4,
                             source=SRC4, destination=DST4), "LOCAL"),
        (lambda: ProxyHeader(version=2, command=Command.PROXY, family=Family.TCP4,
                             source=SRC4, destination=None), "together"),
        (lambda: ProxyHeader(version=2, command=Command.PROXY, family=Family.TCP4,
                             source=None, destination=None), "needs addresses"),
        (lambda: ProxyHeader(version=2, command=Command.PROXY, family=Family.TCP6,
                             source=SRC4, destination=DST4), "IPv6Address"),
        (lambda: ProxyHeader(version=2, command=Command.PROXY, family=Family.UNKNOWN,
                             source=SRC4, destination=DST4), "no addresses"),
    ],
)  # fmt: skip
def test_value_objects_refuse_what_has_no_wire_form(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make()


# --- Hypothesis: round trips -----------------------------------------------------

ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
utf8_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=40)
NAMED = frozenset(proxy.TlvType)
SUBTYPES = frozenset(proxy.SslSubtype)


def others(named: frozenset[int]) -> st.SearchStrategy[tuple[Tlv, ...]]:
    kinds = st.integers(0, 255).filter(lambda kind: kind not in named)
    return st.lists(st.builds(Tlv, kinds, st.binary(max_size=40)), max_size=4).map(tuple)


ssl_infos = st.builds(
    SslInfo,
    client=st.integers(0, 255),
    verify=st.integers(0, 0xFFFFFFFF),
    version=st.none() | ascii_text,
    cn=st.none() | utf8_text,
    cipher=st.none() | ascii_text,
    sig_alg=st.none() | ascii_text,
    key_alg=st.none() | ascii_text,
    other=others(SUBTYPES),
)
tlvs_values = st.builds(
    Tlvs,
    alpn=st.none() | st.binary(max_size=40),
    authority=st.none() | utf8_text,
    crc32c=st.booleans(),
    unique_id=st.none() | st.binary(max_size=128),
    ssl=st.none() | ssl_infos,
    netns=st.none() | ascii_text,
    other=others(NAMED),
)


@st.composite
def endpoints(draw: st.DrawFn, family: Family) -> tuple[Address | None, Address | None]:
    if family is Family.UNKNOWN:
        return None, None
    ips = st.ip_addresses(v=4 if family is Family.TCP4 else 6)
    ends = st.builds(Address, ips, st.integers(0, 0xFFFF))
    return draw(ends), draw(ends)


@st.composite
def headers(draw: st.DrawFn, version: int | None = None) -> ProxyHeader:
    version = draw(st.sampled_from([1, 2])) if version is None else version
    command = Command.PROXY if version == 1 else draw(st.sampled_from(Command))
    family = Family.UNKNOWN if command is Command.LOCAL else draw(st.sampled_from(Family))
    source, destination = draw(endpoints(family))
    return ProxyHeader(
        version=1 if version == 1 else 2,
        command=command,
        family=family,
        source=source,
        destination=destination,
        tlvs=Tlvs() if version == 1 else draw(tlvs_values),
        rest=draw(st.binary(max_size=40)),
    )


def build(header: ProxyHeader) -> bytes:
    return proxy.build_v1(header) if header.version == 1 else proxy.build_v2(header)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@given(headers(), st.lists(st.integers(0, 10_000), max_size=30))
def test_round_trip_in_any_split(header: ProxyHeader, cuts: list[int]) -> None:
    wire = build(header)
    assert read(split(wire, cuts)) == header
    assert read(bytewise(wire)) == header


@given(headers(version=1))
def test_v1_round_trip_is_within_the_line_limit(header: ProxyHeader) -> None:
    assert len(proxy.build_v1(header)) - len(header.rest) <= proxy.V1_MAX_LINE


def encode_ssl(info: SslInfo) -> bytes:
    """The test's own encoder of an SSL TLV's value (§2.2.6)."""
    named = [(0x21, info.version), (0x22, info.cn), (0x23, info.cipher), (0x24, info.sig_alg),
             (0x25, info.key_alg)]  # fmt: skip
    subs = [tlv(kind, text.encode()) for kind, text in named if text is not None]
    subs += [tlv(item.type, item.value) for item in info.other]
    return bytes((info.client,)) + info.verify.to_bytes(4, "big") + b"".join(subs)


def encode_named(tlvs: Tlvs) -> list[bytes]:
    """The test's own encoder of the TLVs that have fields (CRC-32C aside)."""
    text = {0x02: tlvs.authority, 0x30: tlvs.netns}
    raw = {0x01: tlvs.alpn, 0x05: tlvs.unique_id}
    raw |= {kind: value.encode() for kind, value in text.items() if value is not None}
    if tlvs.ssl is not None:
        raw[0x20] = encode_ssl(tlvs.ssl)
    return [tlv(kind, value) for kind, value in raw.items() if value is not None]


@given(headers(version=2), st.lists(st.binary(max_size=8), max_size=3), st.data())
def test_v2_tlv_order_and_padding_do_not_matter(
    header: ProxyHeader, pads: list[bytes], data: st.DataObject
) -> None:
    # Named TLVs in any order with NOOPs in between; the others keep their order.
    order = data.draw(st.permutations(encode_named(header.tlvs) + [tlv(0x04, p) for p in pads]))
    at = 0
    for item in header.tlvs.other:
        at = data.draw(st.integers(at, len(order)))
        order.insert(at, tlv(item.type, item.value))
        at += 1
    wire = proxy.build_v2(msgspec.structs.replace(header, tlvs=Tlvs(), rest=b""))
    wire = v2(wire[16:] + b"".join(order), ver_cmd=wire[12], fam=wire[13])
    if header.tlvs.crc32c:
        wire = with_crc(wire)
    assert read(split(wire + header.rest, data.draw(st.lists(st.integers(0, 999))))) == header


# --- Hypothesis: fuzzing ---------------------------------------------------------


def feed(parser: ProxyParser, pieces: Iterable[bytes]) -> proxy.Event:
    """Feeds until decided, checking the invariants after every read."""
    bound = max(parser.max_size, proxy.V1_MAX_LINE)
    for piece in pieces:
        parser.receive_data(piece)  # raises nothing
        event = parser.next_event()
        if event is not NEED_DATA:
            assert parser.buffered == 0
            check_event(event)
            return event
        assert parser.buffered < bound
    return parser.next_event()


def check_event(event: proxy.Event) -> None:
    if isinstance(event, ProxyError):
        assert re.fullmatch(r"[ -~]+", event.reason), event.reason
        assert not re.search("[ZQ]{2}", event.reason)  # the fuzzers' marker octets
    elif isinstance(event, ProxyHeader):
        rebuilt = read([build(event)])  # whatever was accepted has a wire form
        assert rebuilt == event


PREFIXES = [
    b"",
    b"PROXY ",
    b"PROXY TCP4 ",
    b"PROXY TCP6 ",
    b"PROXY UNKNOWN",
    SIG,
    SIG + b"\x21",
    SIG + b"\x21\x11",
    SIG + b"\x20\x00",
]
junk = st.binary(max_size=300) | st.text("ZQ0123456789abcdef:. \r\n", max_size=120).map(str.encode)


@given(
    st.sampled_from(PREFIXES),
    junk,
    st.lists(st.integers(0, 1000), max_size=20),
    st.sampled_from([536, 4096]),
)
def test_fuzz_any_octets_in_any_split(
    prefix: bytes, tail: bytes, cuts: list[int], max_size: int
) -> None:
    data = prefix + tail
    feed(ProxyParser(max_size=max_size), [*split(data, cuts), b""])


damages = st.tuples(
    st.integers(0, 10_000), st.integers(0, 2), st.binary(max_size=3) | st.just(b"ZQ")
)


@given(
    headers(),
    st.lists(damages, min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), max_size=10),
)
def test_fuzz_damaged_headers(
    header: ProxyHeader, damage: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    """Octets deleted, replaced or inserted anywhere in a valid header."""
    wire = bytearray(build(header))
    for at, deleted, inserted in damage:
        start = at % (len(wire) + 1)
        wire[start : start + deleted] = inserted
    feed(ProxyParser(), [*split(bytes(wire), cuts), b""])


@given(st.sampled_from(PREFIXES[:5]), st.integers(1, 4096))
def test_endless_v1_stream_is_refused_within_its_limit(prefix: bytes, chunk: int) -> None:
    parser = ProxyParser()
    event = feed(parser, [prefix] + [b"7" * chunk] * 200)
    assert isinstance(event, ProxyError)


def test_endless_v2_stream_costs_at_most_the_cap() -> None:
    def stream() -> Iterator[bytes]:
        yield v2(ADDR4, length=4096 - 16)[:28]
        while True:
            yield b"\x04"

    parser = ProxyParser()
    event = feed(parser, stream())
    assert isinstance(event, ProxyError) and "TLV" in event.reason
    parser = ProxyParser()
    event = feed(parser, iter([SIG, b"\x21\x11\xff\xff", *[bytes(1000)] * 100]))
    assert isinstance(event, ProxyError) and "over the limit" in event.reason


# --- real HAProxy output ---------------------------------------------------------

TLS_OPTIONS = "ssl,cert-cn,ssl-cipher,cert-sig,cert-key,authority,crc32c,unique-id"
ROUTES = {
    # name: (server options, frontend host, TLS)
    "v1": ("send-proxy", "127.0.0.1", False),
    "v1_ipv6": ("send-proxy", "::1", False),
    "v1_unix": ("send-proxy", haproxy.UNIX, False),
    "v2": ("send-proxy-v2", "127.0.0.1", False),
    "v2_ipv6": ("send-proxy-v2", "::1", False),
    "v2_unix": ("send-proxy-v2", haproxy.UNIX, False),
    "v2_tls": (f"send-proxy-v2 proxy-v2-options {TLS_OPTIONS}", "127.0.0.1", True),
    "v1_check": ("send-proxy check check-send-proxy inter 200ms", "127.0.0.1", False),
    "v2_check": ("send-proxy-v2 proxy-v2-options crc32c check check-send-proxy inter 200ms",
                 "127.0.0.1", False),
}  # fmt: skip


@dataclass
class Relay:
    haproxy: haproxy.HAProxy
    servers: dict[str, socket.socket]


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    """One private HAProxy with a frontend per route, each relaying to a listener here."""
    if not haproxy.HAPROXY.exists():
        pytest.fail("haproxy is missing: apt-get install haproxy (Debian's package)")
    assert not haproxy.debian_service_running()
    servers = {name: socket.create_server(("127.0.0.1", 0)) for name in ROUTES}
    routes = [
        haproxy.Route(name, servers[name].getsockname()[:2], options, host, tls)
        for name, (options, host, tls) in ROUTES.items()
    ]
    instance = haproxy.HAProxy(routes)
    try:
        with instance:
            yield Relay(instance, servers)
        assert instance.proc is not None and instance.proc.returncode is not None  # stopped
        assert not haproxy.debian_service_running()
    finally:
        for server in servers.values():
            server.close()


def connect(relay: Relay, name: str, *, certificate: bool = True) -> socket.socket:
    address = relay.haproxy.address(name)
    if isinstance(address, str):
        client = socket.socket(socket.AF_UNIX)
        client.connect(address)
    else:
        client = socket.create_connection(address, timeout=10)
    if not ROUTES[name][2]:
        return client
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certificate:
        context.load_cert_chain(relay.haproxy.client_certificate)
    return context.wrap_socket(client, server_hostname=haproxy.SERVER_NAME)


def accept_header(relay: Relay, name: str, session: bytes = b"") -> tuple[ProxyHeader, bytes]:
    """The header of the next connection HAProxy makes to route ``name``'s listener, read
    as it comes (and again one octet at a time), and the octets the header came with."""
    server = relay.servers[name]
    server.settimeout(10)
    conn, _ = server.accept()
    with conn:
        conn.settimeout(10)
        parser, received = ProxyParser(), b""
        while parser.next_event() is NEED_DATA:
            received += (data := conn.recv(4096))
            parser.receive_data(data)
        header = parser.next_event()
        assert isinstance(header, ProxyHeader), (header, received, relay.haproxy.log)
        rest = header.rest
        while len(rest) < len(session):
            rest += conn.recv(4096) or pytest.fail(f"closed after {rest!r}")
    assert rest == session
    assert read(bytewise(received)) == header
    return header, received


def client_end(client: socket.socket) -> Address:
    host, port = client.getsockname()[:2]
    return Address(IP(host), port)


@pytest.mark.parametrize(
    ("name", "family"),
    [("v1", Family.TCP4), ("v1_ipv6", Family.TCP6), ("v2", Family.TCP4), ("v2_ipv6", Family.TCP6)],
)
def test_haproxy_relays_the_client(relay: Relay, name: str, family: Family) -> None:
    with connect(relay, name) as client:
        client.sendall(EHLO)
        header, _ = accept_header(relay, name, session=EHLO)
        host, port = relay.haproxy.address(name)
        assert header.version == (1 if name.startswith("v1") else 2)
        assert (header.command, header.family) == (Command.PROXY, family)
        assert header.source == client_end(client)
        assert header.destination == Address(IP(host), port)
        assert header.tlvs == Tlvs()


def test_haproxy_v2_with_tls_facts(relay: Relay) -> None:
    with connect(relay, "v2_tls") as client:
        client.sendall(EHLO)
        header, _ = accept_header(relay, "v2_tls", session=EHLO)
        assert isinstance(client, ssl.SSLSocket)
        tls_version, cipher = client.version(), client.cipher()
        host, port = relay.haproxy.address("v2_tls")
        assert header.source == client_end(client)
        assert header.destination == Address(IP(host), port)
    tlvs = header.tlvs
    assert tlvs.crc32c and tlvs.authority == haproxy.SERVER_NAME
    assert tlvs.unique_id is not None and uuid.UUID(tlvs.unique_id.decode())
    assert tlvs.ssl is not None and tlvs.ssl.tls and tlvs.ssl.verified
    assert cipher is not None
    assert (tlvs.ssl.version, tlvs.ssl.cipher) == (tls_version, cipher[0])
    assert tlvs.ssl.cn == haproxy.CLIENT_NAME
    assert (tlvs.ssl.sig_alg, tlvs.ssl.key_alg) == ("RSA-SHA256", "RSA2048")
    assert tlvs.alpn is None and tlvs.netns is None and tlvs.other == ()


def test_haproxy_v2_with_tls_and_no_client_certificate(relay: Relay) -> None:
    with connect(relay, "v2_tls", certificate=False) as client:
        client.sendall(EHLO)
        header, _ = accept_header(relay, "v2_tls", session=EHLO)
    info = header.tlvs.ssl
    assert info is not None and info.tls and not info.verified and info.cn is None
    assert info.client == proxy.CLIENT_SSL and info.version is not None


def test_haproxy_unix_socket_clients_have_no_address(relay: Relay) -> None:
    # HAProxy 2.6 says UNKNOWN (v1) and LOCAL (v2) for them: LOCAL is not only checks.
    for name, command in (("v1_unix", Command.PROXY), ("v2_unix", Command.LOCAL)):
        with connect(relay, name) as client:
            client.sendall(EHLO)
            header, _ = accept_header(relay, name, session=EHLO)
        assert (header.command, header.family, header.source) == (command, Family.UNKNOWN, None)


def test_haproxy_health_checks(relay: Relay) -> None:
    # v1: HAProxy 2.6 gives the check's own connection (§2.1 advises it); v2: LOCAL.
    v1, _ = accept_header(relay, "v1_check")
    listener = relay.servers["v1_check"].getsockname()
    assert (v1.version, v1.command, v1.family) == (1, Command.PROXY, Family.TCP4)
    assert v1.destination == Address(IP(listener[0]), listener[1])
    v2_check, received = accept_header(relay, "v2_check")
    assert (v2_check.command, v2_check.family, v2_check.source) == (
        Command.LOCAL,
        Family.UNKNOWN,
        None,
    )
    assert v2_check.tlvs == Tlvs(crc32c=True) and received.startswith(SIG + b"\x20\x00")
