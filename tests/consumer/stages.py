"""What the tests of the shipped stages share: events made of real records, as the runtime
hands them over (the JSON form, decoded), a Lambda-style context, and a check that what a
stage returns is still a valid record."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.records import make_message
from wildboar import message as M


class Context:
    """The context a Lambda handler gets (the attributes the runtime's context has)."""

    def __init__(self, function_name: str, request_id: str = "", budget: float = 30.0) -> None:
        self.function_name = function_name
        self.aws_request_id = request_id
        self.log_group_name = f"wildboar/{function_name}"
        self.log_stream_name = "tests"
        self._deadline = time.monotonic() + budget

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def event_of(message: M.Message) -> dict[str, Any]:
    """``message`` as a handler gets it: its JSON form, decoded."""
    event: dict[str, Any] = json.loads(M.encode(message))
    return event


def event(
    content: bytes,
    sender: str = "alice@example.org",
    to: tuple[str, ...] = ("bob@example.net",),
) -> dict[str, Any]:
    return event_of(make_message(sender=sender, to=to, content=content))


def record_of(result: dict[str, Any]) -> M.Message:
    """What a stage returned, decoded with the schema (so it is a valid record)."""
    return M.decode(json.dumps(result).encode())
