"""Finding a handler and calling it as a Python Lambda is called.

Owns: ``MODULE:FUNCTION`` (``NAME`` alone: ``wildboar.consumer.NAME:handler``), calling a
handler within its time budget (sync handlers in a thread pool, async ones, and sync ones
that return an awaitable, on the loop), and what its result means (``Route``): a record
for the accepted or the rejected exchange, or nothing (``None``: drop).
Must not know: brokers, retries.
Security: the handler is code the operator named; its result is untrusted input all the
same: it is validated against the message schema before it is published, so no stage
can pass on a record the next one could not decode.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import msgspec

from ..message import Message, encode
from .context import LambdaContext

Handler = Callable[[dict[str, Any], LambdaContext], Any]
#: ``wildboar consume NAME``: a shipped stage.
SHIPPED_PACKAGE = "wildboar.consumer"


class HandlerNotFound(Exception):
    """The handler named on the command line cannot be loaded (one line)."""


def load_handler(spec: str) -> Handler:
    """``package.module:function``, or a shipped stage's name."""
    module_name, colon, function_name = spec.partition(":")
    if not colon:
        module_name, function_name = f"{SHIPPED_PACKAGE}.{spec}", "handler"
    if not module_name or not function_name:
        raise HandlerNotFound(f"{spec!r}: give MODULE:FUNCTION, or a shipped stage's name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise HandlerNotFound(f"{spec!r}: cannot import {module_name}: {error}") from None
    handler: Any = module
    for part in function_name.split("."):
        handler = getattr(handler, part, None)
        if handler is None:
            raise HandlerNotFound(f"{spec!r}: {module_name} has no {function_name}")
    if not callable(handler):
        raise HandlerNotFound(f"{spec!r}: {function_name} is not callable")
    found: Handler = handler
    return found


class Overran(TimeoutError):
    """The handler ran past its time budget (a failure, like an exception)."""


async def call(
    handler: Handler,
    event: dict[str, Any],
    context: LambdaContext,
    *,
    timeout: float,
    threads: concurrent.futures.ThreadPoolExecutor,
    on_overrun: Callable[[concurrent.futures.Future[Any]], None],
) -> Any:
    """``handler(event, context)`` within ``timeout`` seconds; raises what it raises, or
    ``Overran``. A sync handler past its budget cannot be stopped: its thread is handed
    to ``on_overrun`` and its result, when it comes, ignored."""
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            if inspect.iscoroutinefunction(handler):
                return await handler(event, context)
            future = threads.submit(handler, event, context)
            try:
                result = await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                if not future.cancel():
                    on_overrun(future)
                raise
            return (await result) if inspect.isawaitable(result) else result
    except TimeoutError:
        if not scope.expired():
            raise  # the handler's own
        raise Overran(f"ran past its {timeout:g} s budget") from None


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a handler's result goes: ``exchange`` is ``accepted`` or ``rejected``."""

    rejected: bool
    message: Message

    def body(self, content_type: str) -> bytes:
        return encode(self.message, content_type)


def route(result: Any) -> Route | None:
    """What the handler's result means: None drops the record; a dict is a record (its
    JSON form: base64 ``data``, ISO times; ``bytes`` data also does) for the accepted
    exchange, or for the rejected one when it carries a ``rejection``. Anything else, or
    a dict the schema refuses, raises (a failure of the handler)."""
    if result is None:
        return None
    if not isinstance(result, dict):
        raise TypeError(f"the handler returned {type(result).__name__}, not the event or None")
    message = msgspec.convert(result, Message, strict=False)
    return Route(rejected=message.rejection is not None, message=message)
