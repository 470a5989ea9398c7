"""A consumer's connection to RabbitMQ: one pika asyncio connection, two channels.

Owns: connecting to the first of ``[amqp] urls`` that answers, declaring a ``Topology``,
consuming one queue with manual acks and a prefetch window, publishing with confirms and
``mandatory`` (a ``basic.return`` or ``basic.nack`` is a failure, as is no confirm within
``confirm_timeout``), acking and nacking deliveries of the current connection only, and
saying when the connection is lost (``lost``).
Must not know: handlers, records, retries (``runtime``).
Security: credentials never leave this module: brokers are named by host, port and vhost
(``config.describe_url``), and whatever pika or the broker says goes through
``config.mask_secrets``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pika.spec

from ..config import Amqp, describe_url, mask_secrets
from ..pika_link import BrokerError, open_connection, reason
from .topology import Topology

# pika logs each failed connection attempt at ERROR, several lines each; the runtime
# says once, in one line, what failed and what it does about it.
logging.getLogger("pika").setLevel(logging.CRITICAL)

#: Opening channels, declaring the topology and starting to consume, once connected.
SETUP_TIMEOUT = 60.0
#: How long ``close`` waits for the broker to acknowledge the connection's close.
CLOSE_WAIT = 2.0


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One message as the broker delivered it to this consumer."""

    channel: Any
    tag: int
    redelivered: bool
    properties: pika.spec.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


@dataclasses.dataclass
class _Pending:
    future: asyncio.Future[str | None]  # None: confirmed; else why not
    message_id: str


class Broker:
    """Connected (``connect``) or not; bound to the loop that connects it."""

    def __init__(self, settings: Amqp, connection_name: str) -> None:
        self.settings = settings
        self.connection_name = self.masked(connection_name)
        self.name = ""  # host:port/vhost of the broker in use
        self._connection: Any = None
        self._consuming: Any = None  # the channel deliveries come on
        self._publishing: Any = None  # the channel in confirm mode
        self._consumer_tag = ""
        self._next_tag = 1
        self._pending: dict[int, _Pending] = {}
        self._returned: set[str] = set()
        self._queue = ""
        self._closing_connection: Any = None
        self.lost: asyncio.Future[str] | None = None

    def masked(self, text: str) -> str:
        return mask_secrets(text, self.settings.urls)

    # --- connecting -----------------------------------------------------------------

    async def connect(self) -> None:
        """Connect to the first broker of ``urls`` that answers; BrokerError naming each."""
        failures: list[str] = []
        for url in self.settings.urls:
            try:
                parameters = self._parameters(url)
                async with asyncio.timeout(self.settings.connect_timeout):
                    await self._open(parameters)
                self.name = describe_url(url)
                return
            except (BrokerError, TimeoutError, OSError, ValueError) as error:
                failures.append(
                    f"{describe_url(url)}: {reason(error) if str(error) else 'timed out'}"
                )
                self.disconnect("connect failed")
        raise BrokerError("; ".join(self.masked(f) for f in failures))

    def _parameters(self, url: str) -> pika.URLParameters:
        try:
            parameters = pika.URLParameters(url)
        except Exception as error:  # anything pika's URL parsing raises: one line
            raise BrokerError(f"bad broker URL: {self.masked(str(error))}") from None
        parameters.heartbeat = self.settings.heartbeat
        parameters.connection_attempts = 1
        parameters.socket_timeout = self.settings.connect_timeout
        parameters.client_properties = {
            "connection_name": self.connection_name,
            "product": "wildboar",
        }
        return parameters

    async def _open(self, parameters: pika.URLParameters) -> None:
        self.lost = asyncio.get_running_loop().create_future()
        self._next_tag = 1
        self._connection = await open_connection(parameters, self._on_connection_closed)

    async def set_up(self, topology: Topology, queue: str, prefetch: int) -> None:
        """Declare ``topology``; open the confirm channel; set the prefetch window.
        Consuming starts with ``consume``."""
        async with asyncio.timeout(SETUP_TIMEOUT):
            consuming = await self._channel()
            await self._declare(consuming, topology)
            await self.call(consuming.basic_qos, prefetch_count=prefetch)
            publishing = await self._channel()
            await self.call(publishing.confirm_delivery, self._on_confirm, callback=None)
            publishing.add_on_return_callback(self._on_return)
            self._consuming, self._publishing = consuming, publishing
            self._queue = queue

    async def consume(self, on_delivery: Callable[[Delivery], None]) -> None:
        channel = self._consuming

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            on_delivery(Delivery(ch, method.delivery_tag, method.redelivered, properties, body))

        tag = f"{self.connection_name} {self._queue}"[:255]
        self._consumer_tag = tag
        await self.call(channel.basic_consume, self._queue, on_message, consumer_tag=tag)

    async def cancel(self) -> None:
        """Stop deliveries (those already here stay ours to ack or nack)."""
        channel = self._consuming
        if channel is not None and channel.is_open and self._consumer_tag:
            with contextlib.suppress(BrokerError, TimeoutError):
                async with asyncio.timeout(5):
                    await self.call(channel.basic_cancel, self._consumer_tag)

    async def _channel(self) -> Any:
        channel = await self.call(self._connection.channel, on_open_callback=None)
        channel.add_on_close_callback(self._on_channel_closed)
        return channel

    async def _declare(self, channel: Any, topology: Topology) -> None:
        for exchange in topology.exchanges:
            await self.call(
                channel.exchange_declare, exchange.name, exchange_type=exchange.type, durable=True
            )
        for queue in topology.queues:
            await self.call(
                channel.queue_declare, queue.name, durable=True, arguments=queue.arguments
            )
        for binding in topology.bindings:
            await self.call(
                channel.queue_bind,
                binding.queue,
                binding.exchange,
                routing_key=binding.routing_key,
            )

    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a pika method that reports completion through a callback, and wait for
        it, or for the connection to be lost (BrokerError)."""
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
            raise BrokerError(self.masked(reason(error))) from None
        lost = self.lost
        assert lost is not None
        await asyncio.wait([done, lost], return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            done.cancel()
            raise BrokerError(lost.result())
        return done.result()

    # --- deliveries ------------------------------------------------------------------

    def owns(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` can still be acked: it came on the current channel."""
        channel = delivery.channel
        return channel is self._consuming and channel is not None and channel.is_open

    def ack(self, delivery: Delivery) -> bool:
        if not self.owns(delivery):
            return False
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            delivery.channel.basic_ack(delivery.tag)
            return True
        return False

    def nack(self, delivery: Delivery) -> None:
        """Give ``delivery`` back to the queue, for this or another consumer."""
        if self.owns(delivery):
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                delivery.channel.basic_nack(delivery.tag, requeue=True)

    # --- publishing ------------------------------------------------------------------

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties
    ) -> str | None:
        """Publish and wait for the broker's confirm: None once confirmed, else why not."""
        channel = self._publishing
        if channel is None or not channel.is_open:
            return "not connected"
        loop = asyncio.get_running_loop()
        pending = _Pending(loop.create_future(), properties.message_id or "")
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        self._returned.discard(pending.message_id)
        try:
            channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        except (pika.exceptions.AMQPError, OSError) as error:
            return self.masked(reason(error))
        self._pending[tag] = pending
        try:
            async with asyncio.timeout(self.settings.confirm_timeout):
                return await pending.future
        except TimeoutError:
            return f"no confirm within {self.settings.confirm_timeout:g} s"
        finally:
            self._pending.pop(tag, None)

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # The broker returns an unroutable message before it confirms it.
        self._returned.add(properties.message_id or "")

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = (
            [t for t in self._pending if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        nacked = isinstance(method, pika.spec.Basic.Nack)
        for tag in tags:
            pending = self._pending.pop(tag, None)
            if pending is None or pending.future.done():
                continue
            if nacked:
                pending.future.set_result("refused by the broker (basic.nack)")
            elif pending.message_id in self._returned:
                self._returned.discard(pending.message_id)
                pending.future.set_result("unroutable: no queue bound for it (basic.return)")
            else:
                pending.future.set_result(None)

    # --- losing and closing ----------------------------------------------------------

    def _on_connection_closed(self, connection: Any, error: BaseException) -> None:
        if connection is self._connection:
            self._lose(f"connection closed: {reason(error)}")

    def _on_channel_closed(self, channel: Any, error: BaseException) -> None:
        if channel.connection is self._connection and channel in (
            self._consuming,
            self._publishing,
        ):
            self._lose(f"channel closed: {reason(error)}")

    def _lose(self, why: str) -> None:
        self._consuming = self._publishing = None
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_result(f"connection lost: {self.masked(why)}")
        self._pending.clear()
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(self.masked(why))

    def disconnect(self, why: str) -> None:
        connection, self._connection = self._connection, None
        self._lose(why)
        if connection is not None and not (connection.is_closed or connection.is_closing):
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close(reply_text=self.masked(why)[:200])
        self._closing_connection = connection

    async def close(self) -> None:
        """Close the connection and wait (a little) for the broker's close-ok."""
        self.disconnect("consumer stopping")
        connection = self._closing_connection
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_WAIT
        while connection is not None and not connection.is_closed and loop.time() < deadline:
            await asyncio.sleep(0.01)
