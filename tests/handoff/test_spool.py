"""The handoff interface, the spool handoff and ``wildboar spool``, on real filesystems.

No mocks: files are written to ``tmp_path``; a full disk and a read-only disk are real
tmpfs mounts (the tests need root, as in CI); the CLI runs as a child process.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.records import make_message, run
from wildboar import message as M
from wildboar import smtp
from wildboar.handoff import (
    DELIVERED,
    INSUFFICIENT_STORAGE,
    LOCAL_PROBLEM,
    BadMessageId,
    Delivery,
    DiscardHandoff,
    HandoffStartError,
    NoSuchMessage,
    Spool,
    SpoolError,
    SpoolHandoff,
    combine,
    failed,
    local_failure,
)

PERMANENT = smtp.Reply(554, "5.0.0", "Refused")
OTHER_TEMPORARY = smtp.Reply(421, "4.3.2", "Going down")


# --- helpers --------------------------------------------------------------------------


def uuid_of(message: M.Message) -> str:
    return message.email.id.removeprefix("urn:uuid:")


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


async def spool_messages(
    path: Path, messages: list[M.Message], batch: int = 64
) -> tuple[list[Delivery], SpoolHandoff]:
    """Start a spool handoff at ``path``, deliver ``messages`` concurrently, close it."""
    handoff = SpoolHandoff(path, batch)
    await handoff.start()
    outcomes = await asyncio.gather(*(handoff.deliver(m) for m in messages))
    await handoff.close()
    return list(outcomes), handoff


async def deliver_without_start(path: Path, messages: list[M.Message]) -> list[Delivery]:
    """Deliver concurrently without start() (whose probe would fail on a full disk)."""
    handoff = SpoolHandoff(path)
    outcomes = await asyncio.gather(*(handoff.deliver(m) for m in messages))
    await handoff.close()
    return list(outcomes)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs, this test's own, unmounted afterwards."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    mount("-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mountpoint))
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def fill(directory: Path) -> Path:
    """Write into ``directory`` until its filesystem is full."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle, pytest.raises(OSError) as raised:
        while True:
            handle.write(b"\0" * 4096)
    assert raised.value.errno == errno.ENOSPC
    return filler


# --- Delivery and combine ---------------------------------------------------------------


def test_delivery_needs_a_failure_reply_when_not_ok() -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Delivery(ok=False)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Delivery(ok=False, reply=smtp.Reply(250, "2.0.0", "Ok"))
    with pytest.raises(ValueError, match="cannot carry"):
        Delivery(ok=True, reply=LOCAL_PROBLEM)
    assert Delivery(ok=True, reply=smtp.Reply(250, "2.0.0", "Ok")).ok


def test_combine_is_ok_only_if_all_are_ok() -> None:
    assert combine([DELIVERED]) == DELIVERED
    assert (
        combine([DELIVERED, Delivery(ok=True, reply=smtp.Reply(250, "2.0.0", "Ok"))]) == DELIVERED
    )


def test_combine_prefers_the_first_temporary_failure() -> None:
    outcomes = [DELIVERED, failed(PERMANENT), failed(LOCAL_PROBLEM), failed(OTHER_TEMPORARY)]
    assert combine(outcomes) == failed(LOCAL_PROBLEM)


def test_combine_gives_the_permanent_failure_when_none_is_temporary() -> None:
    per_recipient = Delivery(ok=False, reply=PERMANENT, recipients=(PERMANENT, None))
    assert combine([DELIVERED, per_recipient]) == failed(PERMANENT)


def test_combine_of_nothing_is_an_error_not_a_250() -> None:
    with pytest.raises(ValueError, match="at least one"):
        combine([])


@pytest.mark.parametrize(
    ("code", "reply"),
    [
        (errno.ENOSPC, INSUFFICIENT_STORAGE),
        (errno.EDQUOT, INSUFFICIENT_STORAGE),
        (errno.EIO, LOCAL_PROBLEM),
        (errno.EROFS, LOCAL_PROBLEM),
    ],
)
def test_local_failures_map_to_4xx(code: int, reply: smtp.Reply) -> None:
    assert local_failure(OSError(code, os.strerror(code))) == failed(reply)
    assert (INSUFFICIENT_STORAGE.code, INSUFFICIENT_STORAGE.status) == (452, "4.3.1")
    assert (LOCAL_PROBLEM.code, LOCAL_PROBLEM.status) == (451, "4.3.0")


# --- the spool handoff -----------------------------------------------------------------


def test_a_delivered_message_round_trips_through_its_file(tmp_path: Path) -> None:
    message = make_message(content=b"Subject: \xc3\xa9t\xc3\xa9\r\n\r\n\x00\xff binary\r\n")
    [outcome], _ = run(spool_messages(tmp_path, [message]))
    assert outcome == DELIVERED
    name = f"{uuid_of(message)}.msgpack"
    assert files(tmp_path / "msg") == [name]
    assert files(tmp_path / "tmp") == []
    assert (tmp_path / "msg" / name).stat().st_mode & 0o777 == 0o600
    assert M.decode((tmp_path / "msg" / name).read_bytes(), M.CONTENT_TYPE_MSGPACK) == message
    spool = Spool(tmp_path)
    assert spool.load(message.email.id) == message
    assert spool.load(uuid_of(message).upper()) == message


def test_start_creates_the_layout_with_missing_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "spool"
    run(SpoolHandoff(path).start())
    assert files(path) == ["msg", "tmp"]
    assert (path / "msg").stat().st_mode & 0o777 == 0o700
    assert files(path / "msg") == []
    assert files(path / "tmp") == []


def test_spools_of_one_directory_start_side_by_side(tmp_path: Path) -> None:
    """Each start proves the directory with a probe file of its own name (the deliver
    stage starts one for each bounce it keeps, several at once)."""

    async def start_eight() -> None:
        spools = [SpoolHandoff(tmp_path / "bounces") for _ in range(8)]
        await asyncio.gather(*(spool.start() for spool in spools))
        for spool in spools:
            await spool.close()

    for _ in range(5):
        run(start_eight())
    assert files(tmp_path / "bounces" / "msg") == files(tmp_path / "bounces" / "tmp") == []


def test_200_concurrent_deliveries_share_group_commits(tmp_path: Path) -> None:
    messages = [make_message(sender=f"s{i}@example.org") for i in range(200)]
    outcomes, handoff = run(spool_messages(tmp_path, messages, batch=64))
    assert outcomes == [DELIVERED] * 200
    assert len(files(tmp_path / "msg")) == 200
    assert files(tmp_path / "tmp") == []
    stats = handoff.statistics()
    assert stats.messages == 200
    assert stats.queued == 0
    assert 200 / 64 <= stats.commits < stats.messages
    spool = Spool(tmp_path)
    assert all(spool.load(m.email.id) == m for m in messages)


def test_batch_bounds_a_group_commit(tmp_path: Path) -> None:
    messages = [make_message() for _ in range(10)]
    outcomes, handoff = run(spool_messages(tmp_path, messages, batch=1))
    assert outcomes == [DELIVERED] * 10
    assert (handoff.statistics().commits, handoff.statistics().messages) == (10, 10)


def test_deliveries_arriving_during_a_commit_form_the_next_batch(tmp_path: Path) -> None:
    async def waves() -> tuple[list[Delivery], SpoolHandoff]:
        handoff = SpoolHandoff(tmp_path, batch=64)
        await handoff.start()
        first = [asyncio.create_task(handoff.deliver(make_message())) for _ in range(5)]
        await asyncio.sleep(0)  # the committer has taken the first wave into its thread
        second = [asyncio.create_task(handoff.deliver(make_message())) for _ in range(7)]
        outcomes = await asyncio.gather(*first, *second)
        await handoff.close()
        return list(outcomes), handoff

    outcomes, handoff = run(waves())
    assert outcomes == [DELIVERED] * 12
    stats = handoff.statistics()
    assert (stats.commits, stats.messages) == (2, 12)


def test_close_commits_what_is_queued_then_refuses(tmp_path: Path) -> None:
    async def close_early() -> tuple[list[Delivery], Delivery]:
        handoff = SpoolHandoff(tmp_path)
        await handoff.start()
        queued = [asyncio.create_task(handoff.deliver(make_message())) for _ in range(3)]
        await asyncio.sleep(0)
        await handoff.close()
        late = await handoff.deliver(make_message())
        return list(await asyncio.gather(*queued)), late

    queued, late = run(close_early())
    assert queued == [DELIVERED] * 3
    assert late == failed(LOCAL_PROBLEM)
    assert len(files(tmp_path / "msg")) == 3


def test_a_cancelled_delivery_still_waiting_is_not_written(tmp_path: Path) -> None:
    async def cancel_one() -> list[Delivery]:
        handoff = SpoolHandoff(tmp_path)
        await handoff.start()
        tasks = [asyncio.create_task(handoff.deliver(make_message())) for _ in range(3)]
        await asyncio.sleep(0)  # all three are queued, the committer not yet run
        tasks[1].cancel()
        done = [await tasks[0], await tasks[2]]
        await handoff.close()
        return done

    assert run(cancel_one()) == [DELIVERED, DELIVERED]
    assert len(files(tmp_path / "msg")) == 2


def test_a_malformed_message_id_is_the_callers_bug(tmp_path: Path) -> None:
    message = make_message()
    bad = msgspec.structs.replace(
        message, email=msgspec.structs.replace(message.email, id="urn:uuid:../../etc/passwd")
    )
    with pytest.raises(ValueError, match="not a message id"):
        run(spool_messages(tmp_path, [bad]))
    assert files(tmp_path / "msg") == []


def test_a_failed_rename_gives_451_and_leaves_no_temp_file(tmp_path: Path) -> None:
    blocked, fine = make_message(), make_message()
    run(SpoolHandoff(tmp_path).start())
    (tmp_path / "msg" / f"{uuid_of(blocked)}.msgpack").mkdir()  # rename(2) onto it: EISDIR
    outcomes, _ = run(spool_messages(tmp_path, [blocked, fine]))
    assert outcomes == [failed(LOCAL_PROBLEM), DELIVERED]
    assert files(tmp_path / "tmp") == []
    assert Spool(tmp_path).load(fine.email.id) == fine


def test_deliver_without_a_spool_directory_gives_451(tmp_path: Path) -> None:
    outcomes = run(deliver_without_start(tmp_path / "missing", [make_message()]))
    assert outcomes == [failed(LOCAL_PROBLEM)]


def test_start_fails_when_the_spool_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = tmp_path / "file" / "spool"
    with pytest.raises(HandoffStartError) as raised:
        run(SpoolHandoff(path).start())
    assert str(path) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_start_removes_stale_temp_files_only(tmp_path: Path) -> None:
    run(SpoolHandoff(tmp_path).start())
    stale, fresh = tmp_path / "tmp" / "stale.1.tmp", tmp_path / "tmp" / "fresh.2.tmp"
    stale.write_bytes(b"half a mess")
    fresh.write_bytes(b"being written")
    os.utime(stale, (0, 0))
    run(SpoolHandoff(tmp_path).start())
    assert files(tmp_path / "tmp") == ["fresh.2.tmp"]


def test_disk_full_gives_452_and_leaves_no_temp_file(tmpfs: Path) -> None:
    spool = tmpfs / "spool"
    first = make_message()
    assert run(spool_messages(spool, [first]))[0] == [DELIVERED]
    filler = fill(tmpfs)
    more = [make_message() for _ in range(5)]
    outcomes = run(deliver_without_start(spool, more))
    assert outcomes == [failed(INSUFFICIENT_STORAGE)] * 5
    assert outcomes[0].reply is not None
    assert outcomes[0].reply.to_bytes() == b"452 4.3.1 Insufficient system storage\r\n"
    assert files(spool / "tmp") == []
    assert files(spool / "msg") == [f"{uuid_of(first)}.msgpack"]
    filler.unlink()
    assert run(spool_messages(spool, more))[0] == [DELIVERED] * 5


def test_start_on_a_full_disk_serves_and_answers_452(
    tmpfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Full is not broken: a worker starting (or restarting) on a full spool serves, says
    so, and answers 452 4.3.1 until there is room, rather than not answering at all."""
    run(SpoolHandoff(tmpfs / "spool").start())
    fill(tmpfs)

    async def main() -> Delivery:
        handoff = SpoolHandoff(tmpfs / "spool")
        await handoff.start()
        try:
            return await handoff.deliver(make_message())
        finally:
            await handoff.close()

    with caplog.at_level(logging.WARNING, logger="wildboar.handoff"):
        delivery = run(main())
    assert delivery.reply == INSUFFICIENT_STORAGE
    assert [r.getMessage() for r in caplog.records] == ["spool_full_at_start", "spool_write_failed"]


def test_read_only_spool_refuses_start_and_gives_451(tmpfs: Path) -> None:
    spool = tmpfs / "spool"

    async def scenario() -> tuple[Delivery, Delivery, str]:
        handoff = SpoolHandoff(spool)
        await handoff.start()
        before = await handoff.deliver(make_message())
        mount("-o", "remount,ro", str(tmpfs))
        after = await handoff.deliver(make_message())
        with pytest.raises(HandoffStartError) as raised:
            await SpoolHandoff(spool).start()
        await handoff.close()
        return before, after, str(raised.value)

    before, after, reason = run(scenario())
    assert before == DELIVERED
    assert after == failed(LOCAL_PROBLEM)
    assert after.reply is not None
    assert after.reply.to_bytes() == b"451 4.3.0 Temporary local problem, try again later\r\n"
    assert str(spool) in reason
    assert "Read-only file system" in reason
    assert len(files(spool / "msg")) == 1
    assert files(spool / "tmp") == []


def test_tmp_and_msg_on_different_filesystems_refuse_start(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    run(SpoolHandoff(spool).start())
    # mode=0700: a tmpfs root is 1777 by default, which the spool refuses for itself.
    mount("-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(spool / "tmp"))
    try:
        with pytest.raises(HandoffStartError, match="different filesystems"):
            run(SpoolHandoff(spool).start())
    finally:
        subprocess.run(["umount", str(spool / "tmp")], check=True)


# --- the discard handoff ---------------------------------------------------------------


def test_discard_warns_and_keeps_nothing(caplog: pytest.LogCaptureFixture) -> None:
    handoff = DiscardHandoff()

    async def use() -> Delivery:
        await handoff.start()
        outcome = await handoff.deliver(make_message())
        await handoff.close()
        return outcome

    with caplog.at_level(logging.WARNING, logger="wildboar.handoff"):
        assert run(use()) == DELIVERED
    [record] = caplog.records
    assert record.name == "wildboar.handoff"
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "discard_handoff"
    assert "thrown away" in record.fields["warning"]  # type: ignore[attr-defined]
    assert handoff.name == "discard"
    assert handoff.discarded == 1


# --- the reader ------------------------------------------------------------------------


def spool_at(path: Path, messages: list[M.Message], mtimes: list[float]) -> None:
    """Deliver ``messages`` for real, then give their files the ``mtimes``."""
    outcomes, _ = run(spool_messages(path, messages))
    assert outcomes == [DELIVERED] * len(messages)
    for message, mtime in zip(messages, mtimes, strict=True):
        os.utime(path / "msg" / f"{uuid_of(message)}.msgpack", (mtime, mtime))


def test_list_is_oldest_first_with_envelope_and_size(tmp_path: Path) -> None:
    old = make_message(sender="old@example.org", to=("a@example.net", "b@example.net"))
    new = make_message(sender="", to=("c@example.net",))
    spool_at(tmp_path, [new, old], [2_000_000_000.0, 1_000_000_000.0])
    (tmp_path / "tmp" / "crashed.1.tmp").write_bytes(b"partial")
    spool = Spool(tmp_path)
    first, second = spool.list()
    assert (first.id, first.mtime, first.sender, first.to) == (
        old.email.id,
        1_000_000_000.0,
        "old@example.org",
        ("a@example.net", "b@example.net"),
    )
    assert first.size == old.email.size == len(old.email.data)  # the message, not the file
    assert (second.id, second.sender, second.to) == (new.email.id, "", ("c@example.net",))
    assert spool.count() == 2


def test_remove_and_unknown_or_bad_ids(tmp_path: Path) -> None:
    message = make_message()
    spool_at(tmp_path, [message], [1_000_000_000.0])
    spool = Spool(tmp_path)
    spool.remove(uuid_of(message))
    assert spool.count() == 0
    with pytest.raises(KeyError) as unknown:
        spool.load(message.email.id)
    assert str(unknown.value) == f"no message {message.email.id} in spool {tmp_path}"
    with pytest.raises(NoSuchMessage):
        spool.remove(message.email.id)
    with pytest.raises(ValueError, match="not a message id"):
        spool.load("../msg/x")
    with pytest.raises(BadMessageId):
        spool.load("urn:uuid:1234")


def test_temp_files_are_never_listed_and_clean_tmp_removes_old_ones(tmp_path: Path) -> None:
    message = make_message()
    run(SpoolHandoff(tmp_path).start())
    # Written by a live process (this one): kept until it is old.
    crashed = tmp_path / "tmp" / f"{uuid_of(message)}.{os.getpid()}.tmp"
    crashed.write_bytes(M.encode(message, M.CONTENT_TYPE_MSGPACK)[:100])
    spool = Spool(tmp_path)
    assert (spool.list(), spool.count()) == ([], 0)
    assert spool.clean_tmp(older_than=3600) == 0
    os.utime(crashed, (0, 0))
    assert spool.clean_tmp(older_than=3600) == 1
    assert files(tmp_path / "tmp") == []
    # Written by a process that is gone (no pid is above 2**22): removed at once. A
    # directory someone left there is no reason to fail.
    (tmp_path / "tmp" / f"{uuid_of(message)}.{2**22 + 1}.tmp").write_bytes(b"partial")
    (tmp_path / "tmp" / "leftover-dir").mkdir()
    os.utime(tmp_path / "tmp" / "leftover-dir", (0, 0))
    assert spool.clean_tmp(older_than=3600) == 1
    assert files(tmp_path / "tmp") == ["leftover-dir"]


def test_a_corrupt_file_is_named_not_skipped(tmp_path: Path) -> None:
    run(SpoolHandoff(tmp_path).start())
    uuid = M.new_urn().removeprefix("urn:uuid:")
    (tmp_path / "msg" / f"{uuid}.msgpack").write_bytes(b"\xc1 not msgpack")
    spool = Spool(tmp_path)
    with pytest.raises(SpoolError, match=f"{uuid}.msgpack: not a valid message record"):
        spool.list()
    with pytest.raises(SpoolError, match="not a valid message record"):
        spool.load(uuid)


def test_a_directory_without_msg_is_not_a_spool(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="is not a spool"):
        Spool(tmp_path)


# --- wildboar spool -------------------------------------------------------------------


def cli(
    *args: str, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``python -m wildboar.cli spool ARGS`` in a child process."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WILDBOAR_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "wildboar.cli", "spool", *args],
        capture_output="stdout" not in kwargs,
        text=True,
        env=environ,
        timeout=60,
        check=False,
        **kwargs,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 1
    assert result.stdout in ("", None)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wildboar spool: ")
    for part in parts:
        assert part in lines[0]


@pytest.fixture
def three(tmp_path: Path) -> tuple[Path, list[M.Message]]:
    """A spool with three messages, committed in a known order: b, c, a."""
    path = tmp_path / "spool"
    a = make_message(sender="a@example.org", to=("x@example.net", "y@example.net"))
    b = make_message(sender="", to=("bounce@example.org",))
    c = make_message(sender="c\x1b[31m@example.org")  # a terminal escape from the Internet
    spool_at(path, [a, b, c], [1_700_000_300.0, 1_700_000_100.0, 1_700_000_200.0])
    return path, [b, c, a]


def test_cli_ls(three: tuple[Path, list[M.Message]]) -> None:
    path, ordered = three
    result = cli("ls", "--spool", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [m.email.id for m in ordered]
    assert lines[0].split()[1] == "2023-11-14T22:15:00Z"
    assert lines[0].split()[2] == str(ordered[0].email.size)  # the message's octets
    assert lines[0].endswith("  <> -> bounce@example.org")
    assert lines[1].endswith("  c\\x1b[31m@example.org -> bob@example.net")
    assert lines[2].endswith("  a@example.org -> x@example.net,y@example.net")


def test_cli_count(three: tuple[Path, list[M.Message]]) -> None:
    path, _ = three
    assert cli("count", "--spool", str(path)).stdout == "3\n"


def test_cli_says_on_stderr_what_was_set_aside(three: tuple[Path, list[M.Message]]) -> None:
    path, ordered = three
    Spool(path).quarantine(ordered[0].email.id, "held")
    result = cli("count", "--spool", str(path))
    assert result.stdout == "2\n"
    assert result.stderr == f"wildboar spool: 1 set aside in {path}/held/, not delivered\n"


def test_cli_show_prints_the_wire_form_indented(three: tuple[Path, list[M.Message]]) -> None:
    path, ordered = three
    for message_id in (ordered[2].email.id, uuid_of(ordered[2])):
        result = cli("show", message_id, "--spool", str(path))
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout.startswith('{\n  "version": 1,\n')
        assert M.decode(result.stdout.encode()) == ordered[2]
        data = json.loads(result.stdout)["email"]["data"]
        assert base64.b64decode(data, validate=True) == ordered[2].email.data


def test_cli_drain_prints_lines_in_time_order_and_empties_the_spool(
    three: tuple[Path, list[M.Message]], tmp_path: Path
) -> None:
    path, ordered = three
    out = tmp_path / "drained.jsonl"
    with open(out, "w") as handle:
        result = cli("drain", "--spool", str(path), stdout=handle, stderr=subprocess.PIPE)
    assert (result.returncode, result.stderr) == (0, "")
    lines = out.read_bytes().splitlines()
    assert [M.decode(line) for line in lines] == ordered
    assert files(path / "msg") == []
    assert cli("count", "--spool", str(path)).stdout == "0\n"
    assert cli("drain", "--spool", str(path)).returncode == 0


def test_cli_drain_keeps_messages_when_stdout_is_gone(
    three: tuple[Path, list[M.Message]],
) -> None:
    path, _ = three
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = cli("drain", "--spool", str(path), stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert_one_error_line(result, "stdout", "Broken pipe", "stay in the spool")
    assert cli("count", "--spool", str(path)).stdout == "3\n"


def test_cli_default_spool_comes_from_the_configuration(
    three: tuple[Path, list[M.Message]], tmp_path: Path
) -> None:
    path, _ = three
    config = tmp_path / "wildboar.toml"
    config.write_text(f"[spool]\npath = {json.dumps(str(path))}\n")
    assert cli("count", env={"WILDBOAR_CONFIG": str(config)}).stdout == "3\n"
    assert cli("count", env={"WILDBOAR_SPOOL": str(path)}).stdout == "3\n"


def test_cli_configuration_errors_are_one_line_each(tmp_path: Path) -> None:
    result = cli("ls", env={"WILDBOAR_SPOOL_BATCH": "0", "WILDBOAR_WORKERS": "many"})
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert all(line.startswith("wildboar spool: configuration: ") for line in lines)
    assert any("spool.batch" in line for line in lines)
    assert any("workers" in line for line in lines)


@pytest.mark.parametrize("command", ["ls", "count", "drain", "show"])
def test_cli_missing_spool_is_one_line(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "nowhere"
    args = [command, M.new_urn()] if command == "show" else [command]
    result = cli(*args, "--spool", str(missing))
    assert_one_error_line(result, str(missing), "is not a spool")


def test_cli_show_unknown_and_bad_ids(three: tuple[Path, list[M.Message]]) -> None:
    path, _ = three
    unknown = M.new_urn()
    assert_one_error_line(cli("show", unknown, "--spool", str(path)), f"no message {unknown}")
    assert_one_error_line(cli("show", "nonsense", "--spool", str(path)), "not a message id")


def test_cli_ls_lists_around_a_corrupt_file_and_names_it(
    three: tuple[Path, list[M.Message]],
) -> None:
    path, ordered = three
    uuid = M.new_urn().removeprefix("urn:uuid:")
    (path / "msg" / f"{uuid}.msgpack").write_bytes(b"garbage")
    result = cli("ls", "--spool", str(path))
    assert result.returncode == 1  # something needs the operator
    assert [line.split()[0] for line in result.stdout.splitlines()] == [m.email.id for m in ordered]
    [line] = result.stderr.splitlines()
    assert line.startswith("wildboar spool: ") and uuid in line
    assert "not a valid message record" in line and "corrupt/" in line
    assert (path / "msg" / f"{uuid}.msgpack").exists()  # ls changes nothing


def test_cli_drain_sets_a_corrupt_file_aside_and_drains_the_rest(
    three: tuple[Path, list[M.Message]],
) -> None:
    path, ordered = three
    uuid = M.new_urn().removeprefix("urn:uuid:")
    (path / "msg" / f"{uuid}.msgpack").write_bytes(b"garbage")
    result = cli("drain", "--spool", str(path))
    assert result.returncode == 1
    drained = [msgspec.json.decode(line, type=M.Message) for line in result.stdout.splitlines()]
    assert [m.email.id for m in drained] == [m.email.id for m in ordered]
    [line] = result.stderr.splitlines()
    assert uuid in line and f"set aside as {path / 'corrupt' / uuid}.msgpack" in line
    assert (path / "corrupt" / f"{uuid}.msgpack").read_bytes() == b"garbage"
    # The next drain has nothing in its way; count says what waits aside.
    again = cli("drain", "--spool", str(path))
    assert (again.returncode, again.stdout) == (0, "")
    count = cli("count", "--spool", str(path))
    assert count.stdout == "0\n" and "1 set aside in" in count.stderr


def test_readable_lists_around_a_corrupt_record_and_quarantine_moves_it(tmp_path: Path) -> None:
    good = make_message()
    outcomes, _ = run(spool_messages(tmp_path, [good]))
    assert outcomes == [DELIVERED]
    bad = tmp_path / "msg" / "0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f.msgpack"
    bad.write_bytes(b"junk")
    spool = Spool(tmp_path)
    with pytest.raises(SpoolError, match="not a valid message record"):
        spool.list()
    entries, corrupt = spool.readable()
    assert [e.id for e in entries] == [good.email.id]
    assert corrupt == ["urn:uuid:0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f"]
    moved = spool.quarantine(corrupt[0])
    assert moved == str(tmp_path / "corrupt" / bad.name) and not bad.exists()
    assert [e.id for e in spool.list()] == [good.email.id]


def test_drain_never_moves_a_record_where_a_planted_link_points(
    three: tuple[Path, list[M.Message]], tmp_path: Path
) -> None:
    """The workers own the spool: a corrupt/ that is a symbolic link (to a directory only
    root may enter) must not make a root drain move files there."""
    path, _ = three
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (path / "corrupt").symlink_to(victim)
    uuid = M.new_urn().removeprefix("urn:uuid:")
    (path / "msg" / f"{uuid}.msgpack").write_bytes(b"* * * * * root touch /tmp/x")
    result = cli("drain", "--spool", str(path))
    assert result.returncode == 1
    assert os.listdir(victim) == []
    assert "corrupt is a symbolic link: not used" in result.stderr, result.stderr
    assert (path / "msg" / f"{uuid}.msgpack").exists()  # left where it was


def test_odd_entries_in_msg_are_named_and_set_aside_never_a_hang(
    three: tuple[Path, list[M.Message]], tmp_path: Path
) -> None:
    """A directory, a FIFO (whose open would block), a link, a sparse giant: ls names
    each and lists the rest; drain writes the rest and moves each aside."""
    path, ordered = three
    msg = path / "msg"
    odd = [M.new_urn().removeprefix("urn:uuid:") for _ in range(4)]
    (msg / f"{odd[0]}.msgpack").mkdir()
    os.mkfifo(msg / f"{odd[1]}.msgpack")
    (msg / f"{odd[2]}.msgpack").symlink_to(tmp_path)
    with open(msg / f"{odd[3]}.msgpack", "wb") as giant:
        giant.truncate(2**40)  # 1 TiB, sparse
    listed = cli("ls", "--spool", str(path))
    assert listed.returncode == 1
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [m.email.id for m in ordered]
    assert all(any(u in line for line in listed.stderr.splitlines()) for u in odd)
    assert "Traceback" not in listed.stderr
    drained = cli("drain", "--spool", str(path))
    assert drained.returncode == 1 and "Traceback" not in drained.stderr
    assert len(drained.stdout.splitlines()) == 3
    assert sorted(os.listdir(path / "corrupt")) == sorted(f"{u}.msgpack" for u in odd)
    assert os.listdir(msg) == []


def test_drain_into_a_full_disk_leaves_no_partial_line_and_keeps_the_message(
    three: tuple[Path, list[M.Message]], tmpfs: Path
) -> None:
    path, _ = three
    filler = fill(tmpfs)
    os.truncate(filler, filler.stat().st_size - 600)  # room for less than one line
    out = tmpfs / "out.jsonl"
    with out.open("wb") as stdout:
        result = cli("drain", "--spool", str(path), stdout=stdout)
    assert result.returncode == 1
    assert out.read_bytes() == b""  # cut back to where the line began
    assert Spool(path).count() == 3


def test_due_finds_by_file_time_without_reading_a_record(tmp_path: Path) -> None:
    """The LMTP retry spool's records are due at their file time (``set_time``): ``due``
    gives those at or before a time, earliest first, and stats only."""
    first, second, later = (make_message(content=f"n{i}\r\n".encode()) for i in range(3))
    run(spool_messages(tmp_path, [first, second, later]))
    with Spool(tmp_path) as spool:
        spool.set_time(first.email.id, 1_000_000_200)
        spool.set_time(second.email.id, 1_000_000_100)
        spool.set_time(later.email.id, 2_000_000_000)
        assert spool.due(1_000_000_200) == [second.email.id, first.email.id]
        assert spool.due(1_000_000_150) == [second.email.id]
        path = tmp_path / "msg" / f"{uuid_of(later)}.msgpack"
        path.write_bytes(b"not a record")  # not read: still found
        os.utime(path, (2_000_000_000, 2_000_000_000))
        assert spool.due(2_000_000_000)[-1] == later.email.id
        with pytest.raises(SpoolError, match="no message"):
            spool.set_time(make_message().email.id, 0)
