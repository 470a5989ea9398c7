"""The delivery stage: each message from the queue into the mail store (Dovecot) over LMTP.

The message goes to ``WILDBOAR_DELIVER_LMTP`` (``lmtp:HOST:PORT``, ``lmtp:[::1]:24`` or
``lmtp:unix:/run/dovecot/lmtp``, required) through wildboar's own LMTP client, the one the
``lmtp`` handoff uses (docs/lmtp.md: one transaction, one reply per recipient, a pooled
connection per event loop), and the MDA's reply for each recipient decides what comes next:

- **every recipient delivered** (2xx): the event goes on with a ``delivered`` verdict whose
  details map each recipient to the MDA's reply, for a later stage (or a log) to see;
- **some answered 4xx** (a full mailbox with ``quota_full_tempfail``, an MDA shutting
  down, an MDA that cannot be reached or did not answer in time): ``Retry`` is raised, the
  runtime tries the message again later, and dead-letters it after its last attempt (it is
  then the operator's: docs/consumers.md). The recipients the MDA took in an attempt are
  remembered by the process (``Ledger``) and are not sent the message again by a later
  attempt, nor by a redelivery of the same message id;
- **the rest refused for good** (5xx, with no 4xx left): an RFC 3464 bounce for them, built
  by ``wildboar.dsn`` as the server builds its own (NOTIFY and RET honoured, none for a
  ``<>`` sender), is written to the bounce spool ``WILDBOAR_DELIVER_BOUNCES`` when that is
  set (the spool the server's retry runner forwards to ``accepted.outbound.email``, and that
  ``wildboar spool ls --bounces`` lists); then, if nobody got the message, it is rejected
  (``reject``: to ``rejected.inbound.email``, with the first refusal's code, its enhanced
  status, and each recipient's reply in the details), else it goes on with a ``partial``
  verdict saying who got it and who did not. The details name the bounce's id (``dsn``),
  or ``none`` when no bounce was wanted or no bounce spool is set.

Settings: ``WILDBOAR_DELIVER_LMTP`` (required), ``WILDBOAR_DELIVER_LHLO`` (the LHLO name and
the bounce's reporting MTA; default: this host's name), ``WILDBOAR_DELIVER_BOUNCES`` (a
spool directory; unset: no bounce is kept, and the rejected record is the only word of a
refusal). ``close()`` closes the connections of the running event loop.

Owns: mapping the MDA's per-recipient replies onto the stage contract, as above.
Must not know: brokers, queues and how retries are scheduled (the runtime's).
Security: the MDA's replies reach the record only as validated ``Reply`` text (printable
US-ASCII); nothing is reported delivered without the MDA's own 2xx for that recipient.
What the ledger remembers dies with the process: a message retried in another process after
a partial delivery may reach the recipients that already had it a second time.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import functools
import os
import socket
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from .. import dsn, smtp
from .. import message as M
from ..config import Lmtp, parse_lmtp_url
from ..handoff.lmtp import LmtpHandoff
from ..handoff.retry import bounce_record, narrowed, split
from ..handoff.spool import SpoolHandoff
from . import Event, Retry, add_verdict, reject
from ._settings import SettingError, stage_name, text

#: Message ids whose delivered recipients a process remembers (the oldest forgotten first).
LEDGER_SIZE = 10_000


class Settings(msgspec.Struct, frozen=True):
    url: str
    lhlo: str
    bounces: str | None = None
    #: What a delivered message becomes: dropped (the end of the pipeline, logged by the
    #: runtime) or passed on with its verdict to whatever is bound to ``after.deliver``.
    then: str = "drop"


def load(environ: Mapping[str, str]) -> Settings:
    """The settings from ``WILDBOAR_DELIVER_LMTP``, ``_LHLO`` and ``_BOUNCES``."""
    url = text(environ, "WILDBOAR_DELIVER_LMTP")
    if url is None:
        raise SettingError(
            "WILDBOAR_DELIVER_LMTP is not set: the mail store to deliver to "
            "(lmtp:HOST:PORT or lmtp:unix:/PATH)"
        )
    try:
        parse_lmtp_url(url)
    except ValueError as error:
        raise SettingError(f"WILDBOAR_DELIVER_LMTP: {error}") from None
    lhlo = text(environ, "WILDBOAR_DELIVER_LHLO") or socket.gethostname()
    then = text(environ, "WILDBOAR_DELIVER_THEN") or "drop"
    if then not in ("drop", "pass"):
        raise SettingError(f"WILDBOAR_DELIVER_THEN={then!r}: must be one of drop, pass")
    bounces = text(environ, "WILDBOAR_DELIVER_BOUNCES")
    return Settings(url=url, lhlo=lhlo, bounces=bounces, then=then)


@functools.cache
def settings() -> Settings:
    """This process's settings, read from its environment once."""
    return load(os.environ)


async def handler(event: Event, context: Any) -> Event | None:
    """The stage's entry point (``wildboar consume deliver``)."""
    return await handle(event, context, settings())


class Ledger:
    """Who got which message, per message id, for the last ``size`` ids (in memory)."""

    def __init__(self, size: int = LEDGER_SIZE) -> None:
        self.size = size
        self._seen: collections.OrderedDict[str, dict[str, str]] = collections.OrderedDict()

    def delivered(self, message_id: str) -> dict[str, str]:
        """The recipients of ``message_id`` delivered so far, with the MDA's reply."""
        return dict(self._seen.get(message_id, {}))

    def add(self, message_id: str, replies: Mapping[str, str]) -> None:
        self._seen.setdefault(message_id, {}).update(replies)
        self._seen.move_to_end(message_id)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


ledger = Ledger()


class Refusals:
    """Who the mail store refused for which message, and the bounce kept for them, for the
    last ``size`` ids: a retry or a redelivery after the bounce was kept (its publish
    failed, say) neither asks the mail store again nor bounces a second time."""

    def __init__(self, size: int = LEDGER_SIZE) -> None:
        self.size = size
        self._seen: collections.OrderedDict[
            str, tuple[list[tuple[str, smtp.Reply]], str | None]
        ] = collections.OrderedDict()

    def get(self, message_id: str) -> tuple[list[tuple[str, smtp.Reply]], str | None]:
        refused, bounce = self._seen.get(message_id, ([], None))
        return list(refused), bounce

    def add(
        self, message_id: str, refused: list[tuple[str, smtp.Reply]], bounce: str | None
    ) -> None:
        self._seen[message_id] = (list(refused), bounce)
        self._seen.move_to_end(message_id)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


refusals = Refusals()


async def handle(event: Event, context: Any, config: Settings) -> Event | None:
    stage = stage_name(context, "deliver")
    message = msgspec.json.decode(msgspec.json.encode(event), type=M.Message)
    message_id = message.email.id
    before, bounced = refusals.get(message_id)
    done_with = {**ledger.delivered(message_id), **{a: _text(r) for a, r in before}}
    later, new, _ = await _attempt(message, done_with, config)
    if later:
        raise Retry("; ".join(f"{address}: {_text(reply)}" for address, reply in later))
    if new:  # bounced once: a bounce already kept is not kept again (``Refusals``)
        bounced = ",".join(filter(None, [bounced, await _bounce(message, new, config)])) or None
        refusals.add(message_id, [*before, *new], bounced)
    refused = [*before, *new]
    details = {**ledger.delivered(message_id), **{a: _text(r) for a, r in refused}}
    if not refused:
        done = add_verdict(event, stage, "delivered", **details)
        return done if config.then == "pass" else None
    details["dsn"] = bounced or "none"
    reason = f"refused by the mail store: {', '.join(a for a, _ in refused)}"
    if ledger.delivered(message_id):
        done = add_verdict(event, stage, "partial", reason, **details)
        return done if config.then == "pass" else None
    first = refused[0][1]
    return reject(event, stage, reason, code=first.code, enhanced=first.status, **details)


async def _attempt(
    message: M.Message, earlier: Mapping[str, str], config: Settings
) -> tuple[list[tuple[str, smtp.Reply]], list[tuple[str, smtp.Reply]], list[str]]:
    """Deliver to the recipients not in ``earlier``; those answered 4xx, those answered
    5xx (each with its reply), and those delivered (now in the ledger)."""
    owed = [address for address in message.email.to if address not in earlier]
    replies = await _handoff(config).replies(narrowed(message, owed)) if owed else []
    later, refused, delivered = split(owed, replies)
    got = {a: _text(r) for a, r in zip(owed, replies, strict=True) if r.code // 100 == 2}
    ledger.add(message.email.id, got)
    return later, refused, delivered


def _text(reply: smtp.Reply) -> str:
    return " ".join([str(reply.code), reply.status, *reply.lines])


_handoffs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Settings, LmtpHandoff]] = (
    weakref.WeakKeyDictionary()
)


def _handoff(config: Settings) -> LmtpHandoff:
    """The LMTP client (and its pool of connections) of the running event loop."""
    per_loop = _handoffs.setdefault(asyncio.get_running_loop(), {})
    if config not in per_loop:
        per_loop[config] = LmtpHandoff(Lmtp(url=config.url, lhlo=config.lhlo), config.lhlo)
    return per_loop[config]


async def close() -> None:
    """Close the connections to the mail store of the running event loop (for a runtime
    that stops, or a test that ends its loop; the next message opens new ones)."""
    for handoff in _handoffs.pop(asyncio.get_running_loop(), {}).values():
        await handoff.close()


async def _bounce(
    message: M.Message, refused: Sequence[tuple[str, smtp.Reply]], config: Settings
) -> str | None:
    """Keep a bounce for ``refused`` in the bounce spool; its id, or None if none was
    wanted (or no spool is set). Raises ``OSError`` if it cannot be kept (the runtime
    retries the message: nobody is delivered twice, see ``Ledger``)."""
    if config.bounces is None:
        return None
    now = datetime.datetime.now(datetime.UTC)
    failures = [
        dsn.Failure(recipient=a, reply=r, remote_mta=config.url, last_attempt=now)
        for a, r in refused
    ]
    data = dsn.build(
        message,
        failures,
        reporting_mta=config.lhlo,
        arrival=message.email.creation_time,
        now=now,
        message_id_domain=config.lhlo,
    )
    if data is None:
        return None
    record = bounce_record(message, data, now)
    spool = SpoolHandoff(config.bounces)
    await spool.start()
    try:
        kept = await spool.deliver(record)
    finally:
        await spool.close()
    if not kept.ok:
        raise OSError(f"{config.bounces}: the bounce could not be kept ({kept.reply})")
    return record.email.id
