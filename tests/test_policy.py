"""The recipient policy in memory: our domains, IDNA forms, Postmaster, relay denied."""

from __future__ import annotations

import pytest

from wildboar.policy import RecipientPolicy, domain_key


@pytest.fixture
def policy() -> RecipientPolicy:
    return RecipientPolicy(["Example.ORG", "bücher.example", "xn--caf-dma.example."])


@pytest.mark.parametrize(
    "address",
    [
        "alice@example.org",
        "alice@EXAMPLE.org",
        "alice@example.org.",
        "kurt@bücher.example",
        "kurt@xn--bcher-kva.example",
        "zoé@café.example",
        "Postmaster",
        "POSTMASTER@example.org",
        "postmaster@xn--bcher-kva.example",
    ],
)
def test_recipients_of_our_domains_pass(policy: RecipientPolicy, address: str) -> None:
    assert policy.check(address) is None


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("x@gmail.com", "gmail.com"),
        ("x@example.org.evil", "example.org.evil"),
        ("x@sub.example.org", "sub.example.org"),
        ("postmaster@gmail.com", "gmail.com"),
        ("x@[192.0.2.1]", "[192.0.2.1]"),
    ],
)
def test_other_domains_get_relay_denied(policy: RecipientPolicy, address: str, domain: str) -> None:
    reply = policy.check(address)
    assert reply is not None and (reply.code, reply.status) == (550, "5.7.1")
    assert domain in reply.lines[0] and "Relay access denied" in reply.lines[0]
    assert not policy.is_postmaster(address)


def test_a_refusal_names_a_unicode_domain_in_ascii(policy: RecipientPolicy) -> None:
    reply = policy.check("x@ünknown.example")
    assert reply is not None and reply.lines[0].isascii()


def test_every_domain_is_explicit() -> None:
    assert RecipientPolicy(None).accepts_every_domain
    assert RecipientPolicy(["*"]).check("x@gmail.com") is None
    strict = RecipientPolicy([])
    assert not strict.accepts_every_domain and strict.check("x@example.org") is not None
    assert strict.check("Postmaster") is None  # RFC 5321 §4.5.1, whatever the domains


def test_domain_keys() -> None:
    assert domain_key("Bücher.Example.") == "xn--bcher-kva.example"
    assert domain_key("[IPv6:2001:db8::1]") == "[ipv6:2001:db8::1]"
