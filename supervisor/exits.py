"""Exit statuses of the supervisor and of its workers, and the start-up error.

Owns: the numbers a process manager (systemd, a shell, a test) sees, so that none of them is a
bare literal elsewhere.
SECURITY: none; constants only.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
"""A requested stop (TERM/INT) after the workers drained, stragglers killed or not."""

EXIT_FAILURE: Final = 1
"""Could not start (one line on stderr says why), or halted (a ``halted`` log line says why)."""

EXIT_INTERRUPTED: Final = 130
"""Ctrl-C before the signal handlers were installed (start-up only)."""

WORKER_BOOT_ERROR: Final = 3
"""A worker that exits with this status before ``ready`` cannot start at all (bad
configuration, unusable spool): restarting it would only loop, so the supervisor halts."""


class StartupError(Exception):
    """The supervisor cannot start; ``str(error)`` is the one line the operator reads."""
