"""What the LMTP handoff still owes after a mixed result: retries from a spool, and bounces.

Owns: ``RetryQueue``: after the end of data, when the MDA did not answer every recipient
alike (some delivered and some not, or some refused for now and some for good; RFC 5321
§4.4: once the DATA reply is OK the server owns the rest), the recipients it answered with
a 4xx are written to the retry spool (``[lmtp] retry_spool``, default ``<spool.path>/lmtp``)
with a ``retry`` field (attempts, the last reply per recipient, the next attempt) and those
it answered with a 5xx get a delivery status notification (``wildboar.dsn``) in the bounce
spool (``[lmtp] bounce_spool``, default ``<spool.path>/bounce``), both durably, before the
client gets its ``250``. A retry record's file time is its next attempt (as in Postfix's
deferred queue), so finding what is due reads no record. A runner in every worker (one at
a time, by each spool's lock) retries what is due, with a delay that grows with the
message's age (``retry_min`` to ``retry_max``); a recipient still refused after
``max_retry_age`` (Postfix's ``maximal_queue_lifetime``, 5 days), or refused for good, gets
its bounce then. With a ``forward`` (AMQP configured) the runner publishes each bounce to
``accepted.outbound.email`` and removes it once confirmed; without, bounces wait in the
bounce spool for the operator (``wildboar spool ls --bounces``, ``drain --bounces``).
Must not know: sessions, LMTP's protocol (it is given a ``deliver`` coroutine), AMQP (it is
given a ``forward`` coroutine).
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
from ..message import Email, Message, RecipientStatus, Retry, new_urn
from .base import DELIVERED, LOCAL_PROBLEM, Delivery, failed, report
from .spool import NoSuchMessage, Spool, SpoolBusy, SpoolError, SpoolHandoff

Deliver = Callable[[Message], Awaitable[list[smtp.Reply]]]
#: Publish a bounce onward (to ``accepted.outbound.email``): None once it is durable there,
#: else why not.
Forward = Callable[[Message], Awaitable[str | None]]
#: How often a worker looks for retries that are due and bounces to forward.
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


def status(address: str, reply: smtp.Reply) -> RecipientStatus:
    return RecipientStatus(
        address=address, code=reply.code, enhanced=reply.status, text=" ".join(reply.lines)
    )


def split(
    addresses: Sequence[str], replies: Sequence[smtp.Reply]
) -> tuple[list[tuple[str, smtp.Reply]], list[tuple[str, smtp.Reply]], list[str]]:
    """The recipients answered 4xx, those answered 5xx (each with its reply), and those
    delivered."""
    pairs = list(zip(addresses, replies, strict=True))
    later = [(a, r) for a, r in pairs if r.code // 100 == 4]
    refused = [(a, r) for a, r in pairs if r.code // 100 == 5]
    return later, refused, [a for a, r in pairs if r.code // 100 == 2]


class RetryQueue:
    """The retry spool, the bounce spool and their runner, for one worker's LMTP handoff.

    ``forward``: where bounces go once durable in the bounce spool (the AMQP handoff's
    outbound exchange); None keeps them there for the operator (``wildboar spool ls
    --bounces``).
    """

    def __init__(
        self,
        config: Lmtp,
        retry_path: str,
        bounce_path: str,
        hostname: str,
        forward: Forward | None = None,
    ) -> None:
        self.config = config
        self.hostname = hostname
        self.retry_path, self.bounce_path = retry_path, bounce_path
        self.forward = forward
        self.retries = SpoolHandoff(retry_path)
        self.bounces = SpoolHandoff(bounce_path)
        self._retry_spool: Spool | None = None
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self, deliver: Deliver) -> None:
        await self.retries.start()
        await self.bounces.start()
        self._retry_spool = await asyncio.to_thread(Spool, self.retry_path)
        self._runner = asyncio.create_task(self._run(deliver), name="lmtp retries")

    async def close(self) -> None:
        runner = self._runner
        if runner is not None:
            # One cancel may not stop it: on Python 3.11 asyncio.wait_for loses a
            # cancellation that comes as what it waits for completes (CPython gh-86296).
            self._stopping = True
            while not runner.done():
                runner.cancel()
                await asyncio.wait({runner}, timeout=1.0)
        await self.retries.close()
        await self.bounces.close()
        if self._retry_spool is not None:
            self._retry_spool.close()

    # --- after the end of data ----------------------------------------------------------

    async def keep(self, message: Message, replies: Sequence[smtp.Reply]) -> Delivery:
        """Make what is owed durable: a retry record for the 4xx recipients, a bounce for
        the 5xx ones. Ok (the client's 250) only once both are; if the bounce cannot be
        kept, the retry record goes too (the client's 4xx makes the sender retry them all)."""
        later, refused, _ = split(message.email.to, replies)
        now = _now()
        record = None
        if later:
            record = self._retry_record(message, later, now, attempts=1)
            kept = await self._keep_retry(record, now)
            if not kept.ok:
                return kept
            report(
                logging.INFO,
                "lmtp_retry_queued",
                message=message.email.id,
                recipients=[a for a, _ in later],
                next_attempt=_iso(record),
            )
        if not refused:
            return DELIVERED
        bounced = await self._bounce(message, refused, now)
        if not bounced.ok and record is not None:
            with contextlib.suppress(SpoolError, OSError):
                await asyncio.to_thread(self._spool().remove, record.email.id)
        return bounced

    def _retry_record(
        self,
        message: Message,
        later: Sequence[tuple[str, smtp.Reply]],
        now: datetime.datetime,
        attempts: int,
    ) -> Message:
        age = (now - message.email.creation_time).total_seconds()
        delay = retry_delay(age, self.config.retry_min, self.config.retry_max)
        retry = Retry(
            attempts=attempts,
            last_attempt=now,
            next_attempt=now + datetime.timedelta(seconds=delay),
            recipients=[status(a, r) for a, r in later],
        )
        narrow = narrowed(message, [a for a, _ in later])
        return msgspec.structs.replace(narrow, retry=retry)

    async def _keep_retry(self, record: Message, now: datetime.datetime) -> Delivery:
        """Write (or replace: the same id) a retry record, its file time its next attempt."""
        kept = await self.retries.deliver(record)
        if kept.ok and record.retry is not None:
            with contextlib.suppress(SpoolError, OSError):  # else: due at once, harmless
                self._spool().set_time(record.email.id, record.retry.next_attempt.timestamp())
        return kept

    def _spool(self) -> Spool:
        if self._retry_spool is None:
            raise SpoolError(f"{self.retry_path}: the retry queue is not started")
        return self._retry_spool

    async def _bounce(
        self,
        message: Message,
        refused: Sequence[tuple[str, smtp.Reply]],
        now: datetime.datetime,
    ) -> Delivery:
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
            if self.forward is not None:
                self._wake.set()  # forwarded by the runner, soon
        return kept

    # --- the runner ----------------------------------------------------------------------

    async def _run(self, deliver: Deliver) -> None:
        interval = min(SCAN_INTERVAL, self.config.retry_min)
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            await self._guarded(self._retry_due(deliver), "lmtp_retry_failed")
            if self.forward is not None:
                await self._guarded(self._forward_bounces(self.forward), "dsn_forward_failed")

    @staticmethod
    async def _guarded(step: Awaitable[None], event: str) -> None:
        try:
            await step
        except SpoolBusy:
            pass  # another worker is at it
        except (SpoolError, OSError) as error:
            report(logging.WARNING, event, why=str(error))

    async def _retry_due(self, deliver: Deliver) -> None:
        spool = await asyncio.to_thread(Spool, self.retry_path)
        try:
            with spool.lock():
                for message_id in await asyncio.to_thread(spool.due, _now().timestamp()):
                    try:
                        await self._retry(spool, message_id, deliver)
                    except NoSuchMessage:
                        continue  # drained by the operator meanwhile
                    except (SpoolError, OSError):
                        raise
                    except Exception as error:  # a bug must not stop the others' retries
                        report(
                            logging.ERROR,
                            "lmtp_retry_failed",
                            message=message_id,
                            why=f"{type(error).__name__}: {error}",
                        )
                        later = _now().timestamp() + self.config.retry_min
                        spool.set_time(message_id, later)
        finally:
            spool.close()

    async def _retry(self, spool: Spool, message_id: str, deliver: Deliver) -> None:
        message = await asyncio.to_thread(spool.load, message_id)
        replies = await deliver(message)
        now = _now()
        later, refused, delivered = split(message.email.to, replies)
        age = (now - message.email.creation_time).total_seconds()
        if age >= self.config.max_retry_age:
            refused, later = refused + later, []
        if refused and not (await self._bounce(message, refused, now)).ok:
            return  # tried again later, bounce included
        if later:
            attempts = message.retry.attempts + 1 if message.retry is not None else 1
            record = self._retry_record(message, later, now, attempts)
            if (await self._keep_retry(record, now)).ok:  # the same id: replaced
                report(
                    logging.INFO,
                    "lmtp_retry_later",
                    message=message_id,
                    recipients=[a for a, _ in later],
                    attempts=attempts,
                    next_attempt=_iso(record),
                )
                return
        await asyncio.to_thread(spool.remove, message_id)
        report(logging.INFO, "lmtp_retried", message=message_id, delivered=delivered)

    async def _forward_bounces(self, forward: Forward) -> None:
        """Publish every bounce of the bounce spool onward, removing each once confirmed
        (a worker that dies in between publishes it again: its id lets the next stage
        de-duplicate)."""
        spool = await asyncio.to_thread(Spool, self.bounce_path)
        try:
            with spool.lock():
                for message_id in await asyncio.to_thread(spool.due, _now().timestamp()):
                    try:
                        record = await asyncio.to_thread(spool.load, message_id)
                    except NoSuchMessage:
                        continue
                    why = await forward(record)
                    if why is not None:
                        report(logging.WARNING, "dsn_not_forwarded", dsn=message_id, why=why)
                        return  # the broker is away: all of them later
                    await asyncio.to_thread(spool.remove, message_id)
                    report(logging.INFO, "dsn_forwarded", dsn=message_id)
        finally:
            spool.close()


def _iso(record: Message) -> str:
    return record.retry.next_attempt.isoformat() if record.retry is not None else ""


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
    return msgspec.structs.replace(message, email=email, retry=None)
