"""``wildboar serve [config flags]``: run the supervisor and its workers in the foreground.

Owns: the ``serve`` command: it validates the whole configuration, then replaces itself
(``execve``) with the supervisor (``python -m supervisor``), which binds, drops privileges
and starts the workers; the supervisor's and workers' command lines
(``supervisor_command``) and what the workers get in their environment rather than on a
command line (``worker_environment``).
Must not know: how the supervisor binds, drops privileges or watches its workers.
Security: often started as root. It looks up no host name (``load.UNRESOLVED_HOSTNAME``),
runs isolated interpreters (``-I``) so the directory it is started in decides no code, and
puts no broker URL (passwords) on a command line, which any local user can read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import config as C
from .load import load_config


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the server (supervisor and workers) in the foreground"
    )
    C.config_flags(serve)
    serve.set_defaults(func=cmd_serve)


def python_command(module: str) -> list[str]:
    """The command that runs ``module`` of this installation in an isolated interpreter:
    ``-m module`` from the interpreter's path (a virtual environment), or through the bundle
    this code is part of (the Debian package's ``/usr/lib/wildboar``, a directory with a
    ``__main__.py``, run by path). The supervisor's ``options.python_command`` is the same
    rule (it imports nothing of wildboar)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(root, "__main__.py")):
        return [sys.executable, "-I", root, module]
    return [sys.executable, "-I", "-m", module]


def supervisor_command(config: C.Config, args: argparse.Namespace) -> list[str]:
    """The supervisor's command line, with the worker command after ``--``. Both run an
    isolated interpreter (``-I``: neither the current directory nor ``PYTHON*`` variables
    nor the user's site directory on ``sys.path``): root starts the first, and a directory
    it happens to be in must not decide what code runs."""
    command = python_command("supervisor")
    # Under socket activation (the supervisor keeps this process's pid: exec) the default
    # listener is not passed: the supervisor would warn that it ignores it.
    activated = os.environ.get("LISTEN_PID") == str(os.getpid()) and "LISTEN_FDS" in os.environ
    if not (activated and tuple(config.listen) == C.DEFAULT_LISTEN):
        for listener in config.listen:
            command += ["--listen", str(listener)]
    command += ["--workers", str(config.workers), "--user", config.user]
    command += ["--group", config.group, "--drain-timeout", str(config.timeouts.drain)]
    if config.workers_max is not None:
        command += ["--workers-max", str(config.workers_max)]
    # TLS certificates and keys are read by the supervisor (as root, if it starts so) and
    # again at every HUP, and given to each worker (docs/tls.md): the key file need not
    # be readable by the workers' user.
    for path in dict.fromkeys(p for lst in config.listen for p in (*lst.certificates, *lst.keys)):
        command += ["--pass-file", path]
    # Workers load the configuration themselves (again at every HUP): only flags are
    # passed on, so that a value from the file or the environment can change on reload.
    # They run in /, and take relative paths from where serve was started.
    directory = os.path.abspath(args.directory or os.getcwd())
    worker = [*python_command("wildboar.worker"), "--directory", directory]
    if args.hostname:
        worker += ["--hostname", args.hostname]
    if args.config:
        worker += ["--config", args.config]
    if args.spool:
        worker += ["--spool", args.spool]
    # --amqp-url and --amqp-url-file imply the amqp handoff, for the workers as for serve.
    implied = ["amqp"] if args.amqp_url or args.amqp_url_file else []
    if args.lmtp:
        worker += ["--lmtp", args.lmtp]
        implied.append("lmtp")
    for handoff in args.handoff or implied:
        worker += ["--handoff", handoff]
    return [*command, "--", *worker]


def worker_environment(args: argparse.Namespace) -> dict[str, str]:
    """What the workers must see in their environment rather than on their command line:
    broker URLs carry passwords, and any local user can read a command line.

    With ``--amqp-url-file`` only the file's path is passed (as given: a relative one is
    taken from the workers' ``--directory``), and each worker reads the file itself;
    ``--amqp-url`` passes the URLs (a JSON array: a password may hold a comma) and clears
    a ``urls_file`` from elsewhere, as the flag did for ``serve``."""
    environment: dict[str, str] = {}
    if args.amqp_url_file:
        environment["WILDBOAR_AMQP_URLS_FILE"] = args.amqp_url_file
    elif args.amqp_url:
        environment["WILDBOAR_AMQP_URLS"] = json.dumps(args.amqp_url)
        environment["WILDBOAR_AMQP_URLS_FILE"] = ""
    return environment


def cmd_serve(args: argparse.Namespace) -> int:
    config = load_config(args, resolve_hostname=False)
    if config is None:
        return 1
    command = supervisor_command(config, args)
    environment = {**os.environ, **worker_environment(args)}
    sys.stdout.flush()
    os.execve(command[0], command, environment)
    return 1  # not reached
