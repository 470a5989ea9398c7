"""Recipient policy: is this recipient one of ours?

Owns: the answer to the core's ``RcptTo`` question that needs no I/O: the domains this
server receives mail for (``[recipients] domains``), compared case-insensitively and in
IDNA A-label form (so ``bücher.example`` and ``xn--bcher-kva.example`` are the same domain),
and the ``Postmaster`` rule of RFC 5321 §4.5.1 (``<Postmaster>`` and ``postmaster@`` any of
our domains are always accepted). Checks that need I/O (the MDA over LMTP, an AMQP lookup)
come after this one, asked by the worker.
Must not know: sockets, sessions, handoffs.
Security: a server that accepts any domain is an open relay for whatever comes behind it;
``domains = ["*"]`` (or no configuration file at all, the embedded default) says so
loudly (``accepts_every_domain``), and a configuration file that does not say which domains
are ours does not start (``wildboar.config``). Address literals (``user@[192.0.2.1]``) are
never ours unless listed as such.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from . import smtp

#: Accept every domain (``domains = ["*"]``): for trying wildboar out, never for an MX.
EVERY_DOMAIN: Final = "*"
POSTMASTER: Final = "postmaster"
#: Domains remembered as written (their IDNA form costs microseconds); then forgotten.
SEEN_DOMAINS: Final = 1024


def relay_denied(domain: str) -> smtp.Reply:
    """RFC 3463 §3.8 X.7.1 "Delivery not authorized, message refused"."""
    shown = domain.encode("ascii", "backslashreplace").decode()
    text = f"Relay access denied: {shown[:200]} is not a domain of this server"
    return smtp.Reply(550, "5.7.1", text)


def domain_key(domain: str) -> str:
    """The form domains are compared in: lower case, no final dot, A-labels. A domain
    that IDNA cannot encode is kept as it is (it then matches only itself)."""
    domain = domain.strip().rstrip(".").lower()
    if domain.startswith("["):
        return domain  # an address literal
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return domain


def split_address(address: str) -> tuple[str, str]:
    """(local part, domain) of a mailbox; the domain is empty for ``Postmaster``."""
    local, at, domain = address.rpartition("@")
    return (local, domain) if at else (address, "")


class RecipientPolicy:
    """The domains of this server; ``check`` answers one recipient."""

    def __init__(self, domains: Iterable[str] | None) -> None:
        """``domains``: the configured list; None or one containing ``"*"``: every one."""
        listed = list(domains) if domains is not None else [EVERY_DOMAIN]
        self.accepts_every_domain = EVERY_DOMAIN in listed
        self._domains = frozenset(domain_key(d) for d in listed if d != EVERY_DOMAIN)
        self._seen: dict[str, bool] = {}  # domain as written -> ours

    def ours(self, domain: str) -> bool:
        if self.accepts_every_domain:
            return True
        known = self._seen.get(domain)
        if known is None:
            if len(self._seen) >= SEEN_DOMAINS:
                self._seen.clear()  # bounded: a client may try any number of domains
            known = self._seen[domain] = domain_key(domain) in self._domains
        return known

    def is_postmaster(self, address: str) -> bool:
        """``<Postmaster>``, or ``postmaster@`` one of our domains (RFC 5321 §4.5.1)."""
        local, domain = split_address(address)
        return local.lower() == POSTMASTER and (not domain or self.ours(domain))

    def check(self, address: str) -> smtp.Reply | None:
        """The refusal of recipient ``address``, or None if it may be ours (the checks that
        need I/O come next)."""
        if self.accepts_every_domain:
            return None
        local, domain = split_address(address)
        if not domain:
            # The core takes a recipient without a domain only as <Postmaster>.
            return None if local.lower() == POSTMASTER else relay_denied(local)
        return None if self.ours(domain) else relay_denied(domain)
