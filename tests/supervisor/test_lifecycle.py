"""Workers that die, hang or cannot boot: restart with back-off, kill, or halt."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import RUN_AS, Supervisor, banner, banner_pid, worker_command


def start(supervisors: Callable[..., Supervisor], *flags: str, **env: str) -> Supervisor:
    return supervisors("--listen", "127.0.0.1:0", *RUN_AS, *flags, env=env)


def assert_halted(sup: Supervisor, reason: str) -> None:
    assert sup.wait_exit(15) == 1
    halted = sup.find("halted")
    assert len(halted) == 1, sup.output()
    assert reason in halted[0]["reason"], halted
    assert halted[0]["level"] == "error"
    assert "Traceback" not in sup.output()
    assert not sup.live_workers()


def test_worker_killed_with_sigkill_is_replaced(supervisors: Callable[..., Supervisor]) -> None:
    sup = start(supervisors, "--workers", "1")
    port = sup.port()
    (old,) = sup.wait_serving(1)
    assert banner_pid(banner(port)) == old
    os.kill(old, signal.SIGKILL)
    exited = sup.wait_event("worker_exited", pid=old)
    assert exited["status"] == "signal SIGKILL" and exited["level"] == "warning"
    assert sup.wait_event("worker_restart_scheduled")["delay"] == 0.1
    (new,) = sup.wait_serving(1)
    assert new != old
    assert banner_pid(banner(port)) == new
    assert sup.process.poll() is None


def test_crashing_worker_restarts_with_growing_back_off(
    supervisors: Callable[..., Supervisor],
) -> None:
    sup = start(supervisors, "--workers", "1", ECHO_WORKER_CRASH_AFTER="1")
    port = sup.port()
    served = []
    for _ in range(3):
        sup.wait_serving(1)
        served.append(banner_pid(banner(port)))
        sup.wait_event("worker_exited", pid=served[-1])
    assert len(set(served)) == 3
    sup.wait_event("worker_restart_scheduled", count=3)
    delays = [e["delay"] for e in sup.find("worker_restart_scheduled")]
    assert delays == [0.1, 0.2, 0.4]
    assert all(e["status"] == "exit 70" for e in sup.find("worker_exited"))
    assert not sup.find("halted")  # each had been ready: a crash, not a boot failure


def test_boot_error_halts_instead_of_restarting(supervisors: Callable[..., Supervisor]) -> None:
    sup = start(supervisors, "--workers", "2", ECHO_WORKER_BOOT_EXIT="3")
    assert_halted(sup, "exited with status 3 (WORKER_BOOT_ERROR) before ready")
    assert len(sup.find("worker_spawned")) <= 2  # never restarted
    assert sup.find("stopped", status=1)


def test_five_deaths_before_ready_in_a_row_halt(supervisors: Callable[..., Supervisor]) -> None:
    sup = start(supervisors, "--workers", "1", ECHO_WORKER_BOOT_EXIT="70")
    assert_halted(sup, "5 workers in a row died before ready")
    assert len(sup.find("worker_spawned")) == 5
    assert [e["delay"] for e in sup.find("worker_restart_scheduled")] == [0.1, 0.2, 0.4, 0.8]


def test_boot_timeout_kills_then_halts(supervisors: Callable[..., Supervisor]) -> None:
    sup = start(supervisors, "--workers", "1", "--boot-timeout", "0.5", ECHO_WORKER_NO_READY="1")
    assert_halted(sup, "5 workers in a row died before ready")
    killed = sup.find("worker_killed")
    assert len(killed) == 5 and {e["reason"] for e in killed} == {"boot_timeout"}


def test_silent_worker_is_killed_and_replaced(
    supervisors: Callable[..., Supervisor], shared_tmp: Path
) -> None:
    flag = shared_tmp / "silent"
    sup = start(
        supervisors,
        "--workers",
        "2",
        "--heartbeat-timeout",
        "1.5",
        ECHO_WORKER_SILENT_ONCE=str(flag),
        ECHO_WORKER_HEARTBEAT="0.2",
    )
    port = sup.port()
    first = sup.wait_serving(2)
    silent = sup.wait_event("echo_ready", silent=True)["pid"]
    started = time.monotonic()
    killed = sup.wait_event("worker_killed", timeout=8)
    assert killed["pid"] == silent and killed["reason"] == "heartbeat_timeout"
    assert time.monotonic() - started < 4
    assert sup.wait_event("worker_exited", pid=silent)["status"] == "signal SIGKILL"
    now = sup.wait_serving(2)
    assert silent not in now and len(now & first) == 1
    assert {banner_pid(banner(port)) for _ in range(6)} <= now
    assert len(sup.find("worker_killed")) == 1  # the heartbeating ones are left alone


def test_supervisor_gone_workers_drain_and_exit(supervisors: Callable[..., Supervisor]) -> None:
    # Contract: end of file on the control channel makes a worker drain and exit.
    sup = start(supervisors, "--workers", "2")
    pids = sup.wait_serving(2)
    sup.process.kill()
    sup.process.wait(5)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_worker_stopping_on_its_own_is_replaced_at_once(
    supervisors: Callable[..., Supervisor],
) -> None:
    sup = start(supervisors, "--workers", "1")
    port = sup.port()
    (old,) = sup.wait_serving(1)
    os.kill(old, signal.SIGTERM)  # someone else told it to stop: it drains and says stopping
    assert sup.wait_event("worker_stopping", pid=old)["solicited"] is False
    sup.wait_event("worker_draining", pid=old)
    (new,) = sup.wait_serving(1)
    assert new != old
    assert sup.wait_event("worker_exited", pid=old)["status"] == "exit 0"
    assert not sup.find("worker_restart_scheduled")  # a replacement, not a crash
    assert banner_pid(banner(port)) == new


def test_messages_that_break_the_contract_are_logged_not_believed(
    supervisors: Callable[..., Supervisor],
) -> None:
    sup = start(supervisors, "--workers", "1", ECHO_WORKER_GARBAGE="1", ECHO_WORKER_HEARTBEAT="0.2")
    port = sup.port()
    (pid,) = sup.wait_serving(1)
    sup.wait_event("bad_message", count=11)
    reasons = [e["reason"] for e in sup.find("bad_message", pid=pid)]
    assert reasons == [
        "not JSON",
        "not a JSON object",
        "unknown message type 'nonsense'",
        "heartbeat without counts",
        "heartbeat without counts",
        "ready without pid",
        "ready with a drain that is not 0 to 86400 seconds",
        "ready with a drain that is not 0 to 86400 seconds",
        "message over 65536 bytes",
        "nested deeper than 4",
        "nested deeper than 4",
    ]
    assert banner_pid(banner(port)) == pid
    time.sleep(0.5)
    assert sup.ready_workers() == {pid} and sup.process.poll() is None


def test_a_boot_error_after_the_start_backs_off_instead_of_halting(
    supervisors: Callable[..., Supervisor], shared_tmp: Path
) -> None:
    """Once serving, a replacement that cannot boot (a full disk, a spool made
    unwritable) does not take the server down: the other workers serve on, the slot
    retries with back-off, and serves again once the cause is gone."""
    flag = shared_tmp / "broken"
    sup = start(supervisors, "--workers", "2", ECHO_WORKER_BOOT_EXIT_IF=str(flag))
    port = sup.port()
    first = sup.wait_serving(2)
    sup.wait_event("ready")
    flag.touch()
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    sup.wait_event("worker_boot_failed", count=3, timeout=15)
    assert not sup.find("halted") and sup.process.poll() is None
    delays = [e["delay"] for e in sup.find("worker_restart_scheduled")]
    assert delays[:3] == [0.1, 0.2, 0.4], delays  # one per boot failure seen so far
    survivor = (first - {victim}).pop()
    assert {banner_pid(banner(port)) for _ in range(4)} == {survivor}
    flag.unlink()
    now = sup.wait_serving(2, timeout=15)
    assert survivor in now and victim not in now


def test_a_stalled_supervisor_does_not_kill_its_heartbeating_workers(
    supervisors: Callable[..., Supervisor],
) -> None:
    """SIGSTOP of the supervisor (a paused VM, Ctrl-Z): the workers' heartbeats wait in
    their channels; the stall is not held against them."""
    flags = ("--workers", "2", "--heartbeat-timeout", "1.5")
    sup = start(supervisors, *flags, ECHO_WORKER_HEARTBEAT="0.2")
    port = sup.port()
    workers = sup.wait_serving(2)
    sup.wait_event("ready")
    os.kill(sup.process.pid, signal.SIGSTOP)
    time.sleep(4)  # longer than the heartbeat timeout and the stall threshold
    os.kill(sup.process.pid, signal.SIGCONT)
    sup.wait_event("supervisor_stalled", timeout=10)
    time.sleep(1)
    assert not sup.find("worker_killed"), sup.output()
    assert sup.wait_serving(2) == workers
    assert banner_pid(banner(port)) in workers


def test_a_worker_command_that_cannot_start_after_the_start_is_retried(
    supervisors: Callable[..., Supervisor], shared_tmp: Path
) -> None:
    """A spawn that fails once serving (here the command lost its execute bit; in life
    EAGAIN from a process limit) aborts a reload, or retries a restart with back-off,
    instead of halting a server that is serving."""
    script = shared_tmp / "worker.sh"
    script.write_text(f'#!/bin/sh\nexec {" ".join(worker_command())} "$@"\n')
    script.chmod(0o755)
    sup = supervisors("--listen", "127.0.0.1:0", *RUN_AS, "--workers", "2", command=[str(script)])
    port = sup.port()
    first = sup.wait_serving(2)
    sup.wait_event("ready")
    script.chmod(0o644)
    sup.signal(signal.SIGHUP)
    failed = sup.wait_event("reload_failed", timeout=15)
    assert "cannot start the worker command" in failed["reason"]
    assert sup.wait_serving(2) == first
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    sup.wait_event("worker_spawn_failed", count=2, timeout=15)
    assert not sup.find("halted") and sup.process.poll() is None
    assert banner_pid(banner(port)) in first - {victim}
    script.chmod(0o755)
    now = sup.wait_serving(2, timeout=15)
    assert victim not in now and len(now & first) == 1
