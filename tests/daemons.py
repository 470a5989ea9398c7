"""What every private daemon of the tests and benchmarks needs (Dovecot, HAProxy,
Postfix): a free port to give it, its death with ours, and the processes of its group."""

from __future__ import annotations

import ctypes
import random
import signal
import socket
from pathlib import Path

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
