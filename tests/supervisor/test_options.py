"""``--listen`` values and the worker command, parsed in memory (the only in-process tests)."""

from __future__ import annotations

import sys

import pytest

from supervisor.exits import StartupError
from supervisor.options import ListenSpec, parse_listen, parse_options


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:25", ListenSpec("smtp", "127.0.0.1", 25)),
        ("submission=[::]:587", ListenSpec("submission", "::", 587)),
        ("submissions=[2001:db8::1]:465", ListenSpec("submissions", "2001:db8::1", 465)),
        ("x.y_z-1=0.0.0.0:0", ListenSpec("x.y_z-1", "0.0.0.0", 0)),
        ("[::ffff:127.0.0.1]:2525", ListenSpec("smtp", "::ffff:127.0.0.1", 2525)),
    ],
)
def test_listen_values(value: str, expected: ListenSpec) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.1",
        "127.0.0.1:",
        ":25",
        "::1:25",
        "[::1]",
        "[::1]25",
        "[127.0.0.1]:25",
        "localhost:25",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:+25",
        "=127.0.0.1:25",
        "bad name=127.0.0.1:25",
        "a:b=127.0.0.1:25",
    ],
)
def test_bad_listen_values(value: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(value)


def test_display_brackets_ipv6() -> None:
    assert parse_listen("[::]:587").display() == "[::]:587"
    assert parse_listen("0.0.0.0:25").display() == "0.0.0.0:25"


def test_worker_command_after_double_dash_and_default() -> None:
    options = parse_options(["--listen", "127.0.0.1:0", "--", "w", "--flag", "--", "x"])
    assert options.worker_command == ("w", "--flag", "--", "x")
    default = parse_options(["--workers", "3"])
    assert default.worker_command == (sys.executable, "-I", "-m", "wildboar.worker")
    assert (default.workers, default.user, default.group) == (3, "wildboar", "wildboar")
    assert (default.drain_timeout, default.heartbeat_timeout, default.boot_timeout) == (30, 10, 30)


def test_errors_are_startup_errors_not_exits() -> None:
    with pytest.raises(StartupError, match="argument --listen: bad value 'x'"):
        parse_options(["--listen", "x"])
    with pytest.raises(StartupError, match="unrecognized arguments: stray"):
        parse_options(["stray"])
