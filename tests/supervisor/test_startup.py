"""Start-up: binding, serving, and the one-line errors (exit 1, never a traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable

from .conftest import RUN_AS, Supervisor, banner, banner_pid, run_to_exit, worker_command

PREFIX = "wildboar-supervisor: "


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, result
    stderr = result.stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(PREFIX), stderr
    assert expected in lines[0], stderr
    assert "Traceback" not in stderr


def test_serves_ipv4_and_ipv6_on_kernel_chosen_ports(
    supervisors: Callable[..., Supervisor],
) -> None:
    sup = supervisors(
        "--listen", "127.0.0.1:0", "--listen", "submission=[::1]:0", "--workers", "2", *RUN_AS
    )
    smtp, submission = sup.port("smtp"), sup.port("submission")
    assert smtp != 0 and submission != 0
    assert sup.wait_event("listening", name="submission")["address"] == f"[::1]:{submission}"
    pids = sup.wait_serving(2)
    sup.wait_event("ready")
    assert banner_pid(banner(smtp)) in pids
    assert banner_pid(banner(submission, host="::1")) in pids
    spawned = sup.find("worker_spawned")
    assert sorted(e["worker"] for e in spawned) == [1, 2]


def test_ipv6_wildcard_and_ipv4_wildcard_coexist(supervisors: Callable[..., Supervisor]) -> None:
    # IPV6_V6ONLY: [::]:P does not take 0.0.0.0:P, so both can be bound on the same port.
    with socket.socket(socket.AF_INET6) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    sup = supervisors(
        "--listen", f"[::]:{port}", "--listen", f"v4=0.0.0.0:{port}", "--workers", "1", *RUN_AS
    )
    assert sup.port("smtp") == port and sup.port("v4") == port
    (pid,) = sup.wait_serving(1)
    assert banner_pid(banner(port, host="::1")) == pid
    assert banner_pid(banner(port, host="127.0.0.1")) == pid


def test_bad_listen_value_is_one_line() -> None:
    for value in (
        "127.0.0.1",
        "::1:25",
        "[::1]25",
        "localhost:25",
        "127.0.0.1:99999",
        "=1.2.3.4:5",
    ):
        result = run_to_exit(["--listen", value, *RUN_AS, "--", *worker_command()])
        assert_one_line_error(result, "argument --listen: bad value")


def test_bad_flag_values_are_one_line() -> None:
    for flags in (["--workers", "0"], ["--heartbeat-timeout", "-1"], ["--no-such-flag"]):
        result = run_to_exit(["--listen", "127.0.0.1:0", *flags, *RUN_AS])
        assert_one_line_error(result, "")


def test_nothing_to_listen_on_is_one_line() -> None:
    result = run_to_exit([*RUN_AS, "--", *worker_command()])
    assert_one_line_error(result, "nothing to listen on")


def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(["--listen", f"127.0.0.1:{port}", *RUN_AS, "--", *worker_command()])
    assert_one_line_error(result, f"cannot bind 127.0.0.1:{port}: Address already in use")


def test_second_listener_failing_binds_nothing() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--listen", "127.0.0.1:0", "--listen", f"b=127.0.0.1:{port}", *RUN_AS]
        result = run_to_exit([*args, "--", *worker_command()])
    assert_one_line_error(result, f"cannot bind 127.0.0.1:{port}")


def test_missing_user_is_one_line() -> None:
    assert os.geteuid() == 0, "the supervisor's tests run as root, as in CI"
    args = ["--listen", "127.0.0.1:0", "--user", "no-such-user-wb", "--group", "nogroup"]
    result = run_to_exit([*args, "--", *worker_command()])
    assert_one_line_error(result, "unknown user 'no-such-user-wb'")


def test_missing_group_is_one_line() -> None:
    assert os.geteuid() == 0, "the supervisor's tests run as root, as in CI"
    args = ["--listen", "127.0.0.1:0", "--user", "nobody", "--group", "no-such-group-wb"]
    result = run_to_exit([*args, "--", *worker_command()])
    assert_one_line_error(result, "unknown group 'no-such-group-wb'")


def test_worker_command_that_cannot_run_is_one_line() -> None:
    args = ["--listen", "127.0.0.1:0", *RUN_AS, "--", "/nonexistent/python3", "worker.py"]
    result = run_to_exit(args)
    assert_one_line_error(result, "worker command '/nonexistent/python3' is not found")


def test_empty_worker_command_is_one_line() -> None:
    result = run_to_exit(["--listen", "127.0.0.1:0", *RUN_AS, "--"])
    assert_one_line_error(result, "empty worker command")
