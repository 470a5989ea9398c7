"""The handoff interface: how an accepted message becomes someone else's responsibility.

Owns: ``Handoff`` (start, deliver, close), the ``Delivery`` outcome, ``combine`` (DESIGN.md
"Handoff: 250 means durable": ``250`` only if every handoff confirmed, else the first
temporary ``4xx``, else the ``5xx``), and the replies a local failure turns into.
Must not know: sockets, sessions, which handoffs are configured, how a target stores mail.
Security: a ``Delivery`` carries only catalogue replies, never exception text, so nothing
from a failing disk, broker or MDA reaches an SMTP client; a not-ok ``Delivery`` without a
4xx/5xx reply cannot be built, so a failure cannot turn into a ``250`` by omission.
"""

from __future__ import annotations

import abc
import errno
import logging
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from .. import smtp
from ..message import Message

_log = logging.getLogger("wildboar.handoff")


def report(level: int, event: str, **fields: object) -> None:
    """A handoff's log event: a name and fields, like the worker's own events (the
    worker's log handler writes the fields as JSON keys or journald fields)."""
    _log.log(level, event, extra={"fields": fields})


# RFC 3463 §3.4 X.3.1 "Mail system full"; Postfix's text for the same condition.
INSUFFICIENT_STORAGE = smtp.Reply(452, "4.3.1", "Insufficient system storage")
# RFC 3463 §3.4 X.3.0 "Other or undefined mail system status".
LOCAL_PROBLEM = smtp.Reply(451, "4.3.0", "Temporary local problem, try again later")
# A full disk and an exhausted quota both clear up without the sender changing anything.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class HandoffStartError(Exception):
    """A handoff cannot work; ``str()`` is one line for the operator, naming what and why."""


class Delivery(msgspec.Struct, frozen=True):
    """The outcome of one ``deliver()``.

    ``reply`` is the 4xx/5xx to give the client when not ``ok`` (an ok delivery may carry a
    2xx or nothing). ``recipients`` holds per-recipient replies, in RCPT order, for targets
    that have them (LMTP, RFC 2033 §4.2); the target itself reduces them to ``ok``/``reply``.
    """

    ok: bool
    reply: smtp.Reply | None = None
    recipients: tuple[smtp.Reply | None, ...] = ()

    def __post_init__(self) -> None:
        code = self.reply.code // 100 if self.reply is not None else None
        if self.ok and code not in (None, 2):
            raise ValueError(f"an ok delivery cannot carry reply {self.reply}")
        if not self.ok and code not in (4, 5):
            raise ValueError("a failed delivery needs a 4xx or 5xx reply")

    @property
    def temporary(self) -> bool:
        """Whether this is a failure the sender should retry (a 4xx)."""
        return self.reply is not None and self.reply.code // 100 == 4


DELIVERED = Delivery(ok=True)


def failed(reply: smtp.Reply) -> Delivery:
    return Delivery(ok=False, reply=reply)


def local_failure(error: OSError) -> Delivery:
    """The delivery outcome of a local ``OSError``: 452 4.3.1 if storage ran out, else 451."""
    if error.errno in STORAGE_ERRNOS:
        return failed(INSUFFICIENT_STORAGE)
    return failed(LOCAL_PROBLEM)


def combine(deliveries: Iterable[Delivery]) -> Delivery:
    """One outcome for the client from every handoff's outcome (DESIGN.md).

    Ok only if all are ok; else the first temporary failure, so the sender retries and
    nothing is half-accepted; else the first permanent one. Per-recipient replies are not
    merged: the result's ``recipients`` is empty. No deliveries at all is an error, because
    "nobody took the message" must never read as ``250``.
    """
    outcomes = list(deliveries)
    if not outcomes:
        raise ValueError("combine() needs at least one delivery")
    failures = [d for d in outcomes if not d.ok]
    if not failures:
        return DELIVERED
    chosen = next((d for d in failures if d.temporary), failures[0])
    return Delivery(ok=False, reply=chosen.reply)


class Handoff(abc.ABC):
    """A delivery target. The worker calls ``start`` once, ``deliver`` per accepted message
    (concurrently, from one event loop), and ``close`` when it stops.

    ``deliver`` never raises for an ``OSError`` (or a broker or MDA failure): it returns a
    ``Delivery`` whose reply the client gets. It returns ``ok`` only once the message is
    durable at the target.
    """

    name: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Get ready, or raise ``HandoffStartError`` saying why this target cannot work."""

    @abc.abstractmethod
    async def deliver(self, message: Message) -> Delivery:
        """Make ``message`` durable at the target and say so, or say why not."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish deliveries in progress and release resources."""

    def refusal(self, stage: Literal["connect", "mail"]) -> smtp.Reply | None:
        """The reply that turns a new session (``connect``) or transaction (``mail``) away
        while this target cannot take mail, or None. Default: never."""
        return None

    def rejected(self, message: Message) -> None:
        """A message refused after its content (``message.rejection`` says why), for targets
        that keep a record of rejections. Must not block; default: ignore it."""
        return None

    def restrict(self, extensions: smtp.Extensions) -> smtp.Extensions:
        """The ESMTP extensions the worker may offer, given what this target can take
        (asked after ``start``): every message goes to every target, and none is converted
        on the way. Default: all of them."""
        return extensions

    def event(self, event: str, fields: dict[str, Any]) -> None:
        """A connection, transaction or rejection event, for targets that publish them.
        Must not block; default: ignore it."""
        return None
