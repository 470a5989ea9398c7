"""``wildboar consume`` in a child process, as an operator runs it, against a test's own
corner of a RabbitMQ (``tests.amqp.broker``: the machine's, or a private node's): its JSON
log lines collected, records put in and taken out with a blocking pika connection."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pika

from tests.amqp.broker import Broker
from wildboar import message as M
from wildboar.consumer.topology import ACCEPTED, REJECTED

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = "tests.consumer.handlers"


class Consumer:
    def __init__(
        self,
        broker: Broker,
        handler: str,
        stage: str,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        for queue in (f"stage.{stage}", f"dead.{stage}"):
            if broker.name(queue) not in broker.queues:
                broker.queues.append(broker.name(queue))
        argv = [sys.executable, "-m", "wildboar.cli", "consume", handler, "--stage", stage]
        argv += ["--pythonpath", str(ROOT), "--log-format", "json", "--backoff", "0.05"]
        argv += ["--hostname", "consumer.test.example", *args]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WILDBOAR_")}
        environ.update(
            WILDBOAR_AMQP_PREFIX=broker.prefix,
            WILDBOAR_AMQP_URLS=broker.url,
            WILDBOAR_AMQP_RECONNECT_MIN="0.1",
            WILDBOAR_AMQP_RECONNECT_MAX="0.5",
            WILDBOAR_CONFIG="/dev/null",
        )
        environ.update(env or {})
        self.logs: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
            env=environ,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):
            for line in self.proc.stderr:
                with self._changed:
                    self.stderr.append(line)
                    with contextlib.suppress(ValueError):
                        self.logs.append(json.loads(line))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def events(self, event: str) -> list[dict[str, Any]]:
        with self._changed:
            return [r for r in self.logs if r.get("event") == event]

    def wait_for(self, event: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self.logs if r.get("event") == event]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, (
                    f"{len(found)} of {count} {event}: " + "".join(self.stderr)[-4000:]
                )
                self._changed.wait(min(left, 0.2) if left > 0 else 0.01)

    def connected(self) -> Consumer:
        self.wait_for("consumer_connected", timeout=60)
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@contextlib.contextmanager
def consuming(
    broker: Broker, handler: str, stage: str, *args: str, **kw: Any
) -> Iterator[Consumer]:
    """A consumer of ``tests.consumer.handlers.<handler>`` (or ``MODULE:FUNC``), connected."""
    spec = handler if ":" in handler else f"{HANDLERS}:{handler}"
    running = Consumer(broker, spec, stage, *args, **kw)
    try:
        yield running.connected()
    finally:
        running.kill()


def collect(broker: Broker, after: str, name: str = "out") -> str:
    """A queue of this test's, bound to the accepted exchange with ``after.<after>``."""
    declare_exchanges(broker)
    queue = broker.declare_queue(name)
    broker.bind(queue, broker.name(ACCEPTED), f"after.{after}")
    return queue


def declare_exchanges(broker: Broker) -> None:
    for exchange in (ACCEPTED, REJECTED):
        broker.channel.exchange_declare(broker.name(exchange), "direct", durable=True)


def publish(
    broker: Broker,
    messages: Sequence[M.Message],
    content_type: str = M.CONTENT_TYPE_JSON,
    routing_key: str = "after.smtp",
) -> None:
    """As the server publishes them: persistent, ``message_id`` the URN, with confirms."""
    declare_exchanges(broker)
    broker.channel.confirm_delivery()
    for message in messages:
        publish_body(
            broker, M.encode(message, content_type), content_type, message.email.id, routing_key
        )


def publish_body(
    broker: Broker, body: bytes, content_type: str, message_id: str, routing_key: str = "after.smtp"
) -> None:
    broker.channel.basic_publish(
        broker.name(ACCEPTED),
        routing_key,
        body,
        pika.BasicProperties(
            content_type=content_type, delivery_mode=2, message_id=message_id, type="accepted"
        ),
        mandatory=True,
    )
