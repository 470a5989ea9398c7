"""The listening sockets: bound here, or inherited from systemd socket activation.

Owns: ``Listener`` (a name and a listening TCP socket), binding ``--listen`` values
(``SO_REUSEADDR``, ``IPV6_V6ONLY`` so that ``[::]`` and ``0.0.0.0`` coexist, backlog 1024,
non-blocking), and taking ``LISTEN_FDS`` with their ``FileDescriptorName``s (python-systemd's
``listen_fds_with_names``, or the same protocol parsed here when python-systemd is missing).
Must not know: what is served on the sockets.
SECURITY: runs as root before the privilege drop: binds only IP literals (no resolver), never
reads a file. The sockets are never closed while the supervisor runs: the kernel backlog holds
new connections while workers are replaced. Inherited descriptors must be listening stream
sockets; they and the ``LISTEN_*`` variables are not passed on to workers (the workers get the
sockets over the control channel only).
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from types import ModuleType
from typing import Final

from .exits import StartupError
from .options import ListenSpec


def _python_systemd() -> ModuleType | None:
    """python-systemd's ``systemd.daemon``, a declared dependency; None if not installed."""
    try:
        return importlib.import_module("systemd.daemon")
    except ImportError:
        return None


_sd_daemon = _python_systemd()

BACKLOG: Final = 1024  # capped by net.core.somaxconn; a burst waits in the kernel, not refused
SD_LISTEN_FDS_START: Final = 3
LISTEN_ENVIRONMENT: Final = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
UNNAMED: Final = "unknown"  # what systemd calls a descriptor without FileDescriptorName=


@dataclass(frozen=True)
class Listener:
    name: str
    sock: socket.socket
    source: str  # "bound" or "systemd"

    def address(self) -> str:
        sockname = self.sock.getsockname()
        if self.sock.family == socket.AF_INET6:
            return f"[{sockname[0]}]:{sockname[1]}"
        if self.sock.family == socket.AF_INET:
            return f"{sockname[0]}:{sockname[1]}"
        return str(sockname)

    def fields(self) -> dict[str, object]:
        """For the ``listening`` log line: name, host, port, address, source, fd."""
        sockname = self.sock.getsockname()
        host, port = (sockname[0], sockname[1]) if isinstance(sockname, tuple) else (sockname, 0)
        return {
            "name": self.name,
            "host": host,
            "port": port,
            "address": self.address(),
            "source": self.source,
            "fd": self.sock.fileno(),
        }


def close_all(listeners: Iterable[Listener]) -> None:
    for listener in listeners:
        listener.sock.close()


# --- binding ----------------------------------------------------------------------------


def _bind(spec: ListenSpec) -> socket.socket:
    sock = socket.socket(spec.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if spec.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((spec.host, spec.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_all(specs: Iterable[ListenSpec]) -> list[Listener]:
    """Bind every spec, or none: on the first failure close the others and say which one."""
    listeners: list[Listener] = []
    for spec in specs:
        try:
            listeners.append(Listener(spec.name, _bind(spec), "bound"))
        except OSError as error:
            close_all(listeners)
            reason = error.strerror or str(error)
            raise StartupError(f"cannot bind {spec.display()}: {reason}") from None
    return listeners


# --- socket activation ------------------------------------------------------------------


def socket_activated(environ: MutableMapping[str, str]) -> bool:
    """True when systemd (or systemd-socket-activate) passed sockets to this very process."""
    return "LISTEN_FDS" in environ and environ.get("LISTEN_PID") == str(os.getpid())


def _count(environ: MutableMapping[str, str]) -> int:
    value = environ.get("LISTEN_FDS", "")
    if not value.isdigit():
        raise StartupError(f"LISTEN_FDS={value!r} is not a number of descriptors")
    return int(value)


def _check_names(environ: MutableMapping[str, str]) -> int:
    """The descriptor count, once it and ``LISTEN_FDNAMES`` (when set) agree, as
    sd_listen_fds_with_names(3) requires (it fails with EINVAL otherwise)."""
    count = _count(environ)
    if "LISTEN_FDNAMES" in environ:
        names = environ["LISTEN_FDNAMES"].split(":")
        if len(names) != count:
            raise StartupError(
                f"LISTEN_FDNAMES names {len(names)} sockets ({environ['LISTEN_FDNAMES']!r})"
                f" but LISTEN_FDS passes {count}: give every socket one name"
            )
    return count


def _names_from_environment(environ: MutableMapping[str, str]) -> dict[int, str]:
    """sd_listen_fds_with_names(3), for when python-systemd is not installed."""
    count = _check_names(environ)
    names = environ["LISTEN_FDNAMES"].split(":") if "LISTEN_FDNAMES" in environ else []
    names += [UNNAMED] * (count - len(names))
    return {SD_LISTEN_FDS_START + i: names[i] for i in range(count)}


def _names_from_systemd(environ: MutableMapping[str, str]) -> dict[int, str]:
    if _sd_daemon is None:
        return _names_from_environment(environ)
    # python-systemd reads the C environment; refuse what it would fail on first.
    _check_names(environ)
    try:
        names = _sd_daemon.listen_fds_with_names(unset_environment=True)
    except OSError as error:
        raise StartupError(f"socket activation: {error.strerror or error}") from None
    return {int(fd): str(name) for fd, name in names.items()}


def _adopt(fd: int, name: str) -> Listener:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise StartupError(f"inherited fd {fd} ({name}) is not a socket: {error}") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        raise StartupError(f"inherited fd {fd} ({name}) is not a listening stream socket")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return Listener(name, sock, "systemd")


def take_inherited(environ: MutableMapping[str, str]) -> list[Listener]:
    """The sockets systemd passed, in descriptor order; removes ``LISTEN_*`` from ``environ``."""
    try:
        names = _names_from_systemd(environ)
    finally:
        for variable in LISTEN_ENVIRONMENT:
            environ.pop(variable, None)
    if not names:
        raise StartupError("socket activation passed no sockets (LISTEN_FDS=0)")
    return [_adopt(fd, name) for fd, name in sorted(names.items())]
