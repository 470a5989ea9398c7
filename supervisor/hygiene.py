"""What a process of ours starts with: descriptors, directory, environment, capabilities.

Owns: closing every descriptor the supervisor inherited but the standard three and systemd's
``LISTEN_FDS`` (``close_inherited``), the workers' environment (``worker_environment``: an
allow-list, not a deny-list), and leaving no capability behind (``drop_capabilities``: the
ambient and inheritable sets cleared, permitted and effective emptied, ``no_new_privs``
set, then proof from ``/proc/self/status``), and ``not_dumpable``.
Must not know: users and groups (``privileges``), sockets (``sockets``).
SECURITY: a descriptor root opened before starting wildboar (a file of ``/etc/shadow`` in
the audit) would otherwise stay open in a process of the unprivileged user, and so would
root's environment (``HOME=/root``, tokens) in every worker. A non-root start with ambient
capabilities (``setpriv --ambient-caps +net_bind_service``) keeps them for the bind only.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Mapping
from typing import Final

from .exits import StartupError

SD_LISTEN_FDS_START: Final = 3
#: What a worker needs from the environment; everything else stays with the supervisor.
ALLOWED: Final = frozenset(
    {
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        # systemd.exec(5): the directories and credentials the unit gives the service.
        "CREDENTIALS_DIRECTORY",
        "STATE_DIRECTORY",
        "CONFIGURATION_DIRECTORY",
        "RUNTIME_DIRECTORY",
        "CACHE_DIRECTORY",
        "LOGS_DIRECTORY",
        "INVOCATION_ID",
    }
)
ALLOWED_PREFIXES: Final = ("LC_", "WILDBOAR_")
#: The workers' PATH, whatever root's was (a directory of root's own, ~/.local/bin, ...).
WORKER_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_PR_SET_DUMPABLE: Final = 4
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_CAPABILITY_SETS: Final = ("CapInh", "CapPrm", "CapEff", "CapAmb")


# --- descriptors --------------------------------------------------------------------


def _kept_listen_fds(environ: Mapping[str, str]) -> int:
    """How many descriptors from 3 on systemd passed to this very process (0: none)."""
    count = environ.get("LISTEN_FDS", "")
    if environ.get("LISTEN_PID") != str(os.getpid()) or not count.isdigit():
        return 0
    return int(count)


def close_inherited(environ: Mapping[str, str]) -> None:
    """Close every descriptor above 2 but the ``LISTEN_FDS`` ones (``close_range(2)``)."""
    first_free = SD_LISTEN_FDS_START + _kept_listen_fds(environ)
    os.closerange(first_free, os.sysconf("SC_OPEN_MAX"))


# --- environment --------------------------------------------------------------------


def _allowed(name: str, extra: Iterable[str]) -> bool:
    if name in ALLOWED or name.startswith(ALLOWED_PREFIXES):
        return True
    for pattern in extra:
        if name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return True
    return False


def worker_environment(environ: Mapping[str, str], extra: Iterable[str] = ()) -> dict[str, str]:
    """The allow-listed part of ``environ`` (plus the names or ``PREFIX*`` in ``extra``)."""
    extra = tuple(extra)
    allowed = {name: value for name, value in environ.items() if _allowed(name, extra)}
    return {"PATH": WORKER_PATH, **allowed}


# --- capabilities -------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, argument: int) -> int:
    """prctl(2) with zeros for the unused arguments; returns 0 or the errno."""
    unused = ctypes.c_ulong(0)
    result = int(_libc().prctl(option, ctypes.c_ulong(argument), unused, unused, unused))
    return ctypes.get_errno() if result != 0 else 0


def _capset_empty() -> int:
    """capset(2) with every set empty; 0 or the errno."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    result = int(_libc().capset(ctypes.byref(header), data))
    return ctypes.get_errno() if result != 0 else 0


def process_status(path: str = "/proc/self/status") -> dict[str, str]:
    with open(path) as file:
        return dict(line.rstrip("\n").partition(":\t")[::2] for line in file if ":\t" in line)


def drop_capabilities() -> None:
    """No capability in any set, ``no_new_privs`` set; ``StartupError`` if one remains."""
    # capset(2) only lowers sets here: with none to lower (an unprivileged start, as under
    # systemd, whose unit may forbid capset with its system call filter) it is not called.
    held = any(int(process_status().get(name, "1"), 16) for name in _CAPABILITY_SETS)
    for what, errno in (
        ("clearing the ambient capabilities", _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)),
        ("emptying the capability sets", _capset_empty() if held else 0),
        ("setting no_new_privs", _prctl(_PR_SET_NO_NEW_PRIVS, 1)),
    ):
        if errno:
            raise StartupError(f"{what} failed: {os.strerror(errno)}")
    status = process_status()
    kept = {name: status.get(name) for name in _CAPABILITY_SETS if int(status.get(name, "1"), 16)}
    if kept:
        sets = ", ".join(f"{name} {value}" for name, value in kept.items())
        raise StartupError(f"capabilities remain after dropping them ({sets}): not serving")
    if status.get("NoNewPrivs") != "1":
        raise StartupError("no_new_privs is not set: not serving")


def not_dumpable() -> None:
    """No process of the same user (a compromised worker) may ptrace the supervisor or
    read its memory through ``/proc``: it holds every worker's TLS keys (``files``). The
    kernel does this by itself when root drops to another user; under systemd, which
    starts the supervisor as that user, it does not. Best effort: a failure is ignored."""
    _prctl(_PR_SET_DUMPABLE, 0)
