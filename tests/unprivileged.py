"""Workers never run as root. When the tests run as root (as CI does), servers are started
with WILDBOAR_USER/GROUP = nobody/nogroup (and a bare worker is started as nobody), so what a
worker writes must be writable by nobody, on a path nobody can reach: pytest's tmp_path lives
under a 0700 directory, so spools are made under /tmp instead."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

AS_ROOT = os.geteuid() == 0
USER = "nobody"
GROUP = grp.getgrgid(pwd.getpwnam(USER).pw_gid).gr_name


def env() -> dict[str, str]:
    """Environment that makes a root-started server drop to nobody."""
    return {"WILDBOAR_USER": USER, "WILDBOAR_GROUP": GROUP} if AS_ROOT else {}


def popen_user() -> dict[str, object]:
    """``subprocess.Popen`` arguments that start a bare worker as nobody when we are root."""
    return {"user": USER, "group": GROUP, "extra_groups": []} if AS_ROOT else {}


@contextlib.contextmanager
def spool_directory() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="wildboar-test-", dir="/tmp"))
    try:
        base.chmod(0o755)
        spool = base / "spool"
        spool.mkdir()
        spool.chmod(0o755)  # whatever the umask: a spool writable by others is refused
        if AS_ROOT:
            entry = pwd.getpwnam(USER)
            os.chown(spool, entry.pw_uid, entry.pw_gid)
        yield spool
    finally:
        shutil.rmtree(base, ignore_errors=True)
