"""A test's own corner of the machine's RabbitMQ (127.0.0.1:5672, guest/guest).

Every test gets a unique name prefix, so its exchanges and queues never meet another
test's, even under pytest-xdist; ``cleanup`` deletes them. Messages are read back with
``basic_get`` over a blocking pika connection, as any consumer would see them.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pika
import pika.exceptions
import pytest

from wildboar.config import Amqp
from wildboar.handoff.amqp import EVENTS, EXCHANGES

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: A loopback port where nothing listens: a broker that is down.
DEAD_URL = "amqp://guest:guest@127.0.0.1:1/%2F"


@dataclass
class Got:
    properties: Any
    body: bytes


class Broker:
    """A test's corner of the broker at ``url`` (the machine's, or a private node's)."""

    def __init__(self, url: str = URL) -> None:
        self.url = url
        self.prefix = f"wbt-{uuid.uuid4().hex[:12]}."
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.queues: list[str] = []

    def settings(self, **overrides: Any) -> Amqp:
        """The handoff's settings for this test: its prefix, quick retries."""
        values: dict[str, Any] = {
            "urls": [self.url],
            "prefix": self.prefix,
            "confirm_timeout": 10.0,
            "connect_timeout": 5.0,
            "reconnect_min": 0.1,
            "reconnect_max": 0.5,
        }
        values.update(overrides)
        return msgspec.structs.replace(Amqp(), **values)

    def reconnect(self) -> None:
        """A new connection, for a test whose broker restarted under the old one."""
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            self.connection.close()
        self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = self.connection.channel()

    def name(self, base: str) -> str:
        return self.prefix + base

    def declare_queue(self, base: str, arguments: dict[str, Any] | None = None) -> str:
        queue = self.name(base)
        self.channel.queue_declare(queue, durable=True, arguments=arguments)
        self.queues.append(queue)
        return queue

    def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.channel.queue_bind(queue, exchange, routing_key=routing_key)

    def get(self, queue: str, count: int, timeout: float = 15.0) -> list[Got]:
        """Exactly the ``count`` messages in ``queue`` (acked), waiting up to ``timeout``
        for them; then checks for a moment that no more arrive."""
        got: list[Got] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                self.connection.sleep(0.05)
                continue
            got.append(Got(properties, body))
        self.connection.sleep(0.3)
        extra = self.channel.basic_get(queue, auto_ack=True)
        assert extra[0] is None, f"more than {count} messages in {queue}"
        return got

    def drain(self, queue: str) -> list[Got]:
        """Everything in ``queue`` (acked), once nothing more arrives for a moment."""
        got: list[Got] = []
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 0.5:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                self.connection.sleep(0.05)
                continue
            got.append(Got(properties, body))
            idle_since = time.monotonic()
        return got

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def cleanup(self) -> None:
        if not self.channel.is_open:  # a test's passive declare may have closed it
            self.channel = self.connection.channel()
        names = [self.name(e) for e in EXCHANGES]
        for queue in {*names, *self.queues}:
            self.channel.queue_delete(queue)
        for exchange in [*names, self.name(EVENTS)]:
            self.channel.exchange_delete(exchange)
        self.connection.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    corner = Broker()
    try:
        yield corner
    finally:
        corner.cleanup()


def close_connections(name_part: str) -> int:
    """Close, from the broker's side, every connection whose client named itself with
    ``name_part`` (``rabbitmqctl close_connection``); how many were closed."""
    # The default formatter prints pids as close_connection takes them (JSON does not).
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    closed = 0
    for line in listing.splitlines():
        pid, _, properties = line.partition("\t")
        if name_part in properties:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, "closed by a test"],
                capture_output=True,
                check=True,
                timeout=60,
            )
            closed += 1
    return closed
