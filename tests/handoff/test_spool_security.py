"""The security audit's findings about the spool, each as the attack it reported.

Every test performs the attack for real: the attacker is the user ``nobody`` (the workers'
user in these tests), acting through child processes that run as nobody; the victim is a
root process (the tests run as root, as in CI). Against the code before the fix each
attack succeeded (a message lost after its 250, durable messages of another spool
removed, a root-only record unlinked by ``wildboar spool drain``, raw bidi and terminal
controls on the operator's terminal); here each is refused with one line naming the
directory and what is wrong, and nothing is lost. No mocks: real directories, modes,
owners, links; the CLI runs as a child process, as the operator runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.records import make_message, run
from tests.unprivileged import GROUP, USER
from wildboar import message as M
from wildboar.handoff import DELIVERED, LOCAL_PROBLEM, Delivery, HandoffStartError, failed
from wildboar.handoff.spool import Spool, SpoolHandoff, UnsafeSpool

ROOT = Path(__file__).resolve().parents[2]
NOBODY = pwd.getpwnam(USER)


@pytest.fixture(autouse=True)
def _as_root() -> None:
    """The attacks need root (the victim) and nobody (the attacker): run as root, as CI
    does. Never skipped: a test that did not run proved nothing."""
    assert os.geteuid() == 0, "these tests need root: run make test as root"


# --- helpers --------------------------------------------------------------------------


def as_nobody(*argv: str | Path) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` as the attacker."""
    return subprocess.run(
        [str(arg) for arg in argv],
        user=USER,
        group=GROUP,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        timeout=60,
        check=False,
    )


def wildboar(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """``wildboar ARGS`` as the operator runs it (here: as root), in a child process."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "wildboar.cli", *(str(arg) for arg in args)],
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={"PATH": os.environ["PATH"]},
        timeout=60,
        check=False,
        **kwargs,
    )


def error_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode().splitlines()


def record_name(message: M.Message) -> str:
    return message.email.id.removeprefix("urn:uuid:") + ".msgpack"


def deliver(path: Path, messages: list[M.Message]) -> list[Delivery]:
    """Start a spool handoff at ``path`` (as this process's user), deliver, close."""

    async def main() -> list[Delivery]:
        handoff = SpoolHandoff(path)
        await handoff.start()
        try:
            return list(await asyncio.gather(*(handoff.deliver(m) for m in messages)))
        finally:
            await handoff.close()

    return run(main())


def give_to_nobody(path: Path) -> None:
    """``chown -R nobody:nogroup path``, links themselves included."""
    for directory, subdirs, files in os.walk(path):
        for name in [directory, *(os.path.join(directory, n) for n in subdirs + files)]:
            os.lchown(name, NOBODY.pw_uid, NOBODY.pw_gid)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory under /tmp that nobody may enter (pytest's tmp_path is root's, 0700)."""
    base = Path(tempfile.mkdtemp(prefix="wildboar-security-", dir="/tmp"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def existing_spool(path: Path, owner: int, modes: dict[str, int]) -> None:
    """A spool made by hand before the server starts: ``modes`` of "" (the root), tmp,
    msg; all owned by ``owner`` (and its group)."""
    for name in ("", "tmp", "msg"):
        directory = path / name
        directory.mkdir(exist_ok=True)
        directory.chmod(modes[name])
        os.chown(directory, owner, pwd.getpwuid(owner).pw_gid)


# --- A1: an existing spool is used only if it is the server's and nobody else's ----------

# The attacker's part: take the messages out of msg/, or msg/ out of the spool.
STEAL = 'rm -f "$0"/msg/*.msgpack; mv "$0"/msg "$0"/stolen; exit 0'
NOBODY_UID = NOBODY.pw_uid
UNSAFE_SPOOLS = {
    # The audit's case: nobody's, 0777; served by root (any other uid would do).
    "nobodys-0777": (
        NOBODY_UID,
        {"": 0o777, "tmp": 0o777, "msg": 0o777},
        "spool {spool} is owned by uid 65534, not by uid 0 that serves it",
    ),
    "nobodys": (
        NOBODY_UID,
        {"": 0o700, "tmp": 0o700, "msg": 0o700},
        "spool {spool} is owned by uid 65534, not by uid 0 that serves it",
    ),
    "msg-writable-by-others": (
        0,
        {"": 0o755, "tmp": 0o700, "msg": 0o777},
        "spool {spool}/msg is writable by group or others (mode 0777): chmod 0700 it",
    ),
    "msg-writable-by-its-group": (  # its group made nobody's below
        0,
        {"": 0o755, "tmp": 0o700, "msg": 0o770},
        "spool {spool}/msg is writable by group or others (mode 0770): chmod 0700 it",
    ),
    "root-writable-by-others": (  # msg/ itself is safe, but others may rename it away
        0,
        {"": 0o777, "tmp": 0o700, "msg": 0o700},
        "spool {spool} is writable by group or others (mode 0777): chmod 0700 it",
    ),
}


@pytest.mark.parametrize("case", UNSAFE_SPOOLS)
def test_an_existing_spool_others_can_write_is_refused_before_any_250(
    shared: Path, case: str
) -> None:
    owner, modes, refusal = UNSAFE_SPOOLS[case]
    spool = shared / "spool"
    existing_spool(spool, owner, modes)
    if case == "msg-writable-by-its-group":
        os.chown(spool / "msg", 0, NOBODY.pw_gid)  # nobody's group may write msg/
    message = make_message()

    def accept_then_attack() -> None:
        """What the audit did: the server says 250, then nobody takes the message."""
        assert deliver(spool, [message]) == [DELIVERED]
        as_nobody("sh", "-c", STEAL, spool)

    with pytest.raises(HandoffStartError) as refused:
        accept_then_attack()
    assert str(refused.value) == refusal.format(spool=spool)
    assert os.listdir(spool / "msg") == []  # nothing was written, nothing got a 250


def test_a_worker_refuses_a_spool_it_does_not_own(shared: Path) -> None:
    """The serving uid is the process's own, whoever starts it: nobody serving a root
    spool that others may write is refused as well."""
    spool = shared / "spool"
    existing_spool(spool, 0, {"": 0o777, "tmp": 0o777, "msg": 0o777})
    script = (
        "import asyncio, sys\n"
        "from wildboar.handoff import HandoffStartError, SpoolHandoff\n"
        "try:\n"
        "    asyncio.run(SpoolHandoff(sys.argv[1]).start())\n"
        "except HandoffStartError as error:\n"
        "    sys.exit(str(error))\n"
    )
    result = as_nobody(sys.executable, "-c", script, spool)
    assert result.returncode == 1
    assert error_lines(result) == [
        f"spool {spool} is owned by uid 0, not by uid 65534 that serves it"
    ]
    assert os.listdir(spool / "msg") == []


def test_a_spool_that_became_unsafe_after_start_is_refused_by_the_next_start(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    assert deliver(spool, [make_message()]) == [DELIVERED]
    (spool / "msg").chmod(0o733)
    with pytest.raises(
        HandoffStartError, match=r"msg is writable by group or others \(mode 0733\)"
    ):
        deliver(spool, [make_message()])
    (spool / "msg").chmod(0o700)
    (spool / "held").mkdir(mode=0o700)
    os.chown(spool / "held", NOBODY.pw_uid, NOBODY.pw_gid)
    with pytest.raises(HandoffStartError, match="held is owned by uid 65534, not by uid 0"):
        deliver(spool, [make_message()])


def test_directories_wildboar_creates_are_0700(tmp_path: Path) -> None:
    spool = tmp_path / "new" / "spool"
    old = os.umask(0)  # whatever the umask (here: none at all), 0700
    try:
        assert deliver(spool, [make_message()]) == [DELIVERED]
    finally:
        os.umask(old)
    for directory in (spool.parent, spool, spool / "tmp", spool / "msg"):
        assert directory.stat().st_mode & 0o777 == 0o700, directory


def test_delivering_without_start_into_an_unsafe_spool_gives_451(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert deliver(spool, [make_message()]) == [DELIVERED]
    (spool / "msg").chmod(0o777)

    async def without_start() -> Delivery:
        handoff = SpoolHandoff(spool)
        try:
            return await handoff.deliver(make_message())
        finally:
            await handoff.close()

    assert run(without_start()) == failed(LOCAL_PROBLEM)
    assert len(os.listdir(spool / "msg")) == 1


# --- A2: no link where a directory should be; nothing done through one ---------------------


def test_a_tmp_linked_into_another_spools_msg_is_refused_and_its_messages_kept(
    tmp_path: Path,
) -> None:
    """The audit's case: tmp/ a link to another spool's msg/, whose 3 durable messages
    were older than the stale-temp age: the cleanup at start removed all three."""
    other, spool = tmp_path / "other", tmp_path / "spool"
    messages = [make_message() for _ in range(3)]
    assert deliver(other, messages) == [DELIVERED] * 3
    for message in messages:
        os.utime(other / "msg" / record_name(message), (0, 0))
    assert deliver(spool, []) == []
    (spool / "tmp").rmdir()
    (spool / "tmp").symlink_to(other / "msg")
    with pytest.raises(HandoffStartError) as refused:
        deliver(spool, [])
    assert str(refused.value) == f"spool {spool}/tmp is a symbolic link: not used"
    assert sorted(os.listdir(other / "msg")) == sorted(record_name(m) for m in messages)
    with Spool(other) as reader:
        assert [reader.load(m.email.id) for m in messages] == messages
    with pytest.raises(UnsafeSpool, match="tmp is a symbolic link"):
        Spool(spool)  # nor can `wildboar spool` clean up through it


@pytest.mark.parametrize("name", ["", "msg", "corrupt", "held"])
def test_a_link_for_any_spool_directory_is_refused(tmp_path: Path, name: str) -> None:
    real, spool = tmp_path / "real", tmp_path / "spool"
    assert deliver(real, []) == []
    (real / "corrupt").mkdir(mode=0o700)
    (real / "held").mkdir(mode=0o700)
    if name:
        shutil.copytree(real, spool, symlinks=True)
        shutil.rmtree(spool / name)
        (spool / name).symlink_to(real / name)
    else:
        spool.symlink_to(real)
    shown = spool / name if name else spool
    with pytest.raises(HandoffStartError) as refused:
        deliver(spool, [make_message()])
    assert str(refused.value) == f"spool {shown} is a symbolic link: not used"
    with pytest.raises(UnsafeSpool) as unsafe:
        Spool(spool)
    assert str(unsafe.value) == str(refused.value)
    assert os.listdir(real / "msg") == []


def test_msg_swapped_for_a_link_after_start_is_not_followed(tmp_path: Path) -> None:
    """The handoff works through the descriptors it opened and checked at start: a msg/
    renamed away and replaced by a link meanwhile does not redirect any message."""
    spool, elsewhere = tmp_path / "spool", tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    message = make_message()

    async def swap_then_deliver() -> Delivery:
        handoff = SpoolHandoff(spool)
        await handoff.start()
        (spool / "msg").rename(spool / "msg.old")
        (spool / "msg").symlink_to(elsewhere)
        try:
            return await handoff.deliver(message)
        finally:
            await handoff.close()

    assert run(swap_then_deliver()) == DELIVERED
    assert os.listdir(elsewhere) == []
    assert os.listdir(spool / "msg.old") == [record_name(message)]


def test_clean_tmp_removes_a_stale_link_itself_never_its_target(tmp_path: Path) -> None:
    other, spool = tmp_path / "other", tmp_path / "spool"
    message = make_message()
    assert deliver(other, [message]) == [DELIVERED]
    target = other / "msg" / record_name(message)
    assert deliver(spool, []) == []
    link = spool / "tmp" / f"{record_name(message)}.1.tmp"
    link.symlink_to(target)
    os.utime(link, (0, 0), follow_symlinks=False)
    assert deliver(spool, []) == []  # start removes stale temp files
    assert os.listdir(spool / "tmp") == []
    assert target.exists()


# --- A3: a root `wildboar spool` does what the spool's owner could do, no more ------------


@pytest.fixture
def workers_spool(shared: Path) -> Path:
    """A spool owned by nobody, as the workers make it (0755 root, as `make run` does)."""
    spool = shared / "spool"
    spool.mkdir(mode=0o755)
    os.chown(spool, NOBODY.pw_uid, NOBODY.pw_gid)
    assert as_nobody("mkdir", "-m", "0700", spool / "tmp").returncode == 0
    return spool


@pytest.mark.parametrize("command", ["drain", "ls", "count"])
def test_a_root_cli_does_not_follow_a_msg_link_planted_by_the_workers(
    workers_spool: Path, tmp_path: Path, command: str
) -> None:
    """The audit's case: msg/ a link, planted by the spool's owner, to a directory only
    root may enter, holding a valid record: a root drain wrote and unlinked it."""
    victim = tmp_path / "root-only"
    victim.mkdir(mode=0o700)
    message = make_message()
    record = victim / record_name(message)
    record.write_bytes(M.encode(message, M.CONTENT_TYPE_MSGPACK))
    planted = as_nobody("ln", "-s", victim, workers_spool / "msg")
    assert planted.returncode == 0, planted.stderr
    result = wildboar("spool", command, "--spool", workers_spool)
    assert (result.returncode, result.stdout) == (1, b"")
    assert error_lines(result) == [
        f"wildboar spool: spool {workers_spool}/msg is a symbolic link: not used"
    ]
    assert os.listdir(victim) == [record.name]
    assert M.decode(record.read_bytes(), M.CONTENT_TYPE_MSGPACK) == message
    with pytest.raises(UnsafeSpool, match="msg is a symbolic link"):
        Spool(workers_spool)  # in-process, as root: the descriptor discipline alone


def test_a_root_drain_runs_as_the_spools_owner(workers_spool: Path, tmp_path: Path) -> None:
    """What a root drain creates (corrupt/) is the owner's, so the workers, which refuse a
    directory of another uid, still take the spool afterwards; its output, a root-only
    file opened before the drop, gets every line."""
    messages = [make_message(), make_message()]
    staging = tmp_path / "staging"
    assert deliver(staging, messages) == [DELIVERED] * 2
    junk = staging / "msg" / "0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f.msgpack"
    junk.write_bytes(b"not a record")
    shutil.move(staging / "msg", workers_spool / "msg")
    give_to_nobody(workers_spool)
    out = tmp_path / "drained.jsonl"
    with open(out, "wb") as stdout:  # root's, 0600 by the umask of tmp_path's owner
        out.chmod(0o600)
        result = wildboar("spool", "drain", "--spool", workers_spool, stdout=stdout)
    assert result.returncode == 1  # the junk record is named
    assert "set aside as" in result.stderr.decode()
    drained = [M.decode(line) for line in out.read_bytes().splitlines()]
    assert sorted(m.email.id for m in drained) == sorted(m.email.id for m in messages)
    corrupt = (workers_spool / "corrupt").stat()
    assert (corrupt.st_uid, corrupt.st_mode & 0o777) == (NOBODY.pw_uid, 0o700)
    assert os.listdir(workers_spool / "msg") == []
    assert os.listdir(workers_spool / "corrupt") == [junk.name]


def test_the_cli_refuses_a_spool_others_can_write_with_one_line(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    assert deliver(spool, [make_message()]) == [DELIVERED]
    spool.chmod(0o777)
    for command in ("ls", "count", "drain"):
        result = wildboar("spool", command, "--spool", spool)
        assert (result.returncode, result.stdout) == (1, b"")
        assert error_lines(result) == [
            f"wildboar spool: spool {spool} is writable by group or others (mode 0777):"
            " chmod 0700 it"
        ]
    assert len(os.listdir(spool / "msg")) == 1


# --- B: client text never reaches a terminal raw ---------------------------------------------

# Bidi overrides and isolates, a terminal escape (ESC [ 2 J clears the screen), CSI as one C1
# character, DEL, zero widths, a BOM, a line separator, a tag character beyond the BMP.
HOSTILE = "\u202e\u202a\u2066\u2069\x1b[2J\x9b\x7f\u200b\u200f\ufeff\u2028\U000e0001"
RAW = set(HOSTILE) - set("[2J")


def hostile_message() -> M.Message:
    message = make_message(
        sender=f"evil{HOSTILE}@example.org", to=(f"bob{HOSTILE}@example.net", "ok@example.net")
    )
    transaction = msgspec.structs.replace(message.transaction, helo_name=f"helo{HOSTILE}")
    return msgspec.structs.replace(message, transaction=transaction)


def assert_no_raw(output: bytes) -> str:
    text = output.decode("utf-8")
    assert not RAW & set(text), [hex(ord(c)) for c in RAW & set(text)]
    return text


def test_client_text_reaches_no_terminal_raw_and_json_keeps_its_value(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    message = hostile_message()
    assert deliver(spool, [message]) == [DELIVERED]
    escaped = r"\u202e\u202a\u2066\u2069\x1b[2J\x9b\x7f\u200b\u200f\ufeff\u2028\U000e0001"

    listed = wildboar("spool", "ls", "--spool", spool)
    assert (listed.returncode, listed.stderr) == (0, b"")
    line = assert_no_raw(listed.stdout)
    assert line.rstrip("\n").endswith(
        f"  evil{escaped}@example.org -> bob{escaped}@example.net,ok@example.net"
    )

    shown = wildboar("spool", "show", message.email.id, "--spool", spool)
    assert (shown.returncode, shown.stderr) == (0, b"")
    assert_no_raw(shown.stdout)
    assert json.loads(shown.stdout) == json.loads(M.encode(message))
    assert M.decode(shown.stdout) == message

    drained = wildboar("spool", "drain", "--spool", spool)
    assert (drained.returncode, drained.stderr) == (0, b"")
    assert_no_raw(drained.stdout)
    [record] = drained.stdout.splitlines()
    assert M.decode(record) == message
    assert json.loads(record)["email"]["from"] == message.email.sender
    assert json.loads(record)["transaction"]["heloName"] == f"helo{HOSTILE}"


def test_error_lines_are_escaped_too(tmp_path: Path) -> None:
    missing = tmp_path / f"no{HOSTILE}where"
    result = wildboar("spool", "ls", "--spool", missing)
    assert result.returncode == 1
    [line] = assert_no_raw(result.stderr).splitlines()
    assert line.startswith("wildboar spool: ") and r"no\u202e\u202a" in line
    assert "is not a spool" in line
