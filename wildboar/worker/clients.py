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
from typing import Final, Literal

from .. import smtp
from ..config import Clients
from .table import CONNECTIONS, MESSAGES, OPEN, RECIPIENTS, SharedTable

#: The value of a limit that is off (0 in the configuration).
NO_LIMIT: Final = 1 << 62
Stage = Literal["connect", "mail", "rcpt"]
#: Per stage: (the key of the limit, the count it limits, the text beyond it). The count
#: at connect is of sessions open, this one included once it is let in.
_LIMITS: Final[dict[str, tuple[tuple[str, int, str], ...]]] = {
    "connect": (
        ("connections", OPEN, "Too many connections from {}"),
        ("connections_per_minute", CONNECTIONS, "Too many connections from {} in the last minute"),
    ),
    "mail": (("messages_per_minute", MESSAGES, "Too many messages from {} in the last minute"),),
    "rcpt": (
        ("recipients_per_minute", RECIPIENTS, "Too many recipients from {} in the last minute"),
    ),
}


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
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 client, in its network of IPv4 clients
        if any(ip in network for network in self.exempt):
            return None
        prefix = self.config.ipv4_prefix if ip.version == 4 else self.config.ipv6_prefix
        bits = ip.max_prefixlen
        base = int(ip) >> (bits - prefix) << (bits - prefix)
        packed = base.to_bytes(bits // 8, "big")
        network = f"{ipaddress.ip_address(packed)}/{prefix}"
        return Client(
            address=str(ip),
            network=network,
            address_cells=self.table.cells(b"a" + ip.packed),
            network_cells=self.table.cells(b"n" + packed + bytes([prefix])),
        )

    # --- the questions --------------------------------------------------------------------

    def connect(self, client: Client) -> Limited | None:
        """A new session of ``client``: refused, or counted as open (``closed`` ends it)."""
        limited = self._attempt(client, "connect", CONNECTIONS)
        if limited is None:
            self.table.opened(client.address_cells, 1)
            self.table.opened(client.network_cells, 1)
        return limited

    def closed(self, client: Client) -> None:
        """A session ``connect`` let in has ended."""
        self.table.opened(client.address_cells, -1)
        self.table.opened(client.network_cells, -1)

    def mail(self, client: Client) -> Limited | None:
        return self._attempt(client, "mail", MESSAGES)

    def rcpt(self, client: Client) -> Limited | None:
        return self._attempt(client, "rcpt", RECIPIENTS)

    # --- deciding ----------------------------------------------------------------------------

    def _attempt(self, client: Client, stage: Stage, what: int) -> Limited | None:
        """Count an attempt of ``stage`` (refused ones count too), then the first limit
        of the stage that the counts pass, if one is."""
        table = self.table
        table.begun(client.address_cells, what)
        table.begun(client.network_cells, what)
        for scope, cells, who in (
            ("", client.address_cells, client.address),
            ("network_", client.network_cells, client.network),
        ):
            opened, begun = table.counts(cells, what)
            for name, measure, text in _LIMITS[stage]:
                value = getattr(self.config, scope + name) or NO_LIMIT
                count = opened + 1 if measure == OPEN else begun
                if count > value:
                    return Limited(scope + name, _reply(stage, text.format(who)), count, value, who)
        return None


def _reply(stage: Stage, text: str) -> smtp.Reply:
    """``421 4.7.0`` instead of the greeting, ``450 4.7.1`` to MAIL or RCPT."""
    if stage == "connect":
        return smtp.Reply(421, "4.7.0", f"{text}, try again later")
    return smtp.Reply(450, "4.7.1", f"{text}, try again later")
