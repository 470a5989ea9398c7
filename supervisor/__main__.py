"""``python -m supervisor`` / ``wildboar-supervisor``: start-up, then the arbiter's loop.

Owns: the order of start-up, which is the security argument: parse the flags, look up the
run-as user, take the sockets (inherited from systemd, or bound), connect to systemd's
notification socket, drop privileges for good, check that the worker command can run, and only
then start workers. Any start-up error is one line on stderr and exit status 1.
Must not know: the loop's policies (``arbiter``).
SECURITY: the only privileged part is between the first line of ``_start`` and
``drop_privileges``; it reads the user and group databases and
``/proc/sys/kernel/cap_last_cap``, nothing else, and no worker exists yet. Systemd's variables
(``LISTEN_*``, ``NOTIFY_SOCKET``, ``WATCHDOG_*``) are not passed to workers.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .arbiter import Arbiter
from .exits import EXIT_FAILURE, EXIT_INTERRUPTED, StartupError
from .log import log
from .notify import NOTIFY_ENVIRONMENT, Notifier
from .options import PROG, Options, parse_options
from .privileges import drop_privileges, lookup_identity, running_as_root
from .sockets import LISTEN_ENVIRONMENT, Listener, bind_all, socket_activated, take_inherited


def _take_listeners(options: Options) -> list[Listener]:
    if socket_activated(os.environ):
        return take_inherited(os.environ)
    if not options.listen:
        raise StartupError("nothing to listen on: give --listen or use socket activation")
    return bind_all(options.listen)


def _check_worker_command(command: Sequence[str]) -> None:
    """After the drop: can this user run the worker command at all? (Not a crash loop later.)"""
    if shutil.which(command[0]) is None:
        user = f"uid {os.getuid()}"
        raise StartupError(
            f"worker command {command[0]!r} is not found or not executable by {user}"
        )


def _drop_if_root(options: Options) -> tuple[str, dict[str, object]]:
    """Drop root if we are root; the log line (event, fields) that says what happened."""
    if not running_as_root():
        return "privileges_kept", {"uid": os.getuid(), "reason": "not started as root"}
    identity = lookup_identity(options.user, options.group)
    drop_privileges(identity)
    return "privileges_dropped", {"user": identity.user, "uid": identity.uid, "gid": identity.gid}


@dataclass(frozen=True)
class Started:
    options: Options
    listeners: list[Listener]
    notifier: Notifier
    privileges: tuple[str, dict[str, object]]


def _start(argv: Sequence[str]) -> Started:
    """Everything that may fail with one line, in the order that keeps root the shortest."""
    options = parse_options(argv)
    if running_as_root():
        lookup_identity(options.user, options.group)  # an unknown user fails before binding
    listeners = _take_listeners(options)
    notifier = Notifier(os.environ)
    privileges = _drop_if_root(options)
    _check_worker_command(options.worker_command)
    return Started(options, listeners, notifier, privileges)


def _worker_environment() -> dict[str, str]:
    hidden = set(LISTEN_ENVIRONMENT) | set(NOTIFY_ENVIRONMENT)
    return {name: value for name, value in os.environ.items() if name not in hidden}


def _log_start(started: Started) -> None:
    """Logged only once start-up succeeded: a start-up error stays the one line on stderr."""
    event, fields = started.privileges
    log(event, **fields)
    systemd = any(listener.source == "systemd" for listener in started.listeners)
    if systemd and started.options.listen:
        log("listen_ignored", "warning", reason="the sockets come from systemd (LISTEN_FDS)")
    for listener in started.listeners:
        log("listening", **listener.fields())


def run(argv: Sequence[str]) -> int:
    try:
        started = _start(argv)
    except StartupError as error:
        sys.stderr.write(f"{PROG}: {error}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    _log_start(started)
    options = started.options
    log("started", pid=os.getpid(), workers=options.workers, command=list(options.worker_command))
    arbiter = Arbiter(options, started.listeners, started.notifier, _worker_environment())
    return arbiter.run()


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
