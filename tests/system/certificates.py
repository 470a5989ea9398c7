"""Self-signed certificates for the TLS tests, made with openssl in a directory the
workers' user can read (their key would be 0640 root:wildboar in an installation)."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from .. import unprivileged

#: openssl's -newkey for each kind of key.
KINDS = {
    "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "rsa": ["-newkey", "rsa:2048"],
}


def make(directory: Path, name: str, *, kind: str = "ec", stem: str = "") -> tuple[Path, Path]:
    """A certificate for ``name`` (CN and subjectAltName) and its key: (cert, key)."""
    stem = stem or f"{name}-{kind}"
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    subprocess.run(
        ["openssl", "req", "-x509", *KINDS[kind], "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    if unprivileged.AS_ROOT:
        entry = pwd.getpwnam(unprivileged.USER)
        for path in (cert, key):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return cert, key
