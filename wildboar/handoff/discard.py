"""The discard handoff: says ok and throws the message away. For benchmarks only.

Owns: a target that costs nothing, so a benchmark measures the server, not the disk.
Must not know: anything about storage; it keeps nothing.
Security: it makes the server answer ``250`` for mail that is then lost, breaking "250
means durable". It is never a default: the configuration uses it only when it is named,
and start() logs a warning so an operator sees it in the log.
"""

from __future__ import annotations

import logging

from ..message import Message
from .base import DELIVERED, Delivery, Handoff, report


class DiscardHandoff(Handoff):
    name = "discard"

    def __init__(self) -> None:
        self.discarded = 0

    async def start(self) -> None:
        report(
            logging.WARNING,
            "discard_handoff",
            warning="accepted messages are thrown away, not delivered (for benchmarks only;"
            " remove 'discard' from handoff in the configuration)",
        )

    async def deliver(self, message: Message) -> Delivery:
        self.discarded += 1
        return DELIVERED

    async def close(self) -> None:
        return None
