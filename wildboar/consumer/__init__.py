"""Consumers behind the server: small stages with the AWS Lambda handler signature
(docs/consumers.md).

A stage is a function ``handler(event, context)``, sync or async, as a Python Lambda is.
``event`` is one message record (``wildboar.message.Message``) as its JSON form decodes:
a ``dict`` with camelCase keys, the content base64 in ``event["email"]["data"]``.
``context`` carries ``aws_request_id`` (the message URN), ``function_name`` (the stage),
``get_remaining_time_in_millis()``, ``log_group_name`` and ``log_stream_name``.

What the handler returns decides the next hop:

- the event (changed or not, e.g. with a verdict added by ``add_verdict``): published to
  ``accepted.inbound.email`` with routing key ``after.<stage>``;
- an event carrying a ``rejection`` (``reject`` sets one): published to
  ``rejected.inbound.email`` with routing key ``after.<stage>``;
- ``None``: dropped, with a log event.

A handler that raises is retried, then dead-lettered; none of this is the handler's
business. ``Retry`` is the exception a handler raises to say so on purpose (a mail store
that answered 4xx, a DNS lookup that timed out): any exception is retried alike; ``Retry``
marks one expected to pass, and its name says so in the log and the dead-letter headers.
The helpers here keep a handler free of wildboar's classes, so that it runs on
AWS Lambda unchanged: they take and give plain dicts.

Owns: the contract above and its helpers (``content``, ``add_verdict``, ``reject``,
``verdicts``, ``Retry``).
Must not know: brokers, queues, retries (``wildboar.consumer.runtime``).
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

__all__ = ["Retry", "add_verdict", "content", "reject", "verdicts"]

Event = dict[str, Any]


class Retry(Exception):
    """A temporary failure: the handler wants the message again later (the runtime retries
    it, then dead-letters it). ``str()`` is one line saying what failed."""


def content(event: Event) -> bytes:
    """The message as received (the Received field wildboar added first)."""
    data = event["email"]["data"]
    return data if isinstance(data, bytes) else base64.b64decode(data)


def verdicts(event: Event) -> list[dict[str, Any]]:
    """The verdicts of the stages the message passed through, in order."""
    found: list[dict[str, Any]] = event.get("verdicts") or []
    return found


def add_verdict(
    event: Event,
    stage: str,
    result: str,
    reason: str | None = None,
    **details: str,
) -> Event:
    """``event`` with one more verdict (the schema's ``Verdict``), stamped now."""
    verdict: dict[str, Any] = {
        "stage": stage,
        "result": result,
        "time": datetime.datetime.now(datetime.UTC).isoformat(),
        "details": {key: str(value) for key, value in details.items()},
    }
    if reason is not None:
        verdict["reason"] = reason
    return {**event, "verdicts": [*verdicts(event), verdict]}


def reject(
    event: Event,
    stage: str,
    reason: str,
    *,
    code: int = 550,
    enhanced: str = "5.7.1",
    **details: str,
) -> Event:
    """``event`` refused by ``stage``: a ``reject`` verdict and a ``rejection`` (the code
    a bounce for it would carry), for the rejected exchange."""
    refused = add_verdict(event, stage, "reject", reason, **details)
    refused["rejection"] = {"code": code, "enhanced": enhanced, "text": reason, "stage": stage}
    return refused
