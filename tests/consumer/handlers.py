"""Handlers for the runtime's tests, written as a Lambda function would be: plain dicts,
the helpers of ``wildboar.consumer``, nothing else of wildboar."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from wildboar import consumer

Event = dict[str, Any]
#: Calls per message id in this process (the flaky handler's memory).
_calls: dict[str, int] = {}


def passthrough(event: Event, context: Any) -> Event:
    return consumer.add_verdict(event, context.function_name, "pass")


async def passthrough_async(event: Event, context: Any) -> Event:
    await asyncio.sleep(0.01)
    return consumer.add_verdict(event, context.function_name, "pass", kind="async")


def sleepy(event: Event, context: Any) -> Event:
    time.sleep(float(os.environ.get("TEST_HANDLER_SLEEP", "0.05")))
    return passthrough(event, context)


def rejecting(event: Event, context: Any) -> Event:
    return consumer.reject(event, context.function_name, "3 scam words", words="3")


def dropping(event: Event, context: Any) -> None:
    return None


def raising(event: Event, context: Any) -> Event:
    raise RuntimeError(f"no luck with {context.aws_request_id}")


def flaky(event: Event, context: Any) -> Event:
    """Fails the first call for each message, passes the next."""
    calls = _calls[context.aws_request_id] = _calls.get(context.aws_request_id, 0) + 1
    if calls == 1:
        raise ConnectionError("the first call fails")
    return passthrough(event, context)


def slow(event: Event, context: Any) -> Event:
    time.sleep(2.0)
    return event


async def slow_async(event: Event, context: Any) -> Event:
    await asyncio.sleep(2.0)
    return event


def wrong_result(event: Event, context: Any) -> Any:
    return {"email": "not a record"}


def context_echo(event: Event, context: Any) -> Event:
    """The context's attributes, as a verdict's details."""
    time.sleep(0.05)
    return consumer.add_verdict(
        event,
        context.function_name,
        "pass",
        request_id=context.aws_request_id,
        version=context.function_version,
        arn=context.invoked_function_arn,
        memory=context.memory_limit_in_mb,
        remaining=str(context.get_remaining_time_in_millis()),
        group=context.log_group_name,
        stream=context.log_stream_name,
        identity=repr(context.identity),
        client_context=repr(context.client_context),
    )
