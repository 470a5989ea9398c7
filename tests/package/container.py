"""A throw-away Debian 12 machine with a real systemd, for the package tests.

``Container`` boots the tree that ``scripts/nspawn-tree`` keeps (debootstrap'ed once, its
apt cache filled with what the .deb needs) with ``systemd-nspawn --volatile=overlay``: every
boot starts from the pristine tree, and whatever the tests do is gone when it stops. The
container has a network namespace of its own with loopback only (``--private-network``):
its ports 25 and 587 are not this machine's, and this machine's tools (Postfix's
smtp-source, this Python) reach them by entering that namespace alone (``netns``).
The host has no systemd of its own to register with: ``--register=no --keep-unit``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 90.0


class ContainerError(RuntimeError):
    pass


def tree_for(deb: Path) -> Path:
    """The prepared tree (made on first use, its apt cache filled for ``deb``)."""
    result = subprocess.run(
        ["sh", str(ROOT / "scripts" / "nspawn-tree"), str(deb)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        raise ContainerError(f"scripts/nspawn-tree failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


class Container:
    def __init__(self, tree: Path, binds: dict[Path, str]) -> None:
        self.tree = tree
        self.binds = binds
        self.log = Path(tempfile.mkstemp(prefix="wildboar-nspawn-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the container's PID 1, as this machine sees it

    def __enter__(self) -> Container:
        try:
            self.boot()
        except BaseException:
            self.stop()  # a container that did not boot in time is not left running
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def boot(self) -> None:
        command = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self.tree}",
            "--volatile=overlay",
            "--boot",
            "--private-network",
            "--register=no",
            "--keep-unit",
            "--machine=wildboar-test",
            "--console=passive",
        ]
        command += [f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()]
        with self.log.open("wb") as output:
            self.proc = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited:\n{self.log.read_text()[-4000:]}")
            # Looked up until it is systemd: nspawn's first child may be a helper that
            # goes, and whose namespaces are not the container's.
            if not self.leader or self._command(self.leader) != "systemd":
                self.leader = self._child_of(self.proc.pid)
            if self.leader and self._command(self.leader) == "systemd":
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    self.state = state
                    return
            time.sleep(0.2)
        raise ContainerError(f"the container did not boot:\n{self.log.read_text()[-4000:]}")

    @staticmethod
    def _command(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""

    @staticmethod
    def _child_of(pid: int) -> int:
        found = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        )
        first = found.stdout.split()
        return int(first[0]) if first else 0

    def run(
        self, *command: str, check: bool = True, timeout: float = 120.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``command`` inside the container (all its namespaces, its files)."""
        environ = "PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8"
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *environ.split(), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and result.returncode != 0:
            raise ContainerError(
                f"{' '.join(command)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            )
        return result

    def sh(self, script: str, check: bool = True, timeout: float = 120.0) -> str:
        return self.run("sh", "-euc", script, check=check, timeout=timeout).stdout

    def netns(self, *command: str) -> list[str]:
        """This machine's ``command``, run in the container's network namespace only."""
        return ["nsenter", "-t", str(self.leader), "-n", *command]

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", f"cat > {path}", input=text)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGRTMIN+4 asks systemd for a clean poweroff; nspawn turns TERM into that too.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.unlink(missing_ok=True)


def have_tools() -> list[str]:
    """What the package tests need on this machine and do not find."""
    return [t for t in ("systemd-nspawn", "debootstrap", "nsenter") if shutil.which(t) is None]
