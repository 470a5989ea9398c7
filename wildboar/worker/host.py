"""What a session may use of the worker that hosts it: the narrow interface between
``session.py`` and ``serve.py``.

Owns: ``Host``, the typing.Protocol naming exactly what a ``Session`` asks of its worker
(its clock and loop, its configuration and offered extensions, the recipient policy and the
MDA's recipient check, the delivery budget and the spill directory, the handoffs' refusal,
delivery and rejected record, the accepted-message count, the proxies a listener trusts,
the per-client limits at connect, MAIL and RCPT, the count of sessions per client address
and the end of a session), and
``RecipientVerifier``, the recipient check at RCPT time.
Must not know: the ``Worker`` class, sessions, handoffs (any object with these members is
a host: the worker, or a test double).
Security: none of its own; it only names what a session can reach, which keeps a session
from reaching the rest of a worker (its control channel, its listeners).
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Literal, Protocol, TypeVar

from .. import message as M
from .. import smtp
from ..config import Config
from ..handoff.base import Delivery
from ..policy import RecipientPolicy
from .content import Budget
from .tls import ListenerTls

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The session type a host is told about when one ends (``Session``, which this module
#: does not import: ``session.py`` imports this one).
S_contra = TypeVar("S_contra", contravariant=True)


class RecipientVerifier(Protocol):
    """Asks the MDA whether a recipient can be delivered (the LMTP handoff)."""

    async def check(self, sender: str, recipient: str, smtputf8: bool = False) -> smtp.Reply:
        """The MDA's reply to RCPT ``recipient``, or a 4xx when it cannot be asked."""
        ...


class Host(Protocol[S_contra]):
    """The worker, as its sessions see it."""

    #: Messages accepted by every session of this host (a session adds its own).
    messages: int

    @property
    def id(self) -> str:
        """The server's URN, named by every log record of a session."""
        ...

    @property
    def config(self) -> Config: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def extensions(self) -> smtp.Extensions:
        """What sessions offer: the configured extensions every handoff can take."""
        ...

    @property
    def server_record(self) -> M.Server: ...

    @property
    def content_directory(self) -> str: ...

    @property
    def budget(self) -> Budget: ...

    @property
    def policy(self) -> RecipientPolicy: ...

    @property
    def verifier(self) -> RecipientVerifier | None: ...

    @property
    def records_rejections(self) -> bool:
        """Whether a handoff keeps records of messages refused after their content."""
        ...

    def clock(self) -> float: ...

    def xclient_hosts(self, listener: str) -> tuple[IPNetwork, ...]:
        """The networks whose clients the listener takes XCLIENT from (none: nobody's)."""
        ...

    def tls(self, listener: str) -> ListenerTls | None:
        """The listener's TLS (mode, context, whether required), or None."""
        ...

    def refusal(self, stage: Literal["connect", "mail"]) -> smtp.Reply | None: ...

    def rejected(self, message: M.Message) -> None: ...

    async def deliver(self, message: M.Message) -> Delivery: ...

    def admit(self, session: S_contra) -> smtp.Reply | None:
        """The session's client is known: count it; why it may not be served, if so."""
        ...

    def limit(self, session: S_contra, stage: Literal["mail", "rcpt"]) -> smtp.Reply | None:
        """The reply to MAIL or RCPT when the session's client reached a limit."""
        ...

    def session_closed(self, session: S_contra) -> None: ...

    def recount(self, session: S_contra, address: str) -> bool:
        """Count the session under ``address`` from now on (its client, as XCLIENT named
        it); False, and nothing changed, when that address has its fill of sessions."""
        ...
