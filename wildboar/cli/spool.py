"""``wildboar spool {ls,show ID,count,drain}``: look into the spools and empty them.

Owns: the ``spool`` subcommands, their output formats and exit statuses (0 ok, 1 error,
with one line on stderr and no traceback), and who this process is while it reads a spool.
Must not know: how the spool is written (it uses ``wildboar.handoff.spool.Spool``), SMTP.
Security: meant for the operator (root or the ``wildboar`` user), on a spool the
unprivileged workers own, so nothing in it is trusted:

- Run as root on a spool another uid owns, the command first becomes that uid for good
  (``setgroups([])``, ``setresgid``/``setresuid`` to the owner and its primary group,
  checked by trying to regain root), after reading the configuration and before opening
  anything in the spool: whatever the owner planted (a link where ``msg/`` should be, say),
  this process can then do no more than the owner itself could, and what it creates
  (``corrupt/``) stays the owner's, so the workers can still use the spool. Descriptors
  already open (stdout redirected into a root-only file) stay usable. That is the simplest
  guarantee, and the strongest: it holds for every file operation, including ones a later
  change might add. ``Spool`` adds the same checks and descriptor discipline as the
  handoff (no symbolic link for a directory, no directory group or others may write, every
  directory the owner's), which also protects a root reader in-process.
- Ids are checked before a file name is built; files are read without following links.
- Addresses, HELO names and headers come from the Internet: every character Python does
  not call printable (C0 and C1 controls, DEL, Unicode format characters such as the
  bidi overrides U+202A-U+202E and U+2066-U+2069, zero widths, U+FEFF, line and paragraph
  separators) is escaped (``\\x1b``, ``\\u202e``) in every line written to a terminal,
  error lines included; the JSON of ``show`` and ``drain`` has them as ``\\uXXXX`` escapes
  (still valid JSON, decoding to the same strings).
- ``drain`` removes a message only after its line was flushed (and fsync'd, when stdout
  is a file).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import os
import pwd
import re
import stat
import sys
import termios
from collections.abc import Callable

import msgspec

from .. import config
from .. import message as M
from ..handoff.spool import (
    CORRUPT_DIR,
    ROOT_UID,
    SUFFIX,
    CorruptMessage,
    Entry,
    Spool,
    SpoolError,
    describe,
    spool_owner,
)
from .load import UNRESOLVED_HOSTNAME

DRAIN_HELP = "print every message as a JSON line and remove it from the spool"
DRAIN_DESCRIPTION = (
    "Write every spooled message to stdout as one JSON line (the wire form), oldest first, "
    "and remove each file only once its line was flushed (and fsync'd when stdout is a "
    "regular file). In this release nothing else consumes the spool: drain is how messages "
    "leave it."
)
# The characters that may need escaping: all but printable ASCII (the test that decides
# is str.isprintable, false for Unicode's "Other" and "Separator" categories but the space).
_SUSPECT = re.compile(r"[^\x20-\x7e]")
# In JSON text, a raw newline is structure (show's indentation): strings have it escaped.
_SUSPECT_IN_JSON = re.compile(r"[^\x20-\x7e\n]")
# Python's escapes: \xNN up to U+00FF, \uNNNN in the BMP, \UNNNNNNNN beyond.
_LAST_BYTE = 0xFF
_FIRST_NON_BMP = 0x10000
# Beyond the BMP, JSON escapes a UTF-16 surrogate pair (RFC 8259 §7).
_HIGH_SURROGATE = 0xD800
_LOW_SURROGATE = 0xDC00
_SURROGATE_SPAN = 0x400

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
    area = parser.add_mutually_exclusive_group()
    area.add_argument(
        "--retries",
        dest="area",
        action="store_const",
        const="retries",
        help="the LMTP retry spool instead (lmtp.retry_spool, default <spool>/lmtp):"
        " recipients the mail store deferred, with its last reply and the next attempt",
    )
    area.add_argument(
        "--bounces",
        dest="area",
        action="store_const",
        const="bounces",
        help="the bounce spool instead (lmtp.bounce_spool, default <spool>/bounce): delivery"
        " status notifications waiting for the operator",
    )
    parser.set_defaults(func=func, area=None)
    return parser


def _say(message: str) -> None:
    """One line on stderr, escaped: paths and ids in it may come from the spool."""
    print(f"wildboar spool: {_printable(message)}", file=sys.stderr)


def _fail(message: str) -> int:
    _say(message)
    return 1


def _paths(args: argparse.Namespace) -> dict[str | None, str]:
    """The main spool (``--spool``, else the configuration's: ``--config`` if the main
    command line has one, else the usual sources) and its LMTP retry and bounce spools, by
    the name of the option that selects them."""
    # The host name is not needed here: not looked up (NSS and DNS) as root.
    flags: dict[str, object] = {"hostname": UNRESOLVED_HOSTNAME}
    if args.spool is not None:  # the others are then where they are for it
        flags["spool"] = {"path": args.spool}
    loaded = config.load(file=getattr(args, "config", None), flags=flags)
    return {
        None: loaded.spool.path,
        "retries": loaded.lmtp_retry_spool,
        "bounces": loaded.lmtp_bounce_spool,
    }


def _open(args: argparse.Namespace) -> Spool:
    """The spool ``args`` select, opened as its owner."""
    # The main spool of --spool needs no configuration.
    plain = args.spool is not None and args.area is None
    path = args.spool if plain else _paths(args)[args.area]
    _become_owner(path)
    return Spool(path)


def _become_owner(path: str) -> None:
    """As root, become the uid owning the spool at ``path`` for good (see the module
    header), unless that is root; otherwise change nothing."""
    if os.geteuid() != ROOT_UID:
        return
    uid = spool_owner(path)
    if uid == ROOT_UID:
        return
    gid = _primary_group(path, uid)
    _leave_terminal()
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _check_dropped(path, uid, gid)


def _leave_terminal() -> None:
    """Give up root's controlling terminal (``TIOCNOTTY``: a process that is not the session
    leader only detaches itself) and a terminal on stdin before becoming the spool's owner:
    this process reads what the workers wrote, and must not be able to push input into
    root's shell (``TIOCSTI``) if that ever went wrong. Output may still go to the terminal:
    every character that could drive it is escaped."""
    with contextlib.suppress(OSError):
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, termios.TIOCNOTTY)
        finally:
            os.close(fd)
    if os.isatty(0):
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)


def _primary_group(path: str, uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        raise SpoolError(
            f"spool {path} is owned by uid {uid}, which has no user entry: run wildboar"
            f" spool as uid {uid}"
        ) from None


def _check_dropped(path: str, uid: int, gid: int) -> None:
    dropped = os.getresuid() == (uid,) * 3 and os.getresgid() == (gid,) * 3
    if dropped and not os.getgroups():
        try:
            os.setuid(ROOT_UID)
        except PermissionError:
            return  # root cannot be regained: done
    raise SpoolError(f"spool {path}: could not become its owner uid {uid} for good")


def _run(args: argparse.Namespace, action: Action) -> int:
    """Open the spool named by ``args`` and run ``action(spool)``, turning every expected
    error into one line on stderr and status 1."""
    try:
        with _open(args) as spool:
            return action(spool)
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
    """``text`` with every character that is not printable shown as a Python escape
    (``\\x1b``, ``\\u202e``, ``\\U000e0001``): addresses come from clients."""
    return _SUSPECT.sub(_escape_match, text)


def _escape_match(match: re.Match[str]) -> str:
    char = match.group()
    return char if char.isprintable() else _escape(char)


def _escape(char: str) -> str:
    code = ord(char)
    if code <= _LAST_BYTE:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < _FIRST_NON_BMP else f"\\U{code:08x}"


def json_for_terminal(data: bytes) -> bytes:
    """The JSON text ``data`` with every character that is not printable as a ``\\uXXXX``
    escape (JSON escapes C0 controls itself, but not DEL, C1 or U+202E): the same JSON
    value, safe to print. Such characters only occur inside strings, where an escape means
    the character itself."""
    if data.isascii() and b"\x7f" not in data:
        return data  # the usual record: ASCII, and its C0 controls already escaped
    return _SUSPECT_IN_JSON.sub(_json_escape_match, data.decode("utf-8")).encode("utf-8")


def _json_escape_match(match: re.Match[str]) -> str:
    char = match.group()
    if char.isprintable():
        return char
    code = ord(char)
    if code < _FIRST_NON_BMP:
        return f"\\u{code:04x}"
    high, low = divmod(code - _FIRST_NON_BMP, _SURROGATE_SPAN)
    return f"\\u{_HIGH_SURROGATE + high:04x}\\u{_LOW_SURROGATE + low:04x}"


def _time(mtime: float) -> str:
    when = datetime.datetime.fromtimestamp(mtime, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_entry(entry: Entry) -> str:
    """One line: id, time, size, sender -> recipients. A record waiting for a retry shows
    its accepted time (its file time is its next attempt), then indented lines: the
    attempts, the next one, and each recipient's last reply."""
    sender = _printable(entry.sender) or "<>"
    to = ",".join(_printable(address) for address in entry.to)
    retry = entry.retry
    when = _time(entry.mtime if retry is None else entry.created.timestamp())
    line = f"{entry.id}  {when}  {entry.size:>9}  {sender} -> {to}"
    if retry is None:
        return line
    lines = [
        line,
        f"    attempts {retry.attempts}, last {_time(retry.last_attempt.timestamp())},"
        f" next {_time(retry.next_attempt.timestamp())}",
    ]
    lines += [
        f"    {_printable(r.address)}: {r.code} {_printable(r.enhanced)} {_printable(r.text)}"
        for r in retry.recipients
    ]
    return "\n".join(lines)


def _say_set_aside(spool: Spool) -> None:
    """On stderr (stdout stays parseable): records a drain moved aside, which wait for the
    operator and are delivered by nobody."""
    for name, count in spool.set_aside().items():
        where = os.path.join(spool.layout.root, name)
        _say(f"{count} set aside in {where}/, not delivered")


def _say_waiting(args: argparse.Namespace) -> None:
    """On stderr, for the main spool: how many records wait in the LMTP retry and bounce
    spools, and how to see them (a hint only: a spool that cannot be read is left out)."""
    if args.area is not None:
        return
    try:
        paths = _paths(args)
    except config.ConfigError:
        return
    for area in ("retries", "bounces"):
        with contextlib.suppress(SpoolError, OSError), Spool(paths[area]) as other:
            if count := other.count():
                _say(f"{count} more in {paths[area]} (wildboar spool ls --{area})")


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
        _say_waiting(args)
        return 1 if corrupt else 0

    return _run(args, ls)


def cmd_count(args: argparse.Namespace) -> int:
    def count(spool: Spool) -> int:
        sys.stdout.write(f"{spool.count()}\n")
        _say_set_aside(spool)
        _say_waiting(args)
        return 0

    return _run(args, count)


def cmd_show(args: argparse.Namespace) -> int:
    def show(spool: Spool) -> int:
        record = msgspec.json.format(M.encode(spool.load(args.id)), indent=2)
        sys.stdout.write(json_for_terminal(record).decode("utf-8") + "\n")
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
                    line = json_for_terminal(M.encode(spool.load(entry.id))) + b"\n"
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
