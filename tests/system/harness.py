"""The whole server as an operator runs it: ``wildboar serve`` (supervisor + workers) in a
child process, its JSON log lines collected from stderr."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from wildboar import message as M

from .. import unprivileged

ROOT = Path(__file__).resolve().parents[2]
# Set to a file name to keep every server's stderr there (for post-mortems of a hang).
DEBUG_LOG = os.environ.get("WILDBOAR_TEST_SERVER_LOG", "")
# Measured by coverage (make test: pyproject.toml patch = ["subprocess"]), every Python
# process started from here measures itself, but the workers see only the supervisor's
# allow-list: ``wildboar serve`` then runs as it is, with ``--pass-env COVERAGE_*`` added
# to the supervisor command it builds. Nothing changes for an operator, or without coverage.
SERVE_PASSING_COVERAGE = """\
import sys
from wildboar import cli
from wildboar.cli import serve
build = serve.supervisor_command
def supervisor_command(config, args):
    command = build(config, args)
    cut = command.index("--")
    return [*command[:cut], "--pass-env", "COVERAGE_*", *command[cut:]]
serve.supervisor_command = supervisor_command
sys.exit(cli.main())
"""


def serve_command() -> list[str]:
    """``python -m wildboar.cli serve``, under coverage with the workers measured too."""
    if "COVERAGE_PROCESS_CONFIG" in os.environ or "COVERAGE_PROCESS_START" in os.environ:
        return [sys.executable, "-c", SERVE_PASSING_COVERAGE, "serve"]
    return [sys.executable, "-m", "wildboar.cli", "serve"]


class Server:
    def __init__(
        self,
        spool: Path,
        *args: str,
        workers: int = 2,
        listen: Sequence[str] = ("127.0.0.1:0",),
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        """``command`` replaces ``wildboar serve``; ``wrapper`` runs before it (a command
        that ends by running its arguments)."""
        self.spool = spool
        argv = [*serve_command(), "--workers", str(workers)]
        for address in listen:
            argv += ["--listen", address]
        argv += ["--spool", str(spool), "--hostname", "mx.test.example", *args]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WILDBOAR_")}
        environ.update(unprivileged.env())
        environ.update(env or {})
        self.workers = workers
        self.logs: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [*wrapper, *(command or argv)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=environ,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):  # the pipe closed under us
            self._read_lines()
        with self._changed:
            self._changed.notify_all()

    def _read_lines(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if DEBUG_LOG:
                with open(DEBUG_LOG, "a") as debug:
                    debug.write(f"{self.proc.pid} {line}")
            with self._changed:
                self.stderr.append(line)
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        self.logs.append(record)
                self._changed.notify_all()

    def events(self, event: str, component: str | None = None) -> list[dict[str, Any]]:
        with self._changed:
            return [
                r
                for r in self.logs
                if r.get("event") == event
                and (component is None or r.get("component") == component)
            ]

    def wait_for(
        self, event: str, count: int = 1, timeout: float = 30.0, component: str | None = None
    ) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        with self._changed:
            while len(self.events(event, component)) < count:
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader_alive()):
                    raise TimeoutError(
                        f"no {count} x {event!r}; stderr:\n{''.join(self.stderr)[-4000:]}"
                    )
                self._changed.wait(min(left, 0.2))
            return self.events(event, component)

    def _reader_alive(self) -> bool:
        return self.proc.stderr is not None and not self.proc.stderr.closed

    @property
    def port(self) -> int:
        return int(self.wait_for("listening", component="supervisor")[0]["port"])

    def wait_ready(self) -> None:
        self.wait_for("ready", component="supervisor")

    def worker_pids(self) -> list[int]:
        """Pids of the worker processes alive now (children of the supervisor)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the workers, then the supervisor's process group. The workers first:
        each runs in a session of its own, out of reach of the group's signal, and one
        that outlived its supervisor would serve on (or hang) long after the test."""
        with contextlib.suppress(OSError):
            for pid in self.worker_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@contextlib.contextmanager
def serving(spool: Path, *args: str, **kwargs: Any) -> Iterator[Server]:
    server = Server(spool, *args, **kwargs)
    try:
        server.wait_ready()
        yield server
    finally:
        if server.proc.poll() is None:
            try:
                server.stop(timeout=60)
            finally:
                server.kill()


def spooled(spool: Path) -> list[M.Message]:
    directory = spool / "msg"
    if not directory.exists():
        return []
    return [
        msgspec.msgpack.decode(path.read_bytes(), type=M.Message)
        for path in sorted(directory.iterdir())
    ]
