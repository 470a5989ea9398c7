"""The SPF stage (wildboar.consumer.spf) against a private authoritative DNS server (NSD,
tests/consumer/dns.py) serving the zone ``spf.test``: every SPF result, the mechanisms
``ip4``, ``ip6``, ``a``, ``mx`` and ``include``, the HELO identity of a null sender, and the
policy choices. Never the Internet."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from tests.records import make_message, message_of
from wildboar import smtp
from wildboar.consumer import Retry, spf
from wildboar.consumer._settings import SettingError

from .dns import Nsd
from .stages import Context, event_of, record_of

CLIENT = "192.0.2.10"  # the remote address of tests.records' messages
ZONE = """\
pass        IN TXT "v=spf1 ip4:192.0.2.0/24 -all"
fail        IN TXT "v=spf1 ip4:198.51.100.1 -all"
softfail    IN TXT "v=spf1 ip4:198.51.100.1 ~all"
neutral     IN TXT "v=spf1 ?all"
none        IN A   192.0.2.99
include     IN TXT "v=spf1 include:pass.spf.test -all"
a           IN TXT "v=spf1 a -all"
a           IN A   192.0.2.10
mx          IN TXT "v=spf1 mx -all"
mx          IN MX  10 mail.mx.spf.test.
mail.mx     IN A   192.0.2.10
v6          IN TXT "v=spf1 ip6:2001:db8::/32 -all"
permerror   IN TXT "v=spf1 ip4:192.0.2.10 nonsense -all"
split       IN TXT "v=spf1 ip4:198.51.100.1 " "ip4:192.0.2.10 -all"
helo        IN TXT "v=spf1 a -all"
helo        IN A   192.0.2.10
"""
CONTEXT = Context("spf")


@pytest.fixture(scope="module")
def nsd() -> Iterator[Nsd]:
    with Nsd({"spf.test": ZONE}) as server:
        yield server


@pytest.fixture
def config(nsd: Nsd) -> spf.Settings:
    return spf.Settings(nameserver=nsd.address, timeout=5)


def from_(sender: str, helo: str = "client.example.com") -> dict[str, Any]:
    event = event_of(make_message(sender=sender))
    event["transaction"]["heloName"] = helo
    return event


@pytest.mark.parametrize(
    ("domain", "result"),
    [
        ("pass", "pass"),
        ("include", "pass"),
        ("a", "pass"),
        ("mx", "pass"),
        ("split", "pass"),
        ("softfail", "softfail"),
        ("neutral", "neutral"),
        ("none", "none"),
        ("nowhere", "none"),  # no such name in the zone: NXDOMAIN
        ("permerror", "permerror"),
        ("v6", "fail"),
        ("fail", "fail"),
    ],
)
def test_each_result_becomes_a_verdict(config: spf.Settings, domain: str, result: str) -> None:
    sender = f"alice@{domain}.spf.test"
    tag = msgspec.structs.replace(config, fail="tag")
    record = record_of(spf.handle(from_(sender), CONTEXT, tag))
    assert record.rejection is None
    [verdict] = record.verdicts
    assert (verdict.stage, verdict.result) == ("spf", result)
    assert verdict.details == {
        "authentication-results": f"mx.example.org; spf={result} smtp.mailfrom={sender}",
        "identity": "mailfrom",
        "client-ip": CLIENT,
        "helo": "client.example.com",
        "envelope-from": sender,
    }


def test_a_fail_is_refused_with_5_7_23(config: spf.Settings) -> None:
    record = record_of(spf.handle(from_("mallory@fail.spf.test"), CONTEXT, config))
    assert record.rejection is not None
    assert (record.rejection.code, record.rejection.enhanced, record.rejection.stage) == (
        550,
        "5.7.23",
        "spf",
    )
    assert record.rejection.text == "SPF fail - not authorized"
    assert record.verdicts[-1].details["authentication-results"] == (
        "mx.example.org; spf=fail smtp.mailfrom=mallory@fail.spf.test"
    )


def test_fail_and_softfail_follow_the_policy(config: spf.Settings) -> None:
    tag = spf.Settings(fail="tag", softfail="reject", nameserver=config.nameserver)
    tagged = record_of(spf.handle(from_("m@fail.spf.test"), CONTEXT, tag))
    assert (tagged.rejection, tagged.verdicts[-1].result) == (None, "fail")
    refused = record_of(spf.handle(from_("m@softfail.spf.test"), CONTEXT, tag))
    assert refused.rejection is not None and refused.rejection.enhanced == "5.7.23"
    assert refused.verdicts[-1].result == "reject"


def test_a_null_sender_is_checked_by_its_helo_name(config: spf.Settings) -> None:
    record = record_of(spf.handle(from_("", helo="helo.spf.test"), CONTEXT, config))
    verdict = record.verdicts[-1]
    assert (verdict.result, verdict.details["identity"]) == ("pass", "helo")
    assert verdict.details["authentication-results"] == (
        "mx.example.org; spf=pass smtp.helo=helo.spf.test"
    )
    refused = record_of(spf.handle(from_("", helo="fail.spf.test"), CONTEXT, config))
    assert refused.rejection is not None


def test_an_ipv6_client_is_checked_by_ip6(config: spf.Settings) -> None:
    envelope = smtp.Envelope(
        helo="client.example.com",
        protocol="ESMTP",
        sender="alice@v6.spf.test",
        mail=smtp.MailParams(),
        recipients=(smtp.Recipient("bob@example.net"),),
        size=10,
        chunked=False,
    )
    message = message_of(envelope, b"\r\nHello.\r\n", family="ipv6", remote=("2001:db8::25", 2525))
    record = record_of(spf.handle(event_of(message), CONTEXT, config))
    assert (record.verdicts[-1].result, record.verdicts[-1].details["client-ip"]) == (
        "pass",
        "2001:db8::25",
    )


def test_a_temporary_dns_failure_is_retried_or_tagged(config: spf.Settings) -> None:
    # The server answers REFUSED for a zone it does not serve: no server could answer.
    with pytest.raises(Retry, match="SPF temperror"):
        spf.handle(from_("alice@example.invalid"), CONTEXT, config)
    tag = spf.Settings(temperror="tag", nameserver=config.nameserver, timeout=5)
    record = record_of(spf.handle(from_("alice@example.invalid"), CONTEXT, tag))
    assert record.verdicts[-1].result == "temperror"


def test_a_nameserver_that_does_not_answer_is_a_temperror(nsd: Nsd) -> None:
    silent = spf.Settings(nameserver=("127.0.0.1", 9), timeout=1)
    with pytest.raises(Retry):
        spf.handle(from_("alice@pass.spf.test"), CONTEXT, silent)


def test_an_address_that_needs_quoting_is_quoted(config: spf.Settings) -> None:
    record = record_of(spf.handle(from_('"a b"@pass.spf.test'), CONTEXT, config))
    assert record.verdicts[-1].details["authentication-results"] == (
        'mx.example.org; spf=pass smtp.mailfrom="\\"a b\\"@pass.spf.test"'
    )


def test_settings_come_from_the_environment(nsd: Nsd, monkeypatch: pytest.MonkeyPatch) -> None:
    assert spf.load({}) == spf.Settings()
    assert spf.load(
        {
            "WILDBOAR_SPF_FAIL": "tag",
            "WILDBOAR_SPF_SOFTFAIL": "REJECT",
            "WILDBOAR_SPF_TEMPERROR": "tag",
            "WILDBOAR_SPF_NAMESERVER": "[::1]:5353",
            "WILDBOAR_SPF_TIMEOUT": "3",
        }
    ) == spf.Settings("tag", "reject", "tag", ("::1", 5353), 3.0)
    assert spf.load({"WILDBOAR_SPF_NAMESERVER": "192.0.2.1"}).nameserver == ("192.0.2.1", 53)
    for name, value, why in [
        ("WILDBOAR_SPF_FAIL", "drop", "must be one of reject, tag"),
        ("WILDBOAR_SPF_NAMESERVER", "dns.example:53", "not an IP address"),
        ("WILDBOAR_SPF_NAMESERVER", "127.0.0.1:99999", "port '99999' is not a number"),
        ("WILDBOAR_SPF_NAMESERVER", "127.0.0.1:x", "port 'x' is not a number"),
        ("WILDBOAR_SPF_NAMESERVER", "[::1]x", "port 'x' is not a number"),
        ("WILDBOAR_SPF_TIMEOUT", "nan", "must be seconds from 1 to 300"),
    ]:
        with pytest.raises(SettingError, match=re.escape(f"{name}='{value}': {why}")):
            spf.load({name: value})
    spf.settings.cache_clear()
    monkeypatch.setenv("WILDBOAR_SPF_NAMESERVER", f"127.0.0.1:{nsd.port}")
    try:
        record = record_of(spf.handler(from_("alice@pass.spf.test"), CONTEXT))
    finally:
        spf.settings.cache_clear()
    assert record.verdicts[-1].result == "pass"
