"""The AMQP handoff: publish every accepted message to RabbitMQ, ``250`` only once the broker
has confirmed it.

Owns: one broker connection per worker (pika's asyncio adapter on the worker's uvloop
loop), failover across the configured URLs in order, reconnection with back-off, the
topology (declared at every connect), a channel in confirm mode shared by every session
(many publishes in flight, each waiting for its own confirm), mandatory publishing (an
unroutable message is returned and counts as a failure), the store-and-forward buffer (a
spool, drained in order once the broker is back), the rejected exchange and the
fire-and-forget ``events`` exchange.
Must not know: sessions or SMTP syntax; the outcome is a ``Delivery``.
Security: the broker is trusted, but its failures never reach a client as text: every
failure is the catalogue reply ``451 4.3.0`` (or ``552 5.3.4`` for a record larger than
the broker takes, which no retry can publish). Broker credentials live in the URLs of the
configuration and are never logged: brokers are named by host, port and vhost (parsed from
``config.mask_url``, so from a URL without its password), and every text that leaves this
module (log fields, start errors, the connection's name and close reason) goes through
``config.mask_secrets``, since pika's or the broker's words may quote a URL or a password.

Outcomes of one publish (``deliver``):

- ``basic.ack`` for it (alone or ``multiple``) and no ``basic.return`` before: durable;
- ``basic.nack``, a ``basic.return`` (no queue bound for the routing key), the channel or
  connection closing before the confirm, the connection being blocked by a broker alarm, no
  confirm within ``confirm_timeout``, or no broker at all: a failure. With
  ``store_and_forward`` the message then goes to the buffer spool and the client gets
  ``250``; otherwise ``451 4.3.0``. A message the broker may have stored without our seeing
  the confirm can so be published twice: consumers de-duplicate on ``message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import pika
import pika.exceptions
import pika.spec
from pika.adapters.asyncio_connection import AsyncioConnection

from .. import smtp
from ..config import EXCHANGE_NAMES, Amqp, describe_url, mask_secrets, queue_arguments
from ..message import CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK, Message, encode
from ..pika_link import BrokerError, open_connection
from ..pika_link import reason as _reason
from .base import (
    DELIVERED,
    LOCAL_PROBLEM,
    Delivery,
    Handoff,
    HandoffStartError,
    failed,
    report,
)
from .spool import (
    CORRUPT_DIR,
    HELD_DIR,
    CorruptMessage,
    NoSuchMessage,
    Spool,
    SpoolBusy,
    SpoolError,
    SpoolHandoff,
)

# pika logs every failed connection attempt at ERROR, several lines each; this module says
# once, in one line, what failed and what it does about it.
logging.getLogger("pika").setLevel(logging.CRITICAL)

EXCHANGES = EXCHANGE_NAMES
ACCEPTED, REJECTED, OUTBOUND = EXCHANGE_NAMES[0], EXCHANGE_NAMES[1], EXCHANGE_NAMES[2]
EVENTS = "events"
#: RFC 3463 X.3.2 "System not accepting network messages", at connect (RFC 5321 §3.8: 421).
BROKER_DOWN_AT_CONNECT = smtp.Reply(
    421, "4.3.2", "Service not available, message queue unreachable, try again later"
)
BROKER_DOWN_AT_MAIL = smtp.Reply(451, "4.3.0", "Error: message queue unreachable, try again later")
#: RFC 3463 X.3.4 "Message too big for system": the record exceeds what the broker takes.
TOO_BIG_FOR_BROKER = smtp.Reply(552, "5.3.4", "Error: message too big for the message queue")
#: ``publish``'s answer for a record larger than ``amqp.max_message_size``.
TOO_BIG = "larger than amqp.max_message_size"
#: A connection lost sooner than this after it opened does not reset the back-off.
STABLE_AFTER = 10.0
#: How long ``start`` waits for the first connection before serving without one.
START_WAIT = 5.0
#: Messages the drain publishes before it waits for their confirms.
DRAIN_WINDOW = 64
#: Between two looks at an idle or locked buffer.
DRAIN_IDLE = 2.0
#: After a drain pass the broker refused (nack, return): the wait doubles up to this.
DRAIN_BACKOFF_MAX = 60.0
#: After the broker closed the side channel (events, rejected records): first wait before
#: opening it again, doubling up to the maximum, new for every connection.
SIDE_RETRY_MIN = 30.0
SIDE_RETRY_MAX = 600.0
#: How long ``close`` waits for the broker to acknowledge the connection's close.
CLOSE_WAIT = 2.0
#: Opening channels and declaring the topology, after the connection is open.
SETUP_TIMEOUT = 60.0
#: Between two looks for publishes past their confirm timeout.
EXPIRY_INTERVAL = 0.1


@dataclasses.dataclass
class _InFlight:
    future: asyncio.Future[str | None]  # None: confirmed; else why not
    message_id: str
    published: float  # loop time


@dataclasses.dataclass(frozen=True)
class Pacing:
    """How long the handoff waits between its background attempts (the defaults above);
    a test of the back-off passes shorter ones instead of waiting minutes."""

    drain_idle: float = DRAIN_IDLE
    side_retry_min: float = SIDE_RETRY_MIN


class AmqpHandoff(Handoff):
    """Publish to RabbitMQ with confirms; see the module documentation for the outcomes.

    Bound to the event loop that calls ``start``; not shared between loops.
    """

    name = "amqp"

    def __init__(
        self, settings: Amqp, *, buffer: str, connection_name: str, pacing: Pacing | None = None
    ) -> None:
        self.settings = settings
        self.pacing = pacing or Pacing()
        # Shown by the broker to its administrators: nothing of a password either.
        self.connection_name = mask_secrets(connection_name, settings.urls)
        self.content_type = (
            CONTENT_TYPE_MSGPACK if settings.format == "msgpack" else CONTENT_TYPE_JSON
        )
        self.buffer = SpoolHandoff(buffer) if settings.store_and_forward else None
        self.buffer_path = buffer
        self.exchange = settings.exchange(ACCEPTED)
        self.rejected_exchange = settings.exchange(REJECTED)
        self.events_exchange = settings.exchange(EVENTS)
        self._parameters: list[tuple[str, pika.URLParameters]] = []
        self._connection: AsyncioConnection | None = None
        self._channel: Any = None  # the confirm channel, once the topology is declared
        # The side channel, without confirms: events and rejected records. The broker
        # refusing one of those (a permission, a deleted exchange) closes only this one.
        self._side: Any = None
        self._side_retry: asyncio.TimerHandle | None = None
        self._side_delay = self.pacing.side_retry_min
        self._up = asyncio.Event()
        self._blocked = False
        self._closing = False
        self._next_tag = 1
        self._pending: dict[int, _InFlight] = {}
        self._returned: set[str] = set()
        self._lost: asyncio.Future[str] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_wake = asyncio.Event()
        self.broker = ""  # host:port of the broker in use
        self.published = 0
        self.buffered = 0
        self.drained = 0

    # --- Handoff -------------------------------------------------------------------

    async def start(self) -> None:
        for url in self.settings.urls:
            try:
                parameters = pika.URLParameters(url)
            except OSError as error:  # ssl_options naming a file this user cannot read
                raise HandoffStartError(
                    f"bad broker URL {describe_url(url)!r}: its ssl_options:"
                    f" {self._masked(str(error))}"
                    " (a certificate, key or CA file missing or unreadable by this user?)"
                ) from None
            except Exception as error:  # anything pika's URL parsing raises: one line
                raise HandoffStartError(
                    f"bad broker URL {describe_url(url)!r}: {self._masked(str(error))}"
                ) from None
            parameters.heartbeat = self.settings.heartbeat
            parameters.connection_attempts = 1
            parameters.socket_timeout = self.settings.connect_timeout
            parameters.client_properties = {
                "connection_name": self.connection_name,
                "product": "wildboar",
            }
            self._parameters.append((describe_url(url), parameters))
        if not self._parameters:
            raise HandoffStartError("amqp.urls is empty: no broker to publish to")
        if self.buffer is not None:
            await self.buffer.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._keep_connected(), name="amqp connection"))
        if self.buffer is not None:
            self._tasks.append(loop.create_task(self._drain_buffer(), name="amqp drain"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(START_WAIT, self.settings.connect_timeout)):
                await self._up.wait()
        if not self._up.is_set():
            self._report(
                logging.WARNING,
                "amqp_unreachable_at_start",
                brokers=[name for name, _ in self._parameters],
                meanwhile=f"buffering in {self.buffer_path}"
                if self.buffer is not None
                else f"refusing mail at {self.settings.when_down}",
            )

    def refusal(self, stage: Literal["connect", "mail"]) -> smtp.Reply | None:
        if self.buffer is not None or self.settings.when_down != stage or self.usable:
            return None
        return BROKER_DOWN_AT_CONNECT if stage == "connect" else BROKER_DOWN_AT_MAIL

    @property
    def usable(self) -> bool:
        """Connected, topology declared, not blocked by a broker alarm."""
        return self._up.is_set() and not self._blocked and self._channel is not None

    async def deliver(self, message: Message) -> Delivery:
        why = await self.publish(message)
        if why is None:
            return DELIVERED
        if why == TOO_BIG:  # it can never be published: neither retry nor buffer it
            self._report(logging.ERROR, "amqp_too_big", message=message.email.id, why=TOO_BIG)
            return failed(TOO_BIG_FOR_BROKER)
        if self.buffer is None:
            self._report(logging.ERROR, "amqp_not_published", message=message.email.id, why=why)
            return failed(LOCAL_PROBLEM)
        outcome = await self.buffer.deliver(message)
        if outcome.ok:
            self.buffered += 1
            self._drain_wake.set()
            self._report(logging.WARNING, "amqp_buffered", message=message.email.id, why=why)
        return outcome

    async def close(self) -> None:
        """Wait (up to the confirm timeout) for publishes in flight, then disconnect."""
        self._closing = True
        deadline = time.monotonic() + self.settings.confirm_timeout
        while self._pending and time.monotonic() < deadline and self._up.is_set():
            await asyncio.sleep(0.01)
        if self._expiry is not None:
            self._expiry.cancel()
        self._fail_in_flight("the worker is stopping")
        tasks = list(self._tasks)  # each removes itself from the list when done
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connection = self._connection
        self._disconnect("closing")
        deadline = time.monotonic() + CLOSE_WAIT
        while connection is not None and not connection.is_closed:  # the close handshake
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        if self.buffer is not None:
            await self.buffer.close()

    def _report(self, level: int, event: str, **fields: object) -> None:
        """``report``, each text field masked: a ``why`` may quote pika or the broker."""
        report(level, event, **{key: self._masked(value) for key, value in fields.items()})

    def _masked(self, value: Any) -> Any:
        """``value`` (a text, or a list of them) without any trace of a broker password."""
        if isinstance(value, str):
            return mask_secrets(value, self.settings.urls)
        if isinstance(value, list):
            return [self._masked(item) for item in value]
        return value

    # --- publishing ----------------------------------------------------------------

    async def publish(self, message: Message, exchange: str | None = None) -> str | None:
        """Publish and wait for the confirm: None when durable, else why not."""
        if not self.usable:
            return "blocked by a broker alarm" if self._blocked else "no broker connection"
        body = encode(message, self.content_type)
        if len(body) > self.settings.max_message_size:
            # The broker would close the channel shared by every session over it.
            return TOO_BIG
        properties = self._properties(message)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        tag = self._next_tag
        try:
            self._channel.basic_publish(
                exchange or self.exchange,
                self.settings.routing_key,
                body,
                properties,
                mandatory=True,
            )
        except (pika.exceptions.AMQPError, OSError) as error:
            return f"publish failed: {type(error).__name__}"
        self._next_tag += 1
        loop = asyncio.get_running_loop()
        self._pending[tag] = _InFlight(future, message.email.id, loop.time())
        if self._expiry is None:
            self._expiry = loop.call_later(EXPIRY_INTERVAL, self._expire)
        try:
            why = await future
        finally:
            self._returned.discard(message.email.id)
        if why is None:
            self.published += 1
        return why

    async def outbound(self, message: Message) -> str | None:
        """Publish a message this server made (a bounce) to ``accepted.outbound.email``,
        for an outbound relay, and wait for the confirm: None when durable, else why not."""
        return await self.publish(message, self.settings.exchange(OUTBOUND))

    def _properties(self, message: Message) -> pika.BasicProperties:
        return pika.BasicProperties(
            content_type=self.content_type,
            # 2: persistent (pika 1.2, Debian 12's, has no pika.DeliveryMode).
            delivery_mode=2,
            message_id=message.email.id,
            timestamp=int(time.time()),
            app_id="wildboar",
            type="rejected" if message.rejection is not None else "accepted",
        )

    def rejected(self, message: Message) -> None:
        """Publish a message refused after its content (with ``rejection`` set) on the side
        channel, fire and forget: the client had its 5xx already, and a broker refusing
        this publish (no write permission on the exchange, say) must not touch the channel
        that carries the mail every session waits for."""
        why = None
        if self._side is None or self._blocked:
            why = "blocked by a broker alarm" if self._blocked else "no broker connection"
        else:
            body = encode(message, self.content_type)
            if len(body) > self.settings.max_message_size:
                why = TOO_BIG
            else:
                try:
                    self._side.basic_publish(
                        self.rejected_exchange,
                        self.settings.routing_key,
                        body,
                        self._properties(message),
                    )
                except (pika.exceptions.AMQPError, OSError) as error:
                    why = f"publish failed: {type(error).__name__}"
        if why is not None:
            self._report(
                logging.WARNING, "amqp_rejected_not_published", message=message.email.id, why=why
            )

    def event(self, event: str, fields: dict[str, Any]) -> None:
        """Fire and forget to the topic exchange: never waits, never fails mail."""
        if self._side is None or not self.settings.events or self._blocked:
            return
        body = msgspec.json.encode({"event": event, "time": time.time(), **fields})
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            self._side.basic_publish(
                self.events_exchange,
                event.replace("_", "."),
                body,
                pika.BasicProperties(content_type=CONTENT_TYPE_JSON, app_id="wildboar"),
            )

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            while self._pending:
                first = next(iter(self._pending))
                if first > tag:
                    break
                self._settle(self._pending.pop(first), acked)
        else:
            in_flight = self._pending.pop(tag, None)
            if in_flight is not None:
                self._settle(in_flight, acked)

    def _settle(self, in_flight: _InFlight, acked: bool) -> None:
        if in_flight.future.done():
            return
        if not acked:
            in_flight.future.set_result("negatively acknowledged (nack) by the broker")
        elif in_flight.message_id in self._returned:
            in_flight.future.set_result("returned by the broker: no queue for its routing key")
        else:
            in_flight.future.set_result(None)

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # RabbitMQ sends basic.return before the basic.ack of the same message.
        if properties.message_id:
            self._returned.add(properties.message_id)

    def _expire(self) -> None:
        """Fail the publishes that waited longer than ``confirm_timeout`` for a confirm: one
        timer for them all, not one per message. Oldest first, so it stops at the first
        one still in time."""
        self._expiry = None
        now = asyncio.get_running_loop().time()
        limit = self.settings.confirm_timeout
        while self._pending:
            tag = next(iter(self._pending))
            in_flight = self._pending[tag]
            if now - in_flight.published < limit:
                break
            del self._pending[tag]
            if not in_flight.future.done():
                in_flight.future.set_result(f"no confirm within {limit:g} s")
        if self._pending:
            self._expiry = asyncio.get_running_loop().call_later(EXPIRY_INTERVAL, self._expire)

    def _fail_in_flight(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        for in_flight in pending.values():
            if not in_flight.future.done():
                in_flight.future.set_result(why)
        self._returned.clear()

    # --- the connection ------------------------------------------------------------

    async def _keep_connected(self) -> None:
        """Connect to the first URL that answers; when the connection is lost, start again
        from the first URL (the preferred one): at once if the connection had lasted, after
        the back-off delay if it was lost soon after it opened or no URL answered."""
        delay = self.settings.reconnect_min
        while not self._closing:
            if await self._serve_one_connection():
                delay = self.settings.reconnect_min
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max)

    async def _serve_one_connection(self) -> bool:
        """Hold one connection until it is lost: True if it lasted ``STABLE_AFTER``."""
        for name, parameters in self._parameters:
            try:
                await self._connect(parameters)
            except (BrokerError, TimeoutError, OSError) as error:
                self._report(
                    logging.WARNING, "amqp_broker_unusable", broker=name, why=_reason(error)
                )
                self._disconnect("connect failed")
                continue
            self.broker = name
            self._report(logging.INFO, "amqp_connected", broker=name)
            opened_at = time.monotonic()
            self._up.set()
            self._drain_wake.set()
            assert self._lost is not None
            why = await self._lost
            self._up.clear()
            self._fail_in_flight(f"connection lost: {why}")
            self._disconnect(why)
            self._report(logging.WARNING, "amqp_connection_lost", broker=name, why=why)
            return time.monotonic() - opened_at >= STABLE_AFTER
        return False

    async def _connect(self, parameters: pika.URLParameters) -> None:
        self._lost = asyncio.get_running_loop().create_future()
        self._blocked = False
        self._next_tag = 1
        async with asyncio.timeout(self.settings.connect_timeout):
            self._connection = await open_connection(parameters, self._on_connection_closed)
        async with asyncio.timeout(SETUP_TIMEOUT):
            await self._set_up(self._connection)

    async def _set_up(self, connection: Any) -> None:
        """Channels, confirm mode, topology: on a busy broker, declaring quorum queues can
        take longer than opening the connection."""
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        channel = await self._open_channel(connection)
        await self._call(channel.confirm_delivery, self._on_confirm, callback=None)
        channel.add_on_return_callback(self._on_return)
        await self._declare(channel)
        self._side = await self._open_channel(connection)
        self._side_delay = self.pacing.side_retry_min
        self._channel = channel

    async def _open_channel(self, connection: Any) -> Any:
        channel = await self._call(connection.channel, on_open_callback=None)
        channel.add_on_close_callback(self._on_channel_closed)
        return channel

    async def _declare(self, channel: Any) -> None:
        """The topology of the original Wildboar server: durable direct exchanges, each
        with a default queue of the same name bound with the routing key; ``events``."""
        for name in EXCHANGES:
            exchange = self.settings.exchange(name)
            await self._call(
                channel.exchange_declare, exchange, exchange_type="direct", durable=True
            )
            if self.settings.declare_queues:
                await self._call(
                    channel.queue_declare,
                    exchange,
                    durable=True,
                    arguments=queue_arguments(self.settings),
                )
                await self._call(
                    channel.queue_bind, exchange, exchange, routing_key=self.settings.routing_key
                )
        if self.settings.events:
            await self._call(
                channel.exchange_declare, self.events_exchange, exchange_type="topic", durable=True
            )

    async def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a pika method that reports completion through a callback, and wait for it
        (or for the connection to be lost)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        key = "on_open_callback" if "on_open_callback" in kwargs else "callback"

        def complete(result: Any = None) -> None:
            if not done.done():
                done.set_result(result)

        kwargs[key] = complete
        try:
            method(*args, **kwargs)
        except (pika.exceptions.AMQPError, OSError) as error:
            raise BrokerError(_reason(error)) from None
        assert self._lost is not None
        lost = self._lost
        await asyncio.wait([done, lost], return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            raise BrokerError(lost.result())
        return done.result()

    def _on_connection_closed(self, connection: Any, error: BaseException) -> None:
        if connection is self._connection:
            self._lose(f"connection closed: {_reason(error)}")

    def _on_channel_closed(self, channel: Any, error: BaseException) -> None:
        # A channel of an earlier connection, closing late, must not end the current one.
        if channel.connection is not self._connection:
            return
        if channel is self._side and self._channel is not None:
            self._side_closed(channel, error)
            return
        self._lose(f"channel closed: {_reason(error)}")

    def _side_closed(self, channel: Any, error: BaseException) -> None:
        """The broker closed the side channel: events and rejected records are dropped
        (and said so, once per attempt) until it is opened again, after a back-off; mail
        goes on on the confirm channel."""
        self._side = None
        delay = self._side_delay
        self._side_delay = min(delay * 2, SIDE_RETRY_MAX)
        self._report(
            logging.WARNING,
            "amqp_side_channel_closed",
            broker=self.broker,
            why=_reason(error),
            retry_in=delay,
        )
        connection = self._connection
        loop = asyncio.get_running_loop()
        self._side_retry = loop.call_later(
            delay, lambda: self._tasks_start(self._reopen_side(connection))
        )

    def _tasks_start(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _reopen_side(self, connection: Any) -> None:
        """Open the side channel again and declare its exchanges again (one may have been
        deleted); without waiting: if the broker still refuses, it closes this channel
        too, and ``_side_closed`` backs off further."""
        self._side_retry = None
        if connection is not self._connection or self._closing or self._side is not None:
            return
        with contextlib.suppress(BrokerError):
            channel = await self._open_channel(connection)
            if connection is not self._connection or self._channel is None:
                return
            self._side = channel
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                channel.exchange_declare(self.rejected_exchange, "direct", durable=True)
                if self.settings.events:
                    channel.exchange_declare(self.events_exchange, "topic", durable=True)
            self._report(logging.INFO, "amqp_side_channel_reopened", broker=self.broker)

    def _on_blocked(self, connection: Any, frame: Any) -> None:
        # RabbitMQ says so when a connection publishes during a memory or disk alarm, and
        # holds what it published until the alarm clears: do not keep the senders waiting.
        self._blocked = True
        self._report(logging.WARNING, "amqp_blocked", broker=self.broker, why="resource alarm")
        self._fail_in_flight("blocked by a broker alarm")

    def _on_unblocked(self, connection: Any, frame: Any) -> None:
        self._blocked = False
        self._report(logging.INFO, "amqp_unblocked", broker=self.broker)

    def _lose(self, why: str) -> None:
        self._channel = None
        self._side = None
        self._cancel_side_retry()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(why)

    def _cancel_side_retry(self) -> None:
        if self._side_retry is not None:
            self._side_retry.cancel()
            self._side_retry = None

    def _disconnect(self, why: str) -> None:
        connection, self._connection = self._connection, None
        self._channel = None
        self._side = None
        self._cancel_side_retry()
        if connection is not None and not (connection.is_closed or connection.is_closing):
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close(reply_text=self._masked(why)[:200])

    # --- store and forward -----------------------------------------------------------

    async def _drain_buffer(self) -> None:
        """Publish buffered messages, oldest first, while the broker takes them; remove
        each from the buffer once confirmed. One worker drains at a time (``Spool.lock``)."""
        backoff = self.pacing.drain_idle
        while not self._closing:
            await self._up.wait()
            if not self.usable:  # connected but blocked by an alarm: nothing to try yet
                await asyncio.sleep(self.pacing.drain_idle)
                continue
            try:
                more = await self._drain_pass()
            except (OSError, SpoolError) as error:
                self._report(
                    logging.ERROR, "amqp_drain_failed", buffer=self.buffer_path, why=str(error)
                )
                more = None
            if more:
                backoff = self.pacing.drain_idle
                continue
            if more is None:  # the broker refused (or the buffer failed): back off
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, DRAIN_BACKOFF_MAX)
                continue
            backoff = self.pacing.drain_idle
            self._drain_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.pacing.drain_idle):
                    await self._drain_wake.wait()

    async def _drain_pass(self) -> bool | None:
        """Every message in the buffer now, oldest first, ``DRAIN_WINDOW`` in flight, each
        removed once confirmed. True when all were published (more may have come since),
        None when the broker refused some (the caller backs off), False otherwise.
        The buffer is listed once per pass: a pass costs one read of each file to order
        them and one to publish it."""
        spool = Spool(self.buffer_path)
        try:
            with spool.lock():
                entries, corrupt = await asyncio.to_thread(spool.readable)
                for urn in corrupt:
                    await self._set_aside(spool, urn, CORRUPT_DIR, "is not a valid record")
                if not entries:
                    return False
                published = 0
                for start in range(0, len(entries), DRAIN_WINDOW):
                    if not self.usable:
                        return False
                    window = [e.id for e in entries[start : start + DRAIN_WINDOW]]
                    done, failures = await self._drain_window(spool, window)
                    published += done
                    if failures:
                        self._report(
                            logging.WARNING,
                            "amqp_drain_stopped",
                            published=published,
                            failed=len(failures),
                            why=failures[0],
                        )
                        return None
                self._report(logging.INFO, "amqp_drained", published=published)
                return True
        except SpoolBusy:
            return False  # another worker drains it

    async def _drain_window(self, spool: Spool, urns: list[str]) -> tuple[int, list[str]]:
        """Publish ``urns`` from the buffer: (how many were published, why others not)."""
        messages: list[Message] = []
        for urn in urns:
            try:
                messages.append(await asyncio.to_thread(spool.load, urn))
            except NoSuchMessage:
                continue  # gone since the listing
            except CorruptMessage:
                await self._set_aside(spool, urn, CORRUPT_DIR, "is not a valid record")
        outcomes = await asyncio.gather(*(self.publish(m) for m in messages))
        published, failures = 0, []
        for message, why in zip(messages, outcomes, strict=True):
            if why is None:  # confirmed: the broker has it, the buffer need not
                await asyncio.to_thread(spool.remove, message.email.id)
                self.drained += 1
                published += 1
            elif why == TOO_BIG:  # no retry will ever publish it
                await self._set_aside(spool, message.email.id, HELD_DIR, f"is {TOO_BIG}")
            else:
                failures.append(why)
        return published, failures

    async def _set_aside(self, spool: Spool, urn: str, into: str, why: str) -> None:
        path = await asyncio.to_thread(spool.quarantine, urn, into)
        self._report(logging.ERROR, "amqp_set_aside", message=urn, why=why, path=path)
