"""MAIL FROM / RCPT TO path syntax through the public API.

RFC 5321 §4.1.1.2-3 (commands), §4.1.2 (Path, Mailbox, Local-part, Domain), §4.1.3 (address
literals), §4.5.3.1.1-3 (lengths), §2.4 (case); RFC 6531 §3.3 and §3.5 (UTF-8 addresses).
Every case runs in a fresh session, so no error budget is shared between cases.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.smtp.client import Client, session
from wildboar import smtp

SENDER = b"MAIL FROM:<sender@example.org>\r\n"


def make_domain(octets: int, letter: str = "d") -> str:
    """A valid ASCII domain of exactly ``octets`` octets, no label over 60 octets."""
    labels: list[str] = []
    left = octets
    while left > 63:
        labels.append(letter * 60)
        left -= 61
    labels.append(letter * left)
    return ".".join(labels)


def mail(bytewise: bool, args: str | bytes, **kwargs: object) -> tuple[Client, list[str]]:
    """A fresh EHLO session that sent ``MAIL <args>``; the client and the MAIL reply."""
    client = session(bytewise, **kwargs)
    raw = args.encode("utf-8") if isinstance(args, str) else args
    return client, client.round(b"MAIL " + raw + b"\r\n")


def rcpt(
    bytewise: bool, args: str | bytes, *, sender: bytes = SENDER, **kwargs: object
) -> tuple[Client, list[str]]:
    """A fresh EHLO session with an accepted MAIL that sent ``RCPT <args>``."""
    client = session(bytewise, **kwargs)
    assert client.round(sender) == ["250 2.1.0"]
    raw = args.encode("utf-8") if isinstance(args, str) else args
    return client, client.round(b"RCPT " + raw + b"\r\n")


def last_mail(client: Client) -> smtp.MailFrom:
    found = [event for event in client.events if isinstance(event, smtp.MailFrom)]
    assert found, "no MailFrom event"
    return found[-1]


def last_rcpt(client: Client) -> smtp.RcptTo:
    found = [event for event in client.events if isinstance(event, smtp.RcptTo)]
    assert found, "no RcptTo event"
    return found[-1]


def count(client: Client, kind: type) -> int:
    return sum(isinstance(event, kind) for event in client.events)


# --- valid mailboxes -------------------------------------------------------------

# (path as sent, mailbox the event carries)
VALID = [
    # Dot-string (RFC 5321 §4.1.2, atext of RFC 5322 §3.2.3)
    ("<user@example.org>", "user@example.org"),
    ("<first.middle.last@example.org>", "first.middle.last@example.org"),
    ("<!#$%&'*+-/=?^_`{|}~@example.org>", "!#$%&'*+-/=?^_`{|}~@example.org"),
    ("<user+tag@example.org>", "user+tag@example.org"),
    ("<0@example.org>", "0@example.org"),
    # Quoted-string: qtextSMTP and quoted-pairSMTP
    ('<"john doe"@example.org>', '"john doe"@example.org'),
    ('<"a\\"b"@example.org>', '"a\\"b"@example.org'),
    ('<"a\\\\b"@example.org>', '"a\\\\b"@example.org'),
    ('<"a\\ b"@example.org>', '"a\\ b"@example.org'),
    ('<"a\\xb"@example.org>', '"a\\xb"@example.org'),
    ('<"a@b"@example.org>', '"a@b"@example.org'),
    ('<"a>b"@example.org>', '"a>b"@example.org'),
    ('<"a<b"@example.org>', '"a<b"@example.org'),
    ('<"a..b"@example.org>', '"a..b"@example.org'),
    ('<".a."@example.org>', '".a."@example.org'),
    ('<"a,b:c[d]"@example.org>', '"a,b:c[d]"@example.org'),
    # Domain: sub-domain = Let-dig [Ldh-str]
    ("<user@localhost>", "user@localhost"),
    ("<user@a--b.example>", "user@a--b.example"),
    ("<user@123.example>", "user@123.example"),
    ("<user@x.y.z.example>", "user@x.y.z.example"),
    # IPv4-address-literal: Snum = 1*3DIGIT, 0 through 255
    ("<user@[192.0.2.1]>", "user@[192.0.2.1]"),
    ("<user@[0.0.0.0]>", "user@[0.0.0.0]"),
    ("<user@[255.255.255.255]>", "user@[255.255.255.255]"),
    ("<user@[001.002.003.004]>", "user@[001.002.003.004]"),
    # IPv6-address-literal (RFC 5321 §4.1.3); "IPv6:" is case-insensitive (RFC 5234 §2.3)
    ("<user@[IPv6:2001:db8:0:0:0:0:0:1]>", "user@[IPv6:2001:db8:0:0:0:0:0:1]"),
    (
        "<user@[IPv6:0000:0000:0000:0000:0000:0000:0000:0001]>",
        "user@[IPv6:0000:0000:0000:0000:0000:0000:0000:0001]",
    ),
    ("<user@[IPv6:2001:DB8::1]>", "user@[IPv6:2001:DB8::1]"),
    ("<user@[ipv6:2001:db8::1]>", "user@[ipv6:2001:db8::1]"),
    ("<user@[IPV6:::1]>", "user@[IPV6:::1]"),
    ("<user@[IPv6:::]>", "user@[IPv6:::]"),
    ("<user@[IPv6:1::]>", "user@[IPv6:1::]"),
    ("<user@[IPv6:1:2:3:4:5:6::]>", "user@[IPv6:1:2:3:4:5:6::]"),
    ("<user@[IPv6:::3:4:5:6:7:8]>", "user@[IPv6:::3:4:5:6:7:8]"),
    ("<user@[IPv6:1:2:3::6:7:8]>", "user@[IPv6:1:2:3::6:7:8]"),
    # IPv6v4-full and IPv6v4-comp
    ("<user@[IPv6:1:2:3:4:5:6:192.0.2.1]>", "user@[IPv6:1:2:3:4:5:6:192.0.2.1]"),
    ("<user@[IPv6:::ffff:192.0.2.1]>", "user@[IPv6:::ffff:192.0.2.1]"),
    ("<user@[IPv6:::192.0.2.1]>", "user@[IPv6:::192.0.2.1]"),
    ("<user@[IPv6:1:2:3:4::192.0.2.1]>", "user@[IPv6:1:2:3:4::192.0.2.1]"),
    ("<user@[IPv6:1::2:3:4:192.0.2.1]>", "user@[IPv6:1::2:3:4:192.0.2.1]"),
    # Snum is 1*3DIGIT in the IPv4 tail too (RFC 5321 §4.1.3)
    ("<user@[IPv6:::ffff:001.002.003.004]>", "user@[IPv6:::ffff:001.002.003.004]"),
    # Source routes: "MUST BE accepted ... SHOULD be ignored" (RFC 5321 §4.1.1.3, §3.3)
    ("<@a.example,@b.example:user@c.example>", "user@c.example"),
    ("<@a.example:user@c.example>", "user@c.example"),
    ("<@a.example,@b.example,@c.example:user@[192.0.2.1]>", "user@[192.0.2.1]"),
    ('<@a.example:"x y"@c.example>', '"x y"@c.example'),
]


@pytest.mark.parametrize(("path", "mailbox"), VALID)
def test_mail_accepts_valid_path(bytewise: bool, path: str, mailbox: str) -> None:
    client, reply = mail(bytewise, "FROM:" + path)
    assert reply == ["250 2.1.0"]
    assert last_mail(client).sender == mailbox


@pytest.mark.parametrize(("path", "mailbox"), VALID)
def test_rcpt_accepts_valid_path(bytewise: bool, path: str, mailbox: str) -> None:
    client, reply = rcpt(bytewise, "TO:" + path)
    assert reply == ["250 2.1.5"]
    assert last_rcpt(client).recipient == mailbox


def test_source_route_is_stripped_in_the_envelope(bytewise: bool) -> None:
    client = session(bytewise)
    assert client.round(b"MAIL FROM:<@a.example,@b.example:sender@c.example>\r\n") == ["250 2.1.0"]
    assert client.round(b"RCPT TO:<@d.example:rcpt@e.example>\r\n") == ["250 2.1.5"]
    assert client.round(b"DATA\r\n") == ["354"]
    assert client.round(b"Subject: x\r\n\r\nbody\r\n.\r\n") == ["250 2.0.0"]
    envelope = client.accepted[-1].envelope
    assert envelope.sender == "sender@c.example"
    assert [recipient.address for recipient in envelope.recipients] == ["rcpt@e.example"]


# --- null sender and postmaster -----------------------------------------------------


def test_null_reverse_path(bytewise: bool) -> None:
    client, reply = mail(bytewise, "FROM:<>")
    assert reply == ["250 2.1.0"]
    assert last_mail(client).sender == ""


def test_null_reverse_path_with_parameter(bytewise: bool) -> None:
    client, reply = mail(bytewise, "FROM:<> SIZE=100")
    assert reply == ["250 2.1.0"]
    assert last_mail(client).sender == ""
    assert last_mail(client).params.size == 100


@pytest.mark.parametrize("path", ["<>", "< >", "<@a.example:>"])
def test_null_forward_path_refused(bytewise: bool, path: str) -> None:
    client, reply = rcpt(bytewise, "TO:" + path)
    assert reply == ["553 5.1.3"]
    assert count(client, smtp.RcptTo) == 0


@pytest.mark.parametrize("name", ["Postmaster", "postmaster", "POSTMASTER", "pOsTmAsTeR"])
def test_rcpt_postmaster_without_domain(bytewise: bool, name: str) -> None:
    """RFC 5321 §4.1.1.3, §2.3.5, §4.5.1: "<Postmaster>" MUST be accepted, any case."""
    client, reply = rcpt(bytewise, f"TO:<{name}>")
    assert reply == ["250 2.1.5"]
    assert last_rcpt(client).recipient == name


def test_rcpt_postmaster_with_domain(bytewise: bool) -> None:
    client, reply = rcpt(bytewise, "TO:<Postmaster@example.org>")
    assert reply == ["250 2.1.5"]
    assert last_rcpt(client).recipient == "Postmaster@example.org"


@pytest.mark.parametrize("path", ["<Postmasters>", "<Post master>", "<postmaster@>", "<user>"])
def test_rcpt_mailbox_without_domain_refused(bytewise: bool, path: str) -> None:
    client, reply = rcpt(bytewise, "TO:" + path)
    assert reply == ["553 5.1.3"]
    assert count(client, smtp.RcptTo) == 0


@pytest.mark.parametrize("path", ["<Postmaster>", "<postmaster>"])
def test_mail_postmaster_without_domain_refused(bytewise: bool, path: str) -> None:
    """Reverse-path = Path / "<>": the domain-less Postmaster form is RCPT-only."""
    client, reply = mail(bytewise, "FROM:" + path)
    assert reply == ["553 5.1.7"]
    assert count(client, smtp.MailFrom) == 0


# --- bad mailbox syntax: 553 ----------------------------------------------------------

INVALID = [
    # Dot-string edge cases
    "<.user@example.org>",
    "<user.@example.org>",
    "<us..er@example.org>",
    "<.@example.org>",
    # characters outside atext
    "<us er@example.org>",
    "<us(er)@example.org>",
    "<us,er@example.org>",
    "<us:er@example.org>",
    "<us;er@example.org>",
    "<us[er@example.org>",
    "<us\\er@example.org>",
    "<us\ter@example.org>",
    # Quoted-string edge cases
    '<"a"b@example.org>',
    '<a"b"@example.org>',
    '<"a".b@example.org>',
    '<"a\tb"@example.org>',
    '<"a\\\tb"@example.org>',
    # missing parts
    "<@example.org>",
    "<user@>",
    "<user>",
    "<user@@example.org>",
    "<user@example.org@example.org>",
    # domain labels (RFC 5321 §4.1.2: letters, digits, hyphen; no underscore)
    "<user@exa_mple.org>",
    "<user@-example.org>",
    "<user@example-.org>",
    "<user@example.-org>",
    "<user@example..org>",
    "<user@.example.org>",
    "<user@example.org.>",
    "<user@exa mple.org>",
    "<user@exa!mple.org>",
    f"<user@{'a' * 64}.example>",
    f"<user@example.{'b' * 64}>",
    # IPv4 literals
    "<user@[256.0.0.1]>",
    "<user@[1.2.3.256]>",
    "<user@[999.1.1.1]>",
    "<user@[1.2.3]>",
    "<user@[1.2.3.4.5]>",
    "<user@[1234.1.1.1]>",
    "<user@[1.2.3.-4]>",
    "<user@[1.2.3.4 ]>",
    "<user@[]>",
    "<user@[1.2.3.4>",
    "<user@1.2.3.4]>",
    # IPv6 literals
    "<user@[IPv6:1:2:3:4:5:6:7:8:9]>",
    "<user@[IPv6:1:2:3:4:5:6:7]>",
    "<user@[IPv6:1:2:3:4:5:6:7::]>",
    "<user@[IPv6:::2:3:4:5:6:7:8]>",
    "<user@[IPv6:1:2:3::5:6:7:8]>",
    "<user@[IPv6:1::2::3]>",
    "<user@[IPv6:12345::1]>",
    "<user@[IPv6:g::1]>",
    "<user@[IPv6::1]>",
    "<user@[IPv6:1:]>",
    "<user@[IPv6:]>",
    "<user@[IPv6:fe80::1%eth0]>",
    "<user@[IPv6:fe80::1%25eth0]>",
    "<user@[IPv6:1:2:3:4:5::192.0.2.1]>",
    "<user@[IPv6:1:2:3:4:5:6:7:192.0.2.1]>",
    "<user@[IPv6:1:2:3:4:5:192.0.2.1]>",
    "<user@[IPv6:::192.0.2.256]>",
    "<user@[IPv6:::192.0.2]>",
    "<user@[IPv6:192.0.2.1::]>",
    "<user@[IPv6:192.0.2.1]>",
    "<user@[2001:db8::1]>",
    # General-address-literal: no tag other than IPv6 is registered with IANA
    "<user@[IPv4:192.0.2.1]>",
    "<user@[x-tag:content]>",
    "<user@[IPv7:1::1]>",
    "<user@[tag:a.b]>",
    # source routes
    "<@a.example,user@c.example>",
    "<@a.example user@c.example>",
    "<a.example:user@c.example>",
    "<@:user@c.example>",
    "<@a.example,@:user@c.example>",
    "<@a.example;@b.example:user@c.example>",
    "<@a_b.example:user@c.example>",
    "<@-a.example:user@c.example>",
    "<@a.example,:user@c.example>",
]


@pytest.mark.parametrize("path", INVALID)
def test_mail_refuses_bad_path(bytewise: bool, path: str) -> None:
    client, reply = mail(bytewise, "FROM:" + path)
    assert reply == ["553 5.1.7"]
    assert count(client, smtp.MailFrom) == 0


@pytest.mark.parametrize("path", INVALID)
def test_rcpt_refuses_bad_path(bytewise: bool, path: str) -> None:
    client, reply = rcpt(bytewise, "TO:" + path)
    assert reply == ["553 5.1.3"]
    assert count(client, smtp.RcptTo) == 0


def test_state_is_kept_after_a_refused_path(bytewise: bool) -> None:
    """RFC 5321 §4.1.4: after a bad argument the server "MUST stay in the same state"."""
    client = session(bytewise)
    assert client.round(b"MAIL FROM:<a..b@example.org>\r\n") == ["553 5.1.7"]
    assert client.round(b"RCPT TO:<rcpt@example.org>\r\n") == ["503 5.5.1"]
    assert client.round(SENDER) == ["250 2.1.0"]
    assert client.round(b"RCPT TO:<a..b@example.org>\r\n") == ["553 5.1.3"]
    assert client.round(b"DATA\r\n") == ["554 5.5.1"]
    assert client.round(b"RCPT TO:<rcpt@example.org>\r\n") == ["250 2.1.5"]


# --- no path at all: 501 5.5.4 --------------------------------------------------------

MAIL_NO_PATH = [
    "FROM:user@example.org",
    "FROM:<user@example.org",
    "FROM:user@example.org>",
    "FROM: <user@example.org>",
    "FROM :<user@example.org>",
    "FROM : <user@example.org>",
    "FROM:<user@example.org>SIZE=10",
    "FROM:<<user@example.org>>",
    "FROM:<>>",
    "FROM:",
    "FROM",
    "",
    "FROM<user@example.org>",
    "FROM<user@example.org>:",
    "TO:<user@example.org>",
    "FROMM:<user@example.org>",
    " FROM:<user@example.org>",
]


@pytest.mark.parametrize("args", MAIL_NO_PATH)
def test_mail_without_bracketed_path(bytewise: bool, args: str) -> None:
    client, reply = mail(bytewise, args)
    assert reply == ["501 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


RCPT_NO_PATH = [
    "TO:user@example.org",
    "TO:<user@example.org",
    "TO:user@example.org>",
    "TO: <user@example.org>",
    "TO :<user@example.org>",
    "TO:<user@example.org>NOTIFY=NEVER",
    "TO:<<user@example.org>>",
    "TO:",
    "TO",
    "",
    "TO<user@example.org>",
    "FROM:<user@example.org>",
    " TO:<user@example.org>",
    "TO:Postmaster",
]


@pytest.mark.parametrize("args", RCPT_NO_PATH)
def test_rcpt_without_bracketed_path(bytewise: bool, args: str) -> None:
    client, reply = rcpt(bytewise, args)
    assert reply == ["501 5.5.4"]
    assert count(client, smtp.RcptTo) == 0


@pytest.mark.parametrize("trailer", [" ", "  ", "\t", " \t", "\t "])
def test_trailing_white_space_is_tolerated(bytewise: bool, trailer: str) -> None:
    """RFC 5321 §4.1.1: receivers "SHOULD tolerate" trailing white space before CRLF."""
    client, reply = mail(bytewise, "FROM:<sender@example.org>" + trailer)
    assert reply == ["250 2.1.0"]
    assert last_mail(client).sender == "sender@example.org"
    assert client.round(b"RCPT TO:<rcpt@example.org>" + trailer.encode() + b"\r\n") == ["250 2.1.5"]
    assert last_rcpt(client).recipient == "rcpt@example.org"


# --- case -----------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["MAIL", "mail", "Mail"])
@pytest.mark.parametrize("keyword", ["FROM:", "from:", "From:", "fRoM:"])
def test_mail_keyword_case_is_irrelevant(bytewise: bool, verb: str, keyword: str) -> None:
    client = session(bytewise)
    assert client.round(f"{verb} {keyword}<sender@example.org>\r\n".encode()) == ["250 2.1.0"]
    assert last_mail(client).sender == "sender@example.org"


@pytest.mark.parametrize("verb", ["RCPT", "rcpt", "Rcpt"])
@pytest.mark.parametrize("keyword", ["TO:", "to:", "To:", "tO:"])
def test_rcpt_keyword_case_is_irrelevant(bytewise: bool, verb: str, keyword: str) -> None:
    client = session(bytewise)
    assert client.round(SENDER) == ["250 2.1.0"]
    assert client.round(f"{verb} {keyword}<rcpt@example.org>\r\n".encode()) == ["250 2.1.5"]
    assert last_rcpt(client).recipient == "rcpt@example.org"


@pytest.mark.parametrize(
    "mailbox",
    ["John.DOE@example.org", "MiXeD@Example.ORG", '"Quoted Case"@example.org', "ABC@[192.0.2.1]"],
)
def test_local_part_case_is_preserved(bytewise: bool, mailbox: str) -> None:
    """RFC 5321 §2.4: the local-part "MUST BE treated as case sensitive"."""
    local = mailbox.rpartition("@")[0]
    client = session(bytewise)
    assert client.round(f"MAIL FROM:<{mailbox}>\r\n".encode()) == ["250 2.1.0"]
    assert last_mail(client).sender.rpartition("@")[0] == local
    assert client.round(f"RCPT TO:<{mailbox}>\r\n".encode()) == ["250 2.1.5"]
    assert last_rcpt(client).recipient.rpartition("@")[0] == local
    assert client.round(b"DATA\r\n") == ["354"]
    assert client.round(b"\r\nbody\r\n.\r\n") == ["250 2.0.0"]
    envelope = client.accepted[-1].envelope
    assert envelope.sender.rpartition("@")[0] == local
    assert envelope.recipients[0].address.rpartition("@")[0] == local


# --- lengths (RFC 5321 §4.5.3.1.1-3) ------------------------------------------------------


def path_of(octets: int) -> str:
    """A valid path of exactly ``octets`` octets including the angle brackets."""
    return "<" + "u" * 60 + "@" + make_domain(octets - 63) + ">"


def test_make_domain_and_path_of_are_exact() -> None:
    for octets in range(1, 300):
        domain = make_domain(octets)
        assert len(domain) == octets
        assert all(0 < len(label) <= 63 for label in domain.split("."))
    assert len(path_of(256)) == 256


FITS = [
    pytest.param("<" + "l" * 64 + "@example.org>", id="local-part-64"),
    pytest.param(path_of(256), id="path-256"),
    pytest.param("<a@" + make_domain(252) + ">", id="domain-252-path-256"),
    pytest.param(f"<user@{'a' * 63}.example>", id="label-63"),
    pytest.param("<@" + make_domain(200) + ":" + "u" * 40 + "@example.org>", id="route-path-256"),
]
TOO_LONG = [
    pytest.param("<" + "l" * 65 + "@example.org>", id="local-part-65"),
    pytest.param("<" + "l" * 200 + "@example.org>", id="local-part-200"),
    pytest.param(path_of(257), id="path-257"),
    pytest.param("<a@" + make_domain(253) + ">", id="path-257-domain-253"),
    pytest.param("<a@" + make_domain(256) + ">", id="domain-256"),
    pytest.param("<@" + make_domain(200) + ":" + "u" * 41 + "@example.org>", id="route-path-257"),
]


@pytest.mark.parametrize("path", FITS)
def test_longest_paths_are_accepted(bytewise: bool, path: str) -> None:
    assert len(path) <= 256
    client, reply = mail(bytewise, "FROM:" + path)
    assert reply == ["250 2.1.0"]
    assert client.round(f"RCPT TO:{path}\r\n".encode()) == ["250 2.1.5"]


@pytest.mark.parametrize("path", TOO_LONG)
def test_mail_path_too_long(bytewise: bool, path: str) -> None:
    client, reply = mail(bytewise, "FROM:" + path)
    assert reply == ["501 5.1.7"]
    assert count(client, smtp.MailFrom) == 0


@pytest.mark.parametrize("path", TOO_LONG)
def test_rcpt_path_too_long(bytewise: bool, path: str) -> None:
    client, reply = rcpt(bytewise, "TO:" + path)
    assert reply == ["501 5.1.3"]
    assert count(client, smtp.RcptTo) == 0


def test_lengths_count_utf8_octets(bytewise: bool) -> None:
    """Limits are in octets (RFC 5321 §4.5.3.1): "é" is two."""
    client, reply = mail(bytewise, "FROM:<" + "é" * 32 + "@example.org> SMTPUTF8")
    assert reply == ["250 2.1.0"]
    assert client.round(("RCPT TO:<" + "é" * 32 + "@example.org>\r\n").encode()) == ["250 2.1.5"]
    assert client.round(("RCPT TO:<" + "é" * 33 + "@example.org>\r\n").encode()) == ["501 5.1.3"]
    assert client.round(f"RCPT TO:<u@{'ü' * 31}a.example>\r\n".encode()) == ["250 2.1.5"]
    assert client.round(f"RCPT TO:<u@{'ü' * 32}.example>\r\n".encode()) == ["553 5.1.3"]
    _, reply = mail(bytewise, "FROM:<" + "é" * 33 + "@example.org> SMTPUTF8")
    assert reply == ["501 5.1.7"]


# --- UTF-8 addresses (RFC 6531) -------------------------------------------------------------

UTF8_PATHS = [
    ("<ü@example.org>", "ü@example.org"),
    ("<user@bücher.example>", "user@bücher.example"),
    ("<δοκιμή@παράδειγμα.δοκιμή>", "δοκιμή@παράδειγμα.δοκιμή"),
    ("<测试@例子.测试>", "测试@例子.测试"),
    ('<"ü ü"@example.org>', '"ü ü"@example.org'),
    ("<@bücher.example:ü@example.org>", "ü@example.org"),
    ("<😀.ü@example.org>", "😀.ü@example.org"),
]


@pytest.mark.parametrize(("path", "mailbox"), UTF8_PATHS)
def test_utf8_sender_needs_smtputf8(bytewise: bool, path: str, mailbox: str) -> None:
    """RFC 6531 §3.5: a MAIL needing SMTPUTF8 without it gets 550 5.6.7."""
    client, reply = mail(bytewise, "FROM:" + path)
    assert reply == ["550 5.6.7"]
    assert count(client, smtp.MailFrom) == 0


@pytest.mark.parametrize(("path", "mailbox"), UTF8_PATHS)
def test_utf8_recipient_needs_smtputf8(bytewise: bool, path: str, mailbox: str) -> None:
    """RFC 6531 §3.5: a RCPT needing SMTPUTF8 without it gets 553 5.6.7."""
    client, reply = rcpt(bytewise, "TO:" + path)
    assert reply == ["553 5.6.7"]
    assert count(client, smtp.RcptTo) == 0


@pytest.mark.parametrize(("path", "mailbox"), UTF8_PATHS)
def test_utf8_paths_with_smtputf8(bytewise: bool, path: str, mailbox: str) -> None:
    client, reply = mail(bytewise, f"FROM:{path} SMTPUTF8")
    assert reply == ["250 2.1.0"]
    event = last_mail(client)
    assert event.sender == mailbox
    assert event.params.smtputf8 is True
    assert client.round(f"RCPT TO:{path}\r\n".encode()) == ["250 2.1.5"]
    assert last_rcpt(client).recipient == mailbox
    assert client.round(b"DATA\r\n") == ["354"]
    assert client.round(b"\r\nbody\r\n.\r\n") == ["250 2.0.0"]
    envelope = client.accepted[-1].envelope
    assert envelope.sender == mailbox
    assert envelope.recipients[0].address == mailbox
    assert envelope.mail.smtputf8 is True


@pytest.mark.parametrize(
    "path",
    [
        "<ü..x@example.org>",
        "<ü@bü_cher.example>",
        "<ü@-bücher.example>",
        "<ü@[IPv6:ü::1]>",
        '<"ü"ü@example.org>',
    ],
)
def test_bad_utf8_path_with_smtputf8(bytewise: bool, path: str) -> None:
    _, reply = mail(bytewise, f"FROM:{path} SMTPUTF8")
    assert reply == ["553 5.1.7"]
    _, reply = rcpt(bytewise, f"TO:{path}", sender=b"MAIL FROM:<> SMTPUTF8\r\n")
    assert reply == ["553 5.1.3"]


def test_invalid_utf8_bytes_refused(bytewise: bool) -> None:
    """Bytes that are not UTF-8 are never an address: 501 (RFC 5321 §4.1.2)."""
    _, reply = mail(bytewise, b"FROM:<\xff@example.org> SMTPUTF8")
    assert [status.split()[0] for status in reply] == ["501"]
    _, reply = rcpt(bytewise, b"TO:<\xc3@example.org>", sender=b"MAIL FROM:<> SMTPUTF8\r\n")
    assert [status.split()[0] for status in reply] == ["501"]


def test_utf8_after_helo_refused(bytewise: bool) -> None:
    """No SMTPUTF8 after HELO: non-ASCII in a command gets 501 (RFC 5321 §4.1.2)."""
    client = Client(bytewise=bytewise)
    assert client.round(b"HELO client.example\r\n") == ["250"]
    reply = client.round("MAIL FROM:<ü@example.org>\r\n".encode())
    assert [status.split()[0] for status in reply] == ["501"]
    assert client.round(SENDER) == ["250 2.1.0"]
    reply = client.round("RCPT TO:<ü@example.org>\r\n".encode())
    assert [status.split()[0] for status in reply] == ["501"]
    assert count(client, smtp.MailFrom) == 1
    assert count(client, smtp.RcptTo) == 0


def test_utf8_when_smtputf8_not_offered(bytewise: bool) -> None:
    """SMTPUTF8 not offered: non-ASCII in a command gets 501 (RFC 5321 §4.1.2)."""
    ext = smtp.Extensions(smtputf8=False)
    _, reply = mail(bytewise, "FROM:<ü@example.org> SMTPUTF8", extensions=ext)
    assert [status.split()[0] for status in reply] == ["501"]
    _, reply = rcpt(bytewise, "TO:<ü@example.org>", extensions=ext)
    assert [status.split()[0] for status in reply] == ["501"]


# --- the common path and the full grammar agree ---------------------------------------
# A plain ASCII path takes a shortcut in the parser (one pattern), with or without
# parameters; in an SMTPUTF8 transaction it cannot, and the full UTF-8 grammar, which reads
# ASCII as the ASCII grammar does, judges it. Generated ASCII paths near every edge of the
# grammar (label and part lengths, hyphens and dots at the ends, quotes, backslashes,
# brackets, keyword case) must get the same reply and the same mailbox either way.

_PATH_CHARS = st.sampled_from([*"abcXYZ019-._+!#'=/?^`{|}~", '"', "\\", "@", "<", ":", ","])
_LABELS = st.one_of(
    st.text(st.sampled_from(list("aZ9-")), min_size=0, max_size=4),
    st.builds(lambda n, c: c * n, st.integers(60, 66), st.sampled_from(["a", "-", "9"])),
)


@st.composite
def _paths(draw: st.DrawFn) -> str:
    local = draw(
        st.one_of(
            st.text(_PATH_CHARS, min_size=0, max_size=6),
            st.builds(lambda n: "l" * n, st.integers(62, 66)),
        )
    )
    domain = ".".join(draw(st.lists(_LABELS, min_size=1, max_size=5)))
    if draw(st.booleans()):
        domain = ".".join([domain] + ["d" * 60] * draw(st.integers(0, 4)))
    if draw(st.integers(0, 3)) == 0:  # near the limits of part, domain and path lengths
        local = "l" * draw(st.integers(1, 66))
        domain = make_domain(draw(st.integers(185, 258)))
    return f"<{local}@{domain}>" if draw(st.integers(0, 9)) else f"<{local}{domain}>"


def _outcome(client: Client, reply: list[str], kind: type) -> tuple[list[str], str | None]:
    found = [event for event in client.events if isinstance(event, kind)]
    if not found:
        return reply, None
    event = found[-1]
    return reply, event.sender if isinstance(event, smtp.MailFrom) else event.recipient


@given(path=_paths(), keyword=st.sampled_from(["FROM:", "from:", "From:"]))
@settings(max_examples=400, deadline=None)
def test_mail_shortcut_agrees_with_the_full_grammar(path: str, keyword: str) -> None:
    plain = _outcome(*mail(False, keyword + path), smtp.MailFrom)
    sized = _outcome(*mail(False, f"{keyword}{path} SIZE=10"), smtp.MailFrom)
    full = _outcome(*mail(False, f"{keyword}{path} SMTPUTF8"), smtp.MailFrom)
    assert plain == sized == full


UTF8_SENDER = b"MAIL FROM:<sender@example.org> SMTPUTF8\r\n"


@given(path=_paths(), keyword=st.sampled_from(["TO:", "to:", "tO:"]))
@settings(max_examples=400, deadline=None)
def test_rcpt_shortcut_agrees_with_the_full_grammar(path: str, keyword: str) -> None:
    plain = _outcome(*rcpt(False, keyword + path), smtp.RcptTo)
    notify = _outcome(*rcpt(False, f"{keyword}{path} NOTIFY=NEVER"), smtp.RcptTo)
    full = _outcome(*rcpt(False, keyword + path, sender=UTF8_SENDER), smtp.RcptTo)
    assert plain == notify == full
