"""The spool: one file per accepted message in a local directory, and the reader for it.

Owns: the spool layout and its durability protocol, the group commit that shares fsyncs
between concurrent deliveries, and ``Spool``, the reader behind ``wildboar spool``.

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
Security: file names come only from a UUID checked against a strict pattern, never from
other message content, and operator-given ids are checked the same way, so no path can
leave the spool. Directories are created 0700 and files 0600 (mail is private). The reader
opens files with ``O_NOFOLLOW`` and validates every record against the schema, so a
privileged ``wildboar spool`` run does not follow links planted in the spool.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import datetime
import errno
import fcntl
import logging
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import msgspec

from ..message import CONTENT_TYPE_MSGPACK, Message, decode, encode
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
# A temp file is written within one handoff (``timeouts.handoff``, 540 s by default); one
# older than an hour was left by a crash, and start() removes it.
STALE_TMP_SECONDS = 3600.0
# Files and directories hold mail: owner only.
FILE_MODE = 0o600
DIR_MODE = 0o700
#: Larger than any record a server writes (message_size is far below): a bigger file in
#: msg/ was not written by one, and reading it whole could exhaust memory.
MAX_RECORD = 1 << 30

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_URN_PREFIX = "urn:uuid:"


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


def message_uuid(message_id: str) -> str:
    """The bare lowercase UUID of ``urn:uuid:<uuid>`` or ``<uuid>``; ``BadMessageId`` if
    it is neither."""
    bare = message_id.strip().lower().removeprefix(_URN_PREFIX)
    if not _UUID.fullmatch(bare):
        raise BadMessageId(f"{message_id!r} is not a message id (urn:uuid:<uuid> or <uuid>)")
    return bare


# --- the layout and its file operations (run in worker threads) -------------------


class Layout:
    """The paths of one spool directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = os.fspath(path)
        self.tmp = os.path.join(self.root, TMP_DIR)
        self.msg = os.path.join(self.root, MSG_DIR)

    def final(self, uuid: str) -> str:
        return os.path.join(self.msg, uuid + SUFFIX)

    def temp(self, uuid: str) -> str:
        return os.path.join(self.tmp, f"{uuid}.{os.getpid()}.tmp")


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_temp(path: str, data: bytes) -> None:
    """Create ``path``, write ``data`` and fsync it; on any failure, leave no file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(path)
        raise


class Staged(NamedTuple):
    position: int
    temp: str
    final: str


def _write_unsynced(path: str, data: bytes) -> int:
    """Create ``path`` and write ``data``; its open descriptor, for ``fsync`` later. On a
    failure, no file is left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    return fd


def commit_batch(layout: Layout, batch: Sequence[tuple[str, bytes]]) -> list[OSError | None]:
    """Make each ``(uuid, data)`` durable in ``msg/``: write every temp file, then fsync
    each (after the first, the journal has often committed the others' data: a quarter
    less time per message than writing and syncing one by one, on ext4), rename each, then
    fsync ``msg/`` once. Returns per message ``None`` (durable) or the error."""
    errors: list[OSError | None] = [None] * len(batch)
    written: list[tuple[int, int, str, str]] = []  # position, fd, temp, final
    for index, (uuid, data) in enumerate(batch):
        temp = layout.temp(uuid)
        try:
            fd = _write_unsynced(temp, data)
        except OSError as error:
            errors[index] = error
        else:
            written.append((index, fd, temp, layout.final(uuid)))
    staged: list[Staged] = []
    for index, fd, temp, final in written:
        try:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            errors[index] = error
            _unlink_quietly(temp)
        else:
            staged.append(Staged(index, temp, final))
    renamed = _rename_staged(staged, errors)
    if renamed:
        _sync_renamed(layout, renamed, errors)
    return errors


def _rename_staged(staged: list[Staged], errors: list[OSError | None]) -> list[Staged]:
    renamed: list[Staged] = []
    for item in staged:
        try:
            os.rename(item.temp, item.final)
        except OSError as error:
            errors[item.position] = error
            _unlink_quietly(item.temp)
        else:
            renamed.append(item)
    return renamed


def _sync_renamed(layout: Layout, renamed: list[Staged], errors: list[OSError | None]) -> None:
    """fsync ``msg/``; if that fails, none of ``renamed`` is durable: fail and remove them
    (the client gets a 4xx and retries, so keeping them would only make duplicates)."""
    try:
        fsync_dir(layout.msg)
    except OSError as error:
        for item in renamed:
            errors[item.position] = error
            _unlink_quietly(item.final)


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


def prepare(layout: Layout) -> None:
    """Create the layout and prove it works by committing and removing a probe file."""
    for path in (layout.root, layout.tmp, layout.msg):
        make_dirs(path)
    if os.stat(layout.tmp).st_dev != os.stat(layout.msg).st_dev:
        raise OSError(errno.EXDEV, "tmp/ and msg/ are on different filesystems", layout.root)
    probe = os.path.join(layout.msg, f".probe.{os.getpid()}")
    temp = layout.temp("probe")
    try:
        write_temp(temp, b"probe")
    except OSError as error:
        if error.errno in STORAGE_ERRNOS:
            # Full, not broken: the server starts and answers 452 4.3.1 until there is
            # room again (docs/operations.md), instead of not answering at all.
            report(logging.WARNING, "spool_full_at_start", spool=layout.root, why=describe(error))
            return
        raise
    try:
        os.rename(temp, probe)
        fsync_dir(layout.msg)
    finally:
        _unlink_quietly(temp)
        _unlink_quietly(probe)


def clean_tmp(layout: Layout, older_than: float) -> int:
    """Remove temp files (crash leftovers) not modified for ``older_than`` seconds, or
    whose writer (the pid in ``<uuid>.<pid>.tmp``) is gone; return how many. Anything
    else in ``tmp/`` (a directory put there by hand) is left alone, not fatal."""
    cutoff = time.time() - older_than
    removed = 0
    for entry in os.scandir(layout.tmp):
        try:
            status = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(status.st_mode):
                continue
            if status.st_mtime < cutoff or _writer_gone(entry.name):
                os.unlink(entry.path)
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


def describe(error: OSError) -> str:
    """``path: reason`` for an operator, without a traceback."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


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

    Bound to the event loop of its first ``deliver``; not shared between loops.
    """

    name = "spool"

    def __init__(self, path: str | os.PathLike[str], batch: int = 64) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.layout = Layout(path)
        self.batch = batch
        self._queue: collections.deque[_Pending] = collections.deque()
        self._committer: asyncio.Task[None] | None = None
        self._closing = False
        self._commits = 0
        self._messages = 0

    async def start(self) -> None:
        try:
            await asyncio.to_thread(prepare, self.layout)
            removed = await asyncio.to_thread(clean_tmp, self.layout, STALE_TMP_SECONDS)
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
            errors = await asyncio.to_thread(commit_batch, self.layout, items)
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


class _EnvelopeEmail(msgspec.Struct):
    creation_time: datetime.datetime = msgspec.field(name="creationTime")
    sender: str = msgspec.field(name="from")
    to: list[str] = msgspec.field(default_factory=list)
    size: int = 0


class _Envelope(msgspec.Struct):
    """The part of a record ``ls`` needs; decoding skips the rest, data included."""

    email: _EnvelopeEmail


_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


class Spool:
    """Read access to the spool at ``path``: list, load, count, remove, clean up."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.layout = Layout(path)
        if not os.path.isdir(self.layout.msg):
            raise SpoolError(f"{self.layout.root} is not a spool (it has no {MSG_DIR}/ directory)")

    def uuids(self) -> builtins.list[str]:
        """The UUIDs of the durable messages, in no order. Temp files are never included."""
        names = os.listdir(self.layout.msg)
        return [n[: -len(SUFFIX)] for n in names if _is_message_name(n)]

    def count(self) -> int:
        return len(self.uuids())

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
        for name in (CORRUPT_DIR, HELD_DIR):
            try:
                files = os.listdir(os.path.join(self.layout.root, name))
            except FileNotFoundError:
                continue
            counted = sum(1 for f in files if _is_message_name(f))
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
        """Move a message out of ``msg/`` into ``into/`` (``corrupt/``, ``held/``): kept for
        the operator, never delivered from there; its new path."""
        uuid = message_uuid(message_id)
        directory = os.path.join(self.layout.root, into)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, DIR_MODE)
        # Both ends through descriptors opened without following links: the workers own
        # the spool, and a root drain must not move their files where a planted link says.
        aside = _open_dir(directory)
        try:
            messages = _open_dir(self.layout.msg)
            try:
                name = uuid + SUFFIX
                try:
                    os.rename(name, name, src_dir_fd=messages, dst_dir_fd=aside)
                except FileNotFoundError:
                    raise self._missing(uuid) from None
                os.fsync(aside)
                os.fsync(messages)
            finally:
                os.close(messages)
        finally:
            os.close(aside)
        return os.path.join(directory, uuid + SUFFIX)

    def load(self, message_id: str) -> Message:
        """The message with ``urn:uuid:<uuid>`` or bare ``<uuid>`` ``message_id``."""
        data, _ = self._read(message_uuid(message_id))
        try:
            return decode(data, CONTENT_TYPE_MSGPACK)
        except msgspec.DecodeError as error:
            raise self._corrupt(message_id, error) from None

    def remove(self, message_id: str) -> None:
        uuid = message_uuid(message_id)
        try:
            os.unlink(self.layout.final(uuid))
        except FileNotFoundError:
            raise self._missing(uuid) from None
        fsync_dir(self.layout.msg)

    def clean_tmp(self, older_than: float) -> int:
        """Remove temp files (crash leftovers) older than ``older_than`` seconds."""
        return clean_tmp(self.layout, older_than)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the consumer lock (``flock`` on ``msg/``); ``SpoolBusy`` if taken."""
        fd = os.open(self.layout.msg, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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
            data, stat = self._read(uuid)
        except NoSuchMessage:
            return None  # taken by a concurrent drain
        try:
            email = _envelope_decoder.decode(data).email
        except msgspec.DecodeError as error:
            raise self._corrupt(uuid, error) from None
        urn = _URN_PREFIX + uuid
        return Entry(
            urn, stat.st_mtime, email.creation_time, email.size, email.sender, tuple(email.to)
        )

    def _read(self, uuid: str) -> tuple[bytes, os.stat_result]:
        """The file's bytes; ``CorruptMessage`` for anything that is not a readable regular
        file of a sane size (a directory, a link, a FIFO that would block, a sparse giant,
        a file this user may not read): named and set aside, never a hang or a crash."""
        path = self.layout.final(uuid)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise self._missing(uuid) from None
        except OSError as error:
            raise CorruptMessage(f"{path}: cannot be read: {describe(error)}") from None
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
            raise CorruptMessage(f"{path}: cannot be read: {describe(error)}") from None
        finally:
            os.close(fd)

    def _missing(self, uuid: str) -> NoSuchMessage:
        return NoSuchMessage(f"no message {_URN_PREFIX}{uuid} in spool {self.layout.root}")

    def _corrupt(self, message_id: str, error: msgspec.DecodeError) -> CorruptMessage:
        path = self.layout.final(message_uuid(message_id))
        return CorruptMessage(f"{path}: not a valid message record: {error}")


def _open_dir(path: str) -> int:
    """A descriptor of the directory ``path`` itself, never of what a link there names."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SpoolError(f"{path} is not a directory (a symbolic link?): not used") from None
        raise


def _is_message_name(name: str) -> bool:
    return name.endswith(SUFFIX) and _UUID.fullmatch(name[: -len(SUFFIX)]) is not None
