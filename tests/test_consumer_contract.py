"""The handler contract's helpers (wildboar.consumer): plain dicts in and out, and what
they add decodes with the message schema."""

from __future__ import annotations

import json

import msgspec

from wildboar import consumer
from wildboar import message as M

from .records import make_message


def event_of(message: M.Message) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(M.encode(message))
    return decoded


def test_a_verdict_and_a_rejection_decode_with_the_schema() -> None:
    message = make_message()
    event = event_of(message)
    assert consumer.content(event) == message.email.data
    tagged = consumer.add_verdict(event, "spf", "pass", "sender allowed", ip="192.0.2.1")
    assert consumer.verdicts(event) == []  # the input is left as it was
    refused = consumer.reject(tagged, "scam", "3 scam words")
    decoded = M.decode(json.dumps(refused).encode())
    assert [(v.stage, v.result) for v in decoded.verdicts] == [("spf", "pass"), ("scam", "reject")]
    assert decoded.verdicts[0].details == {"ip": "192.0.2.1"}
    assert decoded.rejection == M.Rejection(
        code=550, enhanced="5.7.1", text="3 scam words", stage="scam"
    )
    assert msgspec.structs.replace(decoded, verdicts=[], rejection=None) == message
