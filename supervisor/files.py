"""Files the supervisor reads for its workers (``--pass-file PATH``): TLS certificates and
private keys, so that a key file can stay readable by root only.

Owns: reading each file (at start, before privileges are dropped, and again at every
``HUP``), keeping the last content that could be read, and a sealed, unnamed copy of each
(``memfd_create``) for every worker it starts, sent with the listening sockets.
Must not know: what the files are (the worker command decides what it does with them).
SECURITY: a file is read whole, up to ``MAX_SIZE`` octets, and must be a regular file
(a FIFO or a device would block or never end); its content never goes into a log line.
At start every file must be readable, or the supervisor does not start (one line naming
the file). Re-read at ``HUP`` by the unprivileged supervisor, a file it can no longer read
(a root-only key read by root at start) keeps its earlier content, with a warning naming
the file: a renewed key then needs a restart, and ``docs/tls.md`` says how to avoid that.
A worker gets copies it cannot write, grow or shrink (every seal set), so a worker
cannot change what the next one is given; the content is in each worker's memory anyway,
because the worker does the TLS handshake.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

from .exits import StartupError

#: The largest file passed on: a certificate chain and its key are a few kilobytes.
MAX_SIZE: Final = 1024 * 1024
#: The most files one supervisor passes (every listener's certificates and keys).
MAX_FILES: Final = 32
_SEALS: Final = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class Unreadable(Exception):
    """A file cannot be passed on; ``str()`` is the reason, without its content."""


def read(path: str) -> bytes:
    """The whole of ``path``, a regular file of at most ``MAX_SIZE`` octets."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as error:
        why = error.strerror or errno.errorcode.get(error.errno or 0, "error")
        raise Unreadable(why) from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise Unreadable("not a regular file")
        if status.st_size > MAX_SIZE:
            raise Unreadable(f"larger than {MAX_SIZE} octets")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > MAX_SIZE:
                raise Unreadable(f"larger than {MAX_SIZE} octets")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as error:
        raise Unreadable(error.strerror or "read error") from None
    finally:
        os.close(fd)


class PassedFiles:
    """The files named by ``--pass-file``, as last read."""

    def __init__(self, paths: Sequence[str]) -> None:
        if len(paths) > MAX_FILES:
            raise StartupError(f"--pass-file: at most {MAX_FILES} files")
        self.paths = tuple(dict.fromkeys(paths))
        self._content: dict[str, bytes] = {}

    def load(self) -> None:
        """At start: every file must be readable (``StartupError`` names the one that is not)."""
        for path in self.paths:
            try:
                self._content[path] = read(path)
            except Unreadable as error:
                raise StartupError(f"--pass-file {path}: {error}") from None

    def reload(self) -> list[tuple[str, str]]:
        """Read every file again; the ones kept as they were, with why."""
        kept: list[tuple[str, str]] = []
        for path in self.paths:
            try:
                self._content[path] = read(path)
            except Unreadable as error:
                kept.append((path, str(error)))
        return kept

    @contextmanager
    def descriptors(self) -> Iterator[list[tuple[str, int]]]:
        """A sealed copy of each file, as (path, descriptor), closed on leaving."""
        made: list[tuple[str, int]] = []
        try:
            for path in self.paths:
                made.append((path, _sealed(os.path.basename(path), self._content[path])))
            yield made
        finally:
            for _, fd in made:
                os.close(fd)


def _sealed(name: str, content: bytes) -> int:
    fd = os.memfd_create(f"wildboar-{name}"[:240], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except OSError:
        os.close(fd)
        raise
    return fd
