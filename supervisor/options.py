"""The supervisor's command line.

``python -m supervisor [--listen [NAME=]HOST:PORT]... [--workers N] [--workers-max N]
[--user U] [--group G] [--drain-timeout S] [--heartbeat-timeout S] [--boot-timeout S]
[--pass-env NAME]... [--pass-file PATH]... [-- WORKER_COMMAND...]``

Owns: parsing and validating the flags into one frozen ``Options``; the defaults.
Must not know: what the worker command does with its own flags.
SECURITY: parsed as root, before anything else happens: every error is one line
(``StartupError``), never a traceback; hosts must be IP literals (no name resolution while
privileged); ports are 0..65535 (0: the kernel picks one, for tests).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from .exits import StartupError

PROG = "wildboar-supervisor"
DEFAULT_LISTEN_NAME = "smtp"
DEFAULT_USER = "wildboar"
DEFAULT_GROUP = "wildboar"
DEFAULT_DRAIN_TIMEOUT = 30.0  # seconds a session may take to finish after TERM/HUP/TTOU
DEFAULT_HEARTBEAT_TIMEOUT = 10.0  # seconds without a heartbeat (sent every 1 s) before SIGKILL
DEFAULT_BOOT_TIMEOUT = 30.0  # seconds from spawn to "ready" before SIGKILL


def python_command(module: str) -> tuple[str, ...]:
    """The command that runs ``module`` of this installation in an isolated interpreter
    (``-I``: no current directory, user site or ``PYTHON*`` variable decides what runs).
    Installed on the interpreter's path (a virtual environment): ``-m module``. Installed
    as a bundle (the Debian package's ``/usr/lib/wildboar``: a directory holding these
    packages and a ``__main__.py``, which Python puts first on ``sys.path`` when it runs
    the directory): the bundle, which runs the module. (``wildboar.cli.serve`` has the same
    rule: the supervisor imports nothing of wildboar.)"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, "__main__.py")):
        return (sys.executable, "-I", root, module)
    return (sys.executable, "-I", "-m", module)


DEFAULT_WORKER_COMMAND = python_command("wildboar.worker")
#: TTIN adds workers up to this many per CPU (at least --workers): a signal flood, or a
#: compromised worker, cannot make the supervisor fork without end.
WORKERS_MAX_PER_CPU = 4
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\*?")

# systemd's FileDescriptorName= allows more, but names travel in logs and in the control channel.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class ListenSpec:
    """One ``--listen`` value: a socket name and the IP literal and port to bind."""

    name: str
    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def display(self) -> str:
        host = f"[{self.host}]" if self.family == socket.AF_INET6 else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Options:
    listen: tuple[ListenSpec, ...]
    workers: int
    workers_max: int
    user: str
    group: str
    drain_timeout: float
    heartbeat_timeout: float
    boot_timeout: float
    worker_command: tuple[str, ...]
    #: Variables the workers get besides the allow-list (``NAME``, or a prefix ``NAME*``).
    pass_env: tuple[str, ...] = ()
    #: Files read by the supervisor (at start, as root if started so, and at every HUP)
    #: and given to every worker with the sockets: TLS certificates and keys.
    pass_files: tuple[str, ...] = ()


def _split_host_port(address: str) -> tuple[str, str]:
    if address.startswith("["):
        host, bracket, port = address[1:].partition("]:")
        if not bracket:
            raise ValueError("an IPv6 address is written [ADDRESS]:PORT")
        return host, port
    host, colon, port = address.rpartition(":")
    if not colon or ":" in host:
        raise ValueError("expected HOST:PORT, with an IPv6 host in brackets")
    return host, port


def _check_host(host: str, bracketed: bool) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if (address.version == 6) != bracketed:
        raise ValueError("an IPv6 address goes in brackets, an IPv4 address does not")
    return host  # as written: it is what the operator recognises in an error message


def parse_listen(value: str) -> ListenSpec:
    """``[NAME=]HOST:PORT``; raises ``ValueError`` with the reason."""
    name, equals, address = value.partition("=")
    if not equals:
        name, address = DEFAULT_LISTEN_NAME, value
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad socket name {name!r}")
    host, port = _split_host_port(address)
    if not _PORT.fullmatch(port) or int(port) > 65535:
        raise ValueError(f"bad port {port!r}")
    return ListenSpec(name, _check_host(host, address.startswith("[")), int(port))


def _listen_arg(value: str) -> ListenSpec:
    try:
        return parse_listen(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"bad value {value!r}: {error}") from None


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return int(value)


def _absolute_path(value: str) -> str:
    if not os.path.isabs(value) or "\0" in value or "\n" in value:
        raise argparse.ArgumentTypeError(f"{value!r} is not an absolute path")
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a variable name (or NAME*)")
    return value


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("nan")


def _seconds(value: str) -> float:
    if not 0 < _float(value) <= 86400:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds > 0")
    return _float(value)


def _drain_seconds(value: str) -> float:
    if not 0 <= _float(value) <= 86400:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds >= 0")
    return _float(value)


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is a ``StartupError`` (one line, exit 1), not usage + exit 2."""

    def error(self, message: str) -> NoReturn:
        raise StartupError(message)


def parser() -> argparse.ArgumentParser:
    """The command line of wildboar-supervisor (also made into its manual page)."""
    parser = _Parser(prog=PROG, usage="%(prog)s [options] [-- WORKER_COMMAND...]")
    add = parser.add_argument
    add(
        "--listen",
        type=_listen_arg,
        action="append",
        default=[],
        metavar="[NAME=]HOST:PORT",
        help="bind this (repeatable; IPv6 in brackets; ignored under socket activation)",
    )
    add(
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes (default: CPU count)",
    )
    add(
        "--workers-max",
        type=_positive_int,
        metavar="N",
        help=f"never more workers than this, whatever TTIN asks (default: {WORKERS_MAX_PER_CPU}"
        " per CPU, at least --workers)",
    )
    add(
        "--pass-env",
        type=_env_name,
        action="append",
        default=[],
        metavar="NAME",
        help="pass this variable (NAME* for a prefix) to workers too (repeatable)",
    )
    add(
        "--pass-file",
        type=_absolute_path,
        action="append",
        default=[],
        metavar="PATH",
        help="read this file and give workers a sealed copy (repeatable; TLS keys)",
    )
    add("--user", default=DEFAULT_USER, help="user to run as when started as root")
    add("--group", default=DEFAULT_GROUP, help="group to run as when started as root")
    add(
        "--drain-timeout",
        type=_drain_seconds,
        default=DEFAULT_DRAIN_TIMEOUT,
        metavar="S",
        help="seconds sessions may take to finish on stop (default 30)",
    )
    add(
        "--heartbeat-timeout",
        type=_seconds,
        default=DEFAULT_HEARTBEAT_TIMEOUT,
        metavar="S",
        help="kill a worker silent this long (default 10)",
    )
    add(
        "--boot-timeout",
        type=_seconds,
        default=DEFAULT_BOOT_TIMEOUT,
        metavar="S",
        help="kill a worker not ready after this long (default 30)",
    )
    return parser


def _split_command(argv: Sequence[str]) -> tuple[list[str], tuple[str, ...]]:
    if "--" not in argv:
        return list(argv), DEFAULT_WORKER_COMMAND
    cut = list(argv).index("--")
    command = tuple(argv[cut + 1 :])
    if not command:
        raise StartupError("empty worker command after --")
    return list(argv[:cut]), command


def parse_options(argv: Sequence[str]) -> Options:
    flags, command = _split_command(argv)
    args = parser().parse_args(flags)
    default_max = max(args.workers, WORKERS_MAX_PER_CPU * (os.cpu_count() or 1))
    workers_max = args.workers_max or default_max
    if workers_max < args.workers:
        raise StartupError(f"--workers-max {workers_max} is less than --workers {args.workers}")
    return Options(
        listen=tuple(args.listen),
        workers=args.workers,
        workers_max=workers_max,
        pass_env=tuple(args.pass_env),
        pass_files=tuple(args.pass_file),
        user=args.user,
        group=args.group,
        drain_timeout=args.drain_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
        boot_timeout=args.boot_timeout,
        worker_command=command,
    )
