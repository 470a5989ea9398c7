"""Message records built the way a worker builds them, and a uvloop runner, for tests of
the handoffs."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from wildboar import message as M
from wildboar import record as R
from wildboar import smtp

T = TypeVar("T")
NOW = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a uvloop event loop, as the worker does."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def message_of(
    envelope: smtp.Envelope,
    content: bytes,
    *,
    when: datetime.datetime = NOW,
    family: R.Family = "ipv4",
    remote: R.Endpoint = ("192.0.2.10", 49152),
    local: R.Endpoint = ("127.0.0.1", 2525),
) -> M.Message:
    """The record of ``envelope`` and ``content``, built as the worker builds one
    (``wildboar.record.build_message``), by mx.example.org at ``when``."""
    return R.build_message(
        envelope,
        content,
        server=R.build_server("mx.example.org", when=NOW),
        connection=R.build_connection(family, remote, local, when=NOW),
        transaction=(M.new_urn(), NOW),
        when=when,
    )


def make_message(
    sender: str = "alice@example.org",
    to: tuple[str, ...] = ("bob@example.net",),
    content: bytes = b"Subject: hello\r\n\r\nHello, Bob.\r\n",
    when: datetime.datetime = NOW,
) -> M.Message:
    """A record of a message from ``sender`` to ``to``, as the worker builds one."""
    envelope = smtp.Envelope(
        helo="client.example.com",
        protocol="ESMTP",
        sender=sender,
        mail=smtp.MailParams(body="8BITMIME"),
        recipients=tuple(smtp.Recipient(address) for address in to),
        size=len(content),
        chunked=False,
    )
    return message_of(envelope, content, when=when)
