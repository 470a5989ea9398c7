"""A real worker process (``python -m wildboar.worker``) driven over its control channel,
with the test playing the supervisor's part: it binds a listening socket on port 0 and
passes it over an ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair, as the supervisor does."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import unprivileged

ROOT = Path(__file__).resolve().parents[2]
#: Seconds ``close`` lets a worker drain after SIGTERM, under coverage, before SIGKILL.
STOP_UNDER_COVERAGE = 5.0


def _measuring_coverage() -> bool:
    """Started by ``make test``'s pytest-cov (pyproject.toml ``patch = ["subprocess"]``): the
    worker, which gets this environment, measures itself and saves its data when it exits."""
    return "COVERAGE_PROCESS_CONFIG" in os.environ or "COVERAGE_PROCESS_START" in os.environ


def _limit_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


class WorkerProcess:
    def __init__(
        self,
        spool: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        max_files: int | None = None,
        send: bool = True,
    ) -> None:
        """``send``: send the first message (the sockets, as a supervisor without a table
        of per-client counts does); else the test sends its own on ``control``."""
        self.spool = spool
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.control, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [
            sys.executable,
            "-m",
            "wildboar.worker",
            "--control-fd",
            str(child.fileno()),
            "--spool",
            str(spool),
            "--hostname",
            "mx.test.example",
            *extra,
        ]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WILDBOAR_")}
        environ.update(env or {})
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            command,
            pass_fds=[child.fileno()],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=environ,
            # Only setrlimit runs between fork and exec: safe despite the reader threads.
            preexec_fn=None if max_files is None else lambda: _limit_files(max_files),  # noqa: PLW1509
            **unprivileged.popen_user(),
        )
        child.close()
        self.logs: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.messages: list[dict[str, Any]] = []
        if send:
            self.send_sockets()
        self.control.settimeout(20)

    def send_sockets(self) -> None:
        socket.send_fds(
            self.control,
            [json.dumps({"type": "sockets", "names": ["smtp"], "worker": 1}).encode()],
            [self.listener.fileno()],
        )

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under us
            for line in self.proc.stderr:
                self.stderr.append(line)
                with contextlib.suppress(ValueError):
                    self.logs.append(json.loads(line))

    def wait_log(self, event: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Log records of ``event``, waiting for the first to be read from stderr."""
        end = time.monotonic() + timeout
        while not self.log_events(event) and time.monotonic() < end:
            time.sleep(0.05)
        return self.log_events(event)

    def receive(self, kind: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next control message of type ``kind`` (others are kept in ``messages``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.control.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.control.recv(65536)
            except TimeoutError:
                break
            if not data:
                raise EOFError("worker closed its control channel")
            message: dict[str, Any] = json.loads(data)
            self.messages.append(message)
            if message.get("type") == kind:
                return message
        raise TimeoutError(f"no {kind!r} from the worker; stderr: {''.join(self.stderr)}")

    def drain(self, deadline: float = 10.0) -> int:
        self.control.send(json.dumps({"type": "drain", "deadline": deadline}).encode())
        return self.proc.wait(timeout=deadline + 30)

    def log_events(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.logs if record.get("event") == event]

    def close(self) -> None:
        if self.proc.poll() is None and _measuring_coverage():
            # A killed worker writes no coverage data: let it drain (TERM) for a while first.
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_UNDER_COVERAGE)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.control.close()
        self.listener.close()


@contextlib.contextmanager
def running_worker(
    spool: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(spool, *extra, env=env)
    try:
        worker.receive("ready")
        yield worker
    finally:
        worker.close()


def spool_files(spool: Path) -> list[Path]:
    directory = spool / "msg"
    return sorted(directory.iterdir()) if directory.exists() else []
