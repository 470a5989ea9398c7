"""What every private daemon of the tests and benchmarks needs (Dovecot, HAProxy,
Postfix, nginx, NSD): a free port to give it, its death with ours, the processes of its
group, and ``PrivateDaemon``, the life of one: started on entering, stopped by its PID
and its directory removed on leaving, even when the start fails half way."""

from __future__ import annotations

import ctypes
import random
import shutil
import signal
import socket
from pathlib import Path
from types import TracebackType
from typing import Self

_handed_out: set[int] = set()
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


def die_with_parent() -> None:
    """For ``preexec_fn``: SIGTERM when the process (the thread) that started it ends."""
    _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    """A free port on ``host`` below Linux's ephemeral range (32768-60999), so that no
    client socket takes it between this check and the daemon's bind; never the same one
    twice in a process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        port = random.randrange(10000, 32768)
        if port in _handed_out:
            continue
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as daemons do
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


def _stat(pid: int | str) -> list[str] | None:
    """state, ppid, pgrp, ... of ``/proc/PID/stat``, after the command name (which may
    hold anything, so the split is after its ")")."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid and fields[0] not in "ZX":
            members.append(int(entry.name))
    return members


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan not yet reaped)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in "ZX"


class PrivateDaemon:
    """A daemon with everything of its own in ``dir``: ``start`` and ``stop`` are its
    own; ``close`` stops it and removes the directory; a ``with`` block does both."""

    dir: Path

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
