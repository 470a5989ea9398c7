"""The supervisor's own log: one JSON object per line on stderr.

Owns: the record format ``{"time", "level", "event", "component": "supervisor", ...fields}``;
``time`` is UTC, RFC 3339 with milliseconds. Workers share stderr but write their own lines.
Must not know: any logging framework (none is used), or journald (systemd captures stderr).
SECURITY: fields come from the supervisor's state and from validated worker messages;
``json.dumps`` escapes control characters, so one record is always exactly one line, and a
record is written with one ``write(2)`` so that lines of concurrent processes do not interleave
(up to PIPE_BUF bytes).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Final, Literal

Level = Literal["info", "warning", "error"]
# Workers log to the same stderr, some with the same event names (worker_ready): say whose.
COMPONENT: Final = {"component": "supervisor"}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_record(level: Level, event: str, fields: dict[str, object]) -> bytes:
    record: dict[str, object] = {"time": _now(), "level": level, "event": event, **COMPONENT}
    record.update(fields)
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()


def log(event: str, level: Level = "info", /, **fields: object) -> None:
    """Write one record to stderr; a closed or broken stderr never stops the supervisor."""
    data = format_record(level, event, fields)
    try:
        while data:
            data = data[os.write(2, data) :]
    except OSError:
        pass
