"""Per-client limits (``[clients]``, docs/operations.md): what one client address, and one
network, may have open at once and begin per minute, across every worker.

Owns: a client's keys (its address; its network, by ``ipv4_prefix`` / ``ipv6_prefix``),
the exempt networks, the decision at connect, MAIL and RCPT, and its reply: ``421 4.7.0``
instead of the greeting, ``450 4.7.1`` to MAIL or RCPT, naming the limit and the client.
Must not know: how the counts are kept (``table.py``), sessions, sockets.
Security: the address is the client's as the worker knows it: the peer, or behind a
trusted proxy the one its PROXY header names. Every attempt counts towards a rate, refused
ones too: a client that keeps trying stays limited until it slows down.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from .. import smtp
from ..config import Clients
from .table import CONNECTIONS, MESSAGES, RECIPIENTS, Counts, SharedTable

#: The value of a limit that is off (0 in the configuration).
NO_LIMIT: Final = 1 << 62


@dataclass(frozen=True)
class Client:
    """A client as the limits count it: its address and network, and their cells."""

    address: str
    network: str
    address_cells: tuple[int, ...]
    network_cells: tuple[int, ...]


@dataclass(frozen=True)
class Limited:
    """A limit reached: its name (as in the configuration), the reply, the count."""

    limit: str
    reply: smtp.Reply
    count: int
    value: int
    client: str  # the address or the network that reached it


class ClientLimits:
    def __init__(self, config: Clients, table: SharedTable) -> None:
        self.config = config
        self.table = table
        self.exempt = tuple(ipaddress.ip_network(n, strict=False) for n in config.exempt)

    def client(self, address: str) -> Client | None:
        """``address`` as the limits count it; None when it is exempt (or not an IP
        address: a unix socket's peer)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        if any(ip in network for network in self.exempt):
            return None
        prefix = self.config.ipv4_prefix if ip.version == 4 else self.config.ipv6_prefix
        network = ipaddress.ip_network((ip, prefix), strict=False)
        return Client(
            address=str(ip),
            network=str(network),
            address_cells=self.table.cells(b"a" + ip.packed),
            network_cells=self.table.cells(b"n" + network.network_address.packed + bytes([prefix])),
        )

    # --- the questions --------------------------------------------------------------------

    def connect(self, client: Client) -> Limited | None:
        """A new session of ``client``: refused, or counted as open (``closed`` ends it)."""
        table = self.table
        table.begun(client.address_cells, CONNECTIONS)
        table.begun(client.network_cells, CONNECTIONS)
        limited = self._check(client, "connect")
        if limited is None:
            table.opened(client.address_cells, 1)
            table.opened(client.network_cells, 1)
        return limited

    def closed(self, client: Client) -> None:
        """A session ``connect`` let in has ended."""
        self.table.opened(client.address_cells, -1)
        self.table.opened(client.network_cells, -1)

    def mail(self, client: Client) -> Limited | None:
        self.table.begun(client.address_cells, MESSAGES)
        self.table.begun(client.network_cells, MESSAGES)
        return self._check(client, "mail")

    def rcpt(self, client: Client) -> Limited | None:
        self.table.begun(client.address_cells, RECIPIENTS)
        self.table.begun(client.network_cells, RECIPIENTS)
        return self._check(client, "rcpt")

    # --- deciding ----------------------------------------------------------------------------

    def _check(self, client: Client, stage: str) -> Limited | None:
        """The first limit of ``stage`` that the counts (this attempt included) pass."""
        for scope, cells, who in (
            ("", client.address_cells, client.address),
            ("network_", client.network_cells, client.network),
        ):
            counts = self.table.counts(cells)
            for name, count, reply in _measures(stage, counts, who):
                value = getattr(self.config, scope + name) or NO_LIMIT
                if count > value:
                    return Limited(scope + name, reply, count, value, who)
        return None


def _measures(stage: str, counts: Counts, who: str) -> list[tuple[str, int, smtp.Reply]]:
    """The limits asked at ``stage``: (key, the count it limits, the reply beyond it)."""
    if stage == "connect":
        return [
            # This session is counted as open once it is let in: one more than now.
            ("connections", counts.open + 1, _refusal(f"Too many connections from {who}")),
            (
                "connections_per_minute",
                counts.connections,
                _refusal(f"Too many connections from {who} in the last minute"),
            ),
        ]
    if stage == "mail":
        text = f"Too many messages from {who} in the last minute"
        return [("messages_per_minute", counts.messages, _deferral(text))]
    text = f"Too many recipients from {who} in the last minute"
    return [("recipients_per_minute", counts.recipients, _deferral(text))]


def _refusal(text: str) -> smtp.Reply:
    return smtp.Reply(421, "4.7.0", f"{text}, try again later")


def _deferral(text: str) -> smtp.Reply:
    return smtp.Reply(450, "4.7.1", f"{text}, try again later")
