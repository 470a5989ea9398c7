"""``python -m wildboar.worker --control-fd N [config flags]``: one unprivileged worker.

Owns: start-up of a worker process: its configuration (the same sources as ``wildboar
serve``: file, ``WILDBOAR_*`` environment, flags), the listening sockets received from the
supervisor over the control channel (``SCM_RIGHTS``), the handoffs, and uvloop.
Must not know: how the sockets were bound (systemd or the supervisor).
Security: started by the supervisor after it dropped privileges; refuses to run as root.
Exit status: 0 after a drain, 3 (``WORKER_BOOT_ERROR``) when it cannot start, with one line
on stderr naming why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import resource
import socket
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
import uvloop

from ..config import (
    Config,
    ConfigError,
    config_file,
    config_flags,
    flags_of,
    load,
    serving_errors,
)
from ..handoff.amqp import AmqpHandoff
from ..handoff.base import Handoff, HandoffStartError
from ..handoff.discard import DiscardHandoff
from ..handoff.lmtp import LmtpHandoff
from ..handoff.retry import RetryQueue
from ..handoff.spool import SpoolHandoff
from . import logs
from .serve import Worker
from .table import SharedTable, TableError
from .tls import TlsError

WORKER_BOOT_ERROR = 3
MAX_CONTROL_MESSAGE = 65536
MAX_SOCKETS = 64
MAX_FILES = 32  # the supervisor's --pass-file limit


class BootError(Exception):
    """The worker cannot start; the message is for the operator."""


def build_handoffs(config: Config) -> list[Handoff]:
    handoffs: list[Handoff] = []
    for name in config.handoff:
        if name == "spool":
            handoffs.append(SpoolHandoff(config.spool.path, config.spool.batch))
        elif name == "amqp":
            handoffs.append(
                AmqpHandoff(
                    config.amqp,
                    buffer=config.amqp_buffer,
                    connection_name=f"wildboar {config.hostname} pid {os.getpid()}",
                )
            )
        elif name == "lmtp":
            queue = RetryQueue(
                config.lmtp, config.lmtp_retry_spool, config.lmtp_bounce_spool, config.hostname
            )
            handoffs.append(LmtpHandoff(config.lmtp, config.hostname, queue))
        else:
            handoffs.append(DiscardHandoff())
    # Bounces go to the outbound exchange when there is a broker (docs/lmtp.md).
    brokers = [h for h in handoffs if isinstance(h, AmqpHandoff)]
    for handoff in handoffs:
        if isinstance(handoff, LmtpHandoff) and handoff.queue is not None and brokers:
            handoff.queue.forward = brokers[0].outbound
    return handoffs


class Received(NamedTuple):
    """The supervisor's first message: the listening sockets by name, the shared table of
    per-client counts (None: count alone), and the files it read for this worker
    (``--pass-file``: TLS certificates and keys) by path."""

    listeners: list[tuple[str, socket.socket]]
    table: SharedTable | None
    files: dict[str, int]


def receive_sockets(control: socket.socket) -> Received:
    """The supervisor's first message: socket names, and the sockets as SCM_RIGHTS; after
    them the descriptors its ``descriptors`` names (``clients``: the shared table of the
    per-client counts, described by its ``clients`` object; ``file.N``: a passed file,
    whose ``path`` its object gives). A supervisor that sends no table leaves the worker
    counting alone (a private table)."""
    control.settimeout(30)
    try:
        data, fds, _, _ = socket.recv_fds(control, MAX_CONTROL_MESSAGE, MAX_SOCKETS + MAX_FILES + 8)
    except OSError as error:
        raise BootError(f"no sockets from the supervisor: {error}") from None
    try:
        message = json.loads(data)
        names = [str(name) for name in message["names"]]
        described = [str(name) for name in message.get("descriptors", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        _close_all(fds)
        raise BootError("malformed first message from the supervisor") from None
    if message.get("type") != "sockets" or len(names) + len(described) != len(fds) or not names:
        _close_all(fds)
        raise BootError("the supervisor sent no listening sockets")
    extra = dict(zip(described, fds[len(names) :], strict=True))
    files = _passed_files(message, extra)
    table = _shared_table(message.get("clients"), extra.pop("clients", None))
    _close_all(list(extra.values()))  # of a later version: not ours to use
    control.setblocking(False)
    listeners = [(name, socket.socket(fileno=fd)) for name, fd in zip(names, fds, strict=False)]
    return Received(listeners, table, files)


def _passed_files(message: dict[str, Any], extra: dict[str, int]) -> dict[str, int]:
    """The ``file.N`` descriptors, taken out of ``extra``, by the path each names."""
    files: dict[str, int] = {}
    for name in [name for name in extra if name.startswith("file.")]:
        fd = extra.pop(name)
        about = message.get(name)
        path = about.get("path") if isinstance(about, dict) else None
        if not isinstance(path, str) or not path.startswith("/"):
            _close_all([fd, *files.values(), *extra.values()])
            raise BootError(f"the supervisor's {name} comes without a valid path")
        files[path] = fd
    return files


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _shared_table(description: object, fd: int | None) -> SharedTable | None:
    """The table ``fd`` as ``{"segment": S, "segments": N, "key": HEX}`` describes it."""
    if fd is None:
        return None
    try:
        if not isinstance(description, dict):
            raise TypeError
        segment, segments = description["segment"], description["segments"]
        key = bytes.fromhex(description["key"])
        if not all(type(n) is int for n in (segment, segments)):
            raise TypeError
    except (KeyError, TypeError, ValueError):
        os.close(fd)
        raise BootError(
            "the supervisor's clients table comes without a valid description"
        ) from None
    try:
        return SharedTable.from_fd(fd, segments, segment, key)
    except TableError as error:
        raise BootError(f"the supervisor's clients table: {error}") from None


async def run(config: Config, received: Received, control: socket.socket | None) -> None:
    listeners, table = received.listeners, received.table
    handoffs = build_handoffs(config)
    for handoff in handoffs:
        try:
            await handoff.start()
        except HandoffStartError as error:
            raise BootError(f"handoff {handoff.name}: {error}") from None
    try:
        worker = Worker(config, listeners, handoffs, control, table, files=received.files)
    except TlsError as error:
        raise BootError(str(error)) from None
    finally:
        for fd in received.files.values():  # read into the TLS contexts, or not needed
            os.close(fd)
    await worker.run()


def _say(text: str) -> None:
    """One line for the operator on stderr (non-blocking once logging is set up)."""
    logs.write_line(f"wildboar-worker: {text}\n".encode())
    logs.flush()


#: prctl(2): the process may not be traced, nor its /proc entries read, by its own user.
_PR_SET_DUMPABLE = 4
#: Descriptors a worker keeps besides two per session (its socket, a spilled content file).
RESERVED_DESCRIPTORS = 64


def not_dumpable() -> None:
    """Other processes of the workers' user (another daemon running as ``nobody``, a
    compromised worker) can then neither ptrace this one nor take its descriptors
    (``pidfd_getfd``) nor read its environment: each worker is its own island."""
    libc = ctypes.CDLL(None, use_errno=True)
    unused = ctypes.c_ulong(0)
    libc.prctl(_PR_SET_DUMPABLE, ctypes.c_ulong(0), unused, unused, unused)


def fit_descriptors(config: Config) -> Config:
    """Raise the soft limit on open files to the hard one; if even that cannot hold two
    descriptors for every session (its socket and its spilled content), serve fewer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    room = (soft - RESERVED_DESCRIPTORS) // 2 if soft != resource.RLIM_INFINITY else 1 << 30
    sessions = config.sessions
    if room >= sessions.per_worker:
        return config
    fewer = max(1, room)
    logs.log(
        "sessions_capped",
        logging.WARNING,
        per_worker=fewer,
        configured=sessions.per_worker,
        open_files=soft,
        why="the limit on open files holds two descriptors for this many sessions only",
    )
    return msgspec.structs.replace(
        config, sessions=msgspec.structs.replace(sessions, per_worker=fewer)
    )


def main(argv: Sequence[str] | None = None) -> int:
    not_dumpable()
    parser = argparse.ArgumentParser(prog="wildboar-worker")
    parser.add_argument("--control-fd", type=int, required=True)
    config_flags(parser)
    args = parser.parse_args(argv)
    try:
        config = load(file=args.config, flags=flags_of(args), directory=args.directory)
        errors = serving_errors(config, config_file(args.config, directory=args.directory))
    except ConfigError as error:
        errors = error.errors
    for line in errors:
        print(f"wildboar-worker: config: {line}", file=sys.stderr)
    if errors:
        return WORKER_BOOT_ERROR
    logs.setup(config.log_format)
    if os.geteuid() == 0:
        _say("refusing to run as root; start it through the supervisor")
        return WORKER_BOOT_ERROR
    config = fit_descriptors(config)
    try:
        control = socket.socket(fileno=args.control_fd)
        received = receive_sockets(control)
        # uvloop.run came with uvloop 0.18; Debian 12 has 0.17: the same, by asyncio's Runner.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run(config, received, control))
    except BootError as error:
        _say(str(error))
        return WORKER_BOOT_ERROR
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
