"""wildboar.handoff: delivery targets behind one interface (DESIGN.md "Handoff: 250 means
durable").

Owns: the ``Handoff`` interface and ``Delivery`` outcome (``base``), and the targets:
``spool`` (files in a local directory, the default), ``amqp`` (``AmqpHandoff``: RabbitMQ,
persistent messages with publisher confirms, optionally a spool as store-and-forward
buffer), ``lmtp`` (``LmtpHandoff``: an MDA over LMTP, also asked at RCPT time whether a
recipient is deliverable) and ``discard`` (benchmarks only). ``AmqpHandoff`` and
``LmtpHandoff`` are imported on first use (``wildboar.handoff.AmqpHandoff``), not with the
package: every ``wildboar`` command imports it, ``serve`` as root, and none of them needs
pika or the LMTP client.
Must not know: SMTP sessions and sockets; the worker calls ``start``, ``deliver`` and
``close`` and turns ``combine``'s result into the reply after DATA/BDAT LAST.
Security: targets never put exception text into a reply; see each module's header.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .base import (
    DELIVERED,
    INSUFFICIENT_STORAGE,
    LOCAL_PROBLEM,
    Delivery,
    Handoff,
    HandoffStartError,
    combine,
    failed,
    local_failure,
)
from .discard import DiscardHandoff
from .spool import (
    BadMessageId,
    Entry,
    NoSuchMessage,
    Spool,
    SpoolBusy,
    SpoolError,
    SpoolHandoff,
    SpoolStatistics,
)

if TYPE_CHECKING:
    from .amqp import AmqpHandoff
    from .lmtp import LmtpHandoff

#: Exported, imported on first use: name -> submodule.
_LAZY = {"AmqpHandoff": "amqp", "LmtpHandoff": "lmtp"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DELIVERED",
    "INSUFFICIENT_STORAGE",
    "LOCAL_PROBLEM",
    "AmqpHandoff",
    "BadMessageId",
    "Delivery",
    "DiscardHandoff",
    "Entry",
    "Handoff",
    "HandoffStartError",
    "LmtpHandoff",
    "NoSuchMessage",
    "Spool",
    "SpoolBusy",
    "SpoolError",
    "SpoolHandoff",
    "SpoolStatistics",
    "combine",
    "failed",
    "local_failure",
]
