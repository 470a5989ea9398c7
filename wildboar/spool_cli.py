"""``wildboar spool {ls,show ID,count,drain}``: look into the spool and empty it.

Owns: the ``spool`` subcommands, their output formats and exit statuses (0 ok, 1 error,
with one line on stderr and no traceback).
Must not know: how the spool is written (it uses ``wildboar.handoff.spool.Spool``), SMTP.
Security: meant for the operator (root or the ``wildboar`` user). Ids are checked before a
path is built; files are read without following links; addresses and headers come from
the Internet, so control characters are escaped before they reach a terminal. ``drain``
removes a message only after its line was flushed (and fsync'd, when stdout is a file).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import stat
import sys
from collections.abc import Callable

import msgspec

from . import config
from . import message as M
from .handoff.spool import CORRUPT_DIR, SUFFIX, CorruptMessage, Entry, Spool, SpoolError, describe

DRAIN_HELP = "print every message as a JSON line and remove it from the spool"
DRAIN_DESCRIPTION = (
    "Write every spooled message to stdout as one JSON line (the wire form), oldest first, "
    "and remove each file only once its line was flushed (and fsync'd when stdout is a "
    "regular file). In this release nothing else consumes the spool: drain is how messages "
    "leave it."
)
_C1_AND_DEL = re.compile("[\x7f-\x9f]")
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\U0010ffff]|[\u2028\u2029]")

Command = Callable[[argparse.Namespace], int]
Action = Callable[[Spool], int]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``spool`` and its subcommands to a ``wildboar`` command line."""
    spool = subparsers.add_parser(
        "spool",
        help="list, show, count and drain the spool",
        description="Look into the spool directory and drain it.",
    )
    commands = spool.add_subparsers(dest="spool_command", required=True, metavar="COMMAND")
    _command(commands, "ls", cmd_ls, "list messages, oldest first: id, time, size, from -> to")
    show = _command(commands, "show", cmd_show, "print one message record as indented JSON")
    show.add_argument("id", metavar="ID", help="urn:uuid:<uuid> or <uuid>")
    _command(commands, "count", cmd_count, "print the number of spooled messages")
    _command(commands, "drain", cmd_drain, DRAIN_HELP, DRAIN_DESCRIPTION)


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Command,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    description = description or help[:1].upper() + help[1:] + "."
    parser = commands.add_parser(name, help=help, description=description)
    parser.add_argument(
        "--spool",
        metavar="DIR",
        help="the spool directory (default: spool.path of the configuration)",
    )
    parser.set_defaults(func=func)
    return parser


def _fail(message: str) -> int:
    print(f"wildboar spool: {message}", file=sys.stderr)
    return 1


def _open(args: argparse.Namespace) -> Spool:
    """The spool of ``--spool``, else of the configuration (``--config`` if the main command
    line has one, else the usual sources)."""
    if args.spool is not None:
        return Spool(args.spool)
    return Spool(config.load(file=getattr(args, "config", None)).spool.path)


def _run(args: argparse.Namespace, action: Action) -> int:
    """Open the spool named by ``args`` and run ``action(spool)``, turning every expected
    error into one line on stderr and status 1."""
    try:
        return action(_open(args))
    except config.ConfigError as error:
        for line in error.errors:
            _fail(f"configuration: {line}")
        return 1
    except SpoolError as error:
        return _fail(str(error))
    except OSError as error:
        if isinstance(error, BrokenPipeError):
            _silence_stdout()
        return _fail(describe(error))


def _printable(text: str) -> str:
    """``text`` with control characters shown as escapes (addresses come from clients)."""
    return _NOT_PRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def _time(mtime: float) -> str:
    when = datetime.datetime.fromtimestamp(mtime, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_entry(entry: Entry) -> str:
    sender = _printable(entry.sender) or "<>"
    to = ",".join(_printable(address) for address in entry.to)
    return f"{entry.id}  {_time(entry.mtime)}  {entry.size:>9}  {sender} -> {to}"


def _say_set_aside(spool: Spool) -> None:
    """On stderr (stdout stays parseable): records a drain moved aside, which wait for the
    operator and are delivered by nobody."""
    for name, count in spool.set_aside().items():
        where = os.path.join(spool.layout.root, name)
        print(f"wildboar spool: {count} set aside in {where}/, not delivered", file=sys.stderr)


def _corrupt_path(spool: Spool, message_id: str) -> str:
    return os.path.join(spool.layout.msg, message_id.removeprefix("urn:uuid:") + SUFFIX)


def cmd_ls(args: argparse.Namespace) -> int:
    """Every readable message; an unreadable record is named on stderr (status 1), not a
    reason to list nothing."""

    def ls(spool: Spool) -> int:
        entries, corrupt = spool.readable()
        for entry in entries:
            sys.stdout.write(format_entry(entry) + "\n")
        for message_id in corrupt:
            _fail(
                f"{_corrupt_path(spool, message_id)}: not a valid message record"
                " (wildboar spool drain sets it aside in corrupt/)"
            )
        _say_set_aside(spool)
        return 1 if corrupt else 0

    return _run(args, ls)


def cmd_count(args: argparse.Namespace) -> int:
    def count(spool: Spool) -> int:
        sys.stdout.write(f"{spool.count()}\n")
        _say_set_aside(spool)
        return 0

    return _run(args, count)


def cmd_show(args: argparse.Namespace) -> int:
    def show(spool: Spool) -> int:
        record = M.encode(spool.load(args.id))
        text = msgspec.json.format(record, indent=2).decode("utf-8")
        # JSON escapes C0 controls but not DEL and C1 (CSI is U+009B): escape them too.
        sys.stdout.write(_C1_AND_DEL.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
        return 0

    return _run(args, show)


def cmd_drain(args: argparse.Namespace) -> int:
    def drain(spool: Spool) -> int:
        sys.stdout.flush()
        out = sys.stdout.fileno()  # written with os.write: no buffer to hide a short write
        durable_out = stat.S_ISREG(os.fstat(out).st_mode)
        with spool.lock():
            entries, corrupt = spool.readable()
            for entry in entries:
                try:
                    line = M.encode(spool.load(entry.id)) + b"\n"
                except CorruptMessage:  # changed since it was listed
                    corrupt.append(entry.id)
                    continue
                if not _emit(out, line, durable_out):
                    return 1
                spool.remove(entry.id)
            # Unreadable records would stop every later drain: moved aside, named, kept.
            for message_id in corrupt:
                moved = spool.quarantine(message_id, CORRUPT_DIR)
                _fail(f"{_corrupt_path(spool, message_id)}: not a valid message record;"
                      f" set aside as {moved}")  # fmt: skip
        return 1 if corrupt else 0

    return _run(args, drain)


def _emit(out: int, line: bytes, file: bool) -> bool:
    """Write all of ``line`` to the descriptor ``out``; into a file, fsync it too. False
    (said on stderr) if the reader went away or the disk failed: that message stays in the
    spool, and a file gets no partial line (it is cut back to where the line began)."""
    # Where the line begins: the end of the file (also with >>, whose offset says 0).
    start = os.fstat(out).st_size if file else 0
    view = memoryview(line)
    try:
        while view:
            view = view[os.write(out, view) :]
        if file:
            os.fsync(out)
    except OSError as error:
        if file:
            with contextlib.suppress(OSError):
                os.ftruncate(out, start)
        _fail(f"stdout: {error.strerror or error}; this message and the rest stay in the spool")
        _silence_stdout()
        return False
    return True


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of the unwritten rest
    does not fail again (Python docs, "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """``python -m wildboar.spool_cli spool ...``: the same commands without the main CLI."""
    parser = argparse.ArgumentParser(prog="wildboar")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
