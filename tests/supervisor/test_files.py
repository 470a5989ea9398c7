"""The files the supervisor reads for its workers (``--pass-file``): what it refuses to
read, and the sealed copies a worker cannot change."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest

from supervisor.exits import StartupError
from supervisor.files import MAX_SIZE, PassedFiles, Unreadable, read


def test_a_fifo_a_directory_and_a_huge_file_are_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (MAX_SIZE + 1))
    for path, why in ((fifo, "not a regular file"), (tmp_path, "not a regular file"),
                      (huge, f"larger than {MAX_SIZE} octets"),
                      (tmp_path / "absent", "No such file or directory")):  # fmt: skip
        with pytest.raises(Unreadable, match=why):
            read(str(path))


def test_a_file_missing_at_start_stops_the_supervisor(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"--pass-file .*absent: No such file"):
        PassedFiles([str(tmp_path / "absent")]).load()


def test_workers_get_sealed_copies_and_a_lost_file_keeps_its_content(tmp_path: Path) -> None:
    key = tmp_path / "mx.key"
    key.write_bytes(b"first")
    files = PassedFiles([str(key), str(key)])  # named twice: passed once
    files.load()
    with files.descriptors() as passed:
        [(path, fd)] = passed
        assert path == str(key)
        assert os.pread(fd, 100, 0) == b"first"
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL
        with pytest.raises(OSError) as refused:
            os.pwrite(fd, b"changed", 0)
        assert refused.value.errno in (errno.EPERM, errno.EBADF)
    key.write_bytes(b"renewed")
    assert files.reload() == []
    key.unlink()
    assert files.reload() == [(str(key), "No such file or directory")]
    with files.descriptors() as passed:
        assert os.pread(passed[0][1], 100, 0) == b"renewed"
