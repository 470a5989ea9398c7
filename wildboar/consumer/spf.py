"""The SPF stage: the Sender Policy Framework verdict (RFC 7208) of each message.

The identity checked is the envelope sender (``email.from``, RFC 7208 §2.4 "MAIL FROM"),
or ``postmaster@<HELO name>`` for a null sender (§2.4: then the HELO identity, §2.3),
against the client's address (``connection.remote.address``: behind a trusted proxy, the
client the proxy named) with ``transaction.heloName`` as the HELO name (the ``%{h}``
macro) and the server's host name as ``%{r}``. The evaluation is pyspf's (RFC 7208 with its
limits: 10 lookups with DNS, 2 void lookups, the 20 second budget of §4.6.4) over
dnspython's resolver.

Every message gets a verdict whose ``result`` is the SPF result (``pass``, ``fail``,
``softfail``, ``neutral``, ``none``, ``permerror``, ``temperror``), ``reason`` pyspf's
explanation, and ``details``: ``authentication-results`` (an RFC 8601 header field value,
``mx.example.org; spf=pass smtp.mailfrom=alice@example.org``), ``identity`` (``mailfrom``
or ``helo``), ``client-ip``, ``helo``, ``envelope-from``. Then, per result:

- ``fail``: refused (``550 5.7.23``, RFC 7372 §3.2) or only tagged, as ``WILDBOAR_SPF_FAIL``
  says (``reject``, the default, or ``tag``);
- ``softfail``: the same choice, ``WILDBOAR_SPF_SOFTFAIL`` (default ``tag``: RFC 7208 §8.5
  advises against refusing on a softfail alone);
- ``temperror`` (a DNS failure that may pass, §8.6): ``Retry`` raised, so the runtime tries
  again later and dead-letters the message after its last attempt, or only tagged, as
  ``WILDBOAR_SPF_TEMPERROR`` says (``retry``, the default, or ``tag``);
- any other result: the message goes on with its verdict.

The resolver is the system's (``/etc/resolv.conf``) unless ``WILDBOAR_SPF_NAMESERVER`` names
one (``127.0.0.1``, ``127.0.0.1:5353``, ``[::1]:53``); ``WILDBOAR_SPF_TIMEOUT`` is the budget
of one evaluation in seconds (default 20). Answers are cached by their TTL within the
process.

Owns: the identities, the policy above, the lookup that pyspf calls (set once as
``spf.DNSLookup``, the library's own hook for it, over the resolver of this process).
Must not know: brokers, retries (the runtime's), other stages.
Security: every name looked up comes from the sender (its domain, its SPF records): pyspf
bounds the lookups per evaluation as RFC 7208 §4.6.4 requires, and the time budget bounds
the rest. The handler blocks for the lookups (pyspf is synchronous): the runtime should run
it off its event loop, as it runs any synchronous handler.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import dns.exception
import dns.resolver
import msgspec
import spf

from . import Event, Retry, add_verdict, reject
from ._settings import choice, endpoint, seconds, stage_name

#: RFC 7372 §3.2: "X.7.23 SPF validation failed".
REJECT_CODE, REJECT_ENHANCED = 550, "5.7.23"
#: RFC 7208 §4.6.4: "at least 20 seconds" for the whole evaluation, if there is a limit.
DEFAULT_TIMEOUT = 20.0
#: Answers kept by the process's resolver cache.
CACHE_SIZE = 10_000

_ADDRESS_TYPES = frozenset({"A", "AAAA"})
_TEXT_TYPES = frozenset({"TXT", "SPF"})
# RFC 8601 §2.2: a value is a token (RFC 2045 §5.1) or else a quoted string; an address
# (with its "@") is allowed as it is in "smtp.mailfrom" (§2.7.2 pvalue).
_PVALUE = re.compile(r"[A-Za-z0-9!#$%&'*+\-./=?^_`{|}~@]+")


class Settings(msgspec.Struct, frozen=True):
    fail: str = "reject"
    softfail: str = "tag"
    temperror: str = "retry"
    #: The nameserver asked (address, port); None: the system's resolvers.
    nameserver: tuple[str, int] | None = None
    timeout: float = DEFAULT_TIMEOUT


def load(environ: Mapping[str, str]) -> Settings:
    """The settings from ``WILDBOAR_SPF_FAIL``, ``_SOFTFAIL``, ``_TEMPERROR``,
    ``_NAMESERVER`` and ``_TIMEOUT``."""
    policy = ("reject", "tag")
    return Settings(
        fail=choice(environ, "WILDBOAR_SPF_FAIL", policy, "reject"),
        softfail=choice(environ, "WILDBOAR_SPF_SOFTFAIL", policy, "tag"),
        temperror=choice(environ, "WILDBOAR_SPF_TEMPERROR", ("retry", "tag"), "retry"),
        nameserver=endpoint(environ, "WILDBOAR_SPF_NAMESERVER", 53),
        timeout=seconds(environ, "WILDBOAR_SPF_TIMEOUT", DEFAULT_TIMEOUT, low=1, high=300),
    )


@functools.cache
def settings() -> Settings:
    """This process's settings, read from its environment once."""
    return load(os.environ)


def handler(event: Event, context: Any) -> Event:
    """The stage's entry point (``wildboar consume spf``)."""
    return handle(event, context, settings())


def handle(event: Event, context: Any, config: Settings) -> Event:
    stage = stage_name(context, "spf")
    result, explanation, details = check(event, config)
    if result == "temperror" and config.temperror == "retry":
        raise Retry(f"SPF temperror: {explanation}")
    if _refused(result, config):
        reason = explanation if explanation.startswith("SPF") else f"SPF {result}: {explanation}"
        return reject(event, stage, reason, code=REJECT_CODE, enhanced=REJECT_ENHANCED, **details)
    return add_verdict(event, stage, result, explanation, **details)


def _refused(result: str, config: Settings) -> bool:
    return (result == "fail" and config.fail == "reject") or (
        result == "softfail" and config.softfail == "reject"
    )


def check(event: Event, config: Settings) -> tuple[str, str, dict[str, str]]:
    """The SPF result of ``event``'s message, pyspf's explanation, and the verdict's
    details."""
    sender: str = event["email"]["from"]
    helo: str = event["transaction"]["heloName"]
    address: str = event["connection"]["remote"]["address"]
    receiver: str = event["server"]["hostname"]
    identity, value = ("mailfrom", sender) if sender else ("helo", helo)
    with _resolving(resolver(config)):
        try:
            query = spf.query(
                i=address, s=sender, h=helo, receiver=receiver, querytime=config.timeout
            )
            result, _, explanation = query.check()
        except spf.PermError as error:  # the client address is not one (a unix socket)
            result, explanation = "none", f"no client IP address to check: {error}"
    details = {
        "authentication-results": f"{receiver}; spf={result} smtp.{identity}={_pvalue(value)}",
        "identity": identity,
        "client-ip": address,
        "helo": helo,
        "envelope-from": sender,
    }
    return result, explanation, details


def _pvalue(value: str) -> str:
    """``value`` as an RFC 8601 property value: as it is, or as a quoted string."""
    if _PVALUE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --- DNS ------------------------------------------------------------------------------------


@functools.cache
def resolver(config: Settings) -> dns.resolver.Resolver:
    """The resolver for ``config`` (one per process and settings, with its cache)."""
    if config.nameserver is None:
        found = dns.resolver.Resolver()
    else:
        found = dns.resolver.Resolver(configure=False)
        found.nameservers = [config.nameserver[0]]
        found.port = config.nameserver[1]
    found.lifetime = config.timeout
    found.cache = dns.resolver.LRUCache(CACHE_SIZE)
    return found


_current: contextvars.ContextVar[dns.resolver.Resolver] = contextvars.ContextVar("resolver")


@contextlib.contextmanager
def _resolving(chosen: dns.resolver.Resolver) -> Iterator[None]:
    token = _current.set(chosen)
    try:
        yield
    finally:
        _current.reset(token)


def lookup(name: str, qtype: str, strict: bool = True, timeout: float = 20.0) -> list[spf.Answer]:
    """pyspf's DNS lookup over this stage's resolver: the answers to ``qtype`` for
    ``name`` as pyspf takes them; none for a name or type that does not exist;
    ``spf.TempError`` for a failure that may pass (timeout, no server answering)."""
    chosen = _current.get(None) or resolver(settings())
    try:
        answer = chosen.resolve(name, qtype, lifetime=timeout, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as error:  # Timeout, NoNameservers, YXDOMAIN, ...
        raise spf.TempError(f"DNS {error}") from None
    key = (name, qtype)
    return [(key, _value(qtype, rdata)) for rdata in answer]


def _value(qtype: str, rdata: Any) -> Any:
    if qtype in _ADDRESS_TYPES:
        return rdata.address
    if qtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    if qtype == "PTR":
        return rdata.target.to_text(omit_final_dot=True)
    if qtype in _TEXT_TYPES:
        return list(rdata.strings)
    return rdata.to_text()


spf.DNSLookup = lookup
