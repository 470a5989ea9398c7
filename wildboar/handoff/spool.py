"""The spool: one file per accepted message in a local directory, and the reader for it.

Owns: the spool layout and its durability protocol, the group commit that shares fsyncs
between concurrent deliveries, the checks an existing spool must pass before it is used,
and ``Spool``, the reader behind ``wildboar spool`` and the AMQP buffer's drain.

Layout (several worker processes may share one spool; they never share a file)::

    <path>/tmp/<uuid>.<pid>.tmp   being written; never listed; stale ones are removed
    <path>/msg/<uuid>.msgpack     durable: the msgpack ``Message``, named by ``email.id``
    <path>/corrupt/<uuid>.msgpack a record that could not be read, moved aside by a drain
    <path>/held/<uuid>.msgpack    a record no target will take (too big), moved aside

A message is durable, and ``deliver`` returns ok, only after: its temp file was written
and fsync'd, renamed into ``msg/``, and ``msg/`` was fsync'd. One committer coroutine per
handoff does that for up to ``batch`` queued messages in one worker thread call with one
directory fsync, so the fsync cost is shared by every session waiting at that moment.

Must not know: SMTP sessions, sockets, configuration loading, who consumes the spool.
Security: whoever may write a spool directory can remove an accepted message or plant a
link, so a spool is used only if the root and each of ``tmp/ msg/ corrupt/ held/`` that
exists is a real directory (never a symbolic link), owned by the uid that serves it, and
not writable by group or others; otherwise ``UnsafeSpool``, one line naming the directory
and what is wrong. Each is opened once with ``O_DIRECTORY|O_NOFOLLOW`` and checked on that
descriptor (``Directories``), and every operation inside goes through those descriptors
(``openat``, ``renameat``, ``unlinkat``, ``fdopendir``, ``fsync``): a directory swapped for a
link afterwards is not followed, and no operation (``clean_tmp``'s unlinks included) can
reach outside the spool. A root reader (``wildboar spool``, which drops to the spool's owner
before it opens the spool, see ``wildboar.cli.spool``) takes the root's owner as the owner
every directory must have. File names come only from a UUID checked against a strict pattern,
never from other message content, and operator-given ids are checked the same way.
Directories are created 0700 and files 0600 (mail is private). The reader opens files
with ``O_NOFOLLOW|O_NONBLOCK`` and validates every record against the schema.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import datetime
import errno
import fcntl
import itertools
import logging
import os
import re
import stat
import time
import weakref
from collections.abc import Collection, Iterator, Sequence
from typing import NamedTuple

import msgspec

from ..message import CONTENT_TYPE_MSGPACK, Message, Retry, decode, encode
from .base import (
    DELIVERED,
    LOCAL_PROBLEM,
    STORAGE_ERRNOS,
    Delivery,
    Handoff,
    HandoffStartError,
    failed,
    local_failure,
    report,
)

TMP_DIR = "tmp"
MSG_DIR = "msg"
SUFFIX = ".msgpack"
#: Where records that cannot be read are moved aside (``Spool.quarantine``).
CORRUPT_DIR = "corrupt"
#: Where valid records that cannot be delivered are moved aside (e.g. too big for a broker).
HELD_DIR = "held"
#: Where ``Spool.quarantine`` may move a record.
ASIDE_DIRS = (CORRUPT_DIR, HELD_DIR)
#: Every directory of a spool; each one present is checked before the spool is used.
SUBDIRS = (TMP_DIR, MSG_DIR, *ASIDE_DIRS)
# A temp file is written within one handoff (``timeouts.handoff``, 540 s by default); one
# older than an hour was left by a crash, and start() removes it.
STALE_TMP_SECONDS = 3600.0
# Files and directories hold mail: owner only.
FILE_MODE = 0o600
DIR_MODE = 0o700
#: Mode bits that let someone other than the owner add, remove or replace entries.
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
ROOT_UID = 0
#: Larger than any record a server writes (message_size is far below): a bigger file in
#: msg/ was not written by one, and reading it whole could exhaust memory.
MAX_RECORD = 1 << 30

# A directory itself, never what a link in its place names; not inherited by children.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_URN_PREFIX = "urn:uuid:"
# How the owner a directory must have is named in an UnsafeSpool message.
_SERVES_IT = "that serves it"
_READS_IT = "that reads it"
_OWNS_THE_SPOOL = "that owns the spool"
# The key of the root's descriptor among those of its subdirectories.
_ROOT = ""


# --- ids and errors ----------------------------------------------------------------


class SpoolError(Exception):
    """A spool cannot be read as asked; ``str()`` is one line for the operator."""


class BadMessageId(SpoolError, ValueError):
    """Not a ``urn:uuid:<uuid>`` or a bare ``<uuid>``."""


class NoSuchMessage(SpoolError, KeyError):
    """No message with that id in the spool."""

    def __str__(self) -> str:
        return str(self.args[0])


class CorruptMessage(SpoolError):
    """A file in ``msg/`` that is not a valid message record."""


class SpoolBusy(SpoolError):
    """Another process holds the spool's consumer lock."""


class UnsafeSpool(SpoolError, PermissionError):
    """A spool directory that is a link or not a directory, is another user's, or that
    group or others may write: not used. A ``PermissionError`` too, so a delivery that
    meets one fails like any other storage error (451)."""


def message_uuid(message_id: str) -> str:
    """The bare lowercase UUID of ``urn:uuid:<uuid>`` or ``<uuid>``; ``BadMessageId`` if
    it is neither."""
    bare = message_id.strip().lower().removeprefix(_URN_PREFIX)
    if not _UUID.fullmatch(bare):
        raise BadMessageId(f"{message_id!r} is not a message id (urn:uuid:<uuid> or <uuid>)")
    return bare


def describe(error: OSError) -> str:
    """``path: reason`` for an operator, without a traceback."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


# --- the layout and its directories ----------------------------------------------------


class Layout:
    """The paths of one spool directory (for messages to the operator; the operations use
    the descriptors of ``Directories``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = os.fspath(path)
        self.tmp = os.path.join(self.root, TMP_DIR)
        self.msg = os.path.join(self.root, MSG_DIR)

    def final(self, uuid: str) -> str:
        return os.path.join(self.msg, final_name(uuid))

    def temp(self, uuid: str) -> str:
        return os.path.join(self.tmp, temp_name(uuid))


def final_name(uuid: str) -> str:
    return uuid + SUFFIX


_probes = itertools.count()


def temp_name(uuid: str) -> str:
    return f"{uuid}.{os.getpid()}.tmp"


def open_dir(shown: str, name: str, at: int | None = None) -> int:
    """A descriptor of the directory ``name`` (relative to the directory descriptor ``at``,
    else a path) itself, never of what a link in its place names; ``shown`` names it in
    errors. ``UnsafeSpool`` for a link or a non-directory; ``OSError`` otherwise."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=at)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeSpool(f"spool {shown} {_what_is_there(name, at)}: not used") from None
        error.filename = shown
        raise


def _what_is_there(name: str, at: int | None) -> str:
    try:
        link = stat.S_ISLNK(os.lstat(name, dir_fd=at).st_mode)
    except OSError:
        link = False
    return "is a symbolic link" if link else "is not a directory"


def check_dir(status: os.stat_result, shown: str, owner: int, role: str) -> None:
    """``UnsafeSpool`` unless the directory of ``status`` is ``owner``'s and not writable
    by group or others (who could remove a message after its 250, or plant a link)."""
    if status.st_uid != owner:
        raise UnsafeSpool(
            f"spool {shown} is owned by uid {status.st_uid}, not by uid {owner} {role}"
        )
    mode = stat.S_IMODE(status.st_mode)
    if mode & WRITABLE_BY_OTHERS:
        raise UnsafeSpool(
            f"spool {shown} is writable by group or others (mode {mode:04o}): chmod 0700 it"
        )


def _root_name(path: str) -> str:
    # "link/" would resolve the link whatever O_NOFOLLOW says.
    return path.rstrip("/") or "/"


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


class Directories:
    """The directories of one spool, each opened once (``open_dir``) and checked
    (``check_dir``): the root, and those of ``SUBDIRS`` that exist (``create`` names those
    to make when missing). Every file operation then goes through these descriptors. Not
    for two threads at once (a listing moves a descriptor's offset). ``close`` closes them,
    and so does collecting this object, so a caller that forgets leaks nothing.

    ``owner`` is the uid every directory must have; None (a root reader) means the uid
    that owns the root.
    """

    def __init__(
        self, layout: Layout, owner: int | None, role: str, create: Collection[str] = ()
    ) -> None:
        self.layout = layout
        self._fds: dict[str, int] = {}
        self._finalizer = weakref.finalize(self, _close_all, self._fds)
        try:
            self.owner, self.role = self._open_root(owner, role)
            for name in SUBDIRS:
                self.subdir(name, create=name in create)
        except BaseException:
            self.close()
            raise

    def _open_root(self, owner: int | None, role: str) -> tuple[int, str]:
        root = self.layout.root
        self._fds[_ROOT] = fd = open_dir(root, _root_name(root))
        status = os.fstat(fd)
        if owner is None:
            owner, role = status.st_uid, _OWNS_THE_SPOOL
        check_dir(status, root, owner, role)
        return owner, role

    def close(self) -> None:
        self._finalizer()

    @property
    def root(self) -> int:
        if not self._finalizer.alive:
            raise ValueError(f"the directories of spool {self.layout.root} are closed")
        return self._fds[_ROOT]

    @property
    def tmp(self) -> int:
        return self.need(TMP_DIR)

    @property
    def msg(self) -> int:
        return self.need(MSG_DIR)

    def need(self, name: str) -> int:
        """The descriptor of ``name``, which must exist; ``FileNotFoundError`` if not."""
        fd = self.subdir(name)
        if fd is None:
            path = os.path.join(self.layout.root, name)
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return fd

    def subdir(self, name: str, create: bool = False) -> int | None:
        """The descriptor of ``name`` under the root, opened and checked on first use and
        kept; None if there is none (made 0700 first when ``create``)."""
        fd = self._fds.get(name)
        if fd is not None:
            return fd
        shown = os.path.join(self.layout.root, name)
        try:
            fd = open_dir(shown, name, self.root)
        except FileNotFoundError:
            if not create:
                return None
            self._make(name)
            fd = open_dir(shown, name, self.root)
        try:
            check_dir(os.fstat(fd), shown, self.owner, self.role)
        except BaseException:
            os.close(fd)
            raise
        self._fds[name] = fd
        return fd

    def _make(self, name: str) -> None:
        try:
            os.mkdir(name, DIR_MODE, dir_fd=self.root)
        except FileExistsError:
            return  # made meanwhile by another worker
        except OSError as error:
            error.filename = os.path.join(self.layout.root, name)
            raise
        os.fsync(self.root)


# --- the durability protocol (run in worker threads) --------------------------------


def _named(error: OSError, directory: str, name: str) -> OSError:
    """``error`` naming the file by its path, for the operator (``dir_fd`` calls name it
    by its bare name)."""
    error.filename = os.path.join(directory, name)
    return error


def _unlink_quietly(name: str, directory: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=directory)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_unsynced(directory: int, name: str, data: bytes) -> int:
    """Create ``name`` in ``directory`` and write ``data``; its open descriptor, for
    ``fsync`` later. On a failure, no file is left."""
    fd = os.open(name, _NEW_FILE_FLAGS, FILE_MODE, dir_fd=directory)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        _unlink_quietly(name, directory)
        raise
    return fd


def write_temp(dirs: Directories, name: str, data: bytes) -> None:
    """Create ``tmp/<name>``, write ``data`` and fsync it; on any failure, leave no file."""
    fd = _write_unsynced(dirs.tmp, name, data)
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(name, dirs.tmp)
        raise


class Staged(NamedTuple):
    position: int
    temp: str
    final: str


def commit_batch(dirs: Directories, batch: Sequence[tuple[str, bytes]]) -> list[OSError | None]:
    """Make each ``(uuid, data)`` durable in ``msg/``: write every temp file, then fsync
    each (after the first, the journal has often committed the others' data: a quarter
    less time per message than writing and syncing one by one, on ext4), rename each, then
    fsync ``msg/`` once. Returns per message ``None`` (durable) or the error."""
    errors: list[OSError | None] = [None] * len(batch)
    written: list[tuple[int, int, Staged]] = []  # position, fd, names
    for index, (uuid, data) in enumerate(batch):
        names = Staged(index, temp_name(uuid), final_name(uuid))
        try:
            fd = _write_unsynced(dirs.tmp, names.temp, data)
        except OSError as error:
            errors[index] = _named(error, dirs.layout.tmp, names.temp)
        else:
            written.append((index, fd, names))
    staged = _sync_written(dirs, written, errors)
    renamed = _rename_staged(dirs, staged, errors)
    if renamed:
        _sync_renamed(dirs, renamed, errors)
    return errors


def _sync_written(
    dirs: Directories, written: list[tuple[int, int, Staged]], errors: list[OSError | None]
) -> list[Staged]:
    staged: list[Staged] = []
    for index, fd, names in written:
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            errors[index] = _named(error, dirs.layout.tmp, names.temp)
            _unlink_quietly(names.temp, dirs.tmp)
        else:
            staged.append(names)
    return staged


def _rename_staged(
    dirs: Directories, staged: list[Staged], errors: list[OSError | None]
) -> list[Staged]:
    tmp, msg = dirs.tmp, dirs.msg
    renamed: list[Staged] = []
    for item in staged:
        try:
            os.rename(item.temp, item.final, src_dir_fd=tmp, dst_dir_fd=msg)
        except OSError as error:
            errors[item.position] = _named(error, dirs.layout.msg, item.final)
            _unlink_quietly(item.temp, tmp)
        else:
            renamed.append(item)
    return renamed


def _sync_renamed(dirs: Directories, renamed: list[Staged], errors: list[OSError | None]) -> None:
    """fsync ``msg/``; if that fails, none of ``renamed`` is durable: fail and remove them
    (the client gets a 4xx and retries, so keeping them would only make duplicates)."""
    try:
        os.fsync(dirs.msg)
    except OSError as error:
        error.filename = dirs.layout.msg
        for item in renamed:
            errors[item.position] = error
            _unlink_quietly(item.final, dirs.msg)


def make_dirs(path: str) -> None:
    """Create ``path`` and missing parents (0700), fsyncing each new entry's parent."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    make_dirs(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        return
    fsync_dir(parent)


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable (a parent of the spool: by path)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare(layout: Layout) -> Directories:
    """Create the layout (or check the existing one: ``UnsafeSpool``), and prove it works
    by committing and removing a probe file; its checked directories."""
    make_dirs(layout.root)
    dirs = Directories(layout, os.geteuid(), _SERVES_IT, create=(TMP_DIR, MSG_DIR))
    try:
        if os.fstat(dirs.tmp).st_dev != os.fstat(dirs.msg).st_dev:
            raise OSError(errno.EXDEV, "tmp/ and msg/ are on different filesystems", layout.root)
        _probe(dirs)
    except BaseException:
        dirs.close()
        raise
    return dirs


def _probe(dirs: Directories) -> None:
    # Unique within the process too: spools of one directory may start side by side (the
    # deliver stage starts one for each bounce it keeps, several at once).
    token = f"{os.getpid()}.{next(_probes)}"
    temp, probe = f"probe.{token}.tmp", f".probe.{token}"
    try:
        write_temp(dirs, temp, b"probe")
    except OSError as error:
        if error.errno in STORAGE_ERRNOS:
            # Full, not broken: the server starts and answers 452 4.3.1 until there is
            # room again (docs/operations.md), instead of not answering at all.
            why = describe(_named(error, dirs.layout.tmp, temp))
            report(logging.WARNING, "spool_full_at_start", spool=dirs.layout.root, why=why)
            return
        raise _named(error, dirs.layout.tmp, temp) from None
    try:
        os.rename(temp, probe, src_dir_fd=dirs.tmp, dst_dir_fd=dirs.msg)
        os.fsync(dirs.msg)
    finally:
        _unlink_quietly(temp, dirs.tmp)
        _unlink_quietly(probe, dirs.msg)


def clean_tmp(tmp: int, older_than: float) -> int:
    """Remove from the directory ``tmp`` (a descriptor: each unlink is of an entry of that
    directory, never through a link to another) temp files, crash leftovers, not modified
    for ``older_than`` seconds, or whose writer (the pid in ``<uuid>.<pid>.tmp``) is gone;
    return how many. A directory put there by hand is left alone, not fatal."""
    cutoff = time.time() - older_than
    removed = 0
    with os.scandir(tmp) as entries:
        for entry in entries:
            try:
                status = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(status.st_mode):
                    continue
                if status.st_mtime < cutoff or _writer_gone(entry.name):
                    os.unlink(entry.name, dir_fd=tmp)
                    removed += 1
            except OSError:
                continue  # gone meanwhile, or not ours to remove: the next start looks again
    return removed


def _writer_gone(name: str) -> bool:
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "tmp" or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, another user's
    return False


# --- the handoff ---------------------------------------------------------------------


class SpoolStatistics(msgspec.Struct, frozen=True):
    #: Group commits done: one worker thread call and one directory fsync each.
    commits: int
    #: Messages that went through those commits (made durable or failed).
    messages: int
    #: Messages waiting for the next commit.
    queued: int


class _Pending(NamedTuple):
    id: str
    uuid: str
    data: bytes
    future: asyncio.Future[Delivery]


class SpoolHandoff(Handoff):
    """Deliver into the spool at ``path``, up to ``batch`` messages per group commit.

    Bound to the event loop of its first ``deliver``; not shared between loops. Holds the
    descriptors of ``tmp/`` and ``msg/`` from ``start`` (or its first commit) to ``close``.
    """

    name = "spool"

    def __init__(self, path: str | os.PathLike[str], batch: int = 64) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.layout = Layout(path)
        self.batch = batch
        self._dirs: Directories | None = None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._committer: asyncio.Task[None] | None = None
        self._closing = False
        self._commits = 0
        self._messages = 0

    async def start(self) -> None:
        try:
            self._dirs = dirs = await asyncio.to_thread(prepare, self.layout)
            removed = await asyncio.to_thread(clean_tmp, dirs.tmp, STALE_TMP_SECONDS)
        except SpoolError as error:  # UnsafeSpool: the message names the directory
            raise HandoffStartError(str(error)) from None
        except OSError as error:
            raise HandoffStartError(
                f"spool {self.layout.root} is not usable: {describe(error)}"
            ) from None
        if removed:
            report(
                logging.WARNING, "spool_stale_temp_removed", spool=self.layout.root, files=removed
            )

    async def deliver(self, message: Message) -> Delivery:
        """Durable in ``msg/`` before this returns ok. A malformed ``email.id`` is the
        caller's bug and raises ``ValueError``."""
        uuid = message_uuid(message.email.id)
        data = encode(message, CONTENT_TYPE_MSGPACK)
        if self._closing:
            report(logging.ERROR, "spool_closed", message=message.email.id)
            return failed(LOCAL_PROBLEM)
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(message.email.id, uuid, data, future))
        self._wake_committer()
        return await future

    async def close(self) -> None:
        """Commit what is queued, then refuse further deliveries (451)."""
        self._closing = True
        committer = self._committer
        if committer is not None and not committer.done():
            await committer
        dirs, self._dirs = self._dirs, None
        # A cancelled committer's thread may still be renaming: its descriptors are then
        # closed when that thread lets go of them (collected), never under a rename.
        if dirs is not None and not (committer is not None and committer.cancelled()):
            dirs.close()

    def statistics(self) -> SpoolStatistics:
        return SpoolStatistics(self._commits, self._messages, len(self._queue))

    def _wake_committer(self) -> None:
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_queued(), name="spool committer")

    async def _commit_queued(self) -> None:
        while self._queue:
            batch = self._take_batch()
            if batch:
                await self._commit(batch)

    def _take_batch(self) -> list[_Pending]:
        """Up to ``batch`` queued messages whose sender still waits."""
        batch: list[_Pending] = []
        while self._queue and len(batch) < self.batch:
            pending = self._queue.popleft()
            if not pending.future.done():
                batch.append(pending)
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        items = [(p.uuid, p.data) for p in batch]
        try:
            errors = await asyncio.to_thread(self._commit_in_thread, items)
        except asyncio.CancelledError:
            self._cancel_all(batch)
            raise
        except Exception as bug:  # not an OSError: errors always propagate, to every caller
            self._fail_all(batch, bug)
            return
        self._commits += 1
        self._messages += len(batch)
        for pending, error in zip(batch, errors, strict=True):
            self._resolve(pending, error)

    def _commit_in_thread(self, items: list[tuple[str, bytes]]) -> list[OSError | None]:
        try:
            dirs = self._dirs or self._open_existing()
        except OSError as error:  # UnsafeSpool included: every message fails (451)
            return [error] * len(items)
        return commit_batch(dirs, items)

    def _open_existing(self) -> Directories:
        """Without a ``start``: the existing directories, opened and checked now."""
        dirs = Directories(self.layout, os.geteuid(), _SERVES_IT)
        try:
            dirs.need(TMP_DIR)
            dirs.need(MSG_DIR)
        except OSError:
            dirs.close()
            raise
        self._dirs = dirs
        return dirs

    def _resolve(self, pending: _Pending, error: OSError | None) -> None:
        outcome = DELIVERED
        if error is not None:
            report(logging.ERROR, "spool_write_failed", message=pending.id, why=describe(error))
            outcome = local_failure(error)
        if not pending.future.done():
            pending.future.set_result(outcome)

    def _cancel_all(self, batch: list[_Pending]) -> None:
        for pending in [*batch, *self._queue]:
            pending.future.cancel()
        self._queue.clear()

    def _fail_all(self, batch: list[_Pending], error: Exception) -> None:
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)


# --- the reader ------------------------------------------------------------------------


class Entry(msgspec.Struct, frozen=True):
    """One spooled message as ``wildboar spool ls`` shows it."""

    id: str
    #: When it was committed (the file's mtime), seconds since the epoch.
    mtime: float
    #: When the server accepted it (the record's ``email.creationTime``).
    created: datetime.datetime
    #: The message's size in octets (the record's ``email.size``), not the file's.
    size: int
    sender: str
    to: tuple[str, ...]
    #: Where a retried delivery stands (records of the LMTP retry spool), else None.
    retry: Retry | None = None


class _EnvelopeEmail(msgspec.Struct):
    creation_time: datetime.datetime = msgspec.field(name="creationTime")
    sender: str = msgspec.field(name="from")
    to: list[str] = msgspec.field(default_factory=list)
    size: int = 0


class _Envelope(msgspec.Struct):
    """The part of a record ``ls`` needs; decoding skips the rest, data included."""

    email: _EnvelopeEmail
    retry: Retry | None = None


_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


def reader_owner() -> tuple[int | None, str]:
    """The uid a reader's spool must be owned by, and how to name it: this process's, or
    for root (which may read every spool, through descriptors only) the spool's owner."""
    euid = os.geteuid()
    return (None, _OWNS_THE_SPOOL) if euid == ROOT_UID else (euid, _READS_IT)


def spool_owner(path: str | os.PathLike[str]) -> int:
    """The uid owning the spool directory ``path`` (itself, not what a link there names);
    ``SpoolError`` if there is none."""
    root = os.fspath(path)
    try:
        fd = open_dir(root, _root_name(root))
    except FileNotFoundError:
        raise _not_a_spool(root) from None
    try:
        return os.fstat(fd).st_uid
    finally:
        os.close(fd)


def _not_a_spool(root: str) -> SpoolError:
    return SpoolError(f"{root} is not a spool (it has no {MSG_DIR}/ directory)")


class Spool:
    """Read access to the spool at ``path``: list, load, count, remove, clean up.

    Its directories are opened and checked once, here (see ``Directories``; owned by this
    process's uid, or for root by the root's owner): ``UnsafeSpool`` otherwise. Not for
    two threads at once. ``close`` (or ``with``, or collecting it) releases them.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.layout = Layout(path)
        owner, role = reader_owner()
        try:
            self._dirs = Directories(self.layout, owner, role)
        except FileNotFoundError:
            raise _not_a_spool(self.layout.root) from None
        if self._dirs.subdir(MSG_DIR) is None:
            self._dirs.close()
            raise _not_a_spool(self.layout.root)

    def close(self) -> None:
        self._dirs.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def uuids(self) -> builtins.list[str]:
        """The UUIDs of the durable messages, in no order. Temp files are never included."""
        names = os.listdir(self._dirs.msg)
        return [n[: -len(SUFFIX)] for n in names if _is_message_name(n)]

    def count(self) -> int:
        return len(self.uuids())

    def due(self, now: float) -> builtins.list[str]:
        """The URNs of the messages whose file time is ``now`` or earlier, earliest first,
        found without reading a record: the LMTP retry spool keeps each record's next
        attempt there (``set_time``), as Postfix's deferred queue does."""
        found = []
        for uuid in self.uuids():
            try:
                status = os.stat(final_name(uuid), dir_fd=self._dirs.msg, follow_symlinks=False)
            except FileNotFoundError:
                continue  # taken meanwhile
            if status.st_mtime <= now:
                found.append((status.st_mtime, _URN_PREFIX + uuid))
        return [urn for _, urn in sorted(found)]

    def set_time(self, message_id: str, when: float) -> None:
        """Set a message's file time (in the retry spool: when it is next due)."""
        uuid = message_uuid(message_id)
        try:
            os.utime(final_name(uuid), (when, when), dir_fd=self._dirs.msg, follow_symlinks=False)
        except FileNotFoundError:
            raise self._missing(uuid) from None

    def list(self) -> builtins.list[Entry]:
        """Every durable message, oldest first: in the order the server accepted them (file
        times are too coarse to order the messages of one group commit)."""
        entries = (self._entry(uuid) for uuid in self.uuids())
        return sorted(
            (e for e in entries if e is not None), key=lambda e: (e.created, e.mtime, e.id)
        )

    def set_aside(self) -> dict[str, int]:
        """How many records wait in ``corrupt/`` and ``held/`` for the operator."""
        counts = {}
        for name in ASIDE_DIRS:
            directory = self._dirs.subdir(name)
            if directory is None:
                continue
            counted = sum(1 for f in os.listdir(directory) if _is_message_name(f))
            if counted:
                counts[name] = counted
        return counts

    def readable(self) -> tuple[builtins.list[Entry], builtins.list[str]]:
        """Like ``list``, but a corrupt record does not stop it: (the valid entries, oldest
        first; the URNs of the corrupt ones)."""
        entries: builtins.list[Entry] = []
        corrupt: builtins.list[str] = []
        for uuid in self.uuids():
            try:
                entry = self._entry(uuid)
            except CorruptMessage:
                corrupt.append(_URN_PREFIX + uuid)
                continue
            if entry is not None:
                entries.append(entry)
        entries.sort(key=lambda e: (e.created, e.mtime, e.id))
        return entries, corrupt

    def quarantine(self, message_id: str, into: str = CORRUPT_DIR) -> str:
        """Move a message out of ``msg/`` into ``into/`` (``corrupt/``, ``held/``, made
        when missing): kept for the operator, never delivered from there; its new path."""
        if into not in ASIDE_DIRS:
            raise ValueError(f"records are set aside in {' or '.join(ASIDE_DIRS)}, not {into!r}")
        uuid = message_uuid(message_id)
        aside, messages = self._aside(into), self._dirs.msg
        name = final_name(uuid)
        try:
            os.rename(name, name, src_dir_fd=messages, dst_dir_fd=aside)
        except FileNotFoundError:
            raise self._missing(uuid) from None
        os.fsync(aside)
        os.fsync(messages)
        return os.path.join(self.layout.root, into, name)

    def _aside(self, into: str) -> int:
        fd = self._dirs.subdir(into, create=True)
        assert fd is not None  # made when missing
        return fd

    def load(self, message_id: str) -> Message:
        """The message with ``urn:uuid:<uuid>`` or bare ``<uuid>`` ``message_id``."""
        data, _ = self._read(message_uuid(message_id))
        try:
            return decode(data, CONTENT_TYPE_MSGPACK)
        except msgspec.DecodeError as error:
            raise self._corrupt(message_id, error) from None

    def remove(self, message_id: str) -> None:
        uuid = message_uuid(message_id)
        messages = self._dirs.msg
        try:
            os.unlink(final_name(uuid), dir_fd=messages)
        except FileNotFoundError:
            raise self._missing(uuid) from None
        os.fsync(messages)

    def clean_tmp(self, older_than: float) -> int:
        """Remove temp files (crash leftovers) older than ``older_than`` seconds."""
        tmp = self._dirs.subdir(TMP_DIR)
        return 0 if tmp is None else clean_tmp(tmp, older_than)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the consumer lock (``flock`` on ``msg/``); ``SpoolBusy`` if taken. The lock
        is on a descriptor of its own, so it conflicts with every other holder's."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._dirs.msg)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SpoolBusy(f"{self.layout.root}: another process is draining it") from None
            yield
        finally:
            os.close(fd)

    def _entry(self, uuid: str) -> Entry | None:
        try:
            data, status = self._read(uuid)
        except NoSuchMessage:
            return None  # taken by a concurrent drain
        try:
            envelope = _envelope_decoder.decode(data)
        except msgspec.DecodeError as error:
            raise self._corrupt(uuid, error) from None
        email, urn = envelope.email, _URN_PREFIX + uuid
        return Entry(
            urn,
            status.st_mtime,
            email.creation_time,
            email.size,
            email.sender,
            tuple(email.to),
            envelope.retry,
        )

    def _read(self, uuid: str) -> tuple[bytes, os.stat_result]:
        """The file's bytes; ``CorruptMessage`` for anything that is not a readable regular
        file of a sane size (a directory, a link, a FIFO that would block, a sparse giant,
        a file this user may not read): named and set aside, never a hang or a crash."""
        path = self.layout.final(uuid)
        try:
            fd = os.open(final_name(uuid), _READ_FLAGS, dir_fd=self._dirs.msg)
        except FileNotFoundError:
            raise self._missing(uuid) from None
        except OSError as error:
            raise CorruptMessage(f"{path}: cannot be read: {error.strerror}") from None
        try:
            return _read_record(fd, path)
        finally:
            os.close(fd)

    def _missing(self, uuid: str) -> NoSuchMessage:
        return NoSuchMessage(f"no message {_URN_PREFIX}{uuid} in spool {self.layout.root}")

    def _corrupt(self, message_id: str, error: msgspec.DecodeError) -> CorruptMessage:
        path = self.layout.final(message_uuid(message_id))
        return CorruptMessage(f"{path}: not a valid message record: {error}")


def _read_record(fd: int, path: str) -> tuple[bytes, os.stat_result]:
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise CorruptMessage(f"{path}: not a regular file")
        if status.st_size > MAX_RECORD:
            raise CorruptMessage(f"{path}: {status.st_size} octets, more than any record")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), status
    except OSError as error:
        raise CorruptMessage(f"{path}: cannot be read: {error.strerror}") from None


def _is_message_name(name: str) -> bool:
    return name.endswith(SUFFIX) and _UUID.fullmatch(name[: -len(SUFFIX)]) is not None
