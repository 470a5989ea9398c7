"""``python -m supervisor`` / ``wildboar-supervisor``: start-up, then the arbiter's loop.

Owns: the order of start-up, which is the security argument: close every inherited
descriptor but systemd's sockets, move to ``/``, leave root's terminal behind (``relay``),
parse the flags, look up the run-as user, take the sockets (inherited from systemd, or
bound), connect to systemd's notification socket, drop privileges for good and every
capability (root or not), check that the worker command can run, and only then start
workers. Any start-up error is one line on stderr and exit status 1.
Must not know: the loop's policies (``arbiter``).
SECURITY: the only privileged part is between the first line of ``_start`` and
``drop_privileges``; it reads the user and group databases and
``/proc/sys/kernel/cap_last_cap``, nothing else, and no worker exists yet. Workers get an
allow-listed environment (``hygiene.worker_environment``): systemd's variables
(``LISTEN_*``, ``NOTIFY_SOCKET``, ``WATCHDOG_*``) and root's own (``HOME``, tokens) are not
passed on. Started by root from a terminal, the process root started stays behind as the
relay (``relay.py``); it is the only part that stays root.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from . import hygiene, relay
from .arbiter import Arbiter
from .exits import EXIT_FAILURE, EXIT_INTERRUPTED, StartupError
from .files import PassedFiles
from .log import WRITER, log
from .notify import Notifier
from .options import PROG, Options, parse_options
from .privileges import drop_privileges, lookup_identity, running_as_root
from .signals import block as block_signals
from .sockets import Listener, bind_all, socket_activated, take_inherited


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
    files: PassedFiles


def _start(argv: Sequence[str]) -> Started:
    """Everything that may fail with one line, in the order that keeps root the shortest."""
    options = parse_options(argv)
    if running_as_root():
        lookup_identity(options.user, options.group)  # an unknown user fails before binding
    listeners = _take_listeners(options)
    files = PassedFiles(options.pass_files)
    files.load()  # as root, if started so: a key file may be root's alone
    notifier = Notifier(os.environ)
    privileges = _drop_if_root(options)
    hygiene.drop_capabilities()
    hygiene.not_dumpable()
    _check_worker_command(options.worker_command)
    return Started(options, listeners, notifier, privileges, files)


def _prepare_process() -> None:
    """Before anything else: no inherited descriptor, no working directory of the caller's,
    and, for root at a terminal, the split that leaves the terminal behind."""
    hygiene.close_inherited(os.environ)
    os.chdir("/")
    if relay.needed():
        relay.split()


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
        _prepare_process()
        started = _start(argv)
    except StartupError as error:
        sys.stderr.write(f"{PROG}: {error}\n")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    # From here on stderr is written by a thread and never blocks (log.py); the signals
    # are blocked first, so that no thread but the arbiter's takes one.
    block_signals()
    WRITER.start()
    _log_start(started)
    options = started.options
    log("started", pid=os.getpid(), workers=options.workers, command=list(options.worker_command))
    environment = hygiene.worker_environment(os.environ, options.pass_env)
    arbiter = Arbiter(options, started.listeners, started.notifier, environment, started.files)
    try:
        return arbiter.run()
    finally:
        WRITER.flush()


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
