"""What the AMQP handoff and the consumers share of a pika connection: opening one on the
running event loop, and one line for the log of what failed.

Owns: ``BrokerError``, ``open_connection``, ``reason``.
Must not know: exchanges, queues, publishing (the handoff and the consumer runtime do).
Security: ``reason`` is the failure's own text; callers mask URLs and passwords in it
(``config.mask_secrets``) before it reaches a log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.asyncio_connection import AsyncioConnection


class BrokerError(Exception):
    """A broker operation failed; ``str()`` is for the log, never for a client."""


async def open_connection(
    parameters: pika.URLParameters, on_close: Callable[[Any, BaseException], None]
) -> AsyncioConnection:
    """A connection opened on the running loop; ``BrokerError`` if it cannot be (the
    caller bounds the wait)."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[None] = loop.create_future()

    def on_open(connection: Any) -> None:
        if not opened.done():
            opened.set_result(None)

    def on_open_error(connection: Any, error: BaseException) -> None:
        if not opened.done():
            opened.set_exception(BrokerError(reason(error)))

    connection = AsyncioConnection(
        parameters,
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=on_close,
        custom_ioloop=loop,
    )
    try:
        await opened
    except BaseException:  # not opened, or the caller's deadline passed meanwhile
        if not (connection.is_closed or connection.is_closing):
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
        raise
    return connection


def root_cause(error: BaseException) -> BaseException:
    """pika wraps the failure that matters (a refused connection, say) a few layers deep:
    a workflow failure holding connector failures holding the socket error."""
    for _ in range(6):
        inner = getattr(error, "exceptions", None)
        if inner:
            error = inner[-1]
            continue
        cause = getattr(error, "exception", None)
        if isinstance(cause, BaseException):
            error = cause
            continue
        if error.args and isinstance(error.args[0], BaseException):
            error = error.args[0]
            continue
        break
    return error


def reason(error: BaseException | None) -> str:
    """One line for the log: what failed, without pika's layers."""
    if error is None:
        return "closed"
    if isinstance(error, BrokerError):
        return str(error)
    error = root_cause(error)
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}" if text != type(error).__name__ else text
