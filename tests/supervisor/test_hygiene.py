"""Attacks on the start and on the supervisor, each performed for real (docs/security.md):
root's terminal within a worker's reach, root's environment and descriptors handed down,
ambient capabilities kept, a compromised worker signalling its supervisor, and a control
channel message that once crashed the parser."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    PASS_ECHO_ENV,
    REPO,
    RUN_AS,
    Supervisor,
    free_port,
    worker_command,
)
from .test_privileges import (
    NOBODY,
    assert_unprivileged,
    free_privileged_port,
    unprivileged_interpreter,
)


def start(supervisors: Callable[..., Supervisor], *args: str, **env: str) -> Supervisor:
    return supervisors("--listen", f"127.0.0.1:{free_port()}", *args, *RUN_AS, env=env)


def fd_targets(pid: int) -> dict[str, str]:
    targets = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            targets[name] = os.readlink(f"/proc/{pid}/fd/{name}")
    return targets


def controlling_tty(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[4])


class Terminal:
    """A supervisor started as root with a pseudo-terminal as its controlling terminal and
    its stdin, stdout and stderr: an operator's interactive shell."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.slave_name = os.ttyname(slave)
        argv = [sys.executable, "-m", "supervisor", *args, "--", *worker_command()]
        # setsid -c: a new session whose controlling terminal is stdin's (the pty).
        self.process = subprocess.Popen(
            ["setsid", "-c", *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=REPO,
            env={**os.environ, **env},
        )
        os.close(slave)
        self.output = b""
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(self.master, 65536):
                with self._lock:
                    self.output += chunk

    def text(self) -> str:
        with self._lock:
            return self.output.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            match = re.search(pattern, self.text())
            if match:
                return match
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} on the terminal:\n{self.text()}")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def run(*args: str, **env: str) -> Terminal:
        started.append(Terminal(list(args), env))
        return started[-1]

    yield run
    for term in started:
        term.close()


def pids_in(text: str, event: str) -> set[int]:
    return {int(pid) for pid in re.findall(rf'"event":"{event}"[^\n]*?"pid":(\d+)', text)}


def test_root_at_a_terminal_keeps_it_from_every_unprivileged_process(
    terminal: Callable[..., Terminal],
) -> None:
    """The audit's TIOCSTI attack: a worker holding root's terminal pushed ``id > file``
    into root's shell. Now no process of the unprivileged user has the terminal as its
    controlling terminal or holds a descriptor of it, and what reaches the terminal is
    escaped (a worker's escape sequences cannot drive it)."""
    assert os.geteuid() == 0, "the supervisor's tests run as root, as in CI"
    term = terminal(
        "--listen", f"127.0.0.1:{free_port()}", "--workers", "1", *RUN_AS, *PASS_ECHO_ENV,
        ECHO_WORKER_PROBE="1",
    )  # fmt: skip
    probe = term.wait_for(r'\{"event": "echo_probe".*\}')
    term.wait_for(r'"event":"ready"')
    report: dict[str, Any] = __import__("json").loads(probe.group())
    assert report["uid"] == NOBODY
    assert report["ttys"] == [] and report["tty_nr"] == 0, report
    assert report["controlling_terminal"] == "ENXIO", report
    assert set(report["tiocsti"].values()) <= {"ENOTTY", "EIO", "EPERM"}, report
    assert not any("/dev/pts" in target for target in report["fds"].values()), report
    assert report["cwd"] == "/"
    # The supervisor itself (unprivileged after the drop) has neither.
    [supervisor] = pids_in(term.text(), "started")
    assert supervisor != term.process.pid  # the process root started stays as the relay
    assert_unprivileged(supervisor)
    assert controlling_tty(supervisor) == 0
    assert not any(t.startswith("/dev/pts") for t in fd_targets(supervisor).values())
    # What the worker wrote arrived escaped: no ESC, BEL or bidi override reached the tty.
    line = term.wait_for(r"escapes: [^\n]*end").group()
    assert "\x1b" not in term.text() and "\x07" not in term.text() and "\u202e" not in line
    assert "\\x1b]0;owned\\x07" in line and "\\u202e" in line
    # Ctrl-C at the terminal reaches the relay, which passes it on: a graceful stop.
    os.write(term.master, b"\x03")
    assert term.process.wait(15) == 0
    term.wait_for(r'"event":"stopped"')


def test_workers_get_an_allow_listed_environment_and_no_inherited_descriptor(
    supervisors: Callable[..., Supervisor], tmp_path: Path
) -> None:
    """Root's ``HOME``, a token in its environment and a descriptor it had open on
    /etc/shadow reached the workers; now none of them does, and the supervisor closed the
    descriptor at start."""
    secret = os.open("/etc/shadow", os.O_RDONLY)
    try:
        sup = supervisors(
            "--listen", f"127.0.0.1:{free_port()}", "--workers", "1", *RUN_AS,
            env={"HOME": "/root", "API_TOKEN": "s3cr3t", "ECHO_WORKER_PROBE": "1",
                 "WILDBOAR_SOMETHING": "kept", "LC_ALL": "C.UTF-8"},
            pass_fds=(secret,),
        )  # fmt: skip
        report = sup.wait_event("echo_probe")
        sup.wait_serving(1)
    finally:
        os.close(secret)
    environment = set(report["environ"])
    assert {"HOME", "API_TOKEN", "USER", "PWD"}.isdisjoint(environment), environment
    assert {"WILDBOAR_SOMETHING", "LC_ALL", "PATH"} <= environment
    assert "/etc/shadow" not in report["fds"].values(), report["fds"]
    assert "/etc/shadow" not in fd_targets(sup.pid).values()
    # /dev/null, its output pipe, the control channel, the listener, the probe's listdir.
    kinds = ("/dev/null", "pipe:", "socket:", "/proc/")
    assert all(target.startswith(kinds) for target in report["fds"].values()), report["fds"]


def test_a_start_with_ambient_capabilities_keeps_none(
    supervisors: Callable[..., Supervisor],
) -> None:
    """Started as nobody with CAP_NET_BIND_SERVICE as an ambient capability (setpriv), the
    supervisor binds port 587 with it and then drops it: no worker keeps CapEff 0x400 or
    runs without no_new_privs, as one did."""
    port = free_privileged_port()
    setpriv = [
        "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
        "--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service",
    ]  # fmt: skip
    python, env = unprivileged_interpreter()
    sup = supervisors(
        "--listen", f"127.0.0.1:{port}", "--workers", "1",
        argv0=[*setpriv, *python, "-m", "supervisor"], env={**env, "ECHO_WORKER_PROBE": "1"},
    )  # fmt: skip
    report = sup.wait_event("echo_probe")
    (worker,) = sup.wait_serving(1)
    assert sup.wait_event("listening")["port"] == port
    assert report["caps"] == {
        "CapInh": "0000000000000000",
        "CapPrm": "0000000000000000",
        "CapEff": "0000000000000000",
        "CapAmb": "0000000000000000",
        "NoNewPrivs": "1",
    }, report["caps"]
    for pid in (sup.pid, worker):
        status = Path(f"/proc/{pid}/status").read_text()
        for name in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert re.search(rf"^{name}:\s+0+$", status, re.M), (pid, name, status)


def test_signals_from_a_worker_or_its_descendants_are_ignored(
    supervisors: Callable[..., Supervisor],
) -> None:
    """A compromised worker sent its supervisor TTIN ten times and got eleven workers. Now
    the supervisor ignores the signals of its workers and of their descendants: a double
    fork (it is their subreaper), children that exit and are reaped at once (gone, and of
    the workers' user), and the end of a chain of 70 nested children (deeper than anything
    that may command it); and it says so."""
    sup = start(supervisors, "--workers", "1", ECHO_WORKER_SIGNAL_PARENT="10")
    (worker,) = sup.wait_serving(1)
    grandchild = sup.wait_event("echo_grandchild_signalled", timeout=10)["pid"]
    assert grandchild != worker
    # (Signals of one kind sent in a burst may arrive as one: count senders, not signals.)
    descendant = "sent by a worker or a process of a worker"
    for sender in (worker, grandchild):
        sup.wait_event("signal_ignored", reason=descendant, sender_pid=sender)
    sup.wait_event("echo_signalled_all", timeout=20)
    time.sleep(1.0)
    assert not sup.find("signal", signal="SIGTTIN") and not sup.find("signal", signal="SIGTTOU")
    assert len(sup.find("worker_spawned")) == 1
    assert not sup.find("reloading") and not sup.find("workers_changed")
    assert sup.ready_workers() == {worker}
    # The operator's signals still work.
    sup.signal(signal.SIGTTIN)
    sup.wait_event("workers_changed", workers=2)


def test_ttin_stops_at_workers_max(supervisors: Callable[..., Supervisor]) -> None:
    sup = start(supervisors, "--workers", "1", "--workers-max", "2")
    sup.wait_serving(1)
    for _ in range(4):
        sup.signal(signal.SIGTTIN)
        time.sleep(0.3)
    sup.wait_event("ttin_ignored", count=2)
    sup.wait_serving(2)
    time.sleep(0.5)
    assert len(sup.live_workers()) == 2


def test_control_channel_nesting_does_not_crash_the_supervisor(
    supervisors: Callable[..., Supervisor],
) -> None:
    """``[`` x 60,000 on the control channel crashed the supervisor with a RecursionError
    (and orphaned its worker). It is now one ``bad_message``, and the worker serves on."""
    sup = start(supervisors, "--workers", "1", ECHO_WORKER_GARBAGE="1")
    (pid,) = sup.wait_serving(1)
    sup.wait_event("bad_message", reason="nested deeper than 4")
    time.sleep(0.5)
    assert sup.process.poll() is None and sup.ready_workers() == {pid}
    assert "Traceback" not in sup.output()


def test_root_started_in_a_directory_with_planted_code_runs_none_of_it(tmp_path: Path) -> None:
    """``nobody`` planted ``supervisor/__main__.py`` and ``wildboar/worker/__main__.py`` in
    a world-writable directory; root started ``wildboar serve`` from there, and the planted
    supervisor ran as root. Now every child is an isolated interpreter in ``/``."""
    planted = Path("/tmp") / f"wildboar-planted-{os.getpid()}"
    shutil.rmtree(planted, ignore_errors=True)
    planted.mkdir(mode=0o777)
    planted.chmod(0o1777)
    marker = planted / "ran"
    payload = f"import os\nopen({str(marker)!r}, 'a').write(f'{{os.getuid()}} ')\n"
    try:
        for package in ("supervisor", "wildboar", "wildboar/worker"):
            (planted / package).mkdir()
            (planted / package / "__init__.py").write_text(payload)
            (planted / package / "__main__.py").write_text(payload)
        for path in planted.rglob("*"):
            os.chown(path, NOBODY, NOBODY)
        spool = planted / "spool"
        spool.mkdir()
        os.chown(spool, NOBODY, NOBODY)
        spool.chmod(0o700)
        serve = subprocess.Popen(
            [str(Path(sys.executable).with_name("wildboar")), "serve", "--workers", "1",
             "--listen", f"127.0.0.1:{free_port()}", "--spool", "spool", "--hostname", "mx.test"],
            cwd=planted, env={**os.environ, "WILDBOAR_USER": "nobody", "WILDBOAR_GROUP": "nogroup"},
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert serve.stderr is not None
        lines = []
        for line in serve.stderr:
            lines.append(line)
            if '"event":"ready"' in line:
                break
        serve.send_signal(signal.SIGTERM)
        rest, _ = serve.communicate(timeout=30)
        assert serve.returncode == 0, "".join(lines) + rest
        assert not marker.exists(), marker.read_text()
        # The relative spool path meant the directory serve was started in.
        assert (spool / "msg").is_dir()
    finally:
        shutil.rmtree(planted, ignore_errors=True)
