"""The LMTP handoff: delivery into an MDA (Dovecot) over LMTP, and recipient checks with it.

Owns: the asyncio shell around ``wildboar.lmtp.ClientConnection`` (``_Link``: one
connection, its events awaited with timeouts), a bounded pool of links per worker reused
across transactions, ``check`` (is this recipient deliverable? asked at RCPT time, in an LMTP
transaction of its own: MAIL, RCPT, RSET in one write), ``deliver`` (MAIL, every RCPT and
DATA in one write, then the content: one reply per recipient, RFC 2033 §4.2), and what the
worker may offer its clients given what the MDA takes (``restrict``).
Must not know: SMTP sessions, the spool, how results become the client's reply beyond the
rules below.

The answer after the end of data (DESIGN.md "Handoff"):
- every recipient delivered: ok (250);
- none delivered: a temporary failure if any recipient's was (the sender retries), else the
  first permanent one, the MDA's reply as it gave it (Dovecot's ``552 5.2.2`` stays that);
- none delivered and every refusal of one kind (all 4xx, all 5xx): that kind, as above;
- mixed (some delivered and some not, or some refused for now and some for good): the
  retry queue (``wildboar.handoff.retry``) keeps a retry record for the 4xx recipients and a
  bounce for the 5xx ones, and only then is the result ok (250: RFC 5321 §4.4). Without a
  queue, or when it cannot keep them, a temporary failure, so nothing is lost, and the
  delivered recipients may get the message twice when the sender retries. Logged as
  ``lmtp_partial_delivery`` with who got it. Checking recipients at RCPT time makes this
  rare: it is left for what changes between RCPT and the end of data (a mailbox filled
  meanwhile, an MDA failing).
Security: the MDA is trusted to deliver, not to behave: every reply is parsed with bounds
by the sans-IO client, a reply that is late (``command_timeout``, ``data_timeout``) or a
connection that breaks is a temporary failure, never a 250. The MDA's reply text reaches the
SMTP client only as a validated ``Reply`` (printable ASCII, one line each).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence

from .. import lmtp, smtp
from ..config import Lmtp, parse_lmtp_url
from ..message import Message
from .base import Delivery, Handoff, failed, report
from .retry import RetryQueue

#: RFC 3463 X.3.0 / X.4.1: the MDA cannot be reached, or timed out.
MDA_UNAVAILABLE = smtp.Reply(
    451, "4.3.0", "Error: the mail store is not available, try again later"
)
MDA_TIMEOUT = smtp.Reply(451, "4.4.1", "Error: the mail store did not answer in time")
#: Recipients answered differently, and no retry queue to keep what is owed: the sender
#: retries them all.
PARTIAL = smtp.Reply(451, "4.3.0", "Error: not every recipient could be delivered, try again later")
#: RFC 6531 §3.7.5 / RFC 3463 X.6.7, X.6.0: the MDA cannot take the message as it is.
NO_SMTPUTF8 = smtp.Reply(553, "5.6.7", "Error: the mail store does not take UTF-8 addresses")
NO_8BITMIME = smtp.Reply(554, "5.6.0", "Error: the mail store does not take 8-bit content")
NO_BINARYMIME = smtp.Reply(554, "5.6.0", "Error: the mail store does not take binary content")
NO_UNTERMINATED = smtp.Reply(
    554, "5.6.0", "Error: the mail store takes no message whose last line lacks CRLF"
)
#: RFC 3463 X.1.3 "Bad destination mailbox address syntax" (for the MDA's grammar).
UNDELIVERABLE_ADDRESS = smtp.Reply(550, "5.1.3", "Error: the mail store cannot take this address")


#: What the MDA's own "closing the channel" replies become: passed on, a 421 would tell
#: the SMTP client that wildboar is closing its connection (RFC 5321 §3.8).
MDA_CLOSING = {421: MDA_UNAVAILABLE}


class MdaUnavailable(Exception):
    """No usable connection to the MDA; ``reply`` is what the client gets."""

    def __init__(self, reply: smtp.Reply, why: str) -> None:
        super().__init__(why)
        self.reply = reply


class StaleLink(MdaUnavailable):
    """The MDA had closed the connection before a command was written: nothing of this
    transaction reached it, so it may be tried again on a new connection."""


def _ours(reply: smtp.Reply) -> smtp.Reply:
    """The MDA's reply as the SMTP client may get it."""
    return MDA_CLOSING.get(reply.code, reply)


class _Link(asyncio.Protocol):
    """One connection to the MDA: the sans-IO client, its transport, its events."""

    def __init__(self, lhlo: str) -> None:
        self.client = lmtp.ClientConnection(lhlo)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._changed = asyncio.Event()
        self.extensions: lmtp.ServerExtensions | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.receive_data(data)
        self._changed.set()

    def eof_received(self) -> bool:
        self.client.receive_data(b"")
        self._changed.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.client.receive_data(b"")
        self._changed.set()

    def send(self, *commands: lmtp.Command) -> None:
        if self.client.closed:  # e.g. a pooled connection the MDA closed meanwhile
            self.abort()
            raise StaleLink(MDA_UNAVAILABLE, "the MDA had closed the connection")
        data = b"".join(self.client.send(command) for command in commands)
        if self.transport is None or self.lost:
            self.client.receive_data(b"")  # the owed replies become temporary failures
            return
        self.transport.write(data)

    async def event(self, timeout: float) -> lmtp.Event:
        """The next event; a server silent for ``timeout`` seconds is dropped (the owed
        replies then come as temporary failures)."""
        while True:
            event = self.client.next_event()
            if not isinstance(event, lmtp.Wait):
                return event
            self._changed.clear()
            try:
                # Not wait_for: on Python 3.11 it loses a cancellation that comes as the
                # event is set (CPython gh-86296), and a cancelled task would go on.
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
            except TimeoutError:
                self.abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.lost = True
        self.client.receive_data(b"")

    @property
    def reusable(self) -> bool:
        return not self.lost and self.client.state is lmtp.State.READY

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            with contextlib.suppress(lmtp.LocalProtocolError):
                self.transport.write(self.client.send(lmtp.Quit()))
            self.transport.close()
        self.lost = True


class LmtpHandoff(Handoff):
    """Deliver over LMTP to ``config.url``; at most ``config.connections`` links at once."""

    name = "lmtp"

    def __init__(self, config: Lmtp, hostname: str, queue: RetryQueue | None = None) -> None:
        """``queue``: where what a mixed result still owes is kept (None: such a result
        is a temporary failure for all, and may deliver twice to some)."""
        self.config = config
        self.queue = queue
        self.target = parse_lmtp_url(config.url)
        self.lhlo = config.lhlo or hostname
        self.extensions: lmtp.ServerExtensions | None = None  # as the MDA last said
        self._idle: deque[_Link] = deque()
        self._slots = asyncio.Semaphore(config.connections)
        self._closing = False

    # --- the Handoff interface ---------------------------------------------------------

    async def start(self) -> None:
        """Learn what the MDA offers; an MDA that is down now is not a reason not to serve
        (its recipients get 451 until it is back)."""
        try:
            async with self._link() as link:
                self.extensions = link.extensions
        except MdaUnavailable as error:
            report(
                logging.WARNING, "lmtp_unreachable_at_start", target=self.config.url, why=str(error)
            )
        if self.queue is not None:
            await self.queue.start(self.replies)

    async def close(self) -> None:
        if self.queue is not None:
            await self.queue.close()
        self._closing = True
        while self._idle:
            self._idle.popleft().close()

    def restrict(self, extensions: smtp.Extensions) -> smtp.Extensions:
        """What the worker may offer when every message goes to this MDA: SMTPUTF8 and
        BINARYMIME only if the MDA takes them (unknown, before it answered: not), 8BITMIME
        unless it said it does not. Nothing is converted on the way."""
        offered = self.extensions
        eight = offered is None or offered.eightbitmime
        return smtp.Extensions(
            pipelining=extensions.pipelining,
            size=extensions.size,
            eightbitmime=extensions.eightbitmime and eight,
            smtputf8=extensions.smtputf8 and eight and offered is not None and offered.smtputf8,
            chunking=extensions.chunking,
            binarymime=extensions.binarymime and offered is not None and offered.binarymime,
            dsn=extensions.dsn,
        )

    async def deliver(self, message: Message) -> Delivery:
        email = message.email
        try:
            replies = await self._attempt(message)
        except MdaUnavailable as error:
            report(logging.WARNING, "lmtp_not_delivered", message=email.id, why=str(error))
            return failed(error.reply)
        if isinstance(replies, smtp.Reply):
            return failed(replies)
        outcome = self._outcome(message, replies)
        if outcome.reply is PARTIAL and self.queue is not None:
            return await self.queue.keep(message, replies)
        return outcome

    async def replies(self, message: Message) -> list[smtp.Reply]:
        """One reply per recipient of ``message`` (a retry): the MDA's, or a temporary
        failure when it cannot be reached."""
        email = message.email
        try:
            replies = await self._attempt(message)
        except MdaUnavailable as error:
            return [error.reply] * len(email.to)
        return [replies] * len(email.to) if isinstance(replies, smtp.Reply) else replies

    async def _attempt(self, message: Message) -> list[smtp.Reply] | smtp.Reply:
        """One transaction for ``message``: a reply per recipient, or the one refusal of a
        message the MDA cannot take as it is. A pooled connection the MDA had closed is
        replaced by a new one once (nothing was written to it)."""
        email = message.email
        for fresh in (False, True):
            try:
                async with self._link(fresh) as link:
                    refusal = self._unfit(email.body, email.smtputf8, link.extensions, email.data)
                    if refusal is not None:
                        return refusal
                    return await self._transaction(link, message)
            except StaleLink:
                if fresh:
                    raise
        raise AssertionError("unreachable")

    # --- recipient checks ----------------------------------------------------------------

    async def check(self, sender: str, recipient: str, smtputf8: bool = False) -> smtp.Reply:
        """The MDA's answer to RCPT ``recipient`` (from ``sender``), in a transaction of its
        own that is then reset; 451 when the MDA cannot be asked."""
        for fresh in (False, True):
            try:
                async with self._link(fresh) as link:
                    return await self._ask(link, sender, recipient, smtputf8)
            except StaleLink:
                continue  # once more, on a new connection
            except MdaUnavailable as error:
                report(logging.WARNING, "lmtp_check_failed", recipient=recipient, why=str(error))
                return error.reply
        report(logging.WARNING, "lmtp_check_failed", recipient=recipient, why="closed at once")
        return MDA_UNAVAILABLE

    async def _ask(self, link: _Link, sender: str, recipient: str, smtputf8: bool) -> smtp.Reply:
        offered = link.extensions
        params = ("SMTPUTF8",) if smtputf8 and offered is not None and offered.smtputf8 else ()
        try:
            mail, rcpt, _ = await self._exchange(
                link, [lmtp.Mail(sender, params), lmtp.Rcpt(recipient), lmtp.Rset()]
            )
        except lmtp.LocalProtocolError:  # an address the MDA cannot take (UTF-8, no SMTPUTF8)
            link.abort()
            return NO_SMTPUTF8 if smtputf8 else UNDELIVERABLE_ADDRESS
        if isinstance(mail, lmtp.MailReply) and mail.reply.code // 100 != 2:
            return _ours(mail.reply)
        return _ours(rcpt.reply) if isinstance(rcpt, lmtp.RcptReply) else MDA_UNAVAILABLE

    async def _exchange(
        self, link: _Link, commands: Sequence[lmtp.Command], timeout: float | None = None
    ) -> list[lmtp.Event | None]:
        """Send ``commands`` (in one write when the MDA pipelines, else one by one) and
        return the event that answers each (None for one that was not sent: the client
        refused it, e.g. DATA once every RCPT failed)."""
        timeout = timeout or self.config.command_timeout
        offered = link.extensions
        if offered is not None and offered.pipelining:
            link.send(*commands)
            return [await link.event(timeout) for _ in commands]
        answers: list[lmtp.Event | None] = []
        for command in commands:
            if isinstance(command, lmtp.Data) and not any(
                isinstance(a, lmtp.RcptReply) and a.reply.code // 100 == 2 for a in answers
            ):
                answers.append(None)
                continue
            link.send(command)
            answers.append(await link.event(timeout))
        return answers

    # --- delivery ----------------------------------------------------------------------

    @staticmethod
    def _unfit(
        body: str | None, utf8: bool, offered: lmtp.ServerExtensions | None, data: bytes = b""
    ) -> smtp.Reply | None:
        if offered is None:
            return None
        if data and not data.endswith(b"\r\n") and not offered.chunking:
            return NO_UNTERMINATED
        if utf8 and not offered.smtputf8:
            return NO_SMTPUTF8
        if body == "8BITMIME" and not offered.eightbitmime:
            return NO_8BITMIME
        if body == "BINARYMIME" and not (offered.binarymime and offered.chunking):
            return NO_BINARYMIME
        return None

    async def _transaction(self, link: _Link, message: Message) -> list[smtp.Reply]:
        """One reply per recipient: its RCPT's refusal, or its result after the content."""
        email = message.email
        body, utf8, recipients, data = email.body, email.smtputf8, email.to, email.data
        params = tuple(
            [f"BODY={body}"] * (body in ("8BITMIME", "BINARYMIME")) + ["SMTPUTF8"] * utf8
        )
        # BDAT for binary content, and for content whose last line has no CRLF (which
        # BDAT can take as it is, and DATA would have to change); DATA for the rest.
        chunked = body == "BINARYMIME" or not data.endswith(b"\r\n")
        commands: list[lmtp.Command] = [lmtp.Mail(email.sender, params)]
        commands += [lmtp.Rcpt(address) for address in recipients]
        commands += [] if chunked else [lmtp.Data()]
        answers = await self._exchange(link, commands)
        replies = self._refusals(answers, len(recipients), chunked)
        accepted = sum(1 for reply in replies if reply is None)
        if accepted:
            link.send(lmtp.Bdat(data, last=True) if chunked else lmtp.Content(data))
            await self._results(link, replies, accepted)
        return [reply or MDA_UNAVAILABLE for reply in replies]

    @staticmethod
    def _refusals(
        answers: list[lmtp.Event | None], count: int, chunked: bool
    ) -> list[smtp.Reply | None]:
        """Per recipient, the refusal of MAIL, of its RCPT or of DATA; None: accepted."""
        mail = answers[0]
        if not isinstance(mail, lmtp.MailReply):
            return [MDA_UNAVAILABLE] * count
        refusal = _ours(mail.reply) if mail.reply.code >= 400 else None
        replies: list[smtp.Reply | None] = []
        for answer in answers[1 : count + 1]:
            if isinstance(answer, lmtp.RcptReply):
                refused = _ours(answer.reply) if answer.reply.code >= 400 else None
                replies.append(refusal or refused)
            else:
                replies.append(MDA_UNAVAILABLE)
        if not chunked:
            ready = answers[count + 1]
            if not (isinstance(ready, lmtp.DataReady) and ready.reply.code == 354):
                data_refusal = (
                    _ours(ready.reply) if isinstance(ready, lmtp.DataReady) else MDA_UNAVAILABLE
                )
                replies = [r or data_refusal for r in replies]
        return replies

    async def _results(self, link: _Link, replies: list[smtp.Reply | None], count: int) -> None:
        for _ in range(count):
            event = await link.event(self.config.data_timeout)
            if isinstance(event, lmtp.RecipientResult):
                replies[event.index] = _ours(event.reply)
            elif isinstance(event, lmtp.Closed):
                break

    def _outcome(self, message: Message, replies: list[smtp.Reply]) -> Delivery:
        recipients = tuple(replies)
        delivered = [r for r in replies if r.code // 100 == 2]
        if len(delivered) == len(replies):
            return Delivery(ok=True, recipients=recipients)
        refused = [r for r in replies if r.code // 100 != 2]
        kinds = {r.code // 100 for r in refused}
        if delivered or len(kinds) > 1:
            got = [a for a, r in zip(message.email.to, replies, strict=True) if r.code // 100 == 2]
            report(
                logging.WARNING,
                "lmtp_partial_delivery",
                message=message.email.id,
                delivered=got,
                refused=[r.to_bytes().decode().strip() for r in refused],
            )
            return Delivery(ok=False, reply=PARTIAL, recipients=recipients)
        chosen = next((r for r in refused if r.code // 100 == 4), refused[0])
        return Delivery(ok=False, reply=chosen, recipients=recipients)

    # --- the pool ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _link(self, fresh: bool = False) -> AsyncIterator[_Link]:
        """A link for one transaction: an idle one (unless ``fresh``), else a new one (at
        most ``connections`` at once); put back after if it can be used again."""
        async with self._slots:
            if self._idle and not fresh:
                await asyncio.sleep(0)  # what the MDA sent an idle link meanwhile is read
            link = (None if fresh else self._idle_link()) or await self._open()
            try:
                yield link
            except BaseException:
                link.abort()
                raise
            if link.reusable and not self._closing:
                self._idle.append(link)
            else:
                link.close()

    def _idle_link(self) -> _Link | None:
        while self._idle:
            link = self._idle.pop()
            if link.reusable:
                return link
            link.close()
        return None

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = _Link(self.lhlo)
        config = self.config
        try:
            if isinstance(self.target, str):
                connect = loop.create_unix_connection(lambda: link, self.target)
            else:
                connect = loop.create_connection(lambda: link, *self.target)
            async with asyncio.timeout(config.connect_timeout):
                await connect
        except (OSError, TimeoutError) as error:
            raise MdaUnavailable(
                MDA_UNAVAILABLE, f"cannot connect to {config.url}: {error}"
            ) from None
        greeting = await link.event(config.command_timeout)
        if not isinstance(greeting, lmtp.Greeting) or greeting.reply.code != 220:
            link.abort()
            raise MdaUnavailable(MDA_UNAVAILABLE, f"{config.url} did not greet: {greeting}")
        link.send(lmtp.Lhlo())
        done = await link.event(config.command_timeout)
        if not isinstance(done, lmtp.LhloDone) or done.reply.code != 250:
            link.abort()
            raise MdaUnavailable(MDA_UNAVAILABLE, f"{config.url} refused LHLO: {done}")
        link.extensions = self.extensions = done.extensions
        return link
