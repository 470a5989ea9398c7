"""Delivery status notifications (``wildboar.dsn``), in memory: when one is due (RFC 3461
NOTIFY and the null sender), and what it holds, read back with Python's ``email`` parser:
the RFC 6522 multipart/report, the RFC 3464 fields per message and per recipient, the
original under RET (RFC 3461 §4.3), ENVID and ORCPT carried, 8-bit and UTF-8 (RFC 6533).
"""

from __future__ import annotations

import datetime
import email
import email.message
import email.parser
import email.policy
import re
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wildboar import dsn, smtp
from wildboar import message as M

from .records import NOW, message_of

SENDER = "alice@example.org"
CONTENT = b"From: Alice <alice@example.org>\r\nSubject: hello\r\n\r\nHello, Carol.\r\n"
QUOTA = smtp.Reply(552, "5.2.2", "<carol@example.org> Quota exceeded")
NO_USER = smtp.Reply(550, "5.1.1", "<dave@example.org> User doesn't exist")
BUSY = smtp.Reply(451, "4.3.0", "<carol@example.org> Temporary internal failure")
LATER = NOW + datetime.timedelta(hours=1)
UNTIL = NOW + datetime.timedelta(days=5)
LMTP = "lmtp:unix:/run/dovecot/lmtp"


def record(
    *recipients: smtp.Recipient | str,
    sender: str = SENDER,
    content: bytes = CONTENT,
    mail: smtp.MailParams | None = None,
) -> M.Message:
    """A message record as a worker builds it, with the given envelope parameters."""
    rcpts = tuple(smtp.Recipient(r) if isinstance(r, str) else r for r in recipients)
    mail = mail or smtp.MailParams(body="8BITMIME")
    envelope = smtp.Envelope(
        helo="client.example.com",
        protocol="UTF8SMTP" if mail.smtputf8 else "ESMTP",
        sender=sender,
        mail=mail,
        recipients=rcpts or (smtp.Recipient("carol@example.org"),),
        size=len(content),
        chunked=mail.body == "BINARYMIME",
    )
    return message_of(envelope, content)


def rcpt(
    address: str, *notify: smtp.events.Notify, orcpt: tuple[str, str] | None = None
) -> smtp.Recipient:
    return smtp.Recipient(
        address,
        smtp.RcptParams(
            notify=notify or None, orcpt=smtp.Orcpt(*orcpt) if orcpt is not None else None
        ),
    )


def failure(
    recipient: str = "carol@example.org",
    reply: smtp.Reply = QUOTA,
    *,
    delayed: bool = False,
    remote_mta: str | None = LMTP,
) -> dsn.Failure:
    return dsn.Failure(
        recipient=recipient,
        reply=reply,
        action="delayed" if delayed else "failed",
        remote_mta=remote_mta,
        last_attempt=LATER,
        will_retry_until=UNTIL if delayed else None,
    )


def build(
    message: M.Message,
    failures: Sequence[dsn.Failure],
    *,
    reporting_mta: str = "mx.example.org",
    arrival: datetime.datetime = NOW,
    now: datetime.datetime = LATER,
    message_id_domain: str = "mx.example.org",
) -> bytes | None:
    return dsn.build(
        message,
        failures,
        reporting_mta=reporting_mta,
        arrival=arrival,
        now=now,
        message_id_domain=message_id_domain,
    )


def built(
    message: M.Message, failures: Sequence[dsn.Failure], now: datetime.datetime = LATER
) -> bytes:
    out = build(message, failures, now=now)
    assert out is not None
    return out


def parse(out: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def parts(out: bytes) -> list[email.message.EmailMessage]:
    report = parse(out)
    assert report.get_content_type() == "multipart/report"
    return list(report.iter_parts())  # type: ignore[arg-type]


def status_blocks(out: bytes) -> list[email.message.Message]:
    """The message/delivery-status header blocks, as the ``email`` parser splits them."""
    status = parts(out)[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    return [b for b in blocks if isinstance(b, email.message.Message)]


def raw_status_blocks(out: bytes) -> list[email.message.Message]:
    """The header blocks of the second part, split by hand (the ``email`` parser reads
    message/global-delivery-status as one embedded message)."""
    boundary = parse(out).get_boundary()
    assert boundary is not None
    part = out.split(b"\r\n--" + boundary.encode() + b"\r\n")[2]
    body = part.split(b"\r\n\r\n", 1)[1]
    parser = email.parser.BytesHeaderParser(policy=email.policy.default)
    return [parser.parsebytes(block + b"\r\n") for block in body.rstrip(b"\r\n").split(b"\r\n\r\n")]


# --- when a DSN is due ------------------------------------------------------------------


def test_null_sender_never_gets_a_dsn() -> None:
    message = record(sender="")
    assert not dsn.wanted(message, failure())
    assert build(message, [failure()]) is None


@pytest.mark.parametrize("notify", [("NEVER",), ("SUCCESS",), ("DELAY",), ("SUCCESS", "DELAY")])
def test_notify_without_failure_means_no_failed_dsn(notify: tuple[smtp.events.Notify]) -> None:
    message = record(rcpt("carol@example.org", *notify))
    assert not dsn.wanted(message, failure())
    assert build(message, [failure()]) is None


@pytest.mark.parametrize("notify", [(), ("FAILURE",), ("SUCCESS", "FAILURE"), ("FAILURE", "DELAY")])
def test_failure_or_no_notify_means_a_failed_dsn(notify: tuple[smtp.events.Notify]) -> None:
    message = record(rcpt("carol@example.org", *notify))
    assert dsn.wanted(message, failure())
    assert build(message, [failure()]) is not None


@pytest.mark.parametrize(
    ("notify", "due"),
    [((), False), (("FAILURE",), False), (("NEVER",), False), (("DELAY",), True)],
)
def test_delayed_dsn_only_with_notify_delay(notify: tuple[smtp.events.Notify], due: bool) -> None:
    """No NOTIFY means FAILURE only: our choice among RFC 3461 §4.1's defaults."""
    message = record(rcpt("carol@example.org", *notify))
    assert dsn.wanted(message, failure(delayed=True)) is due
    assert (build(message, [failure(delayed=True)]) is not None) is due


def test_an_unknown_recipient_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="not a recipient"):
        dsn.wanted(record("carol@example.org"), failure("mallory@example.org"))


# --- the report -------------------------------------------------------------------------


def test_the_report_is_a_multipart_report_from_the_mailer_daemon() -> None:
    message = record()
    out = built(message, [failure()])
    report = parse(out)
    assert report["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert b"\r\nTo: <alice@example.org>\r\n" in out
    assert report["To"].addresses[0].addr_spec == SENDER
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["MIME-Version"] == "1.0"
    assert report["Date"].datetime == LATER
    assert re.fullmatch(r"<[0-9a-f]{32}@mx\.example\.org>", report["Message-ID"])
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    types = [p.get_content_type() for p in report.iter_parts()]
    assert types == ["text/plain", "message/delivery-status", "message/rfc822"]
    assert not report.defects
    assert all(not p.defects for p in report.walk())


def test_every_line_ends_in_crlf_and_is_short() -> None:
    long_reply = smtp.Reply(550, "5.7.1", ("x" * 70 + " policy", "y " * 200))
    out = built(record(), [failure(reply=long_reply)])
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", out) is None
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    assert b"\r\n \r\n" not in out  # no folded line of white space only


def test_the_text_part_names_each_recipient_and_its_reply() -> None:
    message = record("carol@example.org", "dave@example.org")
    out = built(message, [failure(), failure("dave@example.org", NO_USER)])
    text = parts(out)[0]
    assert text.get_content_type() == "text/plain"
    body = text.get_content()
    assert "<carol@example.org>:" in body
    assert "552 5.2.2 <carol@example.org> Quota exceeded" in body
    assert "550 5.1.1 <dave@example.org> User doesn't exist" in body
    assert "Your message is attached." in body


def test_per_message_fields() -> None:
    per_message = status_blocks(built(record(), [failure()]))[0]
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_message["Arrival-Date"] == "Wed, 01 May 2024 12:00:00 +0000"
    assert per_message["Original-Envelope-Id"] is None


def test_per_recipient_fields() -> None:
    blocks = status_blocks(built(record(), [failure()]))
    assert len(blocks) == 2
    carol = blocks[1]
    assert carol["Final-Recipient"] == "rfc822; carol@example.org"
    assert carol["Action"] == "failed"
    assert carol["Status"] == "5.2.2"
    assert carol["Remote-MTA"] == "x-unix; /run/dovecot/lmtp"
    assert carol["Diagnostic-Code"] == "smtp; 552 5.2.2 <carol@example.org> Quota exceeded"
    assert carol["Last-Attempt-Date"] == "Wed, 01 May 2024 13:00:00 +0000"
    assert carol["Original-Recipient"] is None
    assert carol["Will-Retry-Until"] is None


def test_a_multiline_reply_is_one_folded_diagnostic() -> None:
    reply = smtp.Reply(550, "5.7.1", ("Message refused by local policy", "see the operator's page"))
    out = built(record(), [failure(reply=reply)])
    field = re.search(rb"\r\nDiagnostic-Code: .*?\r\n(?! )", out, re.DOTALL)
    assert field is not None
    assert b"\r\n " in field.group().strip()  # folded
    assert all(len(line) <= 78 for line in field.group().split(b"\r\n"))
    diagnostic = status_blocks(out)[1]["Diagnostic-Code"]
    assert diagnostic == ("smtp; 550 5.7.1 Message refused by local policy see the operator's page")


@pytest.mark.parametrize(
    ("remote", "field"),
    [
        ("lmtp:unix:/run/dovecot/lmtp", "x-unix; /run/dovecot/lmtp"),
        ("lmtp:127.0.0.1:24", "dns; 127.0.0.1"),
        ("lmtp:[::1]:24", "dns; ::1"),
        ("lmtp:mda.example.org:24", "dns; mda.example.org"),
        ("mda.example.org", "dns; mda.example.org"),
    ],
)
def test_remote_mta(remote: str, field: str) -> None:
    out = built(record(), [failure(remote_mta=remote)])
    assert status_blocks(out)[1]["Remote-MTA"] == field


def test_without_a_remote_mta_there_is_no_remote_mta_field() -> None:
    out = built(record(), [failure(remote_mta=None)])
    assert status_blocks(out)[1]["Remote-MTA"] is None


def test_several_recipients_in_one_report_only_those_that_asked() -> None:
    message = record(
        rcpt("carol@example.org"),
        rcpt("dave@example.org", "FAILURE"),
        rcpt("erin@example.org", "NEVER"),
    )
    failures = [
        failure(),
        failure("dave@example.org", NO_USER),
        failure("erin@example.org", NO_USER),
    ]
    blocks = status_blocks(built(message, failures))
    finals = [b["Final-Recipient"] for b in blocks[1:]]
    assert finals == ["rfc822; carol@example.org", "rfc822; dave@example.org"]
    assert [b["Status"] for b in blocks[1:]] == ["5.2.2", "5.1.1"]


def test_a_temporary_failure_given_up_keeps_its_status() -> None:
    carol = status_blocks(built(record(), [failure(reply=BUSY)]))[1]
    assert carol["Action"] == "failed"
    assert carol["Status"] == "4.3.0"
    assert carol["Diagnostic-Code"].startswith("smtp; 451 4.3.0 ")


def test_envid_and_orcpt_are_carried() -> None:
    message = record(
        rcpt("carol@example.org", orcpt=("rfc822", "carol+list@example.org")),
        mail=smtp.MailParams(body="8BITMIME", envid="QQ+314159"),
    )
    blocks = status_blocks(built(message, [failure()]))
    assert blocks[0]["Original-Envelope-Id"] == "QQ+314159"
    assert blocks[1]["Original-Recipient"] == "rfc822;carol+list@example.org"
    assert blocks[1]["Final-Recipient"] == "rfc822; carol@example.org"


def test_envid_with_a_control_character_is_escaped() -> None:
    message = record(mail=smtp.MailParams(envid="a\r\nBcc: x"))
    out = built(message, [failure()])
    assert status_blocks(out)[0]["Original-Envelope-Id"] == "a+0D+0ABcc: x"
    assert b"\r\nBcc:" not in out


# --- delays -----------------------------------------------------------------------------


def test_a_delay_report() -> None:
    message = record(rcpt("carol@example.org", "DELAY"))
    out = built(message, [failure(reply=BUSY, delayed=True)])
    report = parse(out)
    assert report["Subject"] == "Delayed Mail (still being retried)"
    carol = status_blocks(out)[1]
    assert carol["Action"] == "delayed"
    assert carol["Status"] == "4.3.0"
    assert carol["Will-Retry-Until"] == "Mon, 06 May 2024 12:00:00 +0000"
    original = parts(out)[2]
    assert original.get_content_type() == "text/rfc822-headers"  # a delay returns no body
    assert "will be retried until Mon, 06 May 2024" in parts(out)[0].get_content()


def test_failed_and_delayed_together_are_a_failure_report() -> None:
    message = record(rcpt("carol@example.org", "FAILURE", "DELAY"), rcpt("dave@example.org"))
    failures = [failure(reply=BUSY, delayed=True), failure("dave@example.org", NO_USER)]
    out = built(message, failures)
    assert parse(out)["Subject"] == "Undelivered Mail Returned to Sender"
    assert [b["Action"] for b in status_blocks(out)[1:]] == ["delayed", "failed"]
    assert parts(out)[2].get_content_type() == "message/rfc822"


# --- the original -----------------------------------------------------------------------


def test_the_whole_original_is_returned_by_default() -> None:
    message = record()
    out = built(message, [failure()])
    original = parts(out)[2]
    assert original.get_content_type() == "message/rfc822"
    inner = original.get_content()
    assert inner["Subject"] == "hello"
    assert inner["Received"].startswith("from client.example.com")
    assert inner.get_content() == "Hello, Carol.\r\n"
    assert b"\r\n\r\n" + message.email.data + b"\r\n--" in out  # octet for octet


def test_ret_full_returns_the_whole_original() -> None:
    message = record(mail=smtp.MailParams(ret="FULL"))
    assert parts(built(message, [failure()]))[2].get_content_type() == "message/rfc822"


def test_ret_hdrs_returns_the_header_section_only() -> None:
    message = record(mail=smtp.MailParams(ret="HDRS"))
    out = built(message, [failure()])
    original = parts(out)[2]
    assert original.get_content_type() == "text/rfc822-headers"
    headers = original.get_content()
    assert "Subject: hello" in headers
    assert "Hello, Carol." not in headers
    assert b"Hello, Carol." not in out
    assert "header section of your message is attached" in parts(out)[0].get_content()


def test_a_large_original_is_returned_as_headers() -> None:
    content = CONTENT + (b"x" * 76 + b"\r\n") * (dsn.FULL_LIMIT // 78 + 1)
    out = built(record(content=content), [failure()])
    assert parts(out)[2].get_content_type() == "text/rfc822-headers"
    assert len(out) < 4096


def test_a_binarymime_original_is_returned_as_headers() -> None:
    content = CONTENT + b"\x00\xff\r\x00\n"
    message = record(content=content, mail=smtp.MailParams(body="BINARYMIME"))
    out = built(message, [failure()])
    assert parts(out)[2].get_content_type() == "text/rfc822-headers"
    assert b"\x00" not in out


def test_an_original_that_is_not_8bit_clean_is_returned_as_headers() -> None:
    content = CONTENT + b"a bare\nline feed\r\n" + b"x" * 1200 + b"\r\n"
    out = built(record(content=content), [failure()])
    assert parts(out)[2].get_content_type() == "text/rfc822-headers"


def test_an_8bit_original_is_sent_8bit() -> None:
    content = "Subject: café\r\n\r\nGrüße aus Köln\r\n".encode()
    message = record(content=content)
    out = built(message, [failure()])
    report = parse(out)
    assert report["Content-Transfer-Encoding"] == "8bit"
    original = parts(out)[2]
    assert original.get_content_type() == "message/rfc822"  # not SMTPUTF8: no message/global
    assert original["Content-Transfer-Encoding"] == "8bit"
    assert message.email.data in out
    assert parts(out)[1]["Content-Transfer-Encoding"] == "7bit"


def test_an_ascii_report_is_7bit() -> None:
    out = built(record(), [failure()])
    assert parse(out)["Content-Transfer-Encoding"] == "7bit"
    assert out.isascii()


# --- UTF-8 (RFC 6533) -------------------------------------------------------------------


def utf8_record(*recipients: smtp.Recipient | str, content: bytes = CONTENT) -> M.Message:
    return record(
        *recipients, content=content, mail=smtp.MailParams(body="8BITMIME", smtputf8=True)
    )


def test_a_utf8_recipient_gets_a_global_delivery_status() -> None:
    message = utf8_record("jörg@bücher.example", "carol+x@example.org")
    failures = [failure("jörg@bücher.example", NO_USER), failure("carol+x@example.org")]
    out = built(message, failures)
    assert parts(out)[1].get_content_type() == "message/global-delivery-status"
    blocks = raw_status_blocks(out)
    assert blocks[0]["Reporting-MTA"] == "dns; mx.example.org"
    assert blocks[1]["Final-Recipient"] == "utf-8; jörg@bücher.example"
    assert blocks[2]["Final-Recipient"] == "rfc822; carol+x@example.org"
    assert "<jörg@bücher.example>:" in parts(out)[0].get_content()
    assert parts(out)[0].get_content_charset() == "utf-8"


def test_a_utf8_sender_is_written_as_utf8() -> None:
    message = record(
        "carol@example.org", sender="jörg@bücher.example", mail=smtp.MailParams(smtputf8=True)
    )
    out = built(message, [failure()])
    assert "\r\nTo: <jörg@bücher.example>\r\n".encode() in out
    assert parts(out)[1].get_content_type() == "message/global-delivery-status"


def test_utf8_orcpt_is_unitext() -> None:
    """RFC 6533 §3: in utf-8-addr-unitext, "+", "=", "\\" and space are ``\\x{HEX}``."""
    message = utf8_record(rcpt("jörg@bücher.example", orcpt=("utf-8", "jörg+a=b@bücher.example")))
    blocks = raw_status_blocks(built(message, [failure("jörg@bücher.example", NO_USER)]))
    assert blocks[1]["Original-Recipient"] == "utf-8;jörg\\x{2B}a\\x{3D}b@bücher.example"


def test_a_utf8_original_is_message_global() -> None:
    content = "Subject: Grüße\r\n\r\nHallo\r\n".encode()
    message = utf8_record("carol@example.org", content=content)
    assert parts(built(message, [failure()]))[2].get_content_type() == "message/global"
    hdrs = msgspec.structs.replace(
        message, email=msgspec.structs.replace(message.email, ret="HDRS")
    )
    assert parts(built(hdrs, [failure()]))[2].get_content_type() == "message/global-headers"


# --- no injection, no surprises ---------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"reporting_mta": "mx.example.org\r\nBcc: x@example.net"},
        {"reporting_mta": "mx example org"},
        {"message_id_domain": "mx.example.org>\r\n"},
        {"now": datetime.datetime(2024, 5, 1, 12, 0)},  # naive: which zone?
        {"arrival": datetime.datetime(2024, 5, 1, 12, 0)},
    ],
)
def test_bad_names_and_dates_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build(record(), [failure()], **kw)


def test_an_address_with_a_line_break_is_refused() -> None:
    evil = "carol@example.org>\r\nBcc: <x@example.net"
    with pytest.raises(ValueError, match="control character"):
        build(record(evil), [failure(evil)])


def test_a_remote_mta_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError):
        build(record(), [failure(remote_mta="mda\r\nBcc: x")])


def test_the_same_report_is_the_same_bytes() -> None:
    message = record()
    assert built(message, [failure()]) == built(message, [failure()])
    later = built(message, [failure()], now=LATER + datetime.timedelta(seconds=1))
    assert parse(later)["Message-ID"] != parse(built(message, [failure()]))["Message-ID"]


def test_the_boundary_is_not_in_the_original() -> None:
    out = built(record(), [failure()])
    boundary = parse(out).get_boundary()
    assert boundary is not None
    assert out.count(boundary.encode()) == 5  # the header, three delimiters, the close


reply_texts = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=200
)


@given(
    lines=st.lists(reply_texts, min_size=1, max_size=4),
    local=st.from_regex(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,40}", fullmatch=True),
)
def test_any_reply_and_address_make_a_well_formed_report(lines: list[str], local: str) -> None:
    address = f"{local}@example.org"
    reply = smtp.Reply(550, "5.1.1", tuple(lines))
    out = built(record(address), [failure(address, reply)])
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", out) is None
    assert max(len(line) for line in out.split(b"\r\n")) <= 998
    assert b"\r\n \r\n" not in out
    blocks = status_blocks(out)
    assert blocks[1]["Final-Recipient"] == f"rfc822; {address}"
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 " + " ".join(" ".join(lines).split())
