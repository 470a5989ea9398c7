"""wildboar.handoff: delivery targets behind one interface (DESIGN.md "Handoff: 250 means
durable").

Owns: the ``Handoff`` interface and ``Delivery`` outcome (``base``), and the targets:
``spool`` (files in a local directory, the default) and ``discard`` (benchmarks only).
Must not know: SMTP sessions and sockets; the worker calls ``start``, ``deliver`` and
``close`` and turns ``combine``'s result into the reply after DATA/BDAT LAST.
Security: targets never put exception text into a reply; see each module's header.
"""

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

__all__ = [
    "DELIVERED",
    "INSUFFICIENT_STORAGE",
    "LOCAL_PROBLEM",
    "BadMessageId",
    "Delivery",
    "DiscardHandoff",
    "Entry",
    "Handoff",
    "HandoffStartError",
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
