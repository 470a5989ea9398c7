"""The scam filter stage (wildboar.consumer.scam) on real MIME messages built by the email
package: every transfer encoding and charset, HTML, nesting, and the bounds."""

from __future__ import annotations

import email.message
import email.policy
import time
from email.headerregistry import Address

import pytest

from wildboar.consumer import scam
from wildboar.consumer._settings import SettingError

from .stages import Context, event, record_of

SCAM = "I am an African prince with a bank account holding ten million dollars."
CONTEXT = Context("scam")
REJECT = scam.Settings(action="reject")
TAG = scam.Settings(action="tag")


def mail(subject: str = "Greetings") -> email.message.EmailMessage:
    message = email.message.EmailMessage(policy=email.policy.SMTP)
    message["From"] = Address("Sender", "sender", "example.net")
    message["To"] = Address("Bob", "bob", "example.org")
    message["Subject"] = subject
    return message


def verdict_of(message: email.message.EmailMessage, config: scam.Settings = REJECT) -> str:
    result = scam.handle(event(message.as_bytes()), CONTEXT, config)
    return str(record_of(result).verdicts[-1].result)


@pytest.mark.parametrize("cte", ["7bit", "quoted-printable", "base64"])
def test_a_scam_in_any_transfer_encoding_is_refused(cte: str) -> None:
    message = mail()
    message.set_content(SCAM, cte=cte)
    result = scam.handle(event(message.as_bytes()), CONTEXT, REJECT)
    record = record_of(result)
    assert record.rejection is not None
    assert (record.rejection.code, record.rejection.enhanced, record.rejection.stage) == (
        550,
        "5.7.1",
        "scam",
    )
    assert record.verdicts[-1].details["words"] == "account, african, million, prince"


@pytest.mark.parametrize(
    ("charset", "greeting"),
    [("iso-8859-1", "Très cher ami,"), ("utf-16", "Dear friend ✉"), ("koi8-r", "Привет,")],
)
def test_each_part_is_read_in_its_charset(charset: str, greeting: str) -> None:
    message = mail()
    message.set_content(f"{greeting} {SCAM}", charset=charset, cte="base64")
    assert b"African" not in message.as_bytes()
    assert greeting in scam.text_of(message.as_bytes())
    assert verdict_of(message) == "reject"


def test_quoted_printable_soft_breaks_inside_a_word_are_undone() -> None:
    message = mail()
    message["Content-Type"] = "text/plain; charset=us-ascii"
    message["Content-Transfer-Encoding"] = "quoted-printable"
    message.set_payload("Afri=\r\ncan pri=\r\nnce, one mil=\r\nlion\r\n")
    assert verdict_of(message) == "reject"


def test_html_is_read_as_its_text() -> None:
    message = mail()
    message.set_content(
        "<html><head><style>p {}</style></head><body><p><b>Afri</b>can "
        "&#112;rince</p><!-- account --><script>var account;</script>"
        "<p>a&nbsp;million</p></body></html>",
        subtype="html",
    )
    text = scam.text_of(message.as_bytes())
    assert "African prince" in text
    assert "account" not in text  # comments and scripts are not text
    assert verdict_of(message) == "reject"


def test_nested_multiparts_and_an_attached_message_are_searched() -> None:
    inner = mail("Fwd")
    inner.set_content("a million thanks")
    message = mail()
    message.set_content("Dear friend,")
    message.add_alternative("<p>the <i>prince</i> writes</p>", subtype="html")
    message.add_attachment(inner)
    message.add_attachment(b"\x89PNG African account", maintype="image", subtype="png")
    text = scam.text_of(message.as_bytes())
    assert "prince" in text and "million" in text
    assert "account" not in text  # only text parts: not the image
    assert verdict_of(message) == "pass"
    message.add_attachment("account statement", subtype="plain", filename="a.txt")
    assert verdict_of(message) == "reject"


def test_the_subject_is_decoded_and_searched() -> None:
    message = mail("Prince of Lagos: héllo million")
    message.set_content("your account")
    assert b"=?utf-8?" in message.as_bytes()
    assert verdict_of(message) == "reject"


def test_words_count_whole_and_distinct() -> None:
    message = mail()
    message.set_content("The princes, the accounts, millions, Africans. Prince PRINCE prince.")
    assert verdict_of(message) == "pass"
    message = mail()
    message.set_content("prince, ACCOUNT and Million")
    assert verdict_of(message) == "reject"


def test_clean_mail_passes_with_the_words_it_had() -> None:
    message = mail()
    message.set_content("Your account has a million unread messages.")
    result = scam.handle(event(message.as_bytes()), CONTEXT, REJECT)
    record = record_of(result)
    assert record.rejection is None
    [verdict] = record.verdicts
    assert (verdict.stage, verdict.result, verdict.details) == (
        "scam",
        "pass",
        {"words": "account, million"},
    )


def test_tag_keeps_the_message_and_says_why() -> None:
    message = mail()
    message.set_content(SCAM)
    record = record_of(scam.handle(event(message.as_bytes()), Context("filter"), TAG))
    assert record.rejection is None
    verdict = record.verdicts[-1]
    assert (verdict.stage, verdict.result) == ("filter", "tag")
    assert verdict.details["header"] == "X-Wildboar-Scam: yes (account, african, million, prince)"
    assert verdict.reason == "scam: 4 of the scam words (account, african, million, prince)"


def test_text_past_the_bound_is_not_searched() -> None:
    message = mail()
    message.set_content("x " * scam.MAX_TEXT + SCAM)
    assert len(scam.text_of(message.as_bytes())) <= scam.MAX_TEXT
    assert verdict_of(message) == "pass"


def test_parts_past_the_bound_are_not_searched() -> None:
    message = mail()
    message.set_content("hello")
    for _ in range(scam.MAX_PARTS):
        message.add_attachment("nothing here", subtype="plain")
    message.add_attachment(SCAM, subtype="plain")
    assert verdict_of(message) == "pass"


def test_nesting_past_the_parser_is_searched_as_raw_text() -> None:
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(3000)
    )
    raw = b"Subject: deep\r\n" + head + b"Content-Type: text/plain\r\n\r\n" + SCAM.encode()
    result = scam.handle(event(raw), CONTEXT, REJECT)
    assert record_of(result).rejection is not None


def test_nesting_past_the_depth_bound_is_not_followed() -> None:
    message = mail()
    message.set_content(SCAM)
    for _ in range(scam.MAX_DEPTH + 1):
        outer = mail()
        outer.make_mixed()
        outer.attach(message)
        message = outer
    assert "prince" not in scam.text_of(message.as_bytes())


def test_an_unknown_charset_is_read_as_utf8() -> None:
    raw = (
        b"Subject: x\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n\r\n" + SCAM.encode() + b"\r\n"
    )
    assert scam.scam_words(scam.text_of(raw)) == ["account", "african", "million", "prince"]


def test_settings_come_from_the_environment() -> None:
    assert scam.load({}) == REJECT
    assert scam.load({"WILDBOAR_SCAM_ACTION": " Tag "}) == TAG
    with pytest.raises(
        SettingError, match=r"WILDBOAR_SCAM_ACTION='drop': must be one of reject, tag"
    ):
        scam.load({"WILDBOAR_SCAM_ACTION": "drop"})


def test_the_handler_reads_its_settings_once(monkeypatch: pytest.MonkeyPatch) -> None:
    scam.settings.cache_clear()
    monkeypatch.setenv("WILDBOAR_SCAM_ACTION", "tag")
    message = mail()
    message.set_content(SCAM)
    try:
        assert record_of(scam.handler(event(message.as_bytes()), CONTEXT)).rejection is None
        monkeypatch.setenv("WILDBOAR_SCAM_ACTION", "reject")
        assert record_of(scam.handler(event(message.as_bytes()), CONTEXT)).rejection is None
    finally:
        scam.settings.cache_clear()


@pytest.mark.parametrize("markup", ["<a " * 300_000, "<!--x" * 200_000, "<![ x" * 100_000])
def test_hostile_html_costs_one_pass_and_never_raises(markup: str) -> None:
    """Unclosed tags, unclosed comments, broken declarations: markup on which
    ``html.parser`` takes time quadratic in its length (hours for a megabyte) or raises.
    The stage reads it in one pass: a megabyte of it within the time budget's fraction
    any stage has, and a verdict, not an exception."""
    message = mail()
    message.set_content(f"<html><body>African prince account {markup}</body></html>", "html")
    started = time.monotonic()
    assert verdict_of(message) == "reject"
    assert time.monotonic() - started < 20  # quadratic parsing took hours; linear, < 1 s
    assert scam.html_text(f"African prince account {markup}").startswith("African prince")
