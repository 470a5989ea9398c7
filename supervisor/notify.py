"""Reporting to systemd with sd_notify(3).

Owns: ``READY=1``, ``RELOADING=1`` (with ``MONOTONIC_USEC``, as ``Type=notify-reload`` wants),
``STOPPING=1``, ``STATUS=`` and ``WATCHDOG=1``, through the ``sdnotify`` package, and the
watchdog interval (half of ``WATCHDOG_USEC``, when ``WATCHDOG_PID`` is unset or ours).
Without ``NOTIFY_SOCKET`` every call does nothing.
Must not know: when to report (the arbiter decides).
SECURITY: connects to the notification socket once, before the privilege drop (the socket
stays usable afterwards); the variables are removed from the workers' environment by the
caller, so no worker can speak to systemd in the supervisor's name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Final, Protocol

import sdnotify  # type: ignore[import-untyped,unused-ignore]

NOTIFY_ENVIRONMENT: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between ``WATCHDOG=1``, or None when systemd watches nothing."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", str(os.getpid()))
    if not usec.isdigit() or int(usec) == 0 or pid != str(os.getpid()):
        return None
    return int(usec) / 2 / 1_000_000


class _Sender(Protocol):
    def notify(self, state: str) -> None: ...


class Notifier:
    def __init__(self, environ: Mapping[str, str]) -> None:
        self._notifier: _Sender | None = None
        if environ.get("NOTIFY_SOCKET"):
            self._notifier = sdnotify.SystemdNotifier()
        self.watchdog_interval = watchdog_interval(environ)

    def _send(self, *assignments: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(assignments))

    def ready(self) -> None:
        self._send("READY=1")

    def reloading(self) -> None:
        self._send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")
