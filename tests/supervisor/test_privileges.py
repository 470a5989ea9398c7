"""The privilege boundary: started as root it binds a privileged port, then nothing of it runs
as root; started as another user it drops nothing (development)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

from .conftest import (
    REPO,
    RUN_AS,
    SYSTEM_PYTHON,
    Supervisor,
    banner,
    banner_pid,
    worker_command,
)

NOBODY, NOGROUP = 65534, 65534
# Candidates for a free privileged port: the submission ports, then 26 upwards.
PRIVILEGED_PORTS: list[int] = [587, 465, *range(26, 1024)]


def free_privileged_port() -> int:
    for port in PRIVILEGED_PORTS:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024 on 127.0.0.1")


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def assert_unprivileged(pid: int) -> None:
    status = status_fields(pid)
    assert status["Uid"].split() == [str(NOBODY)] * 4, status["Uid"]  # real, effective, saved, fs
    assert status["Gid"].split() == [str(NOGROUP)] * 4, status["Gid"]
    assert status["Groups"] == ""
    for capabilities in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert int(status[capabilities], 16) == 0, (capabilities, status[capabilities])
    assert status["NoNewPrivs"] == "1"


def test_root_binds_a_privileged_port_then_runs_nothing_as_root(
    supervisors: Callable[..., Supervisor],
) -> None:
    assert os.geteuid() == 0, "the supervisor's tests run as root, as in CI"
    port = free_privileged_port()
    sup = supervisors("--listen", f"127.0.0.1:{port}", "--workers", "2", *RUN_AS)
    assert sup.port() == port
    pids = sup.wait_serving(2)
    assert sup.wait_event("privileges_dropped")["uid"] == NOBODY
    for pid in [sup.pid, *pids]:
        assert_unprivileged(pid)
    assert banner_pid(banner(port)) in pids
    # After a restart too: the replacement is spawned by the unprivileged supervisor.
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    sup.wait_event("worker_exited", pid=victim)
    replacement = sup.wait_serving(2) - pids
    assert len(replacement) == 1
    assert_unprivileged(replacement.pop())
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(10) == 0


def unprivileged_interpreter() -> tuple[list[str], dict[str, str]]:
    """How to run the supervisor as nobody: the venv's interpreter if nobody may execute it,
    else the system interpreter (same minor version) with the venv's site-packages."""
    try:
        subprocess.run(
            [sys.executable, "-c", ""], user=NOBODY, group=NOGROUP, extra_groups=[], check=True
        )
    except (PermissionError, subprocess.CalledProcessError):
        site = sysconfig.get_paths()["purelib"]
        return [SYSTEM_PYTHON], {"PYTHONPATH": f"{REPO}:{site}"}
    return [sys.executable], {}


def run_as_nobody(args: list[str]) -> subprocess.CompletedProcess[str]:
    python, env = unprivileged_interpreter()
    return subprocess.run(
        [*python, "-m", "supervisor", *args],
        cwd=REPO,
        env={**os.environ, **env},
        user=NOBODY,
        group=NOGROUP,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_unprivileged_start_cannot_bind_port_25_one_line() -> None:
    assert os.geteuid() == 0, "the supervisor's tests run as root, as in CI"
    result = run_as_nobody(["--listen", "127.0.0.1:25", "--", *worker_command()])
    assert result.returncode == 1
    assert result.stderr == "wildboar-supervisor: cannot bind 127.0.0.1:25: Permission denied\n"


def test_unprivileged_start_keeps_its_user_and_serves(
    supervisors: Callable[..., Supervisor],
) -> None:
    assert os.geteuid() == 0, "the supervisor's tests run as root, as in CI"
    python, env = unprivileged_interpreter()
    sup = supervisors(
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--user",
        "no-such-user-is-fine-when-not-root",
        argv0=[*python, "-m", "supervisor"],
        env=env,
        user=NOBODY,
        group=NOGROUP,
        extra_groups=[],
    )
    port = sup.port()
    kept = sup.wait_event("privileges_kept")
    assert kept["uid"] == NOBODY
    (pid,) = sup.wait_serving(1)
    assert banner_pid(banner(port)) == pid
    assert status_fields(pid)["Uid"].split() == [str(NOBODY)] * 4
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(10) == 0
