"""Harness for the supervisor's tests: real processes, real sockets, real signals, no mocks.

``Supervisor`` starts ``python -m supervisor`` with the echo worker (``echo_worker.py``, a
genuine worker of the control channel that stands in for ``wildboar.worker`` until the two
are integrated), collects its JSON log lines and the workers' lines from the merged
stdout/stderr pipe, and lets a test wait for an event with a bounded timeout. The
``supervisors`` fixture kills every supervisor and worker a test started, whatever happens.

Tests run as root in CI, so the supervisor drops to ``nobody``/``nogroup``: the worker
command must be runnable by ``nobody``. The virtualenv's interpreter may live under
``/root`` (pyenv, mode 0700), so workers run on the system interpreter when that is the case
(the echo worker needs only the standard library).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ECHO_WORKER = Path(__file__).resolve().with_name("echo_worker.py")
RUN_AS = ["--user", "nobody", "--group", "nogroup"]
PASS_ECHO_ENV = ["--pass-env", "ECHO_WORKER_*"]
SYSTEM_PYTHON = "/usr/bin/python3"
Event = dict[str, Any]
#: Seconds a supervisor still running at the end of a test, under coverage, may take to stop.
STOP_UNDER_COVERAGE = 5.0


def measuring_coverage() -> bool:
    """Started by ``make test``'s pytest-cov (pyproject.toml ``patch = ["subprocess"]``):
    the supervisor, which gets this environment, measures itself and saves its data when it
    exits. (Its workers are not measured: the echo worker is no code of ours.)"""
    return "COVERAGE_PROCESS_CONFIG" in os.environ or "COVERAGE_PROCESS_START" in os.environ


def worker_python() -> str:
    """An interpreter the unprivileged workers can execute."""
    if os.geteuid() == 0 and os.path.exists(SYSTEM_PYTHON):
        return SYSTEM_PYTHON
    return sys.executable


def worker_command() -> list[str]:
    return [worker_python(), str(ECHO_WORKER)]


class Supervisor:
    """One ``python -m supervisor`` process and everything it logged."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
        argv0: Sequence[str] | None = None,
        **popen: Any,
    ) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_WORKER_")}
        full_env.update(env or {})
        # The echo worker's settings are not on the workers' allow-list: pass them on.
        argv = [*(argv0 or [sys.executable, "-m", "supervisor"]), *args, *PASS_ECHO_ENV]
        argv += ["--", *(command or worker_command())]
        self.lines: list[str] = []
        self.events: list[Event] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **popen,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        # The fixture may close the pipe while this thread reads it: that ends the reading.
        with contextlib.suppress(ValueError, OSError):
            self._read_lines()

    def _read_lines(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._changed:
                self.lines.append(line)
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        self.events.append(record)
                self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def find(self, event: str, /, **match: object) -> list[Event]:
        with self._changed:
            return [
                e
                for e in self.events
                if e.get("event") == event
                and (event.startswith("echo_") or e.get("component") == "supervisor")
                and all(e.get(k) == v for k, v in match.items())
            ]

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; output:\n{self.output()}")
                self._changed.wait(min(left, 0.1))

    def wait_event(
        self, event: str, /, timeout: float = 10.0, count: int = 1, **match: object
    ) -> Event:
        """The ``count``-th event with these fields, waiting for it if need be."""
        self.wait_until(lambda: len(self.find(event, **match)) >= count, timeout, event)
        return self.find(event, **match)[count - 1]

    def port(self, name: str = "smtp") -> int:
        return int(self.wait_event("listening", name=name)["port"])

    def live_workers(self) -> set[int]:
        spawned = {e["pid"] for e in self.find("worker_spawned")}
        return spawned - {e["pid"] for e in self.find("worker_exited")}

    def ready_workers(self) -> set[int]:
        """Workers that said ready, are alive and are not draining: the serving ones."""
        draining = {e["pid"] for e in self.find("worker_draining")}
        return {e["pid"] for e in self.find("worker_ready")} & self.live_workers() - draining

    def wait_serving(self, count: int, timeout: float = 10.0) -> set[int]:
        """Wait until exactly ``count`` workers are ready and alive; their pids."""
        self.wait_until(lambda: len(self.ready_workers()) == count, timeout, f"{count} ready")
        return self.ready_workers()

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running; output:\n{self.output()}") from None
        self._reader.join(timeout=5)
        return status

    def kill_everything(self) -> None:
        """SIGKILL the supervisor and every worker it started that still runs (under
        coverage, a supervisor still running gets SIGTERM and a few seconds first: a killed
        one writes no coverage data)."""
        if self.process.poll() is None and measuring_coverage():
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_UNDER_COVERAGE)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(5)
        for pid in {e["pid"] for e in self.find("worker_spawned")}:
            kill_if_echo_worker(pid)
        if self.process.stdout is not None:
            self.process.stdout.close()


def kill_if_echo_worker(pid: int) -> None:
    """SIGKILL ``pid`` if it is still one of our workers (never a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if str(ECHO_WORKER).encode() in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervisors() -> Iterator[Callable[..., Supervisor]]:
    """A factory of supervisors that are all killed, with their workers, after the test."""
    started: list[Supervisor] = []

    def start(*args: str, **kwargs: Any) -> Supervisor:
        started.append(Supervisor(list(args), **kwargs))
        return started[-1]

    try:
        yield start
    finally:
        for supervisor in started:
            supervisor.kill_everything()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory the unprivileged workers can write to (pytest's own is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="wildboar-supervisor-test-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def banner(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    """Connect, read the first line, close."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        return read_line(conn)


def read_line(conn: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1024)
        if not chunk:
            break
        data += chunk
    return data.decode()


def banner_pid(line: str) -> int:
    assert line.startswith("220 echo "), line
    return int(line.split()[2])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_to_exit(
    args: Sequence[str], timeout: float = 10.0, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run the supervisor that is expected to exit by itself; its stdout and stderr."""
    argv = [sys.executable, "-m", "supervisor", *args]
    return subprocess.run(
        argv, check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs
    )
