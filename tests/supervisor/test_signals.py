"""TERM/INT drain, HUP rolling restart, TTIN/TTOU: real signals to a real supervisor."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import RUN_AS, Supervisor, banner, banner_pid, read_line


def start(supervisors: Callable[..., Supervisor], *flags: str, **env: str) -> Supervisor:
    return supervisors("--listen", "127.0.0.1:0", *RUN_AS, *flags, env=env)


def test_term_lets_the_session_in_flight_finish(supervisors: Callable[..., Supervisor]) -> None:
    sup = start(supervisors, "--workers", "2", "--drain-timeout", "5", ECHO_WORKER_HOLD="1.5")
    port = sup.port()
    pids = sup.wait_serving(2)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        pid = banner_pid(read_line(conn))
        sup.signal(signal.SIGTERM)
        sup.wait_event("stopping")
        assert read_line(conn) == f"221 2.0.0 done {pid}\r\n"  # not 421: it finished in time
    assert sup.wait_exit(10) == 0
    assert {e["pid"] for e in sup.find("worker_stopping", solicited=True)} == pids
    exited = sup.find("worker_exited")
    assert {e["pid"] for e in exited} == pids and {e["status"] for e in exited} == {"exit 0"}
    assert not sup.find("worker_killed")
    assert sup.find("stopped", status=0)


def test_int_drains_like_term(supervisors: Callable[..., Supervisor]) -> None:
    sup = start(supervisors, "--workers", "1")
    sup.wait_serving(1)
    sup.signal(signal.SIGINT)
    assert sup.wait_exit(10) == 0
    assert sup.find("signal", signal="SIGINT")
    assert sup.find("worker_exited")[0]["status"] == "exit 0"


def test_term_sends_421_after_the_drain_deadline(supervisors: Callable[..., Supervisor]) -> None:
    sup = start(supervisors, "--workers", "1", "--drain-timeout", "0.5", ECHO_WORKER_HOLD="30")
    port = sup.port()
    sup.wait_serving(1)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        read_line(conn)
        sup.signal(signal.SIGTERM)
        assert read_line(conn).startswith("421 4.3.2 ")
    assert sup.wait_exit(10) == 0


def test_term_kills_a_worker_that_does_not_drain(supervisors: Callable[..., Supervisor]) -> None:
    flags = ("--workers", "1", "--drain-timeout", "0.5")
    sup = start(supervisors, *flags, ECHO_WORKER_IGNORE_DRAIN="1")
    (pid,) = sup.wait_serving(1)
    started = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(15) == 0  # stragglers are killed, the stop still succeeds
    assert 5.0 <= time.monotonic() - started < 8.0  # deadline 0.5 s + 5 s of grace
    assert sup.find("worker_killed", pid=pid, reason="drain_timeout")
    assert sup.find("worker_exited", pid=pid)[0]["status"] == "signal SIGKILL"


def test_term_lets_handoffs_finish_after_the_drain_deadline(
    supervisors: Callable[..., Supervisor],
) -> None:
    """A worker that says its handoffs may take 3 s after the drain deadline (wildboar's
    timeouts.handoff) is given them before it is killed: messages being made durable
    finish (docs/operations.md, TERM)."""
    flags = ("--workers", "1", "--drain-timeout", "0.5")
    sup = start(supervisors, *flags, ECHO_WORKER_IGNORE_DRAIN="1", ECHO_WORKER_READY_HANDOFF="3")
    (pid,) = sup.wait_serving(1)
    started = time.monotonic()
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit(20) == 0
    assert 8.0 <= time.monotonic() - started < 12.0  # 0.5 s + 3 s of handoffs + 5 s grace
    assert sup.find("worker_killed", pid=pid, reason="drain_timeout")


def connect_continuously(
    port: int, stop: threading.Event, pids: list[int], errors: list[str]
) -> None:
    while not stop.is_set():
        try:
            pids.append(banner_pid(banner(port, timeout=5)))
        except (OSError, AssertionError, ValueError) as error:
            errors.append(repr(error))


def test_hup_replaces_every_worker_without_refusing_a_connection(
    supervisors: Callable[..., Supervisor],
) -> None:
    sup = start(supervisors, "--workers", "3", "--drain-timeout", "5")
    port = sup.port()
    old = sup.wait_serving(3)
    sup.wait_event("ready")
    stop, served, errors = threading.Event(), list[int](), list[str]()
    clients = [
        threading.Thread(target=connect_continuously, args=(port, stop, served, errors))
        for _ in range(2)
    ]
    for client in clients:
        client.start()
    try:
        sup.wait_until(lambda: len(served) > 50, 5, "connections before HUP")
        sup.signal(signal.SIGHUP)
        sup.wait_event("reloaded", timeout=15)
        during = len(served)
        sup.wait_until(lambda: len(served) > during + 50, 5, "connections after HUP")
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    assert errors == []
    new = sup.wait_serving(3)
    assert not new & old
    assert set(served[-20:]) <= new
    assert set(served) <= old | new and set(served) & old and set(served) & new
    for pid in old:  # drained after its successor was ready, exit 0
        assert sup.wait_event("worker_exited", pid=pid)["status"] == "exit 0", sup.output()
    spawned = sup.find("worker_spawned", generation=1)
    assert sorted(e["worker"] for e in spawned) == [1, 2, 3]
    assert sup.process.poll() is None


def test_reloaded_means_no_old_worker_still_accepts(
    supervisors: Callable[..., Supervisor],
) -> None:
    # Old workers take a while to close their listeners after they are told to drain: the
    # supervisor must not say "reloaded" (nor READY=1) before they have.
    sup = start(supervisors, "--workers", "2", ECHO_WORKER_SLOW_DRAIN="1.5")
    port = sup.port()
    old = sup.wait_serving(2)
    sup.signal(signal.SIGHUP)
    sup.wait_event("reloaded", timeout=20)
    pids = {banner_pid(banner(port)) for _ in range(20)}
    assert not pids & old, sup.output()
    for pid in old:
        assert sup.find("worker_stopping", pid=pid), sup.output()


def test_hup_with_a_successor_that_cannot_boot_keeps_the_old_workers(
    supervisors: Callable[..., Supervisor], shared_tmp: Path
) -> None:
    broken = shared_tmp / "broken-config"
    sup = start(supervisors, "--workers", "2", ECHO_WORKER_BOOT_EXIT_IF=str(broken))
    port = sup.port()
    old = sup.wait_serving(2)
    broken.touch()
    sup.signal(signal.SIGHUP)
    failed = sup.wait_event("reload_failed")
    assert "WORKER_BOOT_ERROR" in failed["reason"]
    assert sup.ready_workers() == old
    assert {banner_pid(banner(port)) for _ in range(6)} <= old
    assert not sup.find("halted") and sup.process.poll() is None
    broken.unlink()
    sup.signal(signal.SIGHUP)  # the operator fixed the configuration
    sup.wait_event("reloaded")
    assert not sup.wait_serving(2) & old


def test_ttin_adds_and_ttou_removes_the_newest_worker(
    supervisors: Callable[..., Supervisor],
) -> None:
    sup = start(supervisors, "--workers", "1")
    port = sup.port()
    (first,) = sup.wait_serving(1)
    sup.signal(signal.SIGTTIN)
    sup.wait_serving(2)
    sup.signal(signal.SIGTTIN)
    three = sup.wait_serving(3)
    assert sup.wait_event("workers_changed", count=2)["workers"] == 3
    newest = [e["pid"] for e in sup.find("worker_spawned")][-1]
    sup.signal(signal.SIGTTOU)
    sup.wait_event("worker_exited", pid=newest)
    assert sup.wait_serving(2) == three - {newest}
    sup.signal(signal.SIGTTOU)
    assert sup.wait_serving(1) == {first}
    sup.signal(signal.SIGTTOU)  # never below one
    sup.wait_event("ttou_ignored")
    assert sup.ready_workers() == {first}
    assert banner_pid(banner(port)) == first
