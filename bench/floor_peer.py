"""The floor for a Python SMTP server: canned replies on uvloop, nothing else.

Not a mail server: it parses nothing but the verb, checks nothing, keeps nothing, writes no
log. It answers smtp-source's dialogue with the replies a server must send, in one write per
read, so its rate is the most any Python ``asyncio.Protocol`` on uvloop can reach here with
one write per reply: the price of the event loop, the callbacks and the socket calls, paid
by wildboar too, before it does any work of its own. ``bench.server`` runs it beside
wildboar (``--processes`` 1 and 2, like ``--workers``) to show how much of wildboar's cost
is its own.

With ``--amqp-url``, each message's content (as received, still dot-stuffed) is published
to ``--exchange`` with ``--routing-key`` (persistent, mandatory, confirmed; one pika
asyncio connection per process, every session's publishes in flight on it at once) and
the ``250`` waits for the broker's ack (a nack or a return gets ``451``): the least any
Python server must do to hand mail durably to RabbitMQ (``bench.amqp`` runs it).
It assumes a client that waits for each reply, as smtp-source does.

    python -m bench.floor_peer --port 2527 --processes 2
    python -m bench.floor_peer --port 2527 --amqp-url amqp://guest:guest@127.0.0.1/%2F \
        --exchange EXCHANGE --routing-key after.smtp
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pika
import uvloop
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.spec import Basic

GREETING = b"220 floor.example ESMTP\r\n"
EHLO = b"250-floor.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n"
OK = b"250 2.0.0 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
BYE = b"221 2.0.0 Bye\r\n"
DEFERRED = b"451 4.3.0 Not confirmed by the broker\r\n"
END_OF_DATA = b"\r\n.\r\n"


class Publisher:
    """One confirm-mode channel; ``publish(body, done)`` calls ``done(ok)`` on the
    broker's ack (ok unless the message was returned) or nack."""

    def __init__(self, url: str, exchange: str, routing_key: str) -> None:
        self.url, self.exchange, self.routing_key = url, exchange, routing_key
        self.channel: pika.channel.Channel | None = None
        self.waiting: dict[int, Callable[[bool], None]] = {}
        self.returned: set[int] = set()
        self.tag = 0

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[AsyncioConnection] = loop.create_future()
        AsyncioConnection(
            pika.URLParameters(self.url),
            on_open_callback=opened.set_result,
            on_open_error_callback=lambda _, error: opened.set_exception(
                RuntimeError(f"AMQP: {error!r}")
            ),
            custom_ioloop=loop,
        )
        connection = await opened
        ready: asyncio.Future[pika.channel.Channel] = loop.create_future()
        connection.channel(on_open_callback=ready.set_result)
        channel = await ready
        confirming: asyncio.Future[None] = loop.create_future()
        channel.confirm_delivery(self._on_confirm, lambda _: confirming.set_result(None))
        channel.add_on_return_callback(self._on_return)
        await confirming
        self.channel = channel

    def publish(self, body: bytes, done: Callable[[bool], None]) -> None:
        assert self.channel is not None
        self.tag += 1
        self.waiting[self.tag] = done
        properties = pika.BasicProperties(delivery_mode=2, message_id=str(self.tag))
        self.channel.basic_publish(
            self.exchange, self.routing_key, body, properties, mandatory=True
        )

    def _on_return(self, channel: object, method: object, properties: Any, body: bytes) -> None:
        self.returned.add(int(properties.message_id))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ack = isinstance(method, Basic.Ack)
        tags = [method.delivery_tag]
        if method.multiple:
            tags = [t for t in self.waiting if t <= method.delivery_tag]
        for tag in tags:
            done = self.waiting.pop(tag, None)
            if done is not None:
                done(ack and tag not in self.returned)
            self.returned.discard(tag)


class Canned(asyncio.Protocol):
    def __init__(self, publisher: Publisher | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.in_data = False
        self.publisher = publisher
        self.content: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(GREETING)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.pending + data if self.pending else data
        replies: list[bytes] = []
        while buffer:
            if self.in_data:
                buffer, complete = self._content(buffer)
                if not complete:
                    break
                if self.publisher is None:
                    replies.append(OK)
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                break
            verb = buffer[:4].upper()
            buffer = buffer[end + 2 :]
            if verb == b"DATA":
                self.in_data = True
                buffer = b"\r\n" + buffer  # so that an empty body's "." is an end marker
                replies.append(GO_AHEAD)
            elif verb in (b"EHLO", b"HELO"):
                replies.append(EHLO)
            elif verb == b"QUIT":
                self.transport.write(b"".join([*replies, BYE]))
                self.transport.close()
                return
            else:
                replies.append(OK)
        self.pending = buffer
        if replies:
            self.transport.write(b"".join(replies))

    def _content(self, buffer: bytes) -> tuple[bytes, bool]:
        """Consume content up to its end marker: (what is left, whether it ended)."""
        end = buffer.find(END_OF_DATA)
        if end < 0:
            if self.publisher is not None:
                self.content.append(buffer[:-4])
            return buffer[-4:], False  # the end marker may straddle two reads
        if self.publisher is not None:
            self.content.append(buffer[:end])
            self._publish()
        self.in_data = False
        return buffer[end + len(END_OF_DATA) :], True

    def _publish(self) -> None:
        assert self.publisher is not None and self.transport is not None
        body = b"".join(self.content)[2:]  # less the CRLF put before the content
        self.content.clear()
        transport = self.transport
        self.publisher.publish(body, lambda ok: transport.write(OK if ok else DEFERRED))


async def serve(sock: socket.socket, amqp: tuple[str, str, str] | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    publisher = None
    if amqp is not None:
        publisher = Publisher(*amqp)
        await publisher.connect()
    server = await loop.create_server(lambda: Canned(publisher), sock=sock, backlog=1024)
    await stop.wait()
    server.close()


def run(main: Coroutine[Any, Any, None]) -> None:
    """``main`` on a uvloop event loop (``uvloop.run`` is 0.18's; Debian 12 has 0.17)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_peer")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--amqp-url", help="publish every message here before its 250")
    parser.add_argument("--exchange", default="")
    parser.add_argument("--routing-key", default="after.smtp")
    args = parser.parse_args(argv)
    amqp = (args.amqp_url, args.exchange, args.routing_key) if args.amqp_url else None
    sock = socket.create_server((args.host, args.port), backlog=1024)
    sock.setblocking(False)
    children = []
    for _ in range(args.processes - 1):
        pid = os.fork()
        if pid == 0:
            run(serve(sock, amqp))
            os._exit(0)
        children.append(pid)
    try:
        run(serve(sock, amqp))
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
