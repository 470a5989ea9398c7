"""Message records built the way a worker builds them, and a uvloop runner, for tests of
the handoffs."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from wildboar import message as M
from wildboar import smtp

T = TypeVar("T")
NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a uvloop event loop, as the worker does."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def make_message(
    sender: str = "alice@example.org",
    to: tuple[str, ...] = ("bob@example.net",),
    content: bytes = b"Subject: hello\r\n\r\nHello, Bob.\r\n",
    when: datetime.datetime = NOW,
) -> M.Message:
    """A record built the way the worker builds one (see ``wildboar.cli.Replay.accept``)."""
    envelope = smtp.Envelope(
        helo="client.example.com",
        protocol="ESMTP",
        sender=sender,
        mail=smtp.MailParams(body="8BITMIME"),
        recipients=tuple(smtp.Recipient(address) for address in to),
        size=len(content),
        chunked=False,
    )
    message_id = M.new_urn()
    received = smtp.received_header(
        envelope,
        by="mx.example.org",
        client_address="192.0.2.10",
        when=NOW,
        id=message_id.removeprefix("urn:uuid:"),
    )
    return M.Message(
        server=M.Server(id=M.new_urn(), creation_time=NOW, hostname="mx.example.org"),
        connection=M.Connection(
            id=M.new_urn(),
            creation_time=NOW,
            remote=M.Remote(family="ipv4", address="192.0.2.10", port=49152),
            local=M.Local(address="127.0.0.1", port=2525),
        ),
        transaction=M.Transaction(
            id=M.new_urn(), creation_time=NOW, helo_name="client.example.com", protocol="ESMTP"
        ),
        email=M.build_email(
            envelope, id=message_id, creation_time=when, received=received, content=content
        ),
    )
