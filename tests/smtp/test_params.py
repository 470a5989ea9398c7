"""ESMTP MAIL and RCPT parameters through the public API.

RFC 5321 §4.1.2 (esmtp-param), §4.1.1.11 (555); RFC 1869 §4.5 (no parameters after HELO);
RFC 1870 (SIZE); RFC 6152 and RFC 3030 (BODY); RFC 6531 (SMTPUTF8); RFC 3461 (RET, ENVID,
NOTIFY, ORCPT, xtext); RFC 6533 §3 (utf-8 ORCPT). Every case runs in a fresh session.
"""

from __future__ import annotations

import pytest

from tests.smtp.client import Client, replies, session
from wildboar import smtp

LIMIT = 100_000
SENDER = b"MAIL FROM:<sender@example.org>\r\n"


def mail(bytewise: bool, params: str | bytes, **kwargs: object) -> tuple[Client, list[str]]:
    """A fresh EHLO session that sent ``MAIL FROM:<sender@example.org> <params>``."""
    client = session(bytewise, **kwargs)
    raw = params.encode("utf-8") if isinstance(params, str) else params
    return client, client.round(b"MAIL FROM:<sender@example.org> " + raw + b"\r\n")


def rcpt(
    bytewise: bool, params: str | bytes, *, sender: bytes = SENDER, **kwargs: object
) -> tuple[Client, list[str]]:
    """A fresh EHLO session with an accepted MAIL that sent ``RCPT TO:<...> <params>``."""
    client = session(bytewise, **kwargs)
    assert client.round(sender) == ["250 2.1.0"]
    raw = params.encode("utf-8") if isinstance(params, str) else params
    return client, client.round(b"RCPT TO:<rcpt@example.org> " + raw + b"\r\n")


def mail_params(client: Client) -> smtp.MailParams:
    found = [event for event in client.events if isinstance(event, smtp.MailFrom)]
    assert found, "no MailFrom event"
    return found[-1].params


def rcpt_params(client: Client) -> smtp.RcptParams:
    found = [event for event in client.events if isinstance(event, smtp.RcptTo)]
    assert found, "no RcptTo event"
    return found[-1].params


def count(client: Client, kind: type) -> int:
    return sum(isinstance(event, kind) for event in client.events)


def ehlo_lines(**kwargs: object) -> list[bytes]:
    client = Client(**kwargs)  # type: ignore[arg-type]
    [reply] = replies(client.send(b"EHLO client.example\r\n"))
    return [line[4:] for line in reply]


# --- no parameters --------------------------------------------------------------------


def test_defaults_without_parameters(bytewise: bool) -> None:
    client, reply = mail(bytewise, b"")
    assert reply == ["250 2.1.0"]
    assert mail_params(client) == smtp.MailParams()
    params = mail_params(client)
    assert (params.size, params.body, params.smtputf8, params.ret, params.envid) == (
        None,
        None,
        False,
        None,
        None,
    )
    assert client.round(b"RCPT TO:<rcpt@example.org>\r\n") == ["250 2.1.5"]
    assert rcpt_params(client) == smtp.RcptParams(notify=None, orcpt=None)


# --- SIZE (RFC 1870) --------------------------------------------------------------------


def test_ehlo_advertises_the_size_limit() -> None:
    assert f"SIZE {LIMIT}".encode() in ehlo_lines(limits=smtp.Limits(message_size=LIMIT))
    assert b"SIZE 10240000" in ehlo_lines()
    lines = ehlo_lines(extensions=smtp.Extensions(size=False))
    assert not [line for line in lines if line.upper().startswith(b"SIZE")]


@pytest.mark.parametrize(
    ("param", "size"),
    [
        ("SIZE=0", 0),
        ("SIZE=1", 1),
        ("SIZE=1000", 1000),
        ("size=1000", 1000),
        ("Size=1000", 1000),
        ("SIZE=00000000000000001000", 1000),
        (f"SIZE={LIMIT}", LIMIT),
        (f"SIZE={LIMIT - 1}", LIMIT - 1),
    ],
)
def test_size_accepted(bytewise: bool, param: str, size: int) -> None:
    client, reply = mail(bytewise, param, limits=smtp.Limits(message_size=LIMIT))
    assert reply == ["250 2.1.0"]
    assert mail_params(client).size == size


@pytest.mark.parametrize(
    "param",
    [
        "SIZE=abc",
        "SIZE=12a",
        "SIZE=a12",
        "SIZE=-1",
        "SIZE=+1",
        "SIZE=1.5",
        "SIZE=1,000",
        "SIZE=0x10",
        "SIZE=000000000000000000001",
        "SIZE=123456789012345678901",
        "SIZE=1 SIZE=1",
        "SIZE=1 size=2",
    ],
)
def test_size_refused(bytewise: bool, param: str) -> None:
    client, reply = mail(bytewise, param, limits=smtp.Limits(message_size=LIMIT))
    assert reply == ["501 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


@pytest.mark.parametrize(
    "param",
    [f"SIZE={LIMIT + 1}", "SIZE=10000000", "SIZE=99999999999999999999"],
)
def test_size_over_the_limit(bytewise: bool, param: str) -> None:
    """RFC 1870 §6.1: "552 message size exceeds fixed maximium message size"."""
    client, reply = mail(bytewise, param, limits=smtp.Limits(message_size=LIMIT))
    assert reply == ["552 5.3.4"]
    assert count(client, smtp.MailFrom) == 0
    assert client.round(SENDER) == ["250 2.1.0"]  # same state (RFC 5321 §4.1.4)


def test_size_not_offered(bytewise: bool) -> None:
    _, reply = mail(bytewise, "SIZE=100", extensions=smtp.Extensions(size=False))
    assert reply == ["555 5.5.4"]


# --- BODY (RFC 6152, RFC 3030) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "body"),
    [
        ("BODY=7BIT", "7BIT"),
        ("BODY=8BITMIME", "8BITMIME"),
        ("BODY=BINARYMIME", "BINARYMIME"),
        ("body=7bit", "7BIT"),
        ("Body=8bitMIME", "8BITMIME"),
        ("BODY=binarymime", "BINARYMIME"),
    ],
)
def test_body_accepted(bytewise: bool, param: str, body: str) -> None:
    client, reply = mail(bytewise, param)
    assert reply == ["250 2.1.0"]
    assert mail_params(client).body == body


@pytest.mark.parametrize(
    "param", ["BODY=8BIT", "BODY=BINARY", "BODY=QUOTED-PRINTABLE", "BODY=7BITMIME", "BODY=X"]
)
def test_body_unknown_value(bytewise: bool, param: str) -> None:
    client, reply = mail(bytewise, param)
    assert reply == ["555 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


@pytest.mark.parametrize(
    ("extensions", "param"),
    [
        (smtp.Extensions(binarymime=False), "BODY=BINARYMIME"),
        (smtp.Extensions(eightbitmime=False, smtputf8=False), "BODY=8BITMIME"),
        (smtp.Extensions(eightbitmime=False, smtputf8=False, binarymime=False), "BODY=7BIT"),
    ],
)
def test_body_value_not_offered(bytewise: bool, extensions: smtp.Extensions, param: str) -> None:
    client, reply = mail(bytewise, param, extensions=extensions)
    assert reply == ["555 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


def test_body_values_still_offered(bytewise: bool) -> None:
    client, reply = mail(bytewise, "BODY=8BITMIME", extensions=smtp.Extensions(binarymime=False))
    assert reply == ["250 2.1.0"]
    assert mail_params(client).body == "8BITMIME"
    ext = smtp.Extensions(eightbitmime=False, smtputf8=False)
    client, reply = mail(bytewise, "BODY=BINARYMIME", extensions=ext)
    assert reply == ["250 2.1.0"]
    assert mail_params(client).body == "BINARYMIME"


# --- SMTPUTF8 (RFC 6531) ---------------------------------------------------------------------


@pytest.mark.parametrize("param", ["SMTPUTF8", "smtputf8", "SmtpUtf8", "SMTPUTF8 BODY=8BITMIME"])
def test_smtputf8_accepted(bytewise: bool, param: str) -> None:
    client, reply = mail(bytewise, param)
    assert reply == ["250 2.1.0"]
    assert mail_params(client).smtputf8 is True


@pytest.mark.parametrize("param", ["SMTPUTF8=yes", "SMTPUTF8=1", "SMTPUTF8 SMTPUTF8"])
def test_smtputf8_takes_no_value(bytewise: bool, param: str) -> None:
    client, reply = mail(bytewise, param)
    assert reply == ["501 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


def test_smtputf8_not_offered(bytewise: bool) -> None:
    _, reply = mail(bytewise, "SMTPUTF8", extensions=smtp.Extensions(smtputf8=False))
    assert reply == ["555 5.5.4"]


def test_non_ascii_parameter_value_without_smtputf8(bytewise: bool) -> None:
    """Non-ASCII in a command without the extension in use: 501 (RFC 5321 §4.1.2), or
    Postfix's 553 5.6.7; not "unrecognized parameter" (the notes, table of §9)."""
    client, reply = mail(bytewise, "ENVID=\u00e9")
    assert len(reply) == 1
    assert reply[0].startswith("501 5.") or reply[0] == "553 5.6.7"
    assert count(client, smtp.MailFrom) == 0


# --- RET and ENVID (RFC 3461 §4.3, §4.4) --------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "ret"),
    [("RET=FULL", "FULL"), ("RET=HDRS", "HDRS"), ("ret=full", "FULL"), ("Ret=Hdrs", "HDRS")],
)
def test_ret_accepted(bytewise: bool, param: str, ret: str) -> None:
    client, reply = mail(bytewise, param)
    assert reply == ["250 2.1.0"]
    assert mail_params(client).ret == ret


@pytest.mark.parametrize(
    "param", ["RET=NONE", "RET=FULLY", "RET=HDR", "RET=FULL,HDRS", "RET", "RET=FULL RET=HDRS"]
)
def test_ret_refused(bytewise: bool, param: str) -> None:
    client, reply = mail(bytewise, param)
    assert reply == ["501 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


@pytest.mark.parametrize(
    ("param", "envid"),
    [
        ("ENVID=QQ314159", "QQ314159"),
        ("envid=QQ314159", "QQ314159"),
        ("ENVID=a+2Bb", "a+b"),
        ("ENVID=a+3Db", "a=b"),
        ("ENVID=+2B+2B", "++"),
        ("ENVID=a+20b", "a b"),
        ("ENVID=+41+42", "AB"),
        ("ENVID=!~<>", "!~<>"),
        ("ENVID=" + "x" * 100, "x" * 100),
    ],
)
def test_envid_accepted_and_decoded(bytewise: bool, param: str, envid: str) -> None:
    client, reply = mail(bytewise, param)
    assert reply == ["250 2.1.0"]
    assert mail_params(client).envid == envid


@pytest.mark.parametrize(
    "param",
    [
        "ENVID=a+2bb",  # hexchar needs upper-case hex digits
        "ENVID=a+G1",
        "ENVID=a+2",
        "ENVID=a+",
        "ENVID=+",
        "ENVID=a++2B",
        "ENVID=+00",  # not printable US-ASCII once decoded
        "ENVID=+7F",
        "ENVID=+C3+A9",
        "ENVID=" + "x" * 101,
        "ENVID",
        "ENVID=a ENVID=a",
    ],
)
def test_envid_refused(bytewise: bool, param: str) -> None:
    client, reply = mail(bytewise, param)
    assert reply == ["501 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


# --- NOTIFY and ORCPT (RFC 3461 §4.1, §4.2; RFC 6533 §3) ----------------------------------------


@pytest.mark.parametrize(
    ("param", "notify"),
    [
        ("NOTIFY=NEVER", {"NEVER"}),
        ("notify=never", {"NEVER"}),
        ("NOTIFY=SUCCESS", {"SUCCESS"}),
        ("NOTIFY=FAILURE", {"FAILURE"}),
        ("NOTIFY=DELAY", {"DELAY"}),
        ("NOTIFY=SUCCESS,FAILURE", {"SUCCESS", "FAILURE"}),
        ("NOTIFY=FAILURE,DELAY", {"FAILURE", "DELAY"}),
        ("NOTIFY=DELAY,SUCCESS", {"DELAY", "SUCCESS"}),
        ("NOTIFY=SUCCESS,FAILURE,DELAY", {"SUCCESS", "FAILURE", "DELAY"}),
        ("NOTIFY=DELAY,FAILURE,SUCCESS", {"SUCCESS", "FAILURE", "DELAY"}),
        ("NOTIFY=failure,Delay,SUCCESS", {"SUCCESS", "FAILURE", "DELAY"}),
    ],
)
def test_notify_accepted(bytewise: bool, param: str, notify: set[str]) -> None:
    client, reply = rcpt(bytewise, param)
    assert reply == ["250 2.1.5"]
    got = rcpt_params(client).notify
    assert got is not None
    assert len(got) == len(notify)
    assert set(got) == notify


@pytest.mark.parametrize(
    "param",
    [
        "NOTIFY=NEVER,SUCCESS",
        "NOTIFY=SUCCESS,NEVER",
        "NOTIFY=FAILURE,NEVER,DELAY",
        "NOTIFY=NEVER,NEVER",
        "NOTIFY=SUCCESS,SUCCESS",
        "NOTIFY=SUCCESS,FAILURE,success",
        "NOTIFY=SUCCESS,FAILURE,DELAY,SUCCESS",
        "NOTIFY=FOO",
        "NOTIFY=SUCCESSFUL",
        "NOTIFY=SUCCESS,",
        "NOTIFY=,SUCCESS",
        "NOTIFY=SUCCESS,,DELAY",
        "NOTIFY=SUCCESS;DELAY",
        "NOTIFY",
        "NOTIFY=NEVER NOTIFY=NEVER",
        "NOTIFY=SUCCESS notify=DELAY",
    ],
)
def test_notify_refused(bytewise: bool, param: str) -> None:
    client, reply = rcpt(bytewise, param)
    assert reply == ["501 5.5.4"]
    assert count(client, smtp.RcptTo) == 0


ORCPT_OK = [
    ("ORCPT=rfc822;user@example.org", "rfc822", "user@example.org"),
    ("orcpt=RFC822;user@example.org", "rfc822", "user@example.org"),
    ("ORCPT=rfc822;a+2Bb@example.org", "rfc822", "a+b@example.org"),
    ("ORCPT=rfc822;a+3Db@example.org", "rfc822", "a=b@example.org"),
    ("ORCPT=rfc822;+22a+20b+22@example.org", "rfc822", '"a b"@example.org'),
    ("ORCPT=rfc822;" + "x" * 400, "rfc822", "x" * 400),
    ("ORCPT=utf-8;user@example.org", "utf-8", "user@example.org"),
    ("ORCPT=UTF-8;user@example.org", "utf-8", "user@example.org"),
    ("ORCPT=utf-8;caf\\x{E9}@example.org", "utf-8", "caf\u00e9@example.org"),
    ("ORCPT=utf-8;\\x{3B4}@\\x{3B1}.example", "utf-8", "\u03b4@\u03b1.example"),
    ("ORCPT=utf-8;\\x{6D4B}@example.org", "utf-8", "\u6d4b@example.org"),
    ("ORCPT=utf-8;\\x{1F600}@example.org", "utf-8", "\U0001f600@example.org"),
    ("ORCPT=utf-8;\\x{10FFFF}@example.org", "utf-8", "\U0010ffff@example.org"),
    ("ORCPT=utf-8;a\\x{2B}b@example.org", "utf-8", "a+b@example.org"),
    ("ORCPT=utf-8;a\\x{3D}b@example.org", "utf-8", "a=b@example.org"),
    ("ORCPT=utf-8;a\\x{5C}b@example.org", "utf-8", "a\\b@example.org"),
]


@pytest.mark.parametrize(("param", "addr_type", "address"), ORCPT_OK)
def test_orcpt_accepted_and_decoded(
    bytewise: bool, param: str, addr_type: str, address: str
) -> None:
    client, reply = rcpt(bytewise, param)
    assert reply == ["250 2.1.5"]
    orcpt = rcpt_params(client).orcpt
    assert orcpt is not None
    assert orcpt.addr_type.lower() == addr_type
    assert orcpt.address == address


def test_orcpt_utf8_unitext_with_smtputf8(bytewise: bool) -> None:
    """RFC 6533 §3 utf-8-addr-unitext: raw UTF-8 once SMTPUTF8 is in use."""
    client, reply = rcpt(
        bytewise,
        "ORCPT=utf-8;caf\u00e9@b\u00fccher.example",
        sender=b"MAIL FROM:<sender@example.org> SMTPUTF8\r\n",
    )
    assert reply == ["250 2.1.5"]
    assert rcpt_params(client).orcpt == smtp.Orcpt("utf-8", "caf\u00e9@b\u00fccher.example")


ORCPT_BAD = [
    "ORCPT=rfc822",
    "ORCPT=user@example.org",
    "ORCPT=;user@example.org",
    "ORCPT=rfc(822);user@example.org",
    "ORCPT=rfc822;a+2bb@example.org",
    "ORCPT=rfc822;a+G1@example.org",
    "ORCPT=rfc822;a+2@example.org",
    "ORCPT=rfc822;" + "x" * 600,
    "ORCPT",
    "ORCPT=rfc822;a@example.org ORCPT=rfc822;a@example.org",
    "ORCPT=rfc822;a@example.org orcpt=rfc822;b@example.org",
    # RFC 6533 §3: QCHAR excludes "\" and "+"; HEXPOINT is a non-ASCII code point or one
    # of the xtext specials, never a surrogate, never above U+10FFFF
    "ORCPT=utf-8;a+2Bb@example.org",
    "ORCPT=utf-8;a\\b@example.org",
    "ORCPT=utf-8;a\\x{E9@example.org",
    "ORCPT=utf-8;a\\x{}@example.org",
    "ORCPT=utf-8;a\\x{G1}@example.org",
    "ORCPT=utf-8;a\\x{110000}@example.org",
    "ORCPT=utf-8;a\\x{D800}@example.org",
    "ORCPT=utf-8;a\\x{DFFF}@example.org",
    "ORCPT=utf-8;a\\x{41}@example.org",
    # RFC 3461 §4.2: the address is printable US-ASCII before xtext encoding: no CR LF
    # (it would reach a DSN's Original-Recipient field), no octet above 7F, no control
    "ORCPT=rfc822;a+0D+0Ab@example.org",
    "ORCPT=rfc822;+C3+BC@example.org",
    "ORCPT=rfc822;a+00b@example.org",
    "ORCPT=rfc822;a+7Fb@example.org",
    "ORCPT=utf-8;a\\x{85}b@example.org",
]


@pytest.mark.parametrize("param", ORCPT_BAD)
def test_orcpt_refused(bytewise: bool, param: str) -> None:
    client, reply = rcpt(bytewise, param)
    assert reply == ["501 5.5.4"]
    assert count(client, smtp.RcptTo) == 0


def test_notify_and_orcpt_together(bytewise: bool) -> None:
    client, reply = rcpt(bytewise, "ORCPT=rfc822;r+2B1@example.org NOTIFY=FAILURE")
    assert reply == ["250 2.1.5"]
    params = rcpt_params(client)
    assert params.notify == ("FAILURE",)
    assert params.orcpt == smtp.Orcpt("rfc822", "r+1@example.org")


# --- unknown, malformed and duplicate parameters -------------------------------------------------

MAIL_UNKNOWN = [
    "FOO=bar",
    "FOO",
    "X-FOO=1",
    "XFOO",
    "AUTH=<>",
    "NOTIFY=NEVER",
    "ORCPT=rfc822;a@example.org",
    "SIZE=1 FOO=bar",
    "FOO=bar SIZE=1",
    # malformed esmtp-param (RFC 5321 §4.1.2)
    "=x",
    "=",
    "SIZE=",
    "BODY=",
    "SMTPUTF8=",
    "SIZE=1  BODY=7BIT",
    " SIZE=1",
    "SIZE=1=2",
    "SIZE==1",
    "-SIZE=1",
    "SI_ZE=1",
    "SIZE=1\tBODY=7BIT",
    "SIZE=1\x01",
    "SIZE=1,BODY=7BIT",
]


@pytest.mark.parametrize("param", MAIL_UNKNOWN)
def test_mail_unknown_or_malformed_parameter(bytewise: bool, param: str) -> None:
    client, reply = mail(bytewise, param)
    assert reply == ["555 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


RCPT_UNKNOWN = [
    "FOO=bar",
    "X-FOO",
    "SIZE=100",
    "BODY=7BIT",
    "SMTPUTF8",
    "RET=FULL",
    "ENVID=abc",
    "=x",
    "NOTIFY=",
    "ORCPT=",
    "NOTIFY=NEVER  ORCPT=rfc822;a@example.org",
    "NOTIFY=NEVER=1",
]


@pytest.mark.parametrize("param", RCPT_UNKNOWN)
def test_rcpt_unknown_or_malformed_parameter(bytewise: bool, param: str) -> None:
    client, reply = rcpt(bytewise, param)
    assert reply == ["555 5.5.4"]
    assert count(client, smtp.RcptTo) == 0


@pytest.mark.parametrize(
    "param",
    [
        "SIZE=1 SIZE=2",
        "BODY=7BIT body=8BITMIME",
        "BODY=7BIT BODY=7BIT",
        "SMTPUTF8 smtputf8",
        "RET=FULL RET=HDRS",
        "ENVID=a ENVID=b",
        "SIZE=1 BODY=7BIT SIZE=1",
    ],
)
def test_mail_duplicate_parameter(bytewise: bool, param: str) -> None:
    """RFC 1870 §6, RFC 6152 §3, RFC 3461 §5.1: a parameter given twice is a 501."""
    client, reply = mail(bytewise, param)
    assert reply == ["501 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


@pytest.mark.parametrize("trailer", [" ", "  ", "\t", " \t "])
def test_trailing_white_space_after_parameters(bytewise: bool, trailer: str) -> None:
    """RFC 5321 §4.1.1: trailing white space "SHOULD" be tolerated."""
    client, reply = mail(bytewise, "SIZE=10 BODY=8BITMIME" + trailer)
    assert reply == ["250 2.1.0"]
    assert mail_params(client) == smtp.MailParams(size=10, body="8BITMIME")
    assert client.round(f"RCPT TO:<r@example.org> NOTIFY=NEVER{trailer}\r\n".encode()) == [
        "250 2.1.5"
    ]
    assert rcpt_params(client).notify == ("NEVER",)


# --- no parameters after HELO; DSN not offered ------------------------------------------------


@pytest.mark.parametrize(
    "param", ["SIZE=100", "BODY=7BIT", "BODY=8BITMIME", "SMTPUTF8", "RET=FULL", "ENVID=x"]
)
def test_mail_parameters_after_helo(bytewise: bool, param: str) -> None:
    """RFC 1869 §4.5: extensions exist only after EHLO."""
    client = Client(bytewise=bytewise)
    assert client.round(b"HELO client.example\r\n") == ["250"]
    assert client.round(f"MAIL FROM:<s@example.org> {param}\r\n".encode()) == ["555 5.5.4"]
    assert count(client, smtp.MailFrom) == 0
    assert client.round(b"MAIL FROM:<s@example.org>\r\n") == ["250 2.1.0"]
    assert mail_params(client) == smtp.MailParams()


@pytest.mark.parametrize("param", ["NOTIFY=NEVER", "ORCPT=rfc822;a@example.org"])
def test_rcpt_parameters_after_helo(bytewise: bool, param: str) -> None:
    client = Client(bytewise=bytewise)
    assert client.round(b"HELO client.example\r\n") == ["250"]
    assert client.round(b"MAIL FROM:<s@example.org>\r\n") == ["250 2.1.0"]
    assert client.round(f"RCPT TO:<r@example.org> {param}\r\n".encode()) == ["555 5.5.4"]
    assert count(client, smtp.RcptTo) == 0


def test_ehlo_after_helo_enables_parameters(bytewise: bool) -> None:
    client = Client(bytewise=bytewise)
    assert client.round(b"HELO client.example\r\n") == ["250"]
    assert client.round(b"EHLO client.example\r\n") == ["250"]
    assert client.round(b"MAIL FROM:<s@example.org> SIZE=5\r\n") == ["250 2.1.0"]
    assert mail_params(client).size == 5


def test_dsn_keyword_follows_the_extension() -> None:
    assert b"DSN" in ehlo_lines()
    assert b"DSN" not in ehlo_lines(extensions=smtp.Extensions(dsn=False))


@pytest.mark.parametrize("param", ["RET=FULL", "RET=HDRS", "ENVID=abc"])
def test_mail_dsn_parameters_not_offered(bytewise: bool, param: str) -> None:
    client, reply = mail(bytewise, param, extensions=smtp.Extensions(dsn=False))
    assert reply == ["555 5.5.4"]
    assert count(client, smtp.MailFrom) == 0


@pytest.mark.parametrize("param", ["NOTIFY=NEVER", "NOTIFY=SUCCESS", "ORCPT=rfc822;a@b.example"])
def test_rcpt_dsn_parameters_not_offered(bytewise: bool, param: str) -> None:
    client, reply = rcpt(bytewise, param, extensions=smtp.Extensions(dsn=False))
    assert reply == ["555 5.5.4"]
    assert count(client, smtp.RcptTo) == 0


# --- parameters reach the envelope --------------------------------------------------------------


def test_parameters_in_the_envelope_of_an_accepted_message(bytewise: bool) -> None:
    client = session(bytewise)
    assert client.round(
        b"MAIL FROM:<Sender@example.org> SIZE=64 body=8bitmime RET=hdrs ENVID=QQ+2B1\r\n"
    ) == ["250 2.1.0"]
    assert client.round(
        b"RCPT TO:<one@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;one+2Bx@example.org\r\n"
    ) == ["250 2.1.5"]
    assert client.round(b"RCPT TO:<two@example.org> NOTIFY=NEVER\r\n") == ["250 2.1.5"]
    assert client.round(b"RCPT TO:<three@example.org>\r\n") == ["250 2.1.5"]
    assert client.round(b"DATA\r\n") == ["354"]
    assert client.round(b"Subject: t\r\n\r\nbody\r\n.\r\n") == ["250 2.0.0"]
    envelope = client.accepted[-1].envelope
    assert envelope.sender == "Sender@example.org"
    assert envelope.mail == smtp.MailParams(
        size=64, body="8BITMIME", smtputf8=False, ret="HDRS", envid="QQ+1"
    )
    one, two, three = envelope.recipients
    assert one.address == "one@example.org"
    assert one.params.notify is not None
    assert sorted(one.params.notify) == ["DELAY", "SUCCESS"]
    assert one.params.orcpt == smtp.Orcpt("rfc822", "one+x@example.org")
    assert two == smtp.Recipient("two@example.org", smtp.RcptParams(notify=("NEVER",)))
    assert three == smtp.Recipient("three@example.org", smtp.RcptParams())


def test_smtputf8_and_utf8_orcpt_in_the_envelope(bytewise: bool) -> None:
    client = session(bytewise)
    assert client.round("MAIL FROM:<\u00fc@example.org> SMTPUTF8 ENVID=x\r\n".encode()) == [
        "250 2.1.0"
    ]
    assert client.round(b"RCPT TO:<r@example.org> ORCPT=utf-8;\\x{FC}@example.org\r\n") == [
        "250 2.1.5"
    ]
    assert client.round(b"DATA\r\n") == ["354"]
    assert client.round(b"\r\nbody\r\n.\r\n") == ["250 2.0.0"]
    envelope = client.accepted[-1].envelope
    assert envelope.mail == smtp.MailParams(smtputf8=True, envid="x")
    assert envelope.recipients[0].params.orcpt == smtp.Orcpt("utf-8", "\u00fc@example.org")


def test_binarymime_in_the_envelope(bytewise: bool) -> None:
    client = session(bytewise)
    assert client.round(b"MAIL FROM:<s@example.org> BODY=BINARYMIME SIZE=5\r\n") == ["250 2.1.0"]
    assert client.round(b"RCPT TO:<r@example.org>\r\n") == ["250 2.1.5"]
    assert client.round(b"BDAT 5 LAST\r\n\x00\xff\r\n.") == ["250 2.0.0"]
    envelope = client.accepted[-1].envelope
    assert envelope.mail == smtp.MailParams(size=5, body="BINARYMIME")
    assert client.accepted[-1].content == b"\x00\xff\r\n."


@pytest.mark.parametrize(
    ("mail", "rcpt"),
    [
        # U+017F (long s) and U+0131 (dotless i) upper-case to ASCII S and I in Python: the
        # values are ASCII literals, so these are not RET=HDRS, BODY=BINARYMIME, SUCCESS.
        ("RET=HDR\u017f", None),
        ("BODY=B\u0131NARYM\u0131ME", None),
        (None, "NOTIFY=\u017fUCCE\u017f\u017f"),
        (None, "ORCPT=rfc822\u0131;a@example.org"),
    ],
)
def test_parameter_values_are_ascii_literals_even_with_smtputf8(
    bytewise: bool, mail: str | None, rcpt: str | None
) -> None:
    client = session(bytewise)
    extra = f" {mail}" if mail else ""
    reply = client.round(f"MAIL FROM:<a@example.net> SMTPUTF8{extra}\r\n".encode())
    if mail is not None:
        assert reply[0].startswith("5"), reply
        return
    assert reply == ["250 2.1.0"]
    assert rcpt is not None
    reply = client.round(f"RCPT TO:<b@example.org> {rcpt}\r\n".encode())
    assert reply[0].startswith("5"), reply


# --- one table: what EHLO lists is what MAIL and RCPT take -----------------------------

_PARAMETER_PROBES = {
    # keyword listed in EHLO: (command, a parameter it brings)
    "SIZE": ("MAIL FROM:<a@example.net> SIZE=100", "MAIL"),
    "8BITMIME": ("MAIL FROM:<a@example.net> BODY=8BITMIME", "MAIL"),
    "SMTPUTF8": ("MAIL FROM:<a@example.net> SMTPUTF8", "MAIL"),
    "BINARYMIME": ("MAIL FROM:<a@example.net> BODY=BINARYMIME", "MAIL"),
    "DSN": ("MAIL FROM:<a@example.net> RET=HDRS ENVID=x", "MAIL"),
}


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"size": False},
        {"dsn": False},
        {"smtputf8": False, "binarymime": False},
        {"smtputf8": False, "eightbitmime": False, "binarymime": False},
        {"pipelining": False, "chunking": False, "binarymime": False},
    ],
)
def test_ehlo_keywords_and_parameters_come_from_one_table(switches: dict[str, bool]) -> None:
    """An extension switched off is neither listed nor taken: its parameter gets 555."""
    extensions = smtp.Extensions(**switches)
    client = session(extensions=extensions)
    [ehlo] = replies(client.send(b"EHLO c.example\r\n"))
    listed = {line[4:].split()[0].decode() for line in ehlo[1:]}
    assert ("PIPELINING" in listed) is extensions.pipelining
    assert ("CHUNKING" in listed) is extensions.chunking
    for keyword, (command, _) in _PARAMETER_PROBES.items():
        answer = client.send(command.encode() + b"\r\n")
        client.send(b"RSET\r\n")
        body_offered = "BODY=8BITMIME" in command and extensions.binarymime
        expected = keyword in listed or (keyword == "8BITMIME" and body_offered)
        assert answer.startswith(b"250 ") is expected, (keyword, answer)
        if not expected:
            assert answer.startswith(b"555 5.5.4"), answer
    rcpt = b"RCPT TO:<b@example.org> NOTIFY=NEVER\r\n"
    client.send(b"MAIL FROM:<a@example.net>\r\n")
    assert client.send(rcpt).startswith(b"250 ") is ("DSN" in listed)
