"""What the LMTP handoff still owes after a mixed result: retries from a spool, and bounces.

Owns: ``RetryQueue``: after the end of data, when the MDA delivered the message to some
recipients but not others (RFC 5321 §4.4: the DATA reply must then be OK, and the server
owns the rest), the recipients it answered with a 4xx are written to the retry spool
(``[lmtp] retry_spool``, default ``<spool.path>/lmtp``) and those it answered with a 5xx get
a delivery status notification (``wildboar.dsn``) in the bounce spool (``[lmtp]
bounce_spool``, default ``<spool.path>/bounce``), both durably, before the client gets its
``250``. A runner in every worker (one at a time, by the spool's lock) retries what is due,
with a delay that grows with the message's age (``retry_min`` to ``retry_max``); a recipient
still refused after ``max_retry_age`` (Postfix's ``maximal_queue_lifetime``, 5 days), or
refused for good, gets its bounce then.
Must not know: sessions, LMTP's protocol (it is given a ``deliver`` coroutine).
Security: records in these spools are the workers' own (the spool checks apply); a record
that cannot be read is set aside by the spool, never retried blindly. A recipient delivered
once is never in a retry record again, so a retry never delivers twice what the MDA took,
except where the MDA took it and its reply was lost (RFC 1047).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from .. import dsn, smtp
from ..config import Lmtp
from ..message import Email, Message, new_urn
from .base import DELIVERED, LOCAL_PROBLEM, Delivery, failed, report
from .spool import Spool, SpoolBusy, SpoolError, SpoolHandoff

Deliver = Callable[[Message], Awaitable[list[smtp.Reply]]]
#: How often a worker looks for retries that are due.
SCAN_INTERVAL = 10.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def narrowed(message: Message, addresses: Sequence[str]) -> Message:
    """``message`` for ``addresses`` only (a sub-list of its recipients, in their order)."""
    wanted = set(addresses)
    email = message.email
    recipients = [r for r in email.recipients if r.address in wanted]
    to = [a for a in email.to if a in wanted]
    return msgspec.structs.replace(
        message, email=msgspec.structs.replace(email, to=to, recipients=recipients)
    )


def retry_delay(age: float, shortest: float, longest: float) -> float:
    """Seconds between attempts for a message ``age`` seconds old: half its age, within
    ``shortest`` and ``longest`` (so attempts thin out as it ages, as Postfix's do)."""
    return min(max(age / 2, shortest), longest)


class RetryQueue:
    def __init__(self, config: Lmtp, retry_path: str, bounce_path: str, hostname: str) -> None:
        self.config = config
        self.hostname = hostname
        self.retry_path, self.bounce_path = retry_path, bounce_path
        self.retries = SpoolHandoff(retry_path)
        self.bounces = SpoolHandoff(bounce_path)
        self._runner: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver) -> None:
        await self.retries.start()
        await self.bounces.start()
        self._runner = asyncio.create_task(self._run(deliver), name="lmtp retries")

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self.retries.close()
        await self.bounces.close()

    # --- after the end of data ----------------------------------------------------------

    async def keep(self, message: Message, replies: Sequence[smtp.Reply]) -> Delivery:
        """Make what is owed durable: a retry record for the 4xx recipients, a bounce for
        the 5xx ones. Ok (the client's 250) only once both are."""
        owed = [a for a, r in zip(message.email.to, replies, strict=True) if r.code // 100 == 4]
        if owed:
            kept = await self.retries.deliver(narrowed(message, owed))
            if not kept.ok:
                return kept
            report(logging.INFO, "lmtp_retry_queued", message=message.email.id, recipients=owed)
        refused = [
            (a, r) for a, r in zip(message.email.to, replies, strict=True) if r.code // 100 == 5
        ]
        return await self._bounce(message, refused) if refused else DELIVERED

    async def _bounce(
        self, message: Message, refused: Sequence[tuple[str, smtp.Reply]]
    ) -> Delivery:
        now = _now()
        failures = [
            dsn.Failure(recipient=a, reply=r, remote_mta=self.config.url, last_attempt=now)
            for a, r in refused
        ]
        try:
            data = dsn.build(
                message,
                failures,
                reporting_mta=self.hostname,
                arrival=message.email.creation_time,
                now=now,
                message_id_domain=self.hostname,
            )
        except ValueError as error:  # a record no bounce can be made of: kept, and said
            report(logging.ERROR, "dsn_failed", message=message.email.id, why=str(error))
            return failed(LOCAL_PROBLEM)
        if data is None:
            report(logging.INFO, "lmtp_no_dsn", message=message.email.id, why="not wanted")
            return DELIVERED
        record = bounce_record(message, data, now)
        kept = await self.bounces.deliver(record)
        if kept.ok:
            report(
                logging.WARNING,
                "dsn_created",
                message=message.email.id,
                dsn=record.email.id,
                to=message.email.sender,
                recipients=[a for a, _ in refused],
            )
        return kept

    # --- the runner ----------------------------------------------------------------------

    async def _run(self, deliver: Deliver) -> None:
        interval = min(SCAN_INTERVAL, self.config.retry_min)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._retry_due(deliver)
            except SpoolBusy:
                continue  # another worker is at it
            except (SpoolError, OSError) as error:
                report(logging.WARNING, "lmtp_retry_failed", why=str(error))

    async def _retry_due(self, deliver: Deliver) -> None:
        spool = await asyncio.to_thread(Spool, self.retry_path)
        try:
            with spool.lock():
                entries = await asyncio.to_thread(spool.list)
                now = _now()
                for entry in entries:
                    age = (now - entry.created).total_seconds()
                    delay = retry_delay(age, self.config.retry_min, self.config.retry_max)
                    if now.timestamp() >= entry.mtime + delay:
                        await self._retry(spool, entry.id, deliver, age)
        finally:
            spool.close()

    async def _retry(self, spool: Spool, message_id: str, deliver: Deliver, age: float) -> None:
        message = await asyncio.to_thread(spool.load, message_id)
        replies = await deliver(message)
        to = message.email.to
        still = [a for a, r in zip(to, replies, strict=True) if r.code // 100 == 4]
        refused = [(a, r) for a, r in zip(to, replies, strict=True) if r.code // 100 == 5]
        expired = age >= self.config.max_retry_age
        if expired:
            refused += [(a, r) for a, r in zip(to, replies, strict=True) if r.code // 100 == 4]
            still = []
        if refused and not (await self._bounce(message, refused)).ok:
            return  # tried again later, bounce included
        if still:
            kept = await self.retries.deliver(narrowed(message, still))  # same id: replaced
            report(logging.INFO, "lmtp_retry_later", message=message_id, recipients=still)
            if kept.ok:
                return
        await asyncio.to_thread(spool.remove, message_id)
        delivered = [a for a, r in zip(to, replies, strict=True) if r.code // 100 == 2]
        report(logging.INFO, "lmtp_retried", message=message_id, delivered=delivered)


def bounce_record(message: Message, data: bytes, now: datetime.datetime) -> Message:
    """The DSN as a message record of its own: from ``<>`` to the original sender."""
    email = Email(
        id=new_urn(),
        creation_time=now,
        sender="",
        to=[message.email.sender],
        data=data,
        size=len(data),
        received="",
        recipients=[],
        # Relayed on, a bounce that is not ASCII needs 8BITMIME (RFC 6152), a global one
        # SMTPUTF8 (RFC 6533).
        body=None if data.isascii() else "8BITMIME",
        smtputf8=not message.email.sender.isascii(),
    )
    return msgspec.structs.replace(message, email=email)
