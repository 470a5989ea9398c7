"""The store stage: every message into a directory, as ``<uuid>.eml`` and ``<uuid>.json``.

For a message whose ``email.id`` is ``urn:uuid:<uuid>``, ``<uuid>.eml`` holds the message
as received (``email.data``: the Received field wildboar added, then the content, CRLF line
ends) and ``<uuid>.json`` the record as this stage got it (the JSON form of
``wildboar.message.Message``, verdicts of the earlier stages included). The directory is
``WILDBOAR_STORE_DIR`` (required; made, mode 0700, if missing). The stage returns the event
with a ``stored`` verdict (details: ``eml``, ``json``: the two paths) for the next stage.

Each file is written to a temporary name in the same directory, its own for every call
(``.<name>.<pid>.<random>.tmp``), fsync'd, renamed over its final name, and the directory
fsync'd: a file under its final name is always whole and durable, the ``.eml`` first, so
a ``.json`` never names a message that is not there. A message delivered again (the
runtime is at-least-once) writes the same names again: the files are replaced, never
duplicated, and a crash between two writes leaves at most a stray temporary file
(``.*.tmp``, safe to remove).

Owns: the layout above and its durability.
Must not know: brokers, retries (a failed write raises ``OSError``: the runtime retries it).
Later: an S3-compatible store (not in this version).
Security: file names come only from the record's id, which the schema checks against the
UUID pattern, so no name can leave the directory; files are created 0600 with
``O_EXCL|O_NOFOLLOW`` through a descriptor of the directory, which is opened with
``O_NOFOLLOW`` (the directory itself may not be a symbolic link).
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from .. import message as M
from . import Event, add_verdict
from ._settings import SettingError, stage_name, text


class Settings(msgspec.Struct, frozen=True):
    #: Where the messages go.
    directory: str


def load(environ: Mapping[str, str]) -> Settings:
    """The settings from ``WILDBOAR_STORE_DIR``."""
    directory = text(environ, "WILDBOAR_STORE_DIR")
    if directory is None:
        raise SettingError("WILDBOAR_STORE_DIR is not set: the directory to store messages in")
    return Settings(directory=directory)


@functools.cache
def settings() -> Settings:
    """This process's settings, read from its environment once."""
    return load(os.environ)


def handler(event: Event, context: Any) -> Event:
    """The stage's entry point (``wildboar consume store``)."""
    return handle(event, context, settings())


def handle(event: Event, context: Any, config: Settings) -> Event:
    record = msgspec.json.decode(msgspec.json.encode(event), type=M.Message)
    eml, json = store(Path(config.directory), record)
    return add_verdict(event, stage_name(context, "store"), "stored", eml=str(eml), json=str(json))


def store(directory: Path, record: M.Message) -> tuple[Path, Path]:
    """Write ``record`` into ``directory`` durably (see the module's header); the paths of
    its ``.eml`` and ``.json``."""
    uuid = record.email.id.removeprefix("urn:uuid:")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        write_durably(fd, f"{uuid}.eml", record.email.data)
        write_durably(fd, f"{uuid}.json", M.encode(record))
    finally:
        os.close(fd)
    return directory / f"{uuid}.eml", directory / f"{uuid}.json"


def write_durably(directory: int, name: str, data: bytes) -> None:
    """``name`` in the directory open as ``directory`` holds ``data``, durably, whole or not
    at all: a temporary file written and fsync'd, renamed over ``name``, the directory
    fsync'd."""
    # A name of this call's own: an overrunning call and its retry (in another thread of
    # the same process) never write, rename or remove each other's file.
    temp = f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600, dir_fd=directory)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        os.unlink(temp, dir_fd=directory)
        raise
    os.fsync(directory)
