"""Dropping root for good, once the sockets are bound.

Owns: looking up the run-as user and group, and the drop itself: empty the capability bounding
set (best effort), ``setgroups([])``, ``setresgid``, ``setresuid`` (real, effective and saved
ids), then proof that root cannot be regained (``setuid(0)`` and ``setgid(0)`` must fail). The
caller then drops every capability left and sets ``no_new_privs`` (``hygiene``), root or not,
so that no worker can gain privileges through a set-uid program.
Must not know: why it is root (the caller binds first and calls this before anything else).
SECURITY: this is the boundary. Started as root, the supervisor runs nothing else as root:
a failure here is fatal (one line, exit 1), never ignored. Running as root is refused (the
regain check fails for uid 0). Started as another user, nothing is dropped (development on
unprivileged ports).
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .exits import StartupError
from .log import log

_PR_CAPBSET_DROP: Final = 24  # <linux/prctl.h>
_CAP_LAST_CAP_FILE: Final = "/proc/sys/kernel/cap_last_cap"
_CAP_LAST_CAP_DEFAULT: Final = 40  # CAP_CHECKPOINT_RESTORE, Linux 5.9+


@dataclass(frozen=True)
class Identity:
    user: str
    uid: int
    group: str
    gid: int


def running_as_root() -> bool:
    return os.geteuid() == 0


def lookup_identity(user: str, group: str) -> Identity:
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise StartupError(f"unknown user {user!r}") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise StartupError(f"unknown group {group!r}") from None
    return Identity(user, uid, group, gid)


def _prctl(option: int, argument: int) -> int:
    """prctl(2) with zeros for the unused arguments; returns 0 or the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    unused = ctypes.c_ulong(0)
    result = int(libc.prctl(option, ctypes.c_ulong(argument), unused, unused, unused))
    return ctypes.get_errno() if result != 0 else 0


def _last_capability() -> int:
    try:
        with open(_CAP_LAST_CAP_FILE) as file:
            return int(file.read())
    except (OSError, ValueError):
        return _CAP_LAST_CAP_DEFAULT


def drop_bounding_set() -> None:
    """Empty the bounding set, so that no process of ours can ever gain a capability."""
    failed = [cap for cap in range(_last_capability() + 1) if _prctl(_PR_CAPBSET_DROP, cap)]
    if failed:
        log("capability_bounding_set_kept", "warning", capabilities=failed)


def _regains_root(regain: Callable[[int], None]) -> bool:
    try:
        regain(0)
    except PermissionError:
        return False
    return True


def _verify(identity: Identity) -> None:
    ids = (identity.uid, identity.uid, identity.uid)
    gids = (identity.gid, identity.gid, identity.gid)
    if os.getresuid() != ids or os.getresgid() != gids or os.getgroups():
        raise StartupError(f"privilege drop failed: still {os.getresuid()} {os.getresgid()}")
    for name, regain in (("setuid", os.setuid), ("setgid", os.setgid)):
        if _regains_root(regain):
            raise StartupError(f"privilege drop failed: {name}(0) succeeded as {identity.user}")


def drop_privileges(identity: Identity) -> None:
    """Become ``identity`` for good; raises ``StartupError`` if root could be regained."""
    drop_bounding_set()
    try:
        os.setgroups([])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    except OSError as error:
        raise StartupError(f"cannot drop privileges to {identity.user}: {error}") from None
    _verify(identity)
